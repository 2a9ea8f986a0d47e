//! The README's set-up, proven on a bare Debian: a fresh clone runs the main command (`cargo xtask image
//! … --xz`) to a finished image in a minimal Debian root where nothing but the Rust toolchain was brought
//! in, and then `cargo xtask deps` installs every package the test suite uses. Whatever a package list
//! forgets (a "recommends" that `--no-install-recommends` drops, a tool that was only here by chance)
//! makes this fail.
//!
//! The root is Debian bookworm amd64 `minbase` plus what rustup itself needs to build anything on Linux
//! (a C linker: `gcc`, `libc6-dev`) and `ca-certificates` (cargo's and rustup's HTTPS), made once with
//! mmdebstrap and cached in `~/.cache/herd/bare/`. Each run lays an overlay over it (and one over this
//! machine's rustup home, where the targets and components rustup's default install lacks are removed
//! first), inside a mount namespace of this process's own, so every mount goes when the process does.
//! Caches of downloads are shared with the host (the apt archives, cargo's registry, pip's cache): they
//! change how long a run takes, not what it proves. Network: only the package registries, as on a
//! user's machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use herd_image::Arch;
use nix::mount::{mount, MsFlags};

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// On top of `minbase`: what rustup's installer asks for (a C toolchain to link with) and HTTPS trust.
const INCLUDE: &str = "ca-certificates,gcc,libc6-dev";
/// The host's Rust target: the only one a default rustup install has.
const HOST: &str = "x86_64-unknown-linux-gnu";

pub struct Options {
    /// The workspace to clone (its committed HEAD is what runs).
    pub workspace: PathBuf,
    /// Where the run's overlay and logs go.
    pub out: PathBuf,
}

fn cache() -> PathBuf {
    crate::cache_dir("bare")
}

fn run(step: &str, mut cmd: Command) -> anyhow::Result<Duration> {
    println!("==> bare: {step}");
    let start = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("{step}: cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{step} failed ({status})");
    }
    let took = start.elapsed();
    println!("==> bare: {step}: ok in {:.1} s", took.as_secs_f64());
    Ok(took)
}

/// The cached bare root (a directory), made by mmdebstrap the first time.
fn bare_root() -> anyhow::Result<PathBuf> {
    let dir = cache().join(format!(
        "debian-{SUITE}-amd64-minbase-{}",
        INCLUDE.replace(',', "+")
    ));
    if dir.join("etc/debian_version").exists() {
        println!("==> bare: cached root {}", dir.display());
        return Ok(dir);
    }
    let partial = dir.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    std::fs::create_dir_all(cache())?;
    let mut m = Command::new("mmdebstrap");
    m.args([
        "--mode=root",
        "--variant=minbase",
        &format!("--include={INCLUDE}"),
        SUITE,
    ])
    .arg(&partial)
    .arg(MIRROR);
    let result = run("make the bare root (mmdebstrap minbase, once)", m);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &dir)?;
    Ok(dir)
}

/// The root shares this machine's network, so it trusts what this machine trusts: certificates of this
/// machine's CA bundle that Debian's ca-certificates lacks (a network's TLS-inspecting proxy, say) are
/// added the Debian way, as local certificates, so they survive any later update-ca-certificates.
fn trust_this_network(root: &Path) -> anyhow::Result<()> {
    let bundle = "etc/ssl/certs/ca-certificates.crt";
    let pems = |text: &str| -> Vec<String> {
        text.split("-----END CERTIFICATE-----")
            .filter_map(|b| b.find("-----BEGIN CERTIFICATE-----").map(|i| &b[i..]))
            .map(|b| format!("{}\n-----END CERTIFICATE-----\n", b.trim()))
            .collect()
    };
    let host = pems(&std::fs::read_to_string(Path::new("/").join(bundle)).unwrap_or_default());
    let known = pems(&std::fs::read_to_string(root.join(bundle)).unwrap_or_default());
    let extra: Vec<&String> = host.iter().filter(|c| !known.contains(c)).collect();
    if extra.is_empty() {
        return Ok(());
    }
    let dir = root.join("usr/local/share/ca-certificates");
    std::fs::create_dir_all(&dir)?;
    for (i, cert) in extra.iter().enumerate() {
        std::fs::write(dir.join(format!("this-network-{i}.crt")), cert)?;
    }
    let mut update = in_root(root, "/", &["update-ca-certificates"]);
    update.stdout(std::process::Stdio::null());
    run(
        &format!(
            "trust this network's {} extra CA certificate(s)",
            extra.len()
        ),
        update,
    )?;
    Ok(())
}

