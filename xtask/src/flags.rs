//! Every task's flags, read once (clap's derive, as the agent's CLI): `main` parses the command line
//! into a [`Task`] and hands each task its own typed flags. Tasks that drive another (`e2e` makes images
//! and releases) fill that task's struct in directly; nothing passes an argv of strings around. This
//! module imports no task, so every task may import it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use herd_image::Arch;

/// `cargo xtask`: all of herd's build logic, in Rust.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    disable_help_subcommand = true
)]
pub struct Xtask {
    #[command(subcommand)]
    pub task: Task,
}

/// The tasks. `agent/tests/docs.rs` reads this enum's variants (in kebab case, as clap names them) to
/// check that every `cargo xtask TASK` written in the docs exists.
#[derive(Debug, Subcommand)]
pub enum Task {
    /// Static release builds of herd for 64-bit (aarch64) and 32-bit (ARMv6: every Pi, Zero and 1
    /// included) Raspberry Pi OS (installs what it needs)
    Build,
    /// A flashable SD-card image with herd baked in
    Image(Box<Image>),
    /// A Raspberry Pi-layout base image made from Debian's packages, cached in ~/.cache/herd/base (for
    /// `image --base debian`; needs root)
    Base(Base),
    /// Write a small Pi-layout test image (to try `image --base PATH` offline)
    Fixture(Fixture),
    /// Boot-and-join: VMs boot copies of one herd image in QEMU, find each other by mDNS, one is killed
    /// and one powered off; herd upgrade on the Bookworm image (needs root)
    E2e(E2e),
    /// Install every Debian package the test suite and the image pipeline use (root), or print the
    /// command that does
    Deps,
    /// The README's commands in a bare Debian root: a fresh clone makes an image with only the Rust
    /// toolchain brought in, then installs the test suite's packages (needs root)
    Bare,
    /// The signed artifact `herd upgrade --to FILE` installs: herd built for both CPU families, signed
    /// with the cluster's key
    Release(Release),
    /// Everything CI checks: formatting, clippy -D warnings, all tests, quick benchmarks, e2e and the
    /// bare root (as root)
    Ci,
    /// The README's picture of the dashboard (docs/dashboard.png), taken again by the browser test
    /// from a real 4-agent cluster (services on two, one gone)
    Screenshot,
    /// Run benchmarks and print their figures (all of them, without names and --quick, also writes
    /// docs/BENCHMARKS.md)
    Bench(Bench),
}

