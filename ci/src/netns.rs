//! A LAN of hosts in network namespaces, for tests that need several machines: mDNS, link cuts, avahi.
//!
//! `Lan::new(n)` makes one namespace holding a bridge (the switch) and `n` host namespaces, each with an
//! `eth0` cabled to a bridge port and an address `10.99.0.<i+1>/24`, multicast on, no default route. No
//! interface of the machine's own namespace is touched, so nothing a test sends (multicast included) can
//! leave the namespaces. Agents run on threads that entered a host's namespace (`setns` is per thread, and
//! the threads they spawn inherit it), so tests read the agents' own state directly; processes (avahi,
//! `avahi-browse`) run under `ip netns exec`. Dropping the `Lan` (also while a failed test unwinds) kills
//! what runs in its namespaces and deletes them; namespaces left by a killed test run are swept on the
//! next `Lan::new`.
//!
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN).

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sched::{setns, CloneFlags};

/// Prefix of every namespace this harness creates: `herd-t<pid>-<lan>-…`.
const PREFIX: &str = "herd-t";
/// Where the hosts' UTS namespaces are pinned, one file per host named like its network namespace.
const UTS_DIR: &str = "/run/herd-test-uts";

static NEXT_LAN: AtomicUsize = AtomicUsize::new(0);

/// One host on the LAN.
#[derive(Debug, Clone)]
pub struct Host {
    /// Name of its network namespace (`ip netns exec <ns> …`).
    pub ns: String,
    pub ip: Ipv4Addr,
    /// The bridge port its cable plugs into (in the switch namespace).
    port: String,
    /// The host's name, set in a UTS namespace of its own.
    pub hostname: String,
    /// That UTS namespace, kept alive by a bind mount on this file.
    uts: PathBuf,
}

/// A bridge and the hosts cabled to it.
pub struct Lan {
    tag: String,
    switch: String,
    hosts: Vec<Host>,
    children: Mutex<Vec<Child>>,
}

impl Lan {
    /// Creates a switch and `n` hosts.
    pub fn new(n: usize) -> anyhow::Result<Lan> {
        if !nix::unistd::geteuid().is_root() {
            bail!("network namespaces need root: run the tests as root (sudo cargo xtask ci)");
        }
        sweep_stale();
        let tag = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT_LAN.fetch_add(1, Ordering::Relaxed)
        );
        let mut lan = Lan {
            switch: format!("{tag}-sw"),
            tag,
            hosts: Vec::new(),
            children: Mutex::new(Vec::new()),
        };
        ip(&["netns", "add", &lan.switch])?;
        ip_in(&lan.switch, &["link", "set", "lo", "up"])?;
        // mDNS must reach every port: no IGMP snooping on this switch.
        ip_in(
            &lan.switch,
            &[
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        )?;
        ip_in(&lan.switch, &["link", "set", "br0", "up"])?;
        for _ in 0..n {
            lan.add_host()?;
        }
        Ok(lan)
    }

    /// Cables one more host to the switch.
    pub fn add_host(&mut self) -> anyhow::Result<&Host> {
        let i = self.hosts.len();
        if i >= 250 {
            bail!("a LAN holds at most 250 hosts");
        }
        let ns = format!("{}-h{i}", self.tag);
        let host = Host {
            uts: Path::new(UTS_DIR).join(&ns),
            ns,
            ip: Ipv4Addr::new(10, 99, 0, i as u8 + 1),
            port: format!("p{i}"),
            hostname: format!("h{i}"),
        };
        std::fs::create_dir_all(UTS_DIR)?;
        File::create(&host.uts)?;
        run(Command::new("unshare")
            .arg(format!("--uts={}", host.uts.display()))
            .args(["hostname", &host.hostname]))?;
        ip(&["netns", "add", &host.ns])?;
        ip_in(&host.ns, &["link", "set", "lo", "up"])?;
        ip_in(
            &self.switch,
            &[
                "link", "add", &host.port, "type", "veth", "peer", "name", "eth0", "netns",
                &host.ns,
            ],
        )?;
        ip_in(
            &self.switch,
            &["link", "set", &host.port, "master", "br0", "up"],
        )?;
        ip_in(
            &host.ns,
            &["addr", "add", &format!("{}/24", host.ip), "dev", "eth0"],
        )?;
        ip_in(&host.ns, &["link", "set", "eth0", "multicast", "on", "up"])?;
        self.hosts.push(host);
        Ok(&self.hosts[i])
    }

