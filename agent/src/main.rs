//! The `herd` command: the agent daemon and the operator's tools, in one binary.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use herd::config::Config;
use herd::gossip::wire::ClusterKey;
use herd::ops::cli::Target;

#[derive(Parser)]
#[command(
    name = "herd",
    version = herd::VERSION,
    about = "Turn a stack of Raspberry Pis into a cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: gossip membership and failure detection.
    Agent {
        /// The configuration file.
        #[arg(long, short, default_value = "/etc/herd/herd.toml")]
        config: PathBuf,
    },
    /// Print a new random cluster key for `gossip.key`.
    Keygen,
    /// Check a configuration file and exit.
    CheckConfig {
        #[arg(long, short, default_value = "/etc/herd/herd.toml")]
        config: PathBuf,
    },
    /// Give this machine the host name `hostname_template` derives from its node id (run as root by
    /// herd-hostname.service at first boot, before the network and avahi-daemon start).
    SetHostname {
        #[arg(long, short, default_value = "/etc/herd/herd.toml")]
        config: PathBuf,
        /// Do it only if FILE does not exist, and create it after: once per card, so that a name the
        /// owner gives the card later is kept.
        #[arg(long, value_name = "FILE")]
        once: Option<PathBuf>,
    },
    /// List the cluster's members as a node sees them.
    Members {
        #[command(flatten)]
        target: Target,
    },
    /// Show each node's container engine (its swarm, role, leader) beside herd's view, and where they
    /// disagree; `herd engine env` prints what a laptop needs to use the swarm.
    Engine {
        #[command(subcommand)]
        what: Option<EngineCommand>,
        #[command(flatten)]
        target: Target,
    },
    /// Open a node's dashboard in the browser (NODE's own page when named: name, id or address).
    Open {
        #[arg(value_name = "NODE")]
        member: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Log in to a node with ssh (NODE: name, id or address), or run COMMAND there.
    Ssh {
        #[arg(value_name = "NODE")]
        member: String,
        /// The user to log in as (else ssh's choice: ~/.ssh/config, then your user name).
        #[arg(long, short = 'l', env = "HERD_SSH_USER")]
        user: Option<String>,
        /// What to run there (after --), instead of a login shell.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Print a node's journal (NODE: name, id or address): its last lines, and with -f new ones as they
    /// come. Always needs the API token.
    Logs {
        #[arg(value_name = "NODE")]
        member: String,
        /// Keep printing new lines until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// Only this systemd unit's lines (a name without a suffix is a service: -u ssh).
        #[arg(long, short, value_name = "UNIT")]
        unit: Option<String>,
        /// The last N lines (at most 10000).
        #[arg(long = "lines", short = 'n', value_name = "N", default_value_t = herd::model::logs::DEFAULT_LINES)]
        lines: u32,
        /// Only lines from T on: a time ago (10m, 2h, 1day) or a UTC time (2026-12-07 14:00:00,
        /// 2026-12-07T14:00:00Z).
        #[arg(long, value_name = "T")]
        since: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Reboot nodes (name, id or address): each agent says goodbye to its peers, then its card restarts.
    Reboot {
        #[arg(value_name = "NODE", required = true)]
        members: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Power nodes off: each says goodbye first, and stays off until its power is cycled.
    Shutdown {
        #[arg(value_name = "NODE", required = true)]
        members: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Blink a node's activity LED for 15 s, then put it back as it was: which board is it?
    Identify {
        #[arg(value_name = "NODE")]
        member: String,
        #[command(flatten)]
        target: Target,
    },
    /// Restart a node's agent (a goodbye, then back with a new generation).
    Restart {
        #[arg(value_name = "NODE")]
        member: String,
        #[command(flatten)]
        target: Target,
    },
    /// (Run by herd-action.service, as root.) Do the action the local agent handed over.
    #[command(hide = true)]
    ActionApply {
        #[arg(long, short, default_value = "/etc/herd/herd.toml")]
        config: PathBuf,
    },
    /// (Run by herd-packages.service, as root, at boot.) Install the packages the image carries on its
    /// boot partition, offline, then free the space.
    #[command(hide = true)]
    PackagesApply,
    /// (Run by herd-engine.service, as root.) Form and keep the container engine's swarm from herd's
    /// membership, as `[engine]` in herd.toml says, until stopped; a graceful stop leaves the swarm.
    #[command(hide = true)]
    EngineApply {
        #[arg(long, short, default_value = "/etc/herd/herd.toml")]
        config: PathBuf,
    },
    /// Change a node's service meta-data.
    MetaData {
        #[command(subcommand)]
        change: MetaDataCommand,
    },
    /// Stream membership events (join, failure, leave, …) from a node until interrupted.
    Watch {
        #[command(flatten)]
        target: Target,
    },
    /// Ansible dynamic inventory of the alive nodes (also run as `herd-inventory`, a link to herd).
    Inventory {
        /// Every group and host (what `ansible -i` asks for).
        #[arg(long, conflicts_with = "host")]
        list: bool,
        /// One host's variables.
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Write a static INI inventory with the groups a playbook targets, filled with alive nodes.
    Hosts {
        #[arg(long, value_name = "FILE")]
        playbook: PathBuf,
        /// Where to write it (default: standard output).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Launch SERVICE on the COUNT least-busy alive nodes that do not run it, with its playbook
    /// (PLAYBOOKS/SERVICE/playbook.yml, *.tera files rendered with the cluster's facts), and record it in
    /// their meta-data; or, with --reconcile, bring every launched service back to its wanted count.
    Launch(herd::ops::launch::Args),
    /// Install a new agent on every alive node, without reflashing: the signed artifact is uploaded to
    /// --node once, the other nodes fetch it from each other; nodes are upgraded --batch at a time, each
    /// kept only once every other alive node sees it alive with the new version within --timeout, else
    /// it rolls back by itself and the rollout stops. Ctrl-C stops after the batch under way.
    Upgrade(herd::ops::upgrade::Upgrade),
    /// (Run by herd-upgrade.service, as root.) Install the agent the local agent handed over.
    #[command(hide = true)]
    UpgradeApply {
        #[arg(long, short, default_value = "/etc/herd/herd.toml")]
        config: PathBuf,
    },
    /// (Run at boot by herd-upgrade-resume.service, as root, from the previous binary.) Finish an upgrade
    /// a power cut interrupted.
    #[command(hide = true)]
    UpgradeResume {
        #[arg(long, short, default_value = "/etc/herd/herd.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum EngineCommand {
    /// Print `export DOCKER_HOST=ssh://USER@MANAGER` for the swarm's leader (other alive managers as
    /// comments): `eval "$(herd engine env -l pi)"`, then `docker node ls` from the laptop.
    Env {
        /// The user to log in as (else ssh's choice); it must be in the card's docker group.
        #[arg(long, short = 'l', env = "HERD_SSH_USER")]
        user: Option<String>,
    },
}

#[derive(Subcommand)]
enum MetaDataCommand {
    /// Record that NODE (name, id or address) runs SERVICE.
    AddService {
        #[arg(value_name = "NODE")]
        member: String,
        service: String,
        #[command(flatten)]
        target: Target,
    },
    /// Record that NODE (name, id or address) no longer runs SERVICE.
    RemoveService {
        #[arg(value_name = "NODE")]
        member: String,
        service: String,
        #[command(flatten)]
        target: Target,
    },
}

fn main() -> std::process::ExitCode {
    // Called as `herd-inventory` (a link, for `ansible -i herd-inventory`): the inventory command.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .first()
        .and_then(|a| PathBuf::from(a).file_name().map(|n| n == "herd-inventory"))
        == Some(true)
    {
        args.insert(1, "inventory".into());
    }
    let cli = Cli::parse_from(args);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain, one cause per line, without a backtrace: these errors are for operators.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent { config } => {
            // Logs go to stderr (journald takes both; stdout stays for command output).
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            let loaded = Config::load(&config)?;
            if let Some(problem) = loaded.permission_problem(&config) {
                tracing::warn!("{problem}");
            }
            let config = loaded;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(herd::daemon::run(config, shutdown_signal()))
        }
        Command::Keygen => {
            println!(
                "{}",
                ClusterKey::generate(&mut rand::rngs::OsRng).to_base64()
            );
            Ok(())
        }
        Command::CheckConfig { config } => {
            let loaded = Config::load(&config)?;
            match loaded.permission_problem(&config) {
                Some(problem) => println!("{}: ok, but {problem}", config.display()),
                None => println!("{}: ok", config.display()),
            }
            Ok(())
        }
        Command::SetHostname { config, once } => {
            let said = herd::daemon::identity::name_this_card(&config, once.as_deref())?;
            println!("{said}");
            Ok(())
        }
        Command::Members { target } => herd::ops::cli::members(&target),
        Command::Engine { what: None, target } => herd::ops::cli::engine(&target),
        Command::Engine {
            what: Some(EngineCommand::Env { user }),
            target,
        } => herd::ops::cli::engine_env(&target, user.as_deref()),
        Command::Open { member, target } => herd::ops::cli::open(&target, member.as_deref()),
        Command::Ssh {
            member,
            user,
            command,
            target,
        } => herd::ops::cli::ssh(&target, &member, user.as_deref(), &command),
        Command::Logs {
            member,
            follow,
            unit,
            lines,
            since,
            target,
        } => {
            let since = since
                .as_deref()
                .map(|t| herd::ops::cli::parse_since(t, std::time::SystemTime::now()))
                .transpose()?;
            let q = herd::model::logs::LogQuery {
                lines,
                unit,
                since,
                follow,
            };
            herd::ops::cli::logs(&target, &member, &q)
        }
        Command::Reboot { members, target } => {
            herd::ops::cli::act(&target, &members, herd::model::actions::Action::Reboot)
        }
        Command::Shutdown { members, target } => {
            herd::ops::cli::act(&target, &members, herd::model::actions::Action::Shutdown)
        }
        Command::Identify { member, target } => {
            herd::ops::cli::act(&target, &[member], herd::model::actions::Action::Identify)
        }
        Command::Restart { member, target } => {
            herd::ops::cli::act(&target, &[member], herd::model::actions::Action::Restart)
        }
        Command::ActionApply { config } => herd::actuator::apply(&Config::load(&config)?),
        Command::EngineApply { config } => {
            let config = Config::load(&config)?;
            herd::conductor::run(&config, &herd::conductor::Paths::card(&config))
        }
        Command::PackagesApply => {
            herd::packages::apply(&herd::packages::Setup::default()).map(|_| ())
        }
        Command::MetaData { change } => match change {
            MetaDataCommand::AddService {
                member,
                service,
                target,
            } => herd::ops::cli::change_service(&target, &member, &service, true),
            MetaDataCommand::RemoveService {
                member,
                service,
                target,
            } => herd::ops::cli::change_service(&target, &member, &service, false),
        },
        Command::Watch { target } => herd::ops::cli::watch(&target),
        Command::Upgrade(u) => {
            herd::ops::upgrade::stop_on_interrupt()?;
            herd::ops::upgrade::run(&u).map(|_| ())
        }
        Command::UpgradeApply { config } => {
            use herd::installer as install;
            let config = Config::load(&config)?;
            let paths = install::Paths::card(&config);
            let mut prove = install::prove_by_api(&config);
            install::apply(&config, &paths, &mut prove).map(|_| ())
        }
        Command::UpgradeResume { config } => {
            use herd::installer as install;
            let config = Config::load(&config)?;
            let paths = install::Paths::card(&config);
            let mut prove = install::prove_by_api(&config);
            install::resume(&paths, &mut prove).map(|_| ())
        }
        Command::Inventory { list, host, target } => {
            herd::ops::cli::inventory(&target, list, host.as_deref())
        }
        Command::Hosts {
            playbook,
            out,
            target,
        } => herd::ops::cli::hosts(&target, &playbook, out.as_deref()),
        Command::Launch(c) => herd::ops::launch::run(&c),
    }
}

/// Completes on SIGINT or SIGTERM (what systemd sends on stop).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
