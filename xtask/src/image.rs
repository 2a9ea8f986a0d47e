//! `cargo xtask image`: builds a flashable SD-card image with herd baked in (a thin caller of the
//! `herd-image` library, which does the work rootlessly).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use herd_image::overlay::{seeds_toml, Values};
use herd_image::pipeline::{Base, PipelineOptions, DEFAULT_BASE};
use herd_image::BakeOptions;

use crate::build;
use crate::flags::Image;
use crate::util::root;

/// The rules between the flags, with the flag each error is about.
pub fn check(a: &Image) -> anyhow::Result<()> {
    {
        if a.cluster.is_empty() {
            bail!("--cluster NAME is required");
        }
        if a.url_base.is_some() && !a.xz && !a.checksum {
            bail!(
                "--url-base sets the Imager manifest's URLs: add --xz (or --checksum) to write one"
            );
        }
        if a.cluster.len() > 63
            || !a
                .cluster
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            bail!(
                "--cluster {:?}: 1 to 63 characters of A-Z, a-z, 0-9, '-' and '_'",
                a.cluster
            );
        }
        for (i, s) in a.seeds.iter().enumerate() {
            match s.rsplit_once(':') {
                Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {}
                _ => bail!("--seeds: item {} ({s:?}) is not host:port", i + 1),
            }
        }
        if let Some(h) = a.hostname.as_deref().filter(|h| !h.is_empty()) {
            check_hostname_template(h).with_context(|| format!("--hostname {h:?}"))?;
        }
        match (&a.user, &a.password_file) {
            (Some(u), Some(_)) => herd_image::imager::check_user_name(u)
                .map_err(|e| anyhow::anyhow!("--user: {e}"))?,
            (Some(_), None) => {
                bail!("--user needs --password-file (herd never bakes a default password)")
            }
            (None, Some(_)) => bail!("--password-file needs --user"),
            (None, None) => {}
        }
        if a.ssh_key.is_some() && a.user.is_none() {
            bail!("--ssh-key needs --user: the keys are installed for that user");
        }
        match (&a.wifi_ssid, &a.wifi_password_file, &a.wifi_country) {
            (Some(_), Some(_), Some(_)) | (None, None, None) => {}
            (Some(_), None, _) => {
                bail!("--wifi-ssid needs --wifi-password-file (open networks are not supported)")
            }
            (Some(_), _, None) => bail!(
            "--wifi-ssid needs --wifi-country CC (the country the Pis are in, e.g. GB): without a \
             regulatory domain the radio stays off"
        ),
            (None, ..) => bail!("--wifi-password-file and --wifi-country go with --wifi-ssid"),
        }
        if a.wifi_hidden && a.wifi_ssid.is_none() {
            bail!("--wifi-hidden goes with --wifi-ssid");
        }
        if a.imager_customisation && !a.xz && !a.checksum {
            bail!(
                "--imager-customisation is a setting of the Imager manifest, which only --xz or \
             --checksum writes: add one of them"
            );
        }
        if a.imager_customisation {
            if let Some(flag) = [
                (a.user.is_some(), "--user"),
                (a.ssh_key.is_some(), "--ssh-key"),
                (a.wifi_ssid.is_some(), "--wifi-ssid"),
            ]
            .iter()
            .find_map(|(set, flag)| set.then_some(flag))
            {
                bail!(
                "--imager-customisation leaves the user, SSH keys and Wi-Fi to Imager: drop {flag}, \
                 or drop --imager-customisation to bake them (two sources would fight at first boot)"
            );
            }
        }
        Ok(())
    }
}

/// Six hex digits: two cards of a 50-card cluster share a name once in 13,000 clusters.
const DEFAULT_HOSTNAME: &str = "herd-{id:6}";

/// `engine.expect` for the cards: `--engine-expect`, else 1. Not a clap default, which flags built in
/// code with `Default` (the e2e's) would not get: they would bake 0, which every agent refuses.
fn engine_expect(a: &crate::flags::Image) -> u32 {
    a.engine_expect.unwrap_or(1).into()
}

