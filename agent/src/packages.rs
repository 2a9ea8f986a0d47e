//! The card's side of `cargo xtask image --packages`: at boot, `herd-packages.service` (root) runs `herd
//! packages-apply`, which installs the `.deb`s the image carries on its boot partition with the card's
//! own apt, offline, then frees the space. Every file is checked against the manifest first (a damaged
//! card says so instead of installing half a set). A failure is logged, written to the status file the
//! agent reads into its health, and retried at the next boot; a dpkg left half-configured (a power cut
//! mid-install) is finished with `dpkg --configure -a` before anything else, and said.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use herd_release::packages::{Manifest, FILE_PREFIX, MANIFEST, MANIFEST_MAX};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where a card mounts its boot partition, whose top directory holds the packages.
pub const BOOT: &str = "/boot/firmware";
/// Where the outcome is kept, readable by the agent (no secret in it).
pub const STATUS: &str = "/var/lib/herd-packages/status.json";
/// apt waits this long for another apt (unattended-upgrades) to let go of dpkg's lock.
const LOCK_TIMEOUT_S: u32 = 600;

/// How the last attempt went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Installed,
    Failed,
}

/// The status file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub outcome: Outcome,
    /// The packages asked for at build time.
    pub requested: Vec<String>,
    /// Attempts so far (one a boot until it works).
    pub attempts: u32,
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// apt's or dpkg's reasons, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Status {
    /// Reads a status file (a regular file of at most 64 KiB); `None` when there is none or it is not
    /// one.
    pub fn read(path: &Path) -> Option<Status> {
        let body = crate::files::read_state(path, 64 << 10).ok()??;
        serde_json::from_slice(&body).ok()
    }
}

/// Where things are and which programs do the work (the card's `apt-get`, `dpkg`, `dpkg-query`).
#[derive(Debug, Clone)]
pub struct Setup {
    pub dir: PathBuf,
    pub status: PathBuf,
    pub apt_get: PathBuf,
    pub dpkg: PathBuf,
    pub dpkg_query: PathBuf,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            dir: BOOT.into(),
            status: STATUS.into(),
            apt_get: "apt-get".into(),
            dpkg: "dpkg".into(),
            dpkg_query: "dpkg-query".into(),
        }
    }
}

/// Installs what the card carries, if anything: `Ok(None)` when there is nothing to do.
pub fn apply(setup: &Setup) -> anyhow::Result<Option<Status>> {
    let manifest_path = setup.dir.join(MANIFEST);
    if !manifest_path.exists() {
        return Ok(None);
    }
    let manifest = read_manifest(&manifest_path)?;
    let attempts = Status::read(&setup.status)
        .filter(|s| s.outcome == Outcome::Failed)
        .map_or(0, |s| s.attempts)
        + 1;
    let mut status = Status {
        outcome: Outcome::Failed,
        requested: manifest.requested.clone(),
        attempts,
        at: now(),
        error: None,
    };
    match install(setup, &manifest) {
        Ok(()) => {
            status.outcome = Outcome::Installed;
            write_status(&setup.status, &status)?;
            log(&format!(
                "installed {} ({} files), attempt {attempts}; freeing the boot partition",
                manifest.requested.join(", "),
                manifest.debs.len()
            ));
            // The manifest first: a power cut from here on leaves files nobody will install again.
            std::fs::remove_file(&manifest_path)
                .with_context(|| format!("cannot remove {}", manifest_path.display()))?;
            for deb in &manifest.debs {
                let _ = std::fs::remove_file(deb_path(setup, &deb.file));
            }
            Ok(Some(status))
        }
        Err(e) => {
            let mut why = format!("{e:#}");
            if let Some(left) = audit(setup) {
                why.push_str(&format!(
                    "\ndpkg left packages unfinished (the next boot runs dpkg --configure -a first):\n{left}"
                ));
            }
            status.error = Some(why.clone());
            write_status(&setup.status, &status)?;
            bail!(
                "installing {} failed (attempt {attempts}; tried again at the next boot): {why}",
                manifest.requested.join(", ")
            )
        }
    }
}

/// Where a package's file is on the card.
fn deb_path(setup: &Setup, file: &str) -> PathBuf {
    setup.dir.join(format!("{FILE_PREFIX}{file}"))
}