/// What to build: the flags of `cargo xtask image`. `image::check` holds the rules between them; what
/// is `None` takes the default `image::make` documents.
#[derive(Debug, Default, Args)]
pub struct Image {
    /// Cluster name (secrets are kept in secrets/NAME.toml and reused by every build)
    #[arg(long, value_name = "NAME")]
    pub cluster: String,
    /// A Raspberry Pi OS .img or .img.xz, local or http(s)://, file:// (default: the latest Raspberry
    /// Pi OS Lite 64-bit, downloaded once and cached); `debian`, `debian-armhf`, `debian-trixie` or
    /// `debian-trixie-armhf`: the Debian bases of `cargo xtask base debian` (built first if not cached)
    #[arg(long, value_name = "PATH|URL")]
    pub base: Option<String>,
    /// The first user (with --password-file; without them, Lite asks at first boot)
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// The user's password (first line), stored as a SHA-512 crypt hash
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Authorized SSH public keys for the user; password login over SSH is then off
    #[arg(long, value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,
    /// Static gossip seeds, where multicast (mDNS) is blocked
    #[arg(long, value_name = "H:P,H:P", value_delimiter = ',')]
    pub seeds: Vec<String>,
    /// Host name each card gives itself at first boot, from its node id: {id} is the id's 16 hex
    /// digits, {id:N} its first N (default: herd-{id:6}, e.g. herd-3f2a9c.local; '' keeps the base
    /// image's name on every card)
    #[arg(long, value_name = "TEMPLATE")]
    pub hostname: Option<String>,
    /// Also write, for publishing, a compressed .img.xz (multi-threaded), the checksums and a
    /// Raspberry Pi Imager manifest (one pass)
    #[arg(long)]
    pub xz: bool,
    /// Also write the .img.sha256 and an Imager manifest for the raw image
    #[arg(long)]
    pub checksum: bool,
    /// Where the outputs will be published (https://host/dir): the manifest's URLs point there
    /// (default: file:// URLs of the outputs, for a local Imager)
    #[arg(long, value_name = "URL")]
    pub url_base: Option<String>,
    /// Leave the user, SSH keys and Wi-Fi to Raspberry Pi Imager's customisation (the manifest offers
    /// it; with --xz or --checksum, not with --user, --ssh-key or --wifi-*); without it the manifest
    /// turns Imager's customisation off, as herd bakes them
    #[arg(long)]
    pub imager_customisation: bool,
    /// A Wi-Fi network every card joins (Ethernet keeps working beside it)
    #[arg(long, value_name = "SSID")]
    pub wifi_ssid: Option<String>,
    /// Its WPA2 passphrase (first line); only the derived key is stored, mode 0600
    #[arg(long, value_name = "FILE")]
    pub wifi_password_file: Option<PathBuf>,
    /// The country the Pis are in (ISO 3166, e.g. GB): required with Wi-Fi, as the radio stays off
    /// without one
    #[arg(long, value_name = "CC")]
    pub wifi_country: Option<String>,
    /// The network does not broadcast its SSID
    #[arg(long)]
    pub wifi_hidden: bool,
    /// Debian packages every card installs at its first boot, with no network (e.g.
    /// nginx-light,docker.io): resolved with apt against the base's own sources and installed
    /// packages, downloaded once (cached in ~/.cache/herd/apt) and carried on the boot partition
    #[arg(long, value_name = "NAME,NAME", value_delimiter = ',')]
    pub packages: Vec<String>,
    /// The same, one name a line ('#' starts a comment); added to --packages
    #[arg(long, value_name = "FILE")]
    pub packages_file: Option<PathBuf>,
    /// A container engine the cards form from herd's membership, with no typing: `swarm` adds
    /// docker.io to --packages and sets `[engine] kind = "swarm"` in herd.toml (docs/ENGINE.md)
    #[arg(long, value_name = "KIND", value_enum, default_value_t)]
    pub engine: Engine,
    /// With --engine: how many cards must be up and agreed before the swarm is formed; give a majority
    /// of the cards (2 of 3, 3 of 5) so that a partition at the first boot cannot make two swarms
    /// (default: 1)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub engine_expect: Option<u16>,
    /// Output name (default: herd-CLUSTER)
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Output directory (default: target/herd)
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// `cargo xtask base debian`: builds once (then it is cached in ~/.cache/herd/base) a Raspberry
/// Pi-layout Debian image to use as `cargo xtask image --base debian` (debian-armhf, debian-trixie,
/// debian-trixie-armhf). Needs root (mmdebstrap) and the Debian mirror.
#[derive(Debug, Args)]
pub struct Base {
    /// Which base: only `debian` is made here
    #[arg(value_enum)]
    pub kind: BaseKind,
    /// bookworm (systemd-networkd, a first user `pi` renamed by userconf) or trixie (made as Raspberry
    /// Pi OS is today: NetworkManager, cloud-init with its NoCloud seed on the boot partition, a first
    /// user without a login shell renamed by userconf, Wi-Fi off)
    #[arg(long, value_enum, default_value_t = Suite::Bookworm)]
    pub suite: Suite,
    /// arm64 (Pi 3, 4, 5 and QEMU virt) or armhf (Pi 2 and later, 32-bit)
    #[arg(long, value_parser = pi_arch, default_value = "arm64")]
    pub arch: Arch,
    /// Build it again even if cached
    #[arg(long)]
    pub rebuild: bool,
    /// Every base the boot-and-join test boots (Trixie and Bookworm arm64, Bookworm armhf), those
    /// missing built side by side (not with --suite or --arch)
    #[arg(long, conflicts_with_all = ["suite", "arch"])]
    pub all: bool,
}

/// `--engine`: what herd.toml's `engine.kind` says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    #[default]
    None,
    Swarm,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::None => "none",
            Engine::Swarm => "swarm",
        })
    }
}