    /// The names of this LAN's namespaces: the switch's and every host's.
    pub fn namespaces(&self) -> Vec<String> {
        std::iter::once(self.switch.clone())
            .chain(self.hosts.iter().map(|h| h.ns.clone()))
            .filter(|n| Path::new("/run/netns").join(n).exists())
            .collect()
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Unplugs host `i`'s cable at the switch: its `eth0` stays configured but loses carrier.
    pub fn cut(&self, i: usize) -> anyhow::Result<()> {
        ip_in(&self.switch, &["link", "set", &self.hosts[i].port, "down"])
    }

    /// Plugs host `i`'s cable back in.
    pub fn restore(&self, i: usize) -> anyhow::Result<()> {
        ip_in(&self.switch, &["link", "set", &self.hosts[i].port, "up"])
    }

    /// Adds a tap device `name` to the switch, for a virtual machine run in the switch's namespace
    /// (`switch_command`) to plug its NIC into.
    pub fn add_tap(&self, name: &str) -> anyhow::Result<()> {
        // A tap of an earlier VM at the same place (taps outlive their QEMU): made anew.
        let _ = ip_in(&self.switch, &["link", "del", name]);
        ip_in(&self.switch, &["tuntap", "add", "dev", name, "mode", "tap"])?;
        ip_in(&self.switch, &["link", "set", name, "master", "br0", "up"])
    }

    /// A command that runs inside the switch's network namespace (where the taps are).
    pub fn switch_command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.switch, program]);
        c
    }

    /// A command that runs inside host `i`'s network namespace.
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i].ns, program]);
        c
    }

    /// Runs `f` on a new thread inside host `i`'s namespaces. Threads that `f` starts stay there too.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        i: usize,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<anyhow::Result<T>> {
        let host = self.hosts[i].clone();
        std::thread::Builder::new()
            .name(format!("host{i}"))
            .spawn(move || {
                enter(&host)?;
                Ok(f())
            })
            .expect("spawn a thread")
    }

    /// Starts a D-Bus system bus and avahi-daemon on host `i`, under the host's name.
    pub fn start_avahi(&self, i: usize) -> anyhow::Result<Avahi> {
        let dir = tempfile::Builder::new().prefix("herd-avahi").tempdir()?;
        let bus = dir.path().join("bus");
        let bus_address = format!("unix:path={}", bus.display());
        std::fs::write(
            dir.path().join("bus.conf"),
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>{bus_address}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#
            ),
        )?;
        std::fs::write(
            dir.path().join("avahi-daemon.conf"),
            "[server]\nuse-ipv4=yes\nuse-ipv6=no\nallow-interfaces=eth0\nenable-dbus=yes\n\
             ratelimit-interval-usec=1000000\nratelimit-burst=1000\n\
             [wide-area]\nenable-wide-area=no\n\
             [publish]\npublish-addresses=yes\npublish-hinfo=no\npublish-workstation=no\n",
        )?;
        let dbus = Command::new("dbus-daemon")
            .arg(format!(
                "--config-file={}",
                dir.path().join("bus.conf").display()
            ))
            .args(["--nofork", "--nopidfile"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start dbus-daemon (apt-get install dbus-daemon)")?;
        self.children.lock().unwrap().push(dbus);
        wait_for(Duration::from_secs(10), "the D-Bus socket", || bus.exists())?;

        // `ip netns exec` gives a mount namespace of its own, where avahi gets a private /run/avahi-daemon
        // for its pid file; `nsenter` adds the host's UTS namespace (its name).
        let log = dir.path().join("avahi.log");
        let script = format!(
            "set -e; mkdir -p /run/avahi-daemon; mount -t tmpfs tmpfs /run/avahi-daemon; \
             exec avahi-daemon --no-drop-root --no-chroot --no-rlimits -f {}",
            dir.path().join("avahi-daemon.conf").display()
        );
        let avahi = self
            .command(i, "nsenter")
            .arg(format!("--uts={}", self.hosts[i].uts.display()))
            .args(["sh", "-c", &script])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus_address)
            .stdin(Stdio::null())
            .stdout(File::create(&log)?)
            .stderr(File::create(dir.path().join("avahi.err"))?)
            .spawn()
            .context("cannot start avahi-daemon (apt-get install avahi-daemon)")?;
        self.children.lock().unwrap().push(avahi);
        let avahi = Avahi {
            ns: self.hosts[i].ns.clone(),
            bus_address,
            dir,
        };
        wait_for(Duration::from_secs(20), "avahi-daemon to start", || {
            avahi.host_name_fqdn().is_ok()
        })
        .with_context(|| avahi.logs())?;
        Ok(avahi)
    }
}

