//! `cargo xtask release`: the signed artifact `herd upgrade` installs. Builds the agent for each CPU
//! family (as `cargo xtask build`, with the version given), or takes binaries given with `--binary`, and
//! signs them with the cluster's signing key from `secrets/CLUSTER.toml` (made by `cargo xtask image`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use herd_image::Arch;

use crate::util::root;
use herd_release::{self as release, SigningKey};

/// What to pack.
pub struct Options {
    pub cluster: String,
    pub version: String,
    pub arches: Vec<Arch>,
    pub binaries: Vec<(Arch, PathBuf)>,
    pub secrets: PathBuf,
    pub out: PathBuf,
}

/// The flags resolved: defaults filled in, the version checked, given binaries taking the place of
/// their family's build.
pub fn options(flags: &crate::flags::Release) -> anyhow::Result<Options> {
    let cluster = flags.cluster.clone();
    let mut arches = flags.arch.clone();
    let binaries = flags.binary.clone();
    let version = (flags.version.clone()).unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
    release::check_version_text(&version).map_err(|e| anyhow::anyhow!("--version: {e}"))?;
    // Given binaries replace the build of their family.
    arches.retain(|a| !binaries.iter().any(|(b, _)| b == a));
    let secrets = flags
        .secrets
        .clone()
        .unwrap_or_else(|| root().join("secrets").join(format!("{cluster}.toml")));
    let out = flags.out.clone().unwrap_or_else(|| {
        root()
            .join("target/release")
            .join(format!("herd-{cluster}-{version}.herd"))
    });
    Ok(Options {
        cluster,
        version,
        arches,
        binaries,
        secrets,
        out,
    })
}

pub fn run(flags: &crate::flags::Release) -> anyhow::Result<()> {
    make(&options(flags)?)?;
    Ok(())
}

/// The cluster's signing key, from its secrets file.
pub fn signing_key(secrets: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(secrets).with_context(|| {
        format!(
            "cannot read {} (the cluster's secrets; `cargo xtask image --cluster NAME` makes them)",
            secrets.display()
        )
    })?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not TOML", secrets.display()))?;
    let seed = table
        .get("signing_key")
        .and_then(|v| v.as_str())
        .with_context(|| {
            format!(
                "{} has no signing_key (run `cargo xtask image` for this cluster once: it adds one)",
                secrets.display()
            )
        })?;
    SigningKey::from_base64(seed)
        .map_err(|e| anyhow::anyhow!("{}: signing_key: {e}", secrets.display()))
}

/// Builds (or takes) the binaries and writes the signed artifact; returns its path.
pub fn make(opts: &Options) -> anyhow::Result<PathBuf> {
    let key = signing_key(&opts.secrets)?;
    let mut binaries: Vec<(Arch, Vec<u8>)> = Vec::new();
    for (a, path) in &opts.binaries {
        let bytes = std::fs::read(path)
            .with_context(|| format!("--binary: cannot read {}", path.display()))?;
        binaries.push((*a, bytes));
    }
    for a in &opts.arches {
        let bin = crate::build::build_version(*a, Some(&opts.version))?;
        binaries.push((*a, std::fs::read(&bin)?));
    }
    let refs: Vec<(Arch, &[u8])> = binaries.iter().map(|(a, b)| (*a, b.as_slice())).collect();
    let artifact = release::pack(&key, &opts.cluster, &opts.version, &refs)
        .map_err(|e| anyhow::anyhow!("cannot pack the artifact: {e}"))?;
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = opts.out.with_extension("partial");
    std::fs::write(&partial, &artifact)?;
    std::fs::rename(&partial, &opts.out)?;
    println!(
        "==> {}: herd {} for cluster {} ({}), {:.2} MB, sha256 {}",
        opts.out.display(),
        opts.version,
        opts.cluster,
        refs.iter()
            .map(|(a, _)| a.name())
            .collect::<Vec<_>>()
            .join(", "),
        artifact.len() as f64 / 1e6,
        release::sha256_hex(&artifact)
    );
    Ok(opts.out.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cargo xtask release ARGS` as the command line reads it (clap), then resolved.
    fn parse(a: &[&str]) -> anyhow::Result<Options> {
        use crate::flags::{Task, Xtask};
        use clap::Parser;
        let argv = ["xtask", "release"].iter().chain(a);
        let Task::Release(f) = Xtask::try_parse_from(argv)?.task else {
            unreachable!("the release task")
        };
        options(&f)
    }

    #[test]
    fn options_are_checked() {
        let o = parse(&[
            "--cluster",
            "pis",
            "--version",
            "1.2.3",
            "--binary",
            "armhf=/x",
        ])
        .unwrap();
        assert_eq!(o.arches, vec![Arch::Arm64], "the given binary is not built");
        assert!(o.out.ends_with("target/release/herd-pis-1.2.3.herd"));
        let err = |a: &[&str]| format!("{:#}", parse(a).err().unwrap());
        assert!(err(&["--version", "1"]).contains("--cluster"));
        assert!(err(&["--cluster", "pis", "--version", "1 2"]).contains("--version"));
        assert!(err(&["--cluster", "pis", "--arch", "mips"]).contains("mips"));
        assert!(err(&["--cluster", "pis", "--binary", "arm64"]).contains("ARCH=PATH"));
    }

    #[test]
    fn given_binaries_are_packed_and_signed_with_the_clusters_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap();
        let secrets = dir.path().join("pis.toml");
        std::fs::write(
            &secrets,
            format!("cluster = \"pis\"\nsigning_key = \"{}\"\n", key.to_base64()),
        )
        .unwrap();
        let bin = dir.path().join("agent");
        std::fs::write(&bin, b"an agent").unwrap();
        let out = make(&Options {
            cluster: "pis".into(),
            version: "9.9.9".into(),
            arches: vec![],
            binaries: vec![(Arch::Arm64, bin)],
            secrets: secrets.clone(),
            out: dir.path().join("a.herd"),
        })
        .unwrap();
        let bytes = std::fs::read(out).unwrap();
        let a = release::open(&bytes, &key.public(), "pis").unwrap();
        assert_eq!(a.manifest.version, "9.9.9");
        assert_eq!(a.binary(Arch::Arm64).unwrap(), b"an agent");
        std::fs::write(&secrets, "cluster = \"pis\"\n").unwrap();
        let e = signing_key(&secrets).err().unwrap().to_string();
        assert!(e.contains("no signing_key"), "{e}");
    }
}
