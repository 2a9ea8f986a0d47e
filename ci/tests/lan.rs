//! Several hosts on one LAN, each in its own network namespace, each running a real agent: discovery with
//! mDNS alone, interplay with the real avahi-daemon and avahi-browse, clusters sharing a LAN, a cable
//! pulled and plugged back, and static seeds without multicast. Every check reads the agents' own state.
//!
//! Needs root (network namespaces); `cargo xtask ci` runs it as such.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use herd::config::Config;
use herd::gossip::{Liveness, NodeId};
use herd_ci::netns::{HostAgent, Lan};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// The gossip port every card of a new image uses.
const PORT: u16 = herd::config::DEFAULT_GOSSIP_PORT;

/// A config with no seeds, no addresses and no node name: what every card of an image gets.
fn config(cluster: &str, state: &std::path::Path) -> Config {
    Config::parse(&format!(
        r#"
        cluster = "{cluster}"
        state_dir = "{}"
        [gossip]
        interval = "100ms"
        key = "{KEY}"
        "#,
        state.display()
    ))
    .unwrap()
}

struct Node {
    agent: HostAgent,
    _state: tempfile::TempDir,
}

impl Node {
    fn id(&self) -> NodeId {
        self.agent.handle().id()
    }

    /// Ids this agent holds alive, itself included.
    fn alive(&self) -> BTreeSet<NodeId> {
        self.agent
            .handle()
            .members()
            .into_iter()
            .filter(|m| m.liveness == Liveness::Alive)
            .map(|m| m.id)
            .collect()
    }

    fn liveness_of(&self, id: NodeId) -> Option<Liveness> {
        self.agent
            .handle()
            .members()
            .into_iter()
            .find(|m| m.id == id)
            .map(|m| m.liveness)
    }
}

fn start(lan: &Lan, host: usize, cluster: &str, edit: impl FnOnce(&mut Config)) -> Node {
    let state = tempfile::tempdir().unwrap();
    let mut c = config(cluster, state.path());
    edit(&mut c);
    Node {
        agent: lan.start_agent(host, c).unwrap(),
        _state: state,
    }
}

/// Polls `check` every 100 ms for up to `limit`; panics with `what` and `state()` when it never holds.
fn eventually(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
    state: impl Fn() -> String,
) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within {limit:?}\n{}", state())
}

fn views(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| format!("{}: {:?}\n", n.id(), n.alive()))
        .collect()
}

fn all_see(nodes: &[Node], ids: &BTreeSet<NodeId>) -> bool {
    nodes.iter().all(|n| &n.alive() == ids)
}

#[test]
fn five_hosts_with_no_seeds_find_each_other_with_mdns() {
    let lan = Lan::new(5).unwrap();
    let nodes: Vec<Node> = (0..5).map(|i| start(&lan, i, "lan", |_| {})).collect();
    let ids: BTreeSet<NodeId> = nodes.iter().map(Node::id).collect();
    let took = eventually(
        Duration::from_secs(30),
        "every agent sees 5 alive members",
        || all_see(&nodes, &ids),
        || views(&nodes),
    );
    println!("5 hosts converged {took:?} after start");
    // Each agent found its own LAN address (no default route here) and advertises it to the others,
    // under its host's name.
    for (i, n) in nodes.iter().enumerate() {
        let me = n.agent.handle().members();
        let me = me.iter().find(|m| m.is_self).unwrap();
        assert_eq!(
            me.addr,
            Some(SocketAddr::new(IpAddr::V4(lan.host(i).ip), PORT))
        );
        assert_eq!(me.kvs.get("name"), Some(&lan.host(i).hostname));
    }
}