/// What the agent's `hostname_template` accepts (checked here too, so a bad one fails the build rather
/// than the first boot): `{id}` or `{id:N}` (N from 1 to 16) in a host name of a-z, 0-9 and '-'.
fn check_hostname_template(template: &str) -> anyhow::Result<()> {
    let mut name = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        name.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .map(|c| open + c)
            .context("a '{' is not closed")?;
        let n = match &rest[open + 1..close] {
            "id" => 16,
            p => match p.strip_prefix("id:").map(str::parse::<usize>) {
                Some(Ok(n)) if (1..=16).contains(&n) => n,
                _ => bail!("unknown placeholder {{{p}}}; use {{id}} or {{id:N}}, N from 1 to 16"),
            },
        };
        name.push_str(&"f".repeat(n));
        rest = &rest[close + 1..];
    }
    name.push_str(rest);
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty()
        || name.len() > 63
        || !ok_chars
        || name.starts_with('-')
        || name.ends_with('-')
    {
        bail!("host names are 1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-'");
    }
    Ok(())
}

/// A cluster's secrets (`secrets/CLUSTER.toml`).
struct Secrets {
    key: String,
    api_token: String,
    /// The public half of the signing key of `herd upgrade`'s artifacts (not secret: baked into herd.toml).
    signing_public_key: String,
    path: PathBuf,
}

/// The cluster's key, API token and signing key, made once and kept in `secrets/CLUSTER.toml`
/// (git-ignored, 0600). A file from before the signing key gets one added, the rest left as it was.
fn secrets(cluster: &str) -> anyhow::Result<Secrets> {
    secrets_in(&root().join("secrets"), cluster)
}

fn secrets_in(dir: &Path, cluster: &str) -> anyhow::Result<Secrets> {
    use base64::Engine;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let b64 = base64::engine::general_purpose::STANDARD;
    let path = dir.join(format!("{cluster}.toml"));
    let random = |n: usize| -> anyhow::Result<Vec<u8>> {
        let mut bytes = vec![0u8; n];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
        Ok(bytes)
    };
    let signing_lines = |seed: &[u8]| -> anyhow::Result<(String, String)> {
        let seed: [u8; 32] = seed.try_into().context("a signing key is 32 bytes")?;
        let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
        let public = b64.encode(public.as_bytes());
        Ok((
            format!(
                "# Signs the agents `herd upgrade` installs; cards check them with signing_public_key.\n\
                 signing_key = \"{}\"\nsigning_public_key = \"{public}\"\n",
                b64.encode(seed)
            ),
            public,
        ))
    };
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let v: toml::Table = text
            .parse()
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        let get = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(String::from)
                .with_context(|| format!("{}: no {k}", path.display()))
        };
        let signing_public_key = match v.get("signing_key").and_then(|x| x.as_str()) {
            Some(seed) => {
                let seed = b64
                    .decode(seed)
                    .ok()
                    .with_context(|| format!("{}: signing_key is not base64", path.display()))?;
                let (_, public) = signing_lines(&seed)
                    .with_context(|| format!("{}: signing_key", path.display()))?;
                if get("signing_public_key").ok().as_deref() != Some(public.as_str()) {
                    bail!(
                        "{}: signing_public_key is not the public half of signing_key",
                        path.display()
                    );
                }
                public
            }
            None => {
                let (lines, public) = signing_lines(&random(32)?)?;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                let sep = if text.ends_with('\n') { "" } else { "\n" };
                f.write_all(format!("{sep}{lines}").as_bytes())?;
                println!(
                    "==> cluster {cluster}: a signing key for herd upgrade added to {}",
                    path.display()
                );
                public
            }
        };
        return Ok(Secrets {
            key: get("key")?,
            api_token: get("api_token")?,
            signing_public_key,
            path,
        });
    }
    let bytes = random(48)?;
    let key = b64.encode(&bytes[..32]);
    let token: String = bytes[32..].iter().map(|b| format!("{b:02x}")).collect();
    let (signing, signing_public_key) = signing_lines(&random(32)?)?;
    std::fs::create_dir_all(dir)?;
    let text = format!(
        "# herd secrets of cluster {cluster}: every image of the cluster is built with them, so old and new\n\
         # cards join one cluster. Keep this file private (it is git-ignored). The CLI reads api_token with\n\
         # `herd members --secrets {}`.\ncluster = \"{cluster}\"\nkey = \"{key}\"\napi_token = \"{token}\"\n{signing}",
        path.display()
    );
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    println!(
        "==> new cluster {cluster}: key, API token and signing key written to {}",
        path.display()
    );
    Ok(Secrets {
        key,
        api_token: token,
        signing_public_key,
        path,
    })
}