/// An agent running on a host of a [`Lan`], on a thread of its own with its own tokio runtime.
pub struct HostAgent {
    handle: herd::daemon::Handle,
    stop: Option<tokio::sync::oneshot::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<anyhow::Result<()>>>>,
}

impl Lan {
    /// Starts an agent with `config` on host `i` and waits until it runs.
    pub fn start_agent(&self, i: usize, config: herd::config::Config) -> anyhow::Result<HostAgent> {
        let (ready, started) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<bool>();
        let thread = self.spawn_in(i, move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let agent = match herd::daemon::Agent::start(config).await {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return Ok(());
                    }
                };
                let _ = ready.send(Ok(agent.handle()));
                match stopped.await {
                    Ok(true) => agent.shutdown().await,
                    _ => {
                        agent.kill();
                        Ok(())
                    }
                }
            })
        });
        match started.recv() {
            Ok(Ok(handle)) => Ok(HostAgent {
                handle,
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e.context(format!("agent on host {i}"))),
            Err(_) => match thread.join() {
                Ok(Ok(Ok(()))) => bail!("agent on host {i} stopped before it started"),
                Ok(Ok(Err(e))) | Ok(Err(e)) => Err(e.context(format!("agent on host {i}"))),
                Err(_) => bail!("agent thread of host {i} panicked"),
            },
        }
    }
}

impl HostAgent {
    pub fn handle(&self) -> &herd::daemon::Handle {
        &self.handle
    }

    /// Leaves the cluster gracefully and waits for the agent to stop.
    pub fn leave(mut self) -> anyhow::Result<()> {
        self.finish(true)
    }

    fn finish(&mut self, graceful: bool) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(graceful);
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Ok(r))) => r,
            Some(Ok(Err(e))) => Err(e.context("entering the host's namespace")),
            Some(Err(_)) => bail!("agent thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for HostAgent {
    /// Stops the agent without a word to its peers.
    fn drop(&mut self) {
        let _ = self.finish(false);
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for mut child in self.children.lock().unwrap().drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.hosts.iter().map(|h| &h.ns).chain([&self.switch]) {
            delete_namespace(ns);
        }
    }
}

/// avahi-daemon running on one host, reachable over its private D-Bus.
pub struct Avahi {
    ns: String,
    bus_address: String,
    dir: tempfile::TempDir,
}