#[test]
fn avahi_sees_every_agent_and_keeps_its_host_name() {
    let lan = Lan::new(4).unwrap();
    // Host 0: avahi-daemon first, then the agent beside it (both on UDP 5353).
    let avahi = lan.start_avahi(0).unwrap();
    let before = avahi.host_name_fqdn().unwrap();
    assert_eq!(before, "h0.local");
    let mut nodes = vec![start(&lan, 0, "lan", |_| {})];
    // Host 1: the agent first, avahi-daemon after it, as when herd wins the race at boot: avahi probes
    // for the host's name and would rename the host if the agent had claimed that name.
    nodes.push(start(&lan, 1, "lan", |_| {}));
    std::thread::sleep(Duration::from_secs(2));
    let late = lan.start_avahi(1).unwrap();
    nodes.extend((2..4).map(|i| start(&lan, i, "lan", |_| {})));
    let ids: BTreeSet<NodeId> = nodes.iter().map(Node::id).collect();
    eventually(
        Duration::from_secs(30),
        "every agent, those beside avahi included, sees 4 alive members",
        || all_see(&nodes, &ids),
        || views(&nodes),
    );

    // The standard zero-conf stack lists every agent with its TXT records.
    let listed = std::cell::RefCell::new(Vec::new());
    eventually(
        Duration::from_secs(30),
        "avahi-browse lists all 4 agents",
        || {
            let now = avahi.browse("_herd._udp").unwrap_or_default();
            let all = ids.iter().all(|id| {
                now.iter()
                    .any(|b| b.txt("id") == Some(id.to_string().as_str()))
            });
            *listed.borrow_mut() = now;
            all
        },
        || format!("{:#?}\n{}", listed.borrow(), avahi.logs()),
    );
    let listed = listed.into_inner();
    for (i, n) in nodes.iter().enumerate() {
        let id = n.id().to_string();
        let b = listed
            .iter()
            .find(|b| b.txt("id") == Some(id.as_str()))
            .unwrap();
        assert_eq!(b.name, format!("herd-{id}"));
        assert_eq!(b.host, format!("herd-{id}.local"));
        assert_eq!(b.address, lan.host(i).ip.to_string());
        assert_eq!(b.port, PORT);
        assert_eq!(b.txt("cluster"), Some("lan"));
        assert_eq!(b.txt("gossip"), Some(PORT.to_string().as_str()));
        assert_eq!(b.txt("http"), Some("8080"));
        assert_eq!(b.txt("version"), Some(env!("CARGO_PKG_VERSION")));
    }

    // A graceful stop withdraws the announcement: avahi drops it at once (no waiting for a TTL), and the
    // agents mark the node left.
    let leaving = nodes.pop().unwrap();
    let gone = leaving.id();
    leaving.agent.leave().unwrap();
    eventually(
        Duration::from_secs(10),
        "avahi-browse no longer lists the agent that stopped",
        || {
            avahi.browse("_herd._udp").is_ok_and(|l| {
                !l.iter()
                    .any(|b| b.txt("id") == Some(gone.to_string().as_str()))
            })
        },
        || avahi.logs(),
    );
    assert!(nodes
        .iter()
        .all(|n| n.liveness_of(gone) == Some(Liveness::Left)));

    // Let a few more announcement rounds pass, then check neither avahi had to rename its host.
    std::thread::sleep(Duration::from_secs(3));
    for (a, name) in [(&avahi, "h0.local"), (&late, "h1.local")] {
        assert_eq!(a.host_name_fqdn().unwrap(), name, "{}", a.logs());
        assert!(
            !a.logs().contains("conflict"),
            "avahi saw a name conflict:\n{}",
            a.logs()
        );
    }
}

#[test]
fn two_clusters_on_one_lan_stay_separate() {
    let lan = Lan::new(6).unwrap();
    let red: Vec<Node> = (0..3).map(|i| start(&lan, i, "red", |_| {})).collect();
    let blue: Vec<Node> = (3..6).map(|i| start(&lan, i, "blue", |_| {})).collect();
    let red_ids: BTreeSet<NodeId> = red.iter().map(Node::id).collect();
    let blue_ids: BTreeSet<NodeId> = blue.iter().map(Node::id).collect();
    eventually(
        Duration::from_secs(30),
        "each cluster converges on its own three",
        || all_see(&red, &red_ids) && all_see(&blue, &blue_ids),
        || format!("red\n{}blue\n{}", views(&red), views(&blue)),
    );
    // And stays so: a few more seconds of announcements from both sides change nothing.
    std::thread::sleep(Duration::from_secs(3));
    for n in red.iter().chain(&blue) {
        let known: BTreeSet<NodeId> = n.agent.handle().members().iter().map(|m| m.id).collect();
        let own = if red_ids.contains(&n.id()) {
            &red_ids
        } else {
            &blue_ids
        };
        assert_eq!(&known, own, "an agent learnt of the other cluster");
    }
}