fn overlay(lower: &Path, layer: &Path, target: &Path) -> anyhow::Result<()> {
    let upper = layer.join("upper");
    let work = layer.join("work");
    std::fs::create_dir_all(&upper)?;
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(target)?;
    // redirect_dir: rustup renames directories of the lower layer when it removes a component, which
    // overlayfs refuses (EXDEV) without it.
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=on",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .with_context(|| {
        format!(
            "cannot mount an overlay of {} on {}",
            lower.display(),
            target.display()
        )
    })
}

fn bind(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(from)?;
    std::fs::create_dir_all(to)?;
    mount(
        Some(from),
        to,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("cannot bind {} on {}", from.display(), to.display()))
}

/// A command run as root inside the bare root, in `dir`, with a clean environment: what a user's login
/// shell would have after installing rustup.
fn in_root(root: &Path, dir: &str, args: &[&str]) -> Command {
    let mut c = Command::new("chroot");
    c.arg(root)
        .args(["/usr/bin/env", "-i", "-C", dir])
        .args([
            "HOME=/root",
            "USER=root",
            "LANG=C.UTF-8",
            "TERM=dumb",
            "PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ])
        .args(args);
    c
}

pub fn run_all(opts: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let lower = bare_root()?;
    let rustup_home = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".rustup")))
        .context("no RUSTUP_HOME and no HOME")?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("no CARGO_HOME and no HOME")?;
    let rustup = cargo_home.join("bin/rustup");
    if !rustup.exists() {
        bail!(
            "{} is missing: this test brings in the rustup toolchain of this machine",
            rustup.display()
        );
    }

    // Every mount below belongs to this process's own mount namespace and goes with it.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("unshare the mount namespace")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    if opts.out.exists() {
        std::fs::remove_dir_all(&opts.out)
            .with_context(|| format!("cannot remove {}", opts.out.display()))?;
    }
    let root = opts.out.join("root");
    overlay(&lower, &opts.out.join("root-layer"), &root)?;
    mount(
        Some("proc"),
        &root.join("proc"),
        Some("proc"),
        MsFlags::empty(),
        None::<&str>,
    )?;
    mount(
        Some("sysfs"),
        &root.join("sys"),
        Some("sysfs"),
        MsFlags::empty(),
        None::<&str>,
    )?;
    bind(Path::new("/dev"), &root.join("dev"))?;
    std::fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf"))
        .context("the bare root needs this machine's /etc/resolv.conf")?;
    trust_this_network(&root)?;
    // The Rust toolchain, as rustup installs it: this machine's rustup home under an overlay (so what
    // the run adds or removes stays in the run), and the rustup proxies.
    overlay(
        &rustup_home,
        &opts.out.join("rustup-layer"),
        &root.join("root/.rustup"),
    )?;
    let bin = root.join("root/.cargo/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(&rustup, bin.join("rustup"))?;
    for proxy in [
        "cargo",
        "rustc",
        "rustdoc",
        "rustfmt",
        "cargo-fmt",
        "cargo-clippy",
        "clippy-driver",
    ] {
        std::os::unix::fs::symlink("rustup", bin.join(proxy))?;
    }
    // Download caches shared with the host.
    bind(
        &cache().join("apt-archives"),
        &root.join("var/cache/apt/archives"),
    )?;
    bind(
        &cargo_home.join("registry"),
        &root.join("root/.cargo/registry"),
    )?;
    bind(&cache().join("pip"), &root.join("root/.cache/pip"))?;

    let mut clone = Command::new("git");
    clone
        .args(["clone", "--quiet"])
        .arg(&opts.workspace)
        .arg(root.join("root/herd"));
    let mut timings = vec![("clone", run("git clone of the workspace", clone)?)];
    // The base to bake: the armhf fixture, so the run builds the ARMv6 agent (std from rust-src and
    // zig, the path that needs packages; the aarch64 one needs nothing but rustup).
    let base = root.join("root/base-armhf.img");
    herd_image::fixture::Fixture {
        arch: Arch::Armhf,
        ..Default::default()
    }
    .build(&base)?;
    std::fs::write(root.join("root/password"), "a password nobody uses\n")?;
    std::fs::write(
        root.join("root/key.pub"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBare0000000000000000000000000000000000000000 bare@test\n",
    )?;

    // Back to what a default rustup install has: the host target, rustc, cargo, std, rustfmt, clippy.
    let listed = in_root(&root, "/root", &["rustup", "target", "list", "--installed"])
        .output()
        .context("rustup in the bare root")?;
    if !listed.status.success() {
        bail!(
            "rustup does not run in the bare root: {}",
            String::from_utf8_lossy(&listed.stderr)
        );
    }
    let extra: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::trim)
        .filter(|t| !t.is_empty() && *t != HOST)
        .map(String::from)
        .collect();
    if !extra.is_empty() {
        let mut args = vec!["rustup", "target", "remove"];
        args.extend(extra.iter().map(String::as_str));
        run(
            "remove the targets a default rustup lacks",
            in_root(&root, "/root", &args),
        )?;
    }
    let _ = in_root(
        &root,
        "/root",
        &["rustup", "component", "remove", "rust-src"],
    )
    .stderr(std::process::Stdio::null())
    .status();

    let main = [
        "cargo",
        "xtask",
        "image",
        "--cluster",
        "bare",
        "--base",
        "/root/base-armhf.img",
        "--user",
        "pi",
        "--password-file",
        "/root/password",
        "--ssh-key",
        "/root/key.pub",
        "--xz",
        "--out",
        "/root/out",
    ];
    timings.push((
        "main command",
        run(
            &format!("the README's main command: {}", main.join(" ")),
            in_root(&root, "/root/herd", &main),
        )?,
    ));
    // It finished: the image, its checksum, the .xz and the manifest are there, and the image holds the
    // ARMv6 agent the run built.
    let out = root.join("root/out");
    for f in [
        "herd-bare.img",
        "herd-bare.img.xz",
        "herd-bare.img.sha256",
        "herd-bare.rpi-imager-manifest",
    ] {
        if !out.join(f).is_file() {
            bail!("the main command left no {f} in {}", out.display());
        }
    }
    let img = herd_image::Image::open(&out.join("herd-bare.img"))?;
    let baked = img.root().read("/usr/local/bin/herd")?;
    let built = std::fs::read(
        root.join("root/herd/target")
            .join(Arch::Armhf.agent_target())
            .join("release/herd"),
    )?;
    if baked != built {
        bail!("the image does not hold the agent the run built");
    }

    timings.push((
        "test packages",
        run(
            "every package the test suite uses: cargo xtask deps",
            in_root(&root, "/root/herd", &["cargo", "xtask", "deps"]),
        )?,
    ));
    println!(
        "\n==> bare: the README's commands work on a bare Debian {SUITE} root ({:.0} s in all)",
        started.elapsed().as_secs_f64()
    );
    for (step, took) in timings {
        println!("    {step}: {:.1} s", took.as_secs_f64());
    }
    Ok(())
}