fn read_manifest(path: &Path) -> anyhow::Result<Manifest> {
    let mut text = String::new();
    std::fs::File::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .take(MANIFEST_MAX + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if text.len() as u64 > MANIFEST_MAX {
        bail!("{}: larger than {MANIFEST_MAX} bytes", path.display());
    }
    let manifest: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a manifest", path.display()))?;
    if let Some(bad) = manifest.debs.iter().find(|d| !d.file_is_plain()) {
        bail!(
            "{}: {:?} is not a plain .deb name",
            path.display(),
            bad.file
        );
    }
    Ok(manifest)
}

fn install(setup: &Setup, manifest: &Manifest) -> anyhow::Result<()> {
    // Every file whole before anything is touched.
    for deb in &manifest.debs {
        let path = deb_path(setup, &deb.file);
        let body = std::fs::read(&path).with_context(|| {
            format!(
                "{} ({} {}) is missing: the boot partition was changed since the image was built",
                path.display(),
                deb.package,
                deb.version
            )
        })?;
        let sha: String = Sha256::digest(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if body.len() as u64 != deb.size || sha != deb.sha256 {
            bail!(
                "{} ({} {}) is damaged ({} bytes, sha256 {sha}; the image had {} bytes, sha256 {}): \
                 flash the card again",
                path.display(),
                deb.package,
                deb.version,
                body.len(),
                deb.size,
                deb.sha256
            );
        }
    }
    if let Some(left) = audit(setup) {
        log(&format!(
            "dpkg was interrupted before (a power cut?); finishing it with dpkg --configure -a:\n{left}"
        ));
        run(
            "dpkg --configure -a",
            Command::new(&setup.dpkg).args(["--configure", "-a"]),
        )?;
    }
    if manifest.debs.is_empty() {
        return Ok(());
    }
    // The card's apt orders and configures them; with no source list and empty lists it knows no archive
    // to download from. (`--no-download` would be the same, but apt 3.0 then fails on local files:
    // "Pathname to install is not absolute", seen in the Trixie VM.)
    let lists = tempfile::tempdir().context("cannot make a directory for apt's empty lists")?;
    let mut apt = Command::new(&setup.apt_get);
    apt.args(["install", "--yes"])
        .arg(format!("-oDPkg::Lock::Timeout={LOCK_TIMEOUT_S}"))
        .args([
            "-oDir::Etc::SourceList=/dev/null",
            "-oDir::Etc::SourceParts=/dev/null",
            "-oDpkg::Options::=--force-confdef",
            "-oDpkg::Options::=--force-confold",
            "-oDpkg::Use-Pty=false",
        ])
        .arg(format!("-oDir::State::Lists={}", lists.path().display()))
        .arg("--")
        .args(manifest.debs.iter().map(|d| deb_path(setup, &d.file)))
        .env("DEBIAN_FRONTEND", "noninteractive");
    run("apt-get install", &mut apt)?;
    // What was asked for is installed, not merely unpacked.
    let mut query = Command::new(&setup.dpkg_query);
    query
        .args(["-W", "-f=${Package} ${db:Status-Status}\n", "--"])
        .args(&manifest.requested);
    let out = query
        .stdin(Stdio::null())
        .output()
        .context("cannot run dpkg-query")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&String> = manifest
        .requested
        .iter()
        .filter(|name| {
            !text
                .lines()
                .any(|l| l.split_once(' ') == Some((name.as_str(), "installed")))
        })
        .collect();
    if !missing.is_empty() {
        bail!(
            "apt-get said it was done, but dpkg does not list {} as installed",
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Runs a program, its output going to the journal line by line; a failure quotes its error lines.
fn run(what: &str, cmd: &mut Command) -> anyhow::Result<()> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("cannot run {what}"))?;
    let stderr = child.stderr.take().expect("piped");
    let errs = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .inspect(|l| eprintln!("  {l}"))
            .collect::<Vec<_>>()
    });
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
    {
        eprintln!("  {line}");
        tail.push(line);
        if tail.len() > 20 {
            tail.remove(0);
        }
    }
    let status = child.wait().with_context(|| format!("{what}: wait"))?;
    let errs = errs.join().unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let mut why: Vec<&String> = errs
        .iter()
        .filter(|l| l.starts_with("E: ") || l.starts_with("dpkg: "))
        .collect();
    if why.is_empty() {
        why = errs.iter().chain(&tail).collect();
    }
    let why: Vec<&String> = why.into_iter().rev().take(10).rev().collect();
    bail!(
        "{what} failed ({status}):\n{}",
        why.iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// What `dpkg --audit` finds unfinished, if anything.
fn audit(setup: &Setup) -> Option<String> {
    let out = Command::new(&setup.dpkg)
        .arg("--audit")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn write_status(path: &Path, status: &Status) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
    }
    crate::files::write_atomic(path, &serde_json::to_string_pretty(status)?)
}

fn log(line: &str) {
    eprintln!("herd packages-apply: {line}");
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_release::packages::Deb;
    use std::os::unix::fs::PermissionsExt;

    /// A card's boot directory with one package, and stand-ins for apt and dpkg that record their
    /// arguments (apt's real run is the boot-and-join test's, in the VMs).
    struct Card {
        _dir: tempfile::TempDir,
        setup: Setup,
        calls: PathBuf,
    }

    fn script(path: &Path, body: &str) {
        std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn card(apt: &str, audit: &str) -> Card {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("boot");
        std::fs::create_dir(&boot).unwrap();
        let body = b"!<arch>\nnot really a deb";
        std::fs::write(boot.join("herd-packages.hello_1.0-1_arm64.deb"), body).unwrap();
        let manifest = Manifest {
            requested: vec!["hello".into()],
            debs: vec![Deb {
                package: "hello".into(),
                version: "1.0-1".into(),
                arch: "arm64".into(),
                file: "hello_1.0-1_arm64.deb".into(),
                size: body.len() as u64,
                sha256: Sha256::digest(body)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
            }],
        };
        std::fs::write(boot.join(MANIFEST), serde_json::to_vec(&manifest).unwrap()).unwrap();
        let calls = dir.path().join("calls");
        let bin = |n: &str| dir.path().join(n);
        script(
            &bin("apt-get"),
            &format!("echo apt-get \"$@\" >> {}\n{apt}", calls.display()),
        );
        script(
            &bin("dpkg"),
            &format!(
                "echo dpkg \"$@\" >> {c}\nif [ \"$1\" = --audit ]; then {audit}; fi",
                c = calls.display()
            ),
        );
        script(&bin("dpkg-query"), "echo 'hello installed'");
        let setup = Setup {
            dir: boot,
            status: dir.path().join("state/status.json"),
            apt_get: bin("apt-get"),
            dpkg: bin("dpkg"),
            dpkg_query: bin("dpkg-query"),
        };
        Card {
            _dir: dir,
            setup,
            calls,
        }
    }

    #[test]
    fn installed_packages_free_the_boot_partition_and_say_so() {
        let c = card("exit 0", "true");
        let s = apply(&c.setup).unwrap().unwrap();
        assert_eq!(s.outcome, Outcome::Installed);
        assert_eq!(
            Status::read(&c.setup.status).unwrap().outcome,
            Outcome::Installed
        );
        assert!(
            std::fs::read_dir(&c.setup.dir).unwrap().next().is_none(),
            "the files are removed"
        );
        let calls = std::fs::read_to_string(&c.calls).unwrap();
        // Offline: no source list, the files by path.
        assert!(calls.contains("install --yes"), "{calls}");
        assert!(
            calls.contains("-oDir::Etc::SourceList=/dev/null"),
            "{calls}"
        );
        assert!(
            calls.contains("boot/herd-packages.hello_1.0-1_arm64.deb"),
            "{calls}"
        );
        // Nothing left to do at the next boot.
        assert!(apply(&c.setup).unwrap().is_none());
    }

    #[test]
    fn a_failed_install_is_kept_counted_and_retried() {
        let c = card(
            "echo 'E: Sub-process /usr/bin/dpkg returned an error code (1)' >&2; exit 100",
            "echo ' hello                package is in a very bad inconsistent state'",
        );
        let e = format!("{:#}", apply(&c.setup).unwrap_err());
        assert!(
            e.contains("attempt 1") && e.contains("E: Sub-process"),
            "{e}"
        );
        let s = Status::read(&c.setup.status).unwrap();
        assert_eq!((s.outcome, s.attempts), (Outcome::Failed, 1));
        assert!(s.error.unwrap().contains("dpkg --configure -a first"));
        assert!(
            c.setup.dir.join(MANIFEST).exists(),
            "kept for the next boot"
        );
        // The next boot finishes dpkg's work first, then tries again.
        let e = format!("{:#}", apply(&c.setup).unwrap_err());
        assert!(e.contains("attempt 2"), "{e}");
        let calls = std::fs::read_to_string(&c.calls).unwrap();
        assert!(calls.contains("dpkg --configure -a"), "{calls}");
    }

    #[test]
    fn a_damaged_file_is_refused_before_apt_runs() {
        let c = card("exit 0", "true");
        std::fs::write(
            c.setup.dir.join("herd-packages.hello_1.0-1_arm64.deb"),
            b"flipped",
        )
        .unwrap();
        let e = format!("{:#}", apply(&c.setup).unwrap_err());
        assert!(
            e.contains("is damaged") && e.contains("flash the card again"),
            "{e}"
        );
        assert!(!std::fs::read_to_string(&c.calls)
            .unwrap_or_default()
            .contains("apt-get"));
        // A name that is not a plain file name is refused too.
        let m = c.setup.dir.join(MANIFEST);
        let text = std::fs::read_to_string(&m)
            .unwrap()
            .replace("hello_1.0-1_arm64.deb", "../etc/passwd.deb");
        std::fs::write(&m, text).unwrap();
        let e = format!("{:#}", apply(&c.setup).unwrap_err());
        assert!(e.contains("not a plain .deb name"), "{e}");
    }

    #[test]
    fn installed_means_dpkg_lists_it() {
        let c = card("exit 0", "true");
        script(&c.setup.dpkg_query, "echo 'hello half-configured'");
        let e = format!("{:#}", apply(&c.setup).unwrap_err());
        assert!(e.contains("does not list hello as installed"), "{e}");
    }
}