#[test]
fn a_host_cut_off_is_declared_dead_and_rejoins_when_its_cable_returns() {
    let lan = Lan::new(4).unwrap();
    let nodes: Vec<Node> = (0..4).map(|i| start(&lan, i, "lan", |_| {})).collect();
    let ids: BTreeSet<NodeId> = nodes.iter().map(Node::id).collect();
    eventually(
        Duration::from_secs(30),
        "4 alive everywhere",
        || all_see(&nodes, &ids),
        || views(&nodes),
    );
    let cut = nodes[3].id();
    let generation = nodes[0].agent.handle().members()[..]
        .iter()
        .find(|m| m.id == cut)
        .unwrap()
        .generation;

    lan.cut(3).unwrap();
    let took = eventually(
        Duration::from_secs(30),
        "the others declare the cut host dead",
        || {
            nodes[..3]
                .iter()
                .all(|n| n.liveness_of(cut) == Some(Liveness::Dead))
        },
        || views(&nodes),
    );
    println!("cut host declared dead by all after {took:?}");

    lan.restore(3).unwrap();
    let took = eventually(
        Duration::from_secs(30),
        "the host rejoins once its cable is back",
        || all_see(&nodes, &ids),
        || views(&nodes),
    );
    println!("rejoined {took:?} after the cable returned");
    // Convicted in its generation, the host rejoined by refuting the verdict with a higher one (SWIM's
    // incarnation number), as the same running agent: no restart, and everyone agrees on the generation.
    let now = nodes[0].agent.handle().members();
    let back = now.iter().find(|m| m.id == cut).unwrap();
    assert!(
        back.generation > generation,
        "the verdict was refuted with a higher generation: {} after {generation}",
        back.generation
    );
    let own = nodes[3].agent.handle().members();
    let me = own.iter().find(|m| m.is_self).unwrap();
    assert_eq!((me.id, me.generation), (cut, back.generation));
    assert!(nodes[3].agent.handle().stats().refutations >= 1);
}