fn crypt_sha512(password_file: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(password_file)
        .with_context(|| format!("--password-file: cannot read {}", password_file.display()))?;
    let password = text.lines().next().unwrap_or("");
    if password.is_empty() {
        bail!(
            "--password-file {}: the first line is empty",
            password_file.display()
        );
    }
    let mut child = Command::new("openssl")
        .args(["passwd", "-6", "-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run openssl (apt-get install openssl)")?;
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(format!("{password}\n").as_bytes())?;
    let out = child.wait_with_output()?;
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !hash.starts_with("$6$") {
        bail!("openssl passwd -6 failed");
    }
    Ok(hash)
}

/// Builds the image `a` describes (what it leaves `None` takes its default: the latest Raspberry Pi OS
/// Lite 64-bit, `herd-{id:6}`, `herd-CLUSTER` in `target/herd`).
pub fn make(a: &Image) -> anyhow::Result<()> {
    check(a)?;
    let base = a.base.as_deref().unwrap_or(DEFAULT_BASE);
    crate::packages::ensure_image()?;
    let secrets = secrets(&a.cluster)?;
    let userconf = match (&a.user, &a.password_file) {
        (Some(u), Some(p)) => Some(format!("{u}:{}", crypt_sha512(p)?)),
        _ => {
            println!(
                "==> no --user: no login user is baked in (Raspberry Pi OS Lite asks for one on the \
                 console at first boot)"
            );
            None
        }
    };
    let ssh_keys = match (&a.user, &a.ssh_key) {
        (Some(u), Some(f)) => {
            let keys = std::fs::read_to_string(f)
                .with_context(|| format!("--ssh-key: cannot read {}", f.display()))?;
            if !keys
                .lines()
                .any(|l| l.starts_with("ssh-") || l.starts_with("ecdsa-") || l.starts_with("sk-"))
            {
                bail!("--ssh-key {}: no SSH public key in it", f.display());
            }
            Some((u.clone(), keys))
        }
        _ => None,
    };
    let wifi = match (&a.wifi_ssid, &a.wifi_password_file, &a.wifi_country) {
        (Some(ssid), Some(file), Some(country)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("--wifi-password-file: cannot read {}", file.display()))?;
            let passphrase = text.lines().next().unwrap_or("");
            let w = herd_image::wifi::Wifi::new(ssid, passphrase, country, a.wifi_hidden)?;
            println!(
                "==> Wi-Fi: {:?} in {}{}",
                w.ssid,
                w.country,
                if w.hidden { " (hidden)" } else { "" }
            );
            Some(w)
        }
        _ => None,
    };
    let cache_dir = crate::util::cache_dir();
    let mut packages = a.packages.clone();
    if let Some(f) = &a.packages_file {
        packages.extend(herd_image::packages::read_list(f)?);
    }
    if a.engine == crate::flags::Engine::Swarm {
        // Debian's Docker, with swarm mode, on Bookworm and Trixie alike (docs/ENGINE.md).
        packages.push("docker.io".into());
    }
    for p in &packages {
        herd_image::packages::check_name(p).map_err(|e| anyhow::anyhow!("--packages: {e}"))?;
    }
    let mut seen = std::collections::BTreeSet::new();
    packages.retain(|p| seen.insert(p.clone()));
    let packages = (!packages.is_empty()).then(|| herd_image::packages::Request {
        names: packages,
        cache: cache_dir.join("apt"),
    });
    let base = {
        use crate::base::{ensure, Suite};
        use herd_image::Arch;
        let made = match base {
            "debian" => Some((Arch::Arm64, Suite::Bookworm)),
            "debian-armhf" => Some((Arch::Armhf, Suite::Bookworm)),
            "debian-trixie" => Some((Arch::Arm64, Suite::Trixie)),
            "debian-trixie-armhf" => Some((Arch::Armhf, Suite::Trixie)),
            _ => None,
        };
        match made {
            Some((arch, suite)) => ensure(arch, suite)?.to_string_lossy().into_owned(),
            None => base.to_string(),
        }
    };
    let opts = PipelineOptions {
        base: Base::parse(&base),
        cache_dir,
        out_dir: a.out.clone().unwrap_or_else(|| root().join("target/herd")),
        name: a
            .name
            .clone()
            .unwrap_or_else(|| format!("herd-{}", a.cluster)),
        bake: BakeOptions {
            overlay: root().join("overlay"),
            values: Values {
                cluster: a.cluster.clone(),
                cluster_key: secrets.key.clone(),
                api_token: secrets.api_token.clone(),
                signing_public_key: secrets.signing_public_key.clone(),
                seeds: seeds_toml(&a.seeds),
                hostname_template: a.hostname.as_deref().unwrap_or(DEFAULT_HOSTNAME).into(),
                engine: a.engine.to_string(),
                engine_expect: engine_expect(a),
            },
            userconf,
            ssh_keys,
            wifi,
            packages,
        },
        xz: a.xz,
        checksum: a.checksum,
        url_base: a.url_base.clone(),
        imager_customisation: a.imager_customisation,
    };
    println!("==> image: base {base}");
    let summary = herd_image::pipeline::run(&opts, |arch| {
        println!(
            "==> image: the base is {} ({}); building herd for it",
            arch.name(),
            arch.agent_target()
        );
        build::build_one(arch).map_err(|e| herd_image::Error::Invalid(format!("{e:#}")))
    })?;
    println!("\n==> done. Injected into the root filesystem:");
    for (p, size) in &summary.baked.root_files {
        println!("      {p} ({size} bytes)");
    }
    for (link, target) in &summary.baked.links {
        println!("      {link} -> {target}");
    }
    println!(
        "    and into the boot partition: {}",
        summary.baked.boot_files.join(", ")
    );
    if let Some(m) = &summary.baked.packages {
        println!(
            "    packages for first boot: {} .deb files, {:.1} MB, as {}* (for {})",
            m.debs.len(),
            m.debs.iter().map(|d| d.size).sum::<u64>() as f64 / 1e6,
            herd_image::packages::FILE_PREFIX,
            m.requested.join(", ")
        );
    }
    for (step, took) in &summary.timings {
        println!("    {step}: {:.2} s", took.as_secs_f64());
    }
    println!(
        "\n    image:    {} ({:.2} GB)",
        summary.image.display(),
        summary.image_size as f64 / 1e9
    );
    if let Some(sha) = &summary.image_sha256 {
        println!("    sha256:   {sha}");
    }
    if let Some(x) = &summary.xz {
        println!("    xz:       {}", x.display());
    }
    if let Some(m) = &summary.manifest {
        println!("    manifest: {}", m.display());
    }
    println!(
        "    secrets:  {} (the CLI: herd members --node PI --secrets {})",
        secrets.path.display(),
        secrets.path.display()
    );
    println!("\n    Flash every card of the cluster with the same image:");
    println!(
        "      sudo dd if={} of=/dev/sdX bs=4M conv=fsync status=progress",
        summary.image.display()
    );
    match &summary.manifest {
        Some(m) => println!(
            "    or with Raspberry Pi Imager: rpi-imager --repo {}",
            m.display()
        ),
        None => println!(
            "    or with Raspberry Pi Imager: Choose OS > Use custom > {}\n    (to publish it for \
             Imager with checksums and a manifest, add --xz)",
            summary.image.display()
        ),
    }
    Ok(())
}

