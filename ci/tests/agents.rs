//! The agents that ship on the cards, as built by `cargo xtask build` (which `cargo xtask ci` runs first):
//! static (no C library of the card's is used, so any Raspberry Pi OS release runs them), the 32-bit one
//! ARMv6 code, and each runs on the oldest CPU of its family under qemu-user (ARM1176 of the Pi Zero and
//! Pi 1; Cortex-A53 of the Pi 3 and Zero 2 W) well enough to form a cluster of two on loopback, with its
//! seed found by name through musl's resolver (`localhost`, from `/etc/hosts`), and to leave it.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herd::gossip::Liveness;
use herd_ci::KillOnDrop;
use herd_image::Arch;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn agent(arch: Arch) -> PathBuf {
    let p = herd_image::built_agent(arch);
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask build` first",
        p.display()
    );
    p
}

/// qemu-user and the oldest CPU of the family each agent serves.
fn qemu(arch: Arch) -> (&'static str, &'static str) {
    match arch {
        Arch::Arm64 => ("qemu-aarch64-static", "cortex-a53"),
        Arch::Armhf => ("qemu-arm-static", "arm1176"),
        Arch::Amd64 => panic!("amd64 runs natively"),
    }
}

fn readelf(args: &[&str], bin: &Path) -> String {
    let out = Command::new("readelf")
        .args(args)
        .arg(bin)
        .output()
        .expect("readelf (binutils)");
    assert!(out.status.success(), "readelf {args:?} {}", bin.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn agents_are_static_and_the_32_bit_one_is_armv6() {
    for arch in [Arch::Arm64, Arch::Armhf] {
        let bin = agent(arch);
        let header = readelf(&["-h"], &bin);
        let machine = match arch {
            Arch::Arm64 => "AArch64",
            Arch::Armhf => "ARM",
            Arch::Amd64 => "X86-64",
        };
        assert!(
            header
                .lines()
                .any(|l| l.trim_start().starts_with("Machine:") && l.trim_end().ends_with(machine)),
            "{}: not {machine}:\n{header}",
            bin.display()
        );
        // No dynamic section: no interpreter, no shared library, so no glibc version to match.
        let dynamic = readelf(&["-d"], &bin);
        assert!(
            dynamic.contains("There is no dynamic section"),
            "{} is dynamically linked:\n{dynamic}",
            bin.display()
        );
        assert!(!readelf(&["-l"], &bin).contains("INTERP"));
    }
    let attrs = readelf(&["-A"], &agent(Arch::Armhf));
    let tag = |name: &str| {
        attrs
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    assert_eq!(tag("Tag_CPU_arch:").as_deref(), Some("v6"), "{attrs}");
    // Raspbian's floating point: VFPv2 with VFP register arguments (hard float).
    assert_eq!(tag("Tag_FP_arch:").as_deref(), Some("VFPv2"), "{attrs}");
    assert_eq!(
        tag("Tag_ABI_VFP_args:").as_deref(),
        Some("VFP registers"),
        "{attrs}"
    );
    assert_ne!(tag("Tag_THUMB_ISA_use:").as_deref(), Some("Thumb-2"));
}

#[test]
fn agents_answer_on_the_oldest_cpu_of_their_family() {
    for arch in [Arch::Arm64, Arch::Armhf] {
        let (qemu, cpu) = qemu(arch);
        let out = Command::new(qemu)
            .args(["-cpu", cpu])
            .arg(agent(arch))
            .arg("--version")
            .output()
            .expect(qemu);
        assert!(
            out.status.success(),
            "{qemu} -cpu {cpu}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("herd {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Running {
    child: KillOnDrop,
    api: String,
    _dir: tempfile::TempDir,
}

fn start(arch: Arch, name: &str, gossip: u16, seed: Option<&str>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let api = free_tcp_port();
    let seeds = seed.map(|s| format!("\"{s}\"")).unwrap_or_default();
    let config = dir.path().join("herd.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            cluster = "qemu-user"
            node_name = "{name}"
            state_dir = "{}"
            [gossip]
            bind = "127.0.0.1:{gossip}"
            seeds = [{seeds}]
            key = "{KEY}"
            [discovery]
            mdns = false
            [api]
            bind = "127.0.0.1:{api}"
            "#,
            dir.path().display()
        ),
    )
    .unwrap();
    let (qemu, cpu) = qemu(arch);
    let child = Command::new(qemu)
        .args(["-cpu", cpu])
        .arg(agent(arch))
        .arg("agent")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect(qemu);
    Running {
        child: KillOnDrop(child),
        api: format!("http://127.0.0.1:{api}"),
        _dir: dir,
    }
}

fn states(node: &Running) -> Vec<(String, Liveness)> {
    herd::client::Client::new(&node.api, None)
        .and_then(|c| c.nodes())
        .map(|v| v.into_iter().map(|n| (n.name, n.state)).collect())
        .unwrap_or_default()
}

fn wait(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within {limit:?}");
}

/// Two agents of one family under qemu-user: the second is seeded with `localhost:PORT` (musl's resolver
/// reads /etc/hosts), both see both alive, and a SIGTERM makes the other report it left.
fn round_trip(arch: Arch) {
    let port_a = free_udp_port();
    let a = start(arch, "a", port_a, None);
    let mut b = start(
        arch,
        "b",
        free_udp_port(),
        Some(&format!("localhost:{port_a}")),
    );
    let both_alive = |n: &Running| {
        let s = states(n);
        s.len() == 2 && s.iter().all(|(_, l)| *l == Liveness::Alive)
    };
    wait(
        Duration::from_secs(60),
        &format!("{arch:?}: a and b alive in both views"),
        || both_alive(&a) && both_alive(&b),
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b.child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = b.child.0.wait().unwrap();
    assert!(status.success(), "{arch:?}: b exited with {status}");
    wait(
        Duration::from_secs(30),
        &format!("{arch:?}: a reports b left"),
        || {
            states(&a)
                .iter()
                .any(|(n, l)| n == "b" && *l == Liveness::Left)
        },
    );
}

#[test]
fn the_64_bit_agent_gossips_with_itself_on_a_cortex_a53() {
    round_trip(Arch::Arm64);
}

#[test]
fn the_armv6_agent_gossips_with_itself_on_an_arm1176() {
    round_trip(Arch::Armhf);
}