#[test]
fn a_new_address_is_followed_without_a_restart() {
    let lan = Lan::new(3).unwrap();
    let nodes: Vec<Node> = (0..3).map(|i| start(&lan, i, "lan", |_| {})).collect();
    let ids: BTreeSet<NodeId> = nodes.iter().map(Node::id).collect();
    eventually(
        Duration::from_secs(30),
        "3 alive everywhere",
        || all_see(&nodes, &ids),
        || views(&nodes),
    );
    // A DHCP renewal hands host 2 another address.
    let moved = nodes[2].id();
    let new: SocketAddr = format!("10.99.0.33:{PORT}").parse().unwrap();
    let ip = |args: &[&str]| {
        let out = lan.command(2, "ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // (In this order: deleting a primary address also deletes its secondaries.)
    ip(&[
        "addr",
        "del",
        &format!("{}/24", lan.host(2).ip),
        "dev",
        "eth0",
    ]);
    ip(&["addr", "add", "10.99.0.33/24", "dev", "eth0"]);
    // Within the failure detector's budget: the address change is noticed (interfaces are checked every
    // 5 s), not left to the 30 s refresh.
    let took =
        eventually(
            Duration::from_secs(12),
            "the others learn host 2's new address and keep it alive",
            || {
                nodes[..2].iter().all(|n| {
                    n.agent.handle().members().iter().any(|m| {
                        m.id == moved && m.addr == Some(new) && m.liveness == Liveness::Alive
                    })
                })
            },
            || format!("{:#?}", nodes[0].agent.handle().members()),
        );
    println!("new address followed after {took:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(all_see(&nodes, &ids), "{}", views(&nodes));
}

/// Docker Swarm holds TCP and UDP 7946 on every node and cannot move it (moby#39280: the port is fixed
/// in its memberlist set-up); a card baked before herd moved off 7946 still uses it. Host 0 runs a
/// process holding both the way Swarm's node discovery does, herd beside it on its default port; host 2
/// is an old card on 7946. They find each other by mDNS, which carries each node's own port.
#[test]
fn herd_runs_beside_docker_swarm_on_7946_and_joins_cards_still_on_it() {
    let lan = Lan::new(3).unwrap();
    let mut swarm = lan
        .command(0, "python3")
        .args([
            "-c",
            "import socket, sys\n\
             t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n\
             t.bind(('0.0.0.0', 7946)); t.listen()\n\
             u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             u.bind(('0.0.0.0', 7946))\n\
             print('holding 7946', flush=True)\n\
             sys.stdin.read()\n",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(swarm.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(
        line, "holding 7946\n",
        "the stand-in for Swarm did not start"
    );
    let nodes = [
        start(&lan, 0, "lan", |_| {}),
        start(&lan, 1, "lan", |_| {}),
        start(&lan, 2, "lan", |c| {
            c.gossip.bind = "0.0.0.0:7946".parse().unwrap();
        }),
    ];
    let ids: BTreeSet<NodeId> = nodes.iter().map(Node::id).collect();
    eventually(
        Duration::from_secs(30),
        "herd beside Swarm, and the old card, all alive everywhere",
        || all_see(&nodes, &ids),
        || views(&nodes),
    );
    let members = nodes[1].agent.handle().members();
    let port_of = |i: usize| {
        members
            .iter()
            .find(|m| m.id == nodes[i].id())
            .and_then(|m| m.addr)
            .map(|a| a.port())
    };
    assert_eq!((port_of(0), port_of(2)), (Some(PORT), Some(7946)));
    // Swarm's stand-in still holds its ports and runs.
    assert!(swarm.try_wait().unwrap().is_none(), "it exited");
    let taken = lan
        .spawn_in(0, || {
            (
                std::net::UdpSocket::bind("0.0.0.0:7946").is_err(),
                std::net::TcpListener::bind("0.0.0.0:7946").is_err(),
            )
        })
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(taken, (true, true));
    drop(swarm.stdin.take());
    assert!(swarm.wait().unwrap().success());
}

#[test]
fn static_seeds_form_the_cluster_with_mdns_off() {
    let lan = Lan::new(5).unwrap();
    let seed = format!("{}:{PORT}", lan.host(0).ip);
    let nodes: Vec<Node> = (0..5)
        .map(|i| {
            start(&lan, i, "lan", |c| {
                c.discovery.mdns = false;
                c.gossip.seeds = vec![seed.clone()];
            })
        })
        .collect();
    let ids: BTreeSet<NodeId> = nodes.iter().map(Node::id).collect();
    eventually(
        Duration::from_secs(30),
        "the seeded cluster converges",
        || all_see(&nodes, &ids),
        || views(&nodes),
    );
    // mDNS really is off: nothing in these namespaces holds UDP 5353 (a bind without SO_REUSEADDR
    // fails while any socket has the port).
    for i in 0..5 {
        let free = lan
            .spawn_in(i, || std::net::UdpSocket::bind("0.0.0.0:5353").is_ok())
            .join()
            .unwrap()
            .unwrap();
        assert!(
            free,
            "host {i}: something listens on 5353 with mdns = false"
        );
    }
}

/// The shipped agent is static (musl), whose resolver never asks mDNS: a `.local` seed must still be
/// found. The real aarch64 agent (under qemu-user) on host 0, with mDNS discovery off, is seeded with
/// `h1.local`, the name the real avahi-daemon publishes for host 1; the agent on host 1 (discovery off,
/// no seeds) can only learn of it if host 0 resolved that name and gossiped to it.
#[test]
fn the_static_agent_resolves_a_local_seed_with_mdns() {
    let lan = Lan::new(2).unwrap();
    let _avahi = lan.start_avahi(1).unwrap();
    let h1 = start(&lan, 1, "lan", |c| c.discovery.mdns = false);
    let state = tempfile::tempdir().unwrap();
    let config = state.path().join("herd.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            cluster = "lan"
            node_name = "static"
            state_dir = "{}"
            [gossip]
            interval = "100ms"
            key = "{KEY}"
            seeds = ["h1.local:{PORT}"]
            [discovery]
            mdns = false
            [api]
            enabled = false
            "#,
            state.path().display()
        ),
    )
    .unwrap();
    let binary = herd_image::built_agent(herd_image::Arch::Arm64);
    assert!(
        binary.exists(),
        "{}: run `cargo xtask build`",
        binary.display()
    );
    let _agent = herd_ci::KillOnDrop(
        lan.command(0, "qemu-aarch64-static")
            .arg(&binary)
            .args(["agent", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    let took = eventually(
        Duration::from_secs(30),
        "host 1 sees the static agent that was seeded with h1.local",
        || {
            h1.agent.handle().members().iter().any(|m| {
                m.kvs.get("name").map(String::as_str) == Some("static")
                    && m.liveness == Liveness::Alive
            })
        },
        || views(std::slice::from_ref(&h1)),
    );
    println!("h1.local resolved and joined {took:?} after start");
}

#[test]
fn the_harness_removes_its_namespaces_even_when_a_test_panics() {
    let names = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let lan = Lan::new(2).unwrap();
        let _agent = start(&lan, 0, "lan", |_| {});
        *names.lock().unwrap() = lan.namespaces();
        panic!("a failing test");
    });
    assert!(result.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 3, "a switch and two hosts: {names:?}");
    let left = herd_ci::netns::own_namespaces();
    assert!(
        names.iter().all(|n| !left.contains(n)),
        "left behind: {left:?}"
    );
}

/// Issue 28, 5: the operator's CLI without `--node`, on a laptop of the LAN (host 3, no agent), runs
/// as the real binary. Two clusters announce themselves: it names both and asks for
/// `--cluster`; with `--cluster farm` it asks a farm agent it found with mDNS, and takes the token from
/// `~/.config/herd/farm.toml` (the secrets file `cargo xtask image` writes); an unknown cluster, or
/// none at all, is a clear error naming what was seen. On a card, it asks the card's own agent.
#[test]
fn the_cli_finds_its_cluster_with_mdns_and_the_token_in_its_secrets() {
    let lan = Lan::new(4).unwrap();
    let token = "farm-token-0123456789abcdef0123456789abcdef";
    let farm: Vec<Node> = (0..2)
        .map(|i| {
            start(&lan, i, "farm", |c| {
                c.api.token = Some(herd::config::Secret(token.into()))
            })
        })
        .collect();
    let _other = start(&lan, 2, "other", |_| {});
    let ids: BTreeSet<NodeId> = farm.iter().map(Node::id).collect();
    eventually(
        Duration::from_secs(30),
        "the farm converges",
        || all_see(&farm, &ids),
        || views(&farm),
    );
    // The laptop's herd: this machine's build, beside this test's binary (`cargo test --workspace`
    // builds it for the agent crate's tests). The cards' aarch64 build under qemu-user is not used
    // here: its second mDNS querier in a row never hears an answer (qemu's socket emulation).
    let binary = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("herd")
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        std::path::Path::new(&binary).exists(),
        "{binary}: run `cargo build -p herd`"
    );
    let home = tempfile::tempdir().unwrap();
    let herd = |host: usize, args: &[&str]| {
        let out = lan
            .command(host, &binary)
            .args(args)
            .env("HOME", home.path())
            .env("BROWSER", "echo")
            .env_remove("HERD_NODE")
            .env_remove("HERD_TOKEN")
            .env_remove("HERD_CLUSTER")
            .current_dir(home.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = herd(3, &["members"]);
    assert!(!ok, "two clusters, none named: {err}");
    assert!(
        err.contains("farm (2)") && err.contains("other (1)") && err.contains("--cluster"),
        "{err}"
    );
    let (ok, out, err) = herd(3, &["members", "--cluster", "farm"]);
    assert!(ok, "{err}");
    for i in 0..2 {
        assert!(out.contains(&lan.host(i).hostname), "{out}");
    }
    assert!(!out.contains(&lan.host(2).hostname), "{out}");
    assert!(err.contains("cluster farm: asking node"), "{err}");
    // A write needs the token: none here yet, then the cluster's secrets file.
    let add = [
        "meta-data",
        "add-service",
        &lan.host(1).hostname,
        "nginx",
        "--cluster",
        "farm",
    ];
    let (ok, _, err) = herd(3, &add);
    assert!(!ok && err.contains("401"), "{err}");
    let config = home.path().join(".config/herd");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("farm.toml"),
        format!("cluster = \"farm\"\napi_token = \"{token}\"\n"),
    )
    .unwrap();
    let (ok, out, err) = herd(3, &add);
    assert!(ok, "{err}");
    assert!(out.contains("nginx added to"), "{out}");
    let (ok, _, err) = herd(3, &["members", "--cluster", "nosuch"]);
    assert!(
        !ok && err.contains("\"nosuch\"") && err.contains("farm (2)"),
        "{err}"
    );
    // `herd open NODE`: the node's page, through $BROWSER.
    let (ok, out, err) = herd(3, &["open", &lan.host(1).hostname, "--cluster", "farm"]);
    let page = format!("http://{}:8080/node/{}", lan.host(1).ip, farm[1].id());
    assert!(ok, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), [page.as_str(); 2], "{out}");
    // `herd ssh NODE -- COMMAND`: the real OpenSSH client to that node's address (no sshd on the test's
    // hosts: ssh's own error names the address it tried).
    let (ok, _, err) = herd(
        3,
        &[
            "ssh",
            &lan.host(1).hostname,
            "-l",
            "pi",
            "--cluster",
            "farm",
            "--",
            "true",
        ],
    );
    assert!(!ok, "{err}");
    assert!(
        err.contains(&format!("connect to host {} port 22", lan.host(1).ip)),
        "{err}"
    );
    // On a card: its own agent, no mDNS.
    let (ok, out, err) = herd(0, &["members"]);
    assert!(ok && out.contains(&lan.host(1).hostname), "{err}");
    assert!(!err.contains("found with mDNS"), "{err}");
    // Nothing announced at all: host 3 alone after the agents stop.
    drop(farm);
    drop(_other);
    let (ok, _, err) = herd(3, &["members"]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("none announced itself with mDNS") && err.contains("--node"),
        "{err}"
    );
}