/// The bases `cargo xtask base` makes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BaseKind {
    Debian,
}

/// The Debian release a base is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    Bookworm,
    Trixie,
}

/// `cargo xtask fixture PATH`: a small Pi-layout image made from scratch.
#[derive(Debug, Args)]
pub struct Fixture {
    /// Where to write it
    pub path: PathBuf,
    /// A 32-bit root filesystem
    #[arg(long)]
    pub armhf: bool,
    /// The partition layout of images before 2025 (not 4 MiB-aligned)
    #[arg(long)]
    pub old_layout: bool,
}

/// `cargo xtask e2e`: boots three arm64 VMs from one herd image (and one armhf VM) in QEMU inside
/// network namespaces; needs root.
#[derive(Debug, Args)]
pub struct E2e {
    /// Skip the 32-bit VM
    #[arg(long)]
    pub no_armhf: bool,
}

/// `cargo xtask release`: builds herd for each CPU family and writes an artifact signed with the
/// cluster's signing key (secrets/NAME.toml), for `herd upgrade --to FILE`.
#[derive(Debug, Args)]
pub struct Release {
    /// The cluster whose key signs it
    #[arg(long, value_name = "NAME")]
    pub cluster: String,
    /// The agents' version (default: the crate's); cards take only newer versions
    #[arg(long, value_name = "V")]
    pub version: Option<String>,
    /// The CPU families to build
    #[arg(long, value_parser = pi_arch, value_delimiter = ',', default_value = "arm64,armhf")]
    pub arch: Vec<Arch>,
    /// Pack this file as ARCH's agent instead of building it
    #[arg(long, value_name = "ARCH=PATH", value_parser = binary)]
    pub binary: Vec<(Arch, PathBuf)>,
    /// The cluster's secrets (default: secrets/NAME.toml)
    #[arg(long, value_name = "FILE")]
    pub secrets: Option<PathBuf>,
    /// Default: target/release/herd-NAME-VERSION.herd
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// `cargo xtask bench`: builds what the benchmarks need (optimised for speed), runs them and prints
/// their figures.
#[derive(Debug, Args)]
pub struct Bench {
    /// The benchmarks to run (default: all)
    #[arg(value_enum)]
    pub names: Vec<BenchName>,
    /// Only prove each still runs: small sizes, the test build
    #[arg(long)]
    pub quick: bool,
    /// For gossip: the cluster sizes
    #[arg(long, value_name = "N,N…", value_delimiter = ',')]
    pub nodes: Vec<u32>,
    /// For gossip: one detection only
    #[arg(long, value_enum)]
    pub detection: Option<Detection>,
}

/// Benchmarks, in the order a full run takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchName {
    Gossip,
    Peers,
    Footprint,
    Http,
    Image,
}

/// The gossip benchmark's detections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Detection {
    Monitors,
    Gossip,
}

/// A Raspberry Pi CPU family by its Debian name.
fn pi_arch(name: &str) -> Result<Arch, String> {
    Arch::PI
        .iter()
        .copied()
        .find(|a| a.name() == name)
        .ok_or_else(|| format!("unknown CPU family {name:?}: arm64 or armhf"))
}

/// `ARCH=PATH`.
fn binary(v: &str) -> Result<(Arch, PathBuf), String> {
    let (a, p) = v
        .split_once('=')
        .ok_or_else(|| format!("{v:?}: write ARCH=PATH"))?;
    Ok((pi_arch(a)?, PathBuf::from(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What clap's derive checks when the parser is built (conflicting names, bad defaults).
    #[test]
    fn the_flags_are_well_formed() {
        <Xtask as clap::CommandFactory>::command().debug_assert();
    }
}