/// `cargo xtask fixture PATH [--armhf] [--old-layout]`: a small Pi-layout image made from scratch.
pub fn fixture(flags: &crate::flags::Fixture) -> anyhow::Result<()> {
    let mut f = herd_image::fixture::Fixture::default();
    if flags.armhf {
        f.arch = herd_image::Arch::Armhf;
    }
    f.aligned_2025 = !flags.old_layout;
    let path = &flags.path;
    f.build(path)?;
    println!(
        "==> {}: a {} Pi-layout test image",
        path.display(),
        f.arch.name()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{check_hostname_template, engine_expect, secrets_in, PathBuf, DEFAULT_HOSTNAME};

    #[test]
    fn flags_built_in_code_bake_an_expect_the_agent_takes() {
        let mut flags = crate::flags::Image::default();
        assert_eq!(engine_expect(&flags), 1);
        flags.engine_expect = Some(3);
        assert_eq!(engine_expect(&flags), 3);
    }
    use crate::flags::{Image, Task, Xtask};
    use clap::Parser;

    /// `cargo xtask image ARGS` as the command line reads it (clap), then checked.
    fn parse(args: &[String]) -> anyhow::Result<Image> {
        let argv = ["xtask", "image"].map(String::from).into_iter();
        let Task::Image(a) = Xtask::try_parse_from(argv.chain(args.iter().cloned()))?.task else {
            unreachable!("the image task")
        };
        super::check(&a)?;
        Ok(*a)
    }

    #[test]
    fn the_cluster_is_required_and_unknown_flags_are_named() {
        let e = format!("{:#}", parse(&[]).unwrap_err());
        assert!(e.contains("--cluster <NAME>"), "{e}");
        let e = format!(
            "{:#}",
            parse(&["--cluster".into(), "x".into(), "--xzz".into()]).unwrap_err()
        );
        assert!(e.contains("--xzz"), "{e}");
        let seeds = ["--cluster", "x", "--seeds", "a:1,b:2"].map(String::from);
        assert_eq!(parse(&seeds).unwrap().seeds, ["a:1", "b:2"]);
        let e = format!(
            "{:#}",
            parse(&["--cluster", "x", "--seeds", "a:1,b"].map(String::from)).unwrap_err()
        );
        assert!(e.contains("item 2 (\"b\")"), "{e}");
    }

    #[test]
    fn wifi_flags_go_together_and_the_country_is_required() {
        let args = |extra: &[&str]| {
            let mut v: Vec<String> = vec!["--cluster".into(), "lab".into()];
            v.extend(extra.iter().map(|s| s.to_string()));
            parse(&v).map(drop).map_err(|e| format!("{e:#}"))
        };
        let full = [
            "--wifi-ssid",
            "lab",
            "--wifi-password-file",
            "/p",
            "--wifi-country",
            "GB",
        ];
        assert_eq!(args(&full), Ok(()));
        assert!(args(&full[..4]).unwrap_err().contains("--wifi-country CC"));
        assert!(args(&["--wifi-ssid", "lab", "--wifi-country", "GB"])
            .unwrap_err()
            .contains("--wifi-password-file"));
        assert!(args(&["--wifi-country", "GB"])
            .unwrap_err()
            .contains("go with --wifi-ssid"));
        assert!(args(&["--wifi-hidden"])
            .unwrap_err()
            .contains("--wifi-ssid"));
        assert!(args(&["--url-base", "https://x/y"])
            .unwrap_err()
            .contains("--xz"));
    }

    /// `--user` is refused before anything is written when userconf-pi would refuse it at first boot
    /// (the rule and its source: `herd_image::imager::check_user_name`), and Imager's customisation is
    /// never combined with herd's own user, keys or Wi-Fi.
    #[test]
    fn user_names_and_imager_customisation_are_checked_up_front() {
        let args = |extra: &[&str]| {
            let mut v: Vec<String> = vec!["--cluster".into(), "lab".into()];
            v.extend(extra.iter().map(|s| s.to_string()));
            parse(&v).map(drop).map_err(|e| format!("{e:#}"))
        };
        assert_eq!(args(&["--user", "ops-1", "--password-file", "/p"]), Ok(()));
        for bad in ["ops_1", "_ops", "root", "Ops"] {
            let e = args(&["--user", bad, "--password-file", "/p"]).unwrap_err();
            assert!(
                e.starts_with("--user: ") && e.contains("userconf-pi"),
                "{e}"
            );
        }
        assert_eq!(args(&["--imager-customisation", "--xz"]), Ok(()));
        assert_eq!(args(&["--checksum", "--imager-customisation"]), Ok(()));
        let e = args(&["--imager-customisation"]).unwrap_err();
        assert!(e.contains("add one of them"), "{e}");
        for (extra, flag) in [
            (&["--user", "ops", "--password-file", "/p"][..], "--user"),
            (
                &[
                    "--wifi-ssid",
                    "x",
                    "--wifi-password-file",
                    "/p",
                    "--wifi-country",
                    "GB",
                ],
                "--wifi-ssid",
            ),
        ] {
            let mut v = vec!["--imager-customisation", "--xz"];
            v.extend(extra);
            let e = args(&v).unwrap_err();
            assert!(e.contains(&format!("drop {flag}")), "{e}");
        }
    }

    /// The same cases as the agent's `identity` tests: the build must refuse what the agent would.
    #[test]
    fn hostname_templates_are_checked_like_the_agent_does() {
        for good in [DEFAULT_HOSTNAME, "herd-{id:4}", "pi{id}", "node"] {
            check_hostname_template(good).unwrap();
        }
        for (bad, why) in [
            ("herd-{name}", "unknown placeholder {name}"),
            ("herd-{id:0}", "unknown placeholder {id:0}"),
            ("herd-{id:17}", "unknown placeholder {id:17}"),
            ("herd-{id", "not closed"),
            ("Herd-{id:4}", "a-z, 0-9"),
            ("herd_{id:4}", "a-z, 0-9"),
            ("-{id:4}", "not starting or ending"),
            ("", "1 to 63"),
            ("a{id}{id}{id}{id}", "1 to 63"),
        ] {
            let e = format!("{:#}", check_hostname_template(bad).unwrap_err());
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("herd-xtask-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn secrets_are_made_once_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("new");
        let a = secrets_in(&dir, "pis").unwrap();
        let mode = std::fs::metadata(&a.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = secrets_in(&dir, "pis").unwrap();
        assert_eq!(
            (&a.key, &a.api_token, &a.signing_public_key),
            (&b.key, &b.api_token, &b.signing_public_key)
        );
        assert_eq!(a.signing_public_key.len(), 44, "32 bytes in base64");
        let other = secrets_in(&dir, "other").unwrap();
        assert_ne!(other.signing_public_key, a.signing_public_key);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_from_before_the_signing_key_gets_one_and_keeps_the_rest() {
        let dir = temp_dir("old");
        let path = dir.join("pis.toml");
        let old = "# kept\ncluster = \"pis\"\nkey = \"AAAA\"\napi_token = \"t0k\"";
        std::fs::write(&path, old).unwrap();
        let s = secrets_in(&dir, "pis").unwrap();
        assert_eq!((s.key.as_str(), s.api_token.as_str()), ("AAAA", "t0k"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(old), "{text}");
        assert!(text.contains("signing_key = ") && text.contains(&s.signing_public_key));
        assert_eq!(
            secrets_in(&dir, "pis").unwrap().signing_public_key,
            s.signing_public_key
        );
        // A public half that is not the private half's is an error, not a silent fix.
        let bad = text.replace(
            &s.signing_public_key,
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        );
        std::fs::write(&path, bad).unwrap();
        let err = secrets_in(&dir, "pis").err().unwrap().to_string();
        assert!(err.contains("not the public half"), "{err}");
        assert!(!err.contains("signing_key = "), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