impl Avahi {
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus_address);
        c
    }

    /// The host name avahi currently publishes, as avahi itself reports it (after a name conflict avahi
    /// renames the host, e.g. `pi.local` → `pi-2.local`).
    pub fn host_name_fqdn(&self) -> anyhow::Result<String> {
        let out = self
            .command("dbus-send")
            .args([
                "--system",
                "--print-reply=literal",
                "--dest=org.freedesktop.Avahi",
                "/",
                "org.freedesktop.Avahi.Server.GetHostNameFqdn",
            ])
            .output()?;
        if !out.status.success() {
            bail!("dbus-send: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `avahi-browse -rpt <service>`: every resolved instance, parsed.
    pub fn browse(&self, service: &str) -> anyhow::Result<Vec<Browsed>> {
        let out = self
            .command("avahi-browse")
            .args(["-rpt", service])
            .output()
            .context("cannot run avahi-browse (apt-get install avahi-utils)")?;
        if !out.status.success() {
            bail!(
                "avahi-browse: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(Browsed::parse)
            .collect())
    }

    /// What avahi-daemon wrote to its output, for failure messages.
    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!(
            "avahi-daemon output:\n{}{}",
            read("avahi.log"),
            read("avahi.err")
        )
    }
}

/// One resolved line of `avahi-browse -p`:
/// `=;eth0;IPv4;name;_herd._udp;local;host.local;10.99.0.1;7946;"k=v" "k=v"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Browsed {
    pub interface: String,
    pub name: String,
    pub host: String,
    pub address: String,
    pub port: u16,
    pub txt: Vec<(String, String)>,
}

impl Browsed {
    fn parse(line: &str) -> Option<Browsed> {
        let f: Vec<&str> = line.splitn(10, ';').collect();
        if f.len() != 10 || f[0] != "=" {
            return None;
        }
        let txt = f[9]
            .split("\" \"")
            .map(|kv| kv.trim_matches('"'))
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Browsed {
            interface: f[1].into(),
            name: f[3].into(),
            host: f[6].into(),
            address: f[7].into(),
            port: f[8].parse().ok()?,
            txt,
        })
    }

    pub fn txt(&self, key: &str) -> Option<&str> {
        self.txt
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Moves the calling thread into `host`'s namespaces.
/// Moves the calling thread into `host`'s namespaces (threads it starts inherit them).
pub fn enter_host(host: &Host) -> anyhow::Result<()> {
    enter(host)
}

fn enter(host: &Host) -> anyhow::Result<()> {
    let path = Path::new("/run/netns").join(&host.ns);
    let fd = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    setns(&fd, CloneFlags::CLONE_NEWNET).context("setns(network)")?;
    let fd =
        File::open(&host.uts).with_context(|| format!("cannot open {}", host.uts.display()))?;
    setns(&fd, CloneFlags::CLONE_NEWUTS).context("setns(uts)")?;
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args)).context("(`ip` is in Debian's iproute2)")
}

/// Runs `c`; a failure names the command and carries its error output.
fn run(c: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{c:?}");
    let out = c.output().with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip_in(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

/// Kills every process still in `ns` and deletes it.
fn delete_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                if pid as u32 != std::process::id() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "delete", ns]).output();
    let uts = Path::new(UTS_DIR).join(ns);
    if uts.exists() {
        let _ = nix::mount::umount2(&uts, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&uts);
    }
}

/// Deletes namespaces of earlier test runs whose process is gone (killed before it could clean up).
fn sweep_stale() {
    let entries = std::fs::read_dir("/run/netns")
        .into_iter()
        .chain(std::fs::read_dir(UTS_DIR))
        .flatten();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            delete_namespace(&name);
        }
    }
}

/// Namespaces this process's harness currently has.
pub fn own_namespaces() -> Vec<String> {
    let mine = format!("{PREFIX}{}-", std::process::id());
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&mine))
                .collect()
        })
        .unwrap_or_default()
}

fn wait_for(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {limit:?} waiting for {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avahi_browse_lines_parse() {
        let line = "=;eth0;IPv4;herd-00000000000000ab;_herd._udp;local;herd-00000000000000ab.local;\
                    10.99.0.2;7946;\"version=0.1.0\" \"gossip=7946\" \"id=00000000000000ab\" \"cluster=c\"";
        let b = Browsed::parse(line).unwrap();
        assert_eq!(b.address, "10.99.0.2");
        assert_eq!(b.port, 7946);
        assert_eq!(b.txt("cluster"), Some("c"));
        assert_eq!(b.txt("id"), Some("00000000000000ab"));
        assert_eq!(b.txt("version"), Some("0.1.0"));
        assert!(Browsed::parse("+;eth0;IPv4;x;_herd._udp;local").is_none());
    }
}
