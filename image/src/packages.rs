//! Debian packages baked into an image (`--packages`), for the card to install at first boot with no
//! network. The resolving is apt's own, run on the build machine against the base's state as read out of
//! the image (its dpkg status, apt sources, signing keys and apt configuration), never the build
//! machine's: apt is told where everything is through `APT_CONFIG`, which it reads before any
//! configuration of the machine it runs on. apt checks the signed indexes and each file's checksum as it
//! always does; the `.deb`s are kept in a cache outside the repository. The card's side is
//! `herd packages-apply` (the agent's `packages.rs`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::ext4::Root;
use crate::{Arch, Error, Result};

/// Room left free on the boot partition besides the packages (Imager's and cloud-init's files, a
/// firmware update).
pub const BOOT_MARGIN: u64 = 16 << 20;

/// What the build asks for: package names, as `--packages` or `--packages-file` gave them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub names: Vec<String>,
    /// apt's state and downloaded files are kept here between builds (`~/.cache/herd/apt`).
    pub cache: PathBuf,
}

pub use herd_release::packages::{Deb, Manifest, FILE_PREFIX, MANIFEST};

/// The resolved set: the manifest, and where each file is on the build machine.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub manifest: Manifest,
    pub files: Vec<PathBuf>,
    /// What each package takes once installed, bytes (its `Installed-Size`), in the manifest's order.
    pub installed: Vec<u64>,
}

impl Resolved {
    pub fn total(&self) -> u64 {
        self.manifest.debs.iter().map(|d| d.size).sum()
    }
}

/// Puts the resolved packages on a boot partition: the files, then the manifest (the card takes the
/// packages as there only once it is).
pub fn write(boot: &crate::fat::Boot, resolved: &Resolved) -> Result<()> {
    for (deb, path) in resolved.manifest.debs.iter().zip(&resolved.files) {
        let body = std::fs::read(path).map_err(crate::io(path))?;
        boot.write(&format!("{FILE_PREFIX}{}", deb.file), &body)?;
    }
    boot.write(
        MANIFEST,
        &serde_json::to_vec_pretty(&resolved.manifest).expect("json"),
    )
}

/// Reads `--packages-file`: one name a line; blank lines and `#` comments are skipped.
pub fn read_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(crate::io(path))?;
    let mut names = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        check_name(line)
            .map_err(|e| Error::Invalid(format!("{} line {}: {e}", path.display(), i + 1)))?;
        names.push(line.to_string());
    }
    Ok(names)
}

/// A Debian package name (Debian Policy 5.6.1: lower-case letters, digits, `+`, `-` and `.`, at least
/// two characters, starting with a letter or digit). Anything else would be an apt option or pattern.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    let b = name.as_bytes();
    let ok = b.len() >= 2
        && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a Debian package name (lower-case letters, digits, '+', '-' and '.', \
             starting with a letter or digit, as Debian Policy 5.6.1 says)"
        ))
    }
}

/// The base's apt state, copied out of the image into a directory of the cache.
/// It lives in `cache/roots/<arch>-<hash>/root/`: `etc/apt`, `usr/share/keyrings`,
/// `var/lib/dpkg/{status,arch}`.
struct AptRoot {
    /// `APT_CONFIG` for every apt run on this base.
    config: PathBuf,
}

/// What of the base apt reads. Keyrings outside these, named by a source's `Signed-By`, are copied too.
const APT_DIRS: [&str; 2] = ["/etc/apt", "/usr/share/keyrings"];
/// At most this much is read out of the base's apt directories (they hold text and keys: kilobytes).
const APT_DIRS_MAX: u64 = 64 << 20;

impl AptRoot {
    fn open(root: &Root, arch: Arch, cache: &Path) -> Result<AptRoot> {
        let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut total = 0u64;
        for dir in APT_DIRS {
            copy_tree(root, dir, &mut files, &mut total)?;
        }
        let status = "/var/lib/dpkg/status";
        if !root.exists(status) {
            return Err(Error::Invalid(format!(
                "the base has no {status}: it is not a Debian-based system whose packages can be \
                 resolved (--packages)"
            )));
        }
        files.insert(status.into(), root.read_resolved(status)?);
        let foreign = match root.read_resolved("/var/lib/dpkg/arch") {
            Ok(text) => String::from_utf8_lossy(&text).into_owned(),
            Err(_) => String::new(),
        };
        let has_sources = files
            .iter()
            .filter(|(p, _)| is_sources(p))
            .any(|(_, text)| {
                String::from_utf8_lossy(text).lines().any(|l| {
                    let l = l.trim_start();
                    l.starts_with("deb ")
                        || l.starts_with("deb\t")
                        || l.starts_with("deb[")
                        || l.to_ascii_lowercase().starts_with("types:")
                })
            });
        if !has_sources {
            return Err(Error::Invalid(
                "the base has no apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/): there \
                 is no archive to resolve --packages against"
                    .into(),
            ));
        }
        // Keyrings named by Signed-By elsewhere than the directories already read.
        let keyrings: Vec<String> = files
            .iter()
            .filter(|(p, _)| is_sources(p))
            .flat_map(|(_, text)| signed_by_paths(&String::from_utf8_lossy(text)))
            .filter(|p| !files.contains_key(p))
            .collect();
        for k in keyrings {
            let body = root.read_resolved(&k).map_err(|e| {
                Error::Invalid(format!(
                    "the base's apt sources name the keyring {k}, which cannot be read: {e}"
                ))
            })?;
            files.insert(k, body);
        }

        let mut hash = Sha256::new();
        hash.update(arch.name());
        for (p, body) in &files {
            hash.update(p.as_bytes());
            hash.update((body.len() as u64).to_le_bytes());
            hash.update(body);
        }
        let id: String = hash.finalize()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        prune_roots(
            &cache.join("roots"),
            std::time::SystemTime::now(),
            ROOTS_KEPT_FOR,
        );
        let dir = cache.join("roots").join(format!("{}-{id}", arch.name()));
        let top = dir.join("root");
        let _ = std::fs::remove_dir_all(&top);
        for (p, body) in &files {
            let dest = top.join(p.trim_start_matches('/'));
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(crate::io(parent))?;
            }
            let body = if is_sources(p) {
                with_keyrings_under(&String::from_utf8_lossy(body), &top).into_bytes()
            } else {
                body.clone()
            };
            std::fs::write(&dest, body).map_err(crate::io(&dest))?;
        }
        for sub in [
            "var/lib/dpkg/updates",
            "var/lib/dpkg/info",
            "etc/apt/apt.conf.d",
            "etc/apt/preferences.d",
            "etc/apt/sources.list.d",
            "etc/apt/trusted.gpg.d",
        ] {
            let d = top.join(sub);
            std::fs::create_dir_all(&d).map_err(crate::io(&d))?;
        }
        let state = dir.join("state");
        let archives = cache.join("archives");
        for d in [state.join("lists/partial"), archives.join("partial")] {
            std::fs::create_dir_all(&d).map_err(crate::io(&d))?;
        }
        let mut arches = vec![arch.name().to_string()];
        arches.extend(
            foreign
                .split_whitespace()
                .filter(|a| *a != arch.name() && a.bytes().all(|b| b.is_ascii_alphanumeric()))
                .map(String::from),
        );
        let config = dir.join("apt.conf");
        let conf = format!(
            "// Written by herd: apt reads the base's state and configuration, none of this machine's.\n\
             Dir \"{root}/\";\n\
             Dir::State \"{state}/\";\n\
             Dir::State::status \"{root}/var/lib/dpkg/status\";\n\
             Dir::Cache \"{cache}/\";\n\
             Dir::Cache::archives \"{archives}/\";\n\
             Dir::Cache::pkgcache \"\";\n\
             Dir::Cache::srcpkgcache \"\";\n\
             Dir::Log \"{dir}/log/\";\n\
             APT::Architecture \"{arch}\";\n\
             APT::Architectures {{ {arches} }};\n\
             Debug::NoLocking \"true\";\n\
             APT::Sandbox::User \"root\";\n\
             Acquire::Languages \"none\";\n\
             Dpkg::Use-Pty \"false\";\n",
            root = top.display(),
            state = state.display(),
            cache = dir.display(),
            archives = archives.display(),
            dir = dir.display(),
            arch = arch.name(),
            arches = arches
                .iter()
                .map(|a| format!("\"{a}\";"))
                .collect::<Vec<_>>()
                .join(" "),
        );
        std::fs::write(&config, conf).map_err(crate::io(&config))?;
        Ok(AptRoot { config })
    }

    fn apt_get(&self) -> Command {
        let mut c = Command::new("apt-get");
        c.env("APT_CONFIG", &self.config)
            .env("LC_ALL", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        c
    }
}

/// Copies the regular files under `dir` (following symlinks, as apt does) into `files`.
/// A base's apt state (tens of MB with its lists) is kept this long after its last use: each base, or
/// each change to one's sources and installed packages, makes another.
const ROOTS_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Removes the apt states under `roots` not used for `keep` (a state's directory is rewritten, so its
/// time set, at every use). Best effort: what cannot be read or removed stays.
fn prune_roots(roots: &Path, now: std::time::SystemTime, keep: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(roots) else {
        return;
    };
    for e in entries.flatten() {
        let used = e
            .path()
            .join("root")
            .metadata()
            .or_else(|_| e.metadata())
            .and_then(|m| m.modified());
        if used.is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > keep)) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Downloaded packages are kept this long after a build last used one (a base's packages change with its
/// point releases, so old versions would pile up for ever).
const DEBS_KEPT_FOR: std::time::Duration = ROOTS_KEPT_FOR;

/// Removes the `.deb` files under `archives` no build used for `keep` (each build marks the files it
/// takes). Best effort, like [`prune_roots`].
fn prune_debs(archives: &Path, now: std::time::SystemTime, keep: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(archives) else {
        return;
    };
    for e in entries.flatten() {
        let is_deb = e.path().extension().is_some_and(|x| x == "deb");
        let used = e.metadata().and_then(|m| m.modified());
        if is_deb && used.is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > keep)) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn copy_tree(
    root: &Root,
    dir: &str,
    files: &mut BTreeMap<String, Vec<u8>>,
    total: &mut u64,
) -> Result<()> {
    for name in root.list(dir)? {
        let path = format!("{dir}/{name}");
        if name.contains(|c: char| c.is_whitespace() || c == '"' || c.is_control()) {
            continue;
        }
        let real = match root.resolve(&path) {
            Ok(r) => r,
            // A dangling link: apt would not read it either.
            Err(_) => continue,
        };
        let kind = match root.stat(&real) {
            Ok(s) => s.kind,
            Err(_) => continue,
        };
        if kind == "directory" {
            copy_tree(root, &path, files, total)?;
        } else if kind == "regular" {
            let body = root.read(&real)?;
            *total += body.len() as u64;
            if *total > APT_DIRS_MAX {
                return Err(Error::Invalid(format!(
                    "the base's {dir} holds over {} MiB: not apt's configuration and keys",
                    APT_DIRS_MAX >> 20
                )));
            }
            files.insert(path, body);
        }
    }
    Ok(())
}

fn is_sources(path: &str) -> bool {
    path == "/etc/apt/sources.list"
        || (path.starts_with("/etc/apt/sources.list.d/")
            && (path.ends_with(".list") || path.ends_with(".sources")))
}

/// The absolute keyring paths a sources file names (`[signed-by=…]` on a one-line entry, `Signed-By:`
/// in a deb822 one; a key given inline or by fingerprint names no file).
fn signed_by_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = field_value(line) {
            out.extend(
                v.split_whitespace()
                    .filter(|p| p.starts_with('/'))
                    .map(String::from),
            );
        }
        if let Some(opts) = line
            .strip_prefix("deb")
            .and_then(|r| r.split_once('['))
            .and_then(|(_, r)| r.split_once(']'))
            .map(|(o, _)| o)
        {
            for o in opts.split_whitespace() {
                if let Some(v) = o.strip_prefix("signed-by=") {
                    out.extend(
                        v.split(',')
                            .filter(|p| p.starts_with('/'))
                            .map(String::from),
                    );
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The value of a deb822 `Signed-By:` field (the field name is case-insensitive).
fn field_value(line: &str) -> Option<&str> {
    let (k, v) = line.split_once(':')?;
    k.trim()
        .eq_ignore_ascii_case("signed-by")
        .then_some(v.trim())
}

/// `text` with every absolute keyring path moved under `top` (where the base's copy is).
fn with_keyrings_under(text: &str, top: &Path) -> String {
    let top = top.display().to_string();
    let moved = |p: &str| {
        if p.starts_with('/') {
            format!("{top}{p}")
        } else {
            p.to_string()
        }
    };
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(v) = field_value(trimmed) {
            let key = trimmed.split_once(':').map(|(k, _)| k).unwrap_or_default();
            let paths: Vec<String> = v.split_whitespace().map(moved).collect();
            out.push_str(&format!("{key}: {}\n", paths.join(" ")));
            continue;
        }
        let mut rewritten = None;
        if trimmed.starts_with("deb") {
            if let Some((before, rest)) = line.split_once('[') {
                if let Some((opts, after)) = rest.split_once(']') {
                    let opts: Vec<String> = opts
                        .split_whitespace()
                        .map(|o| match o.strip_prefix("signed-by=") {
                            Some(v) => format!(
                                "signed-by={}",
                                v.split(',').map(moved).collect::<Vec<_>>().join(",")
                            ),
                            None => o.to_string(),
                        })
                        .collect();
                    rewritten = Some(format!("{before}[{}]{after}", opts.join(" ")));
                }
            }
        }
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Runs apt, passing its lines to `progress` as they come, and returns them all; a failure is an error
/// that quotes apt's own reasons.
fn run_apt(what: &str, mut cmd: Command, progress: &mut dyn FnMut(&str)) -> Result<Vec<String>> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        Error::Invalid(format!(
            "{what}: cannot run apt-get ({e}). --packages resolves with apt: on Debian or Ubuntu it is \
             there; elsewhere (macOS) build the image in a Debian container or VM"
        ))
    })?;
    let stderr = child.stderr.take().expect("piped");
    let errs = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(|l| l.ok())
            .collect::<Vec<_>>()
    });
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(|l| l.ok())
    {
        progress(&line);
        lines.push(line);
    }
    let status = child.wait().map_err(|e| Error::Tool {
        what: what.into(),
        output: e.to_string(),
    })?;
    let errs = errs.join().unwrap_or_default();
    for e in &errs {
        progress(e);
    }
    if !status.success() {
        let why: Vec<&String> = lines
            .iter()
            .chain(&errs)
            .filter(|l| {
                l.starts_with("E: ")
                    || l.starts_with(' ')
                    || l.contains("has no installation candidate")
                    || l.contains("is not available")
                    || l.contains("unmet dependencies")
            })
            .collect();
        let why = if why.is_empty() {
            errs.iter().collect()
        } else {
            why
        };
        return Err(Error::Invalid(format!(
            "{what}: apt says:\n{}",
            why.iter()
                .map(|l| format!("  {}", l.trim_end()))
                .collect::<Vec<_>>()
                .join("\n")
        )));
    }
    lines.extend(errs);
    Ok(lines)
}

/// One `Inst` line of `apt-get -s install`: `Inst NAME [OLD] (VERSION RELEASES [ARCH])`.
fn parse_inst(line: &str) -> Option<(String, String, String)> {
    let rest = line.strip_prefix("Inst ")?;
    let (name, rest) = rest.split_once(' ')?;
    let rest = rest.trim_start();
    let rest = match rest.strip_prefix('[') {
        Some(r) => r.split_once(']')?.1.trim_start(),
        None => rest,
    };
    let inner = rest.strip_prefix('(')?.split_once(')')?.0;
    let version = inner.split_whitespace().next()?;
    let arch = inner
        .rsplit_once('[')
        .and_then(|(_, a)| a.strip_suffix(']'))
        .unwrap_or_default();
    let name = name.split(':').next().unwrap_or(name);
    Some((name.to_string(), version.to_string(), arch.to_string()))
}

/// The name apt gives a downloaded package in its archives directory: `NAME_VERSION_ARCH.deb`, each part
/// with `_`, `:` and `%` (and anything not printable ASCII) written as `%XX` (apt's `QuoteString`, so an
/// epoch's colon is `%3a`). Listing what apt is about to download (`--print-uris`) would leave out what
/// its cache already holds.
fn archive_name(package: &str, version: &str, arch: &str) -> String {
    let quote = |s: &str| {
        s.bytes()
            .map(|b| {
                if b"_:%".contains(&b) || !(0x21..0x7f).contains(&b) {
                    format!("%{b:02x}")
                } else {
                    (b as char).to_string()
                }
            })
            .collect::<String>()
    };
    format!("{}_{}_{}.deb", quote(package), quote(version), quote(arch))
}

/// Resolves `request` against the base in `root` (its architecture `arch`) and downloads what it lacks;
/// `progress` gets apt's lines as they come. Nothing is written outside `request.cache`.
pub fn resolve(
    root: &Root,
    arch: Arch,
    request: &Request,
    progress: &mut dyn FnMut(&str),
) -> Result<Resolved> {
    if request.names.is_empty() {
        return Err(Error::Invalid("--packages: no package named".into()));
    }
    for n in &request.names {
        check_name(n).map_err(|e| Error::Invalid(format!("--packages: {e}")))?;
    }
    let apt = AptRoot::open(root, arch, &request.cache)?;
    let names = request.names.join(", ");

    let mut update = apt.apt_get();
    update.args(["-q", "update"]);
    let lines = run_apt(
        &format!("reading the base's apt sources (apt-get update, for {names})"),
        update,
        progress,
    )?;
    // apt-get update exits 0 when a source fails to download or verify, with W: and E: lines.
    if let Some(bad) = lines
        .iter()
        .find(|l| l.starts_with("E: ") || l.starts_with("Err:") || l.contains("NO_PUBKEY"))
    {
        return Err(Error::Invalid(format!(
            "reading the base's apt sources (apt-get update, for {names}): {bad}"
        )));
    }

    // What would be installed, in apt's order, and whether anything installed would go.
    let mut sim = apt.apt_get();
    sim.args(["-q", "-s", "install", "--"]).args(&request.names);
    let plan = run_apt(
        &format!("resolving {names} against the base"),
        sim,
        &mut |_| {},
    )
    .map_err(|e| match e {
        Error::Invalid(m) if m.contains("Unable to locate package") => Error::Invalid(format!(
            "{m}\n(a package apt cannot locate is in none of the base's apt sources for {}: check \
             its name, and that it is built for {} in the base's release)",
            arch.name(),
            arch.name()
        )),
        e => e,
    })?;
    let removed: Vec<&str> = plan
        .iter()
        .filter_map(|l| l.strip_prefix("Remv "))
        .map(|r| r.split_whitespace().next().unwrap_or(r))
        .collect();
    if !removed.is_empty() {
        return Err(Error::Invalid(format!(
            "{names}: installing would remove {} from the base (a conflict); apt says:\n{}",
            removed.join(", "),
            plan.iter()
                .filter(|l| !l.starts_with("Inst ")
                    && !l.starts_with("Conf ")
                    && !l.starts_with("Remv "))
                .map(|l| format!("  {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        )));
    }
    let inst: Vec<(String, String, String)> = plan.iter().filter_map(|l| parse_inst(l)).collect();
    if inst.is_empty() {
        progress(&format!("{names}: already installed on the base"));
        return Ok(Resolved {
            manifest: Manifest {
                requested: request.names.clone(),
                debs: Vec::new(),
            },
            files: Vec::new(),
            installed: Vec::new(),
        });
    }

    // The download: apt checks each file against the signed index, a cached one too.
    let mut download = apt.apt_get();
    download
        .args(["-q", "-y", "--download-only", "install", "--"])
        .args(&request.names);
    run_apt(&format!("downloading {names}"), download, progress)?;

    let archives = request.cache.join("archives");
    let mut debs = Vec::new();
    let mut files = Vec::new();
    let mut installed = Vec::new();
    for (package, version, deb_arch) in inst {
        let file = archive_name(&package, &version, &deb_arch);
        let path = archives.join(&file);
        let body = std::fs::read(&path).map_err(crate::io(&path))?;
        debs.push(Deb {
            package,
            version,
            arch: deb_arch,
            size: body.len() as u64,
            sha256: hex(&Sha256::digest(&body)),
            file,
        });
        let deb = debs.last().expect("just pushed");
        if !deb.file_is_plain() {
            return Err(Error::Tool {
                what: format!("downloading {names}"),
                output: format!("apt named the file of {} {:?}", deb.package, deb.file),
            });
        }
        installed.push(installed_size(&path)?);
        // Marked used now (apt leaves a file it already has untouched): what no build used for
        // DEBS_KEPT_FOR is pruned below.
        let _ = std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        files.push(path);
    }
    prune_debs(&archives, std::time::SystemTime::now(), DEBS_KEPT_FOR);
    let total: u64 = debs.iter().map(|d| d.size).sum();
    progress(&format!(
        "{} packages to bake ({:.1} MB), for {names}",
        debs.len(),
        total as f64 / 1e6
    ));
    Ok(Resolved {
        manifest: Manifest {
            requested: request.names.clone(),
            debs,
        },
        files,
        installed,
    })
}

/// What a package takes once installed: its control file's `Installed-Size` (KiB, Debian Policy 5.6.20),
/// read by dpkg-deb, which is on every machine that has apt.
fn installed_size(deb: &Path) -> Result<u64> {
    let out = Command::new("dpkg-deb")
        .arg("--field")
        .arg(deb)
        .arg("Installed-Size")
        .output()
        .map_err(|e| {
            Error::Invalid(format!(
                "dpkg-deb (the dpkg package), to read {}: {e}",
                deb.display()
            ))
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.trim().parse::<u64>() {
        Ok(kib) if out.status.success() => Ok(kib * 1024),
        _ => Err(Error::Tool {
            what: format!("dpkg-deb --field {} Installed-Size", deb.display()),
            output: format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
        }),
    }
}

/// What dpkg on the base has installed: (package, architecture) → version, from its status file.
pub fn installed_on(root: &Root) -> Result<BTreeMap<(String, String), String>> {
    let status = root.read_resolved("/var/lib/dpkg/status")?;
    let mut out = BTreeMap::new();
    for stanza in String::from_utf8_lossy(&status).split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(':'))
                    .map(str::trim)
            })
        };
        if let (Some(p), Some(v), Some(a), Some(st)) = (
            field("Package"),
            field("Version"),
            field("Architecture"),
            field("Status"),
        ) {
            if st.ends_with(" installed") {
                out.insert((p.to_string(), a.to_string()), v.to_string());
            }
        }
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn apt_states_unused_for_a_month_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let now = std::time::SystemTime::now();
        let day = std::time::Duration::from_secs(24 * 3600);
        for (name, age) in [("arm64-old", 31), ("arm64-recent", 2), ("armhf-new", 0)] {
            let root = dir.path().join(name).join("root");
            std::fs::create_dir_all(&root).unwrap();
            std::fs::File::open(&root)
                .unwrap()
                .set_modified(now - day * age)
                .unwrap();
        }
        super::prune_roots(dir.path(), now, super::ROOTS_KEPT_FOR);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["arm64-recent", "armhf-new"]);
    }

    #[test]
    fn downloaded_packages_unused_for_a_month_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let now = std::time::SystemTime::now();
        let day = std::time::Duration::from_secs(24 * 3600);
        for (name, age) in [
            ("nginx-light_1.26_arm64.deb", 40),
            ("docker.io_26.1_arm64.deb", 3),
            ("lock", 90),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, b"x").unwrap();
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(now - day * age)
                .unwrap();
        }
        std::fs::create_dir(dir.path().join("partial")).unwrap();
        super::prune_debs(dir.path(), now, super::DEBS_KEPT_FOR);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["docker.io_26.1_arm64.deb", "lock", "partial"]);
    }

    use super::*;

    #[test]
    fn package_names_are_debian_policy_names() {
        for ok in ["nginx-light", "docker.io", "libstdc++6", "0ad", "g++"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a",
            "Nginx",
            "-o",
            "nginx=1.2",
            "a b",
            "foo:arm64",
            "pkg/",
            "?name",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keyrings_named_by_sources_move_under_the_copy() {
        let one_line =
            "deb [arch=arm64 signed-by=/usr/share/keyrings/raspberrypi-archive-keyring.gpg] \
                        http://archive.raspberrypi.com/debian/ bookworm main\n";
        assert_eq!(
            signed_by_paths(one_line),
            ["/usr/share/keyrings/raspberrypi-archive-keyring.gpg"]
        );
        let moved = with_keyrings_under(one_line, Path::new("/c/root"));
        assert!(moved.contains(
            "[arch=arm64 signed-by=/c/root/usr/share/keyrings/raspberrypi-archive-keyring.gpg]"
        ));
        assert!(moved.contains("http://archive.raspberrypi.com/debian/ bookworm main"));
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian/\nSuites: trixie\n\
                      Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.pgp\n";
        assert_eq!(
            signed_by_paths(deb822),
            ["/usr/share/keyrings/debian-archive-keyring.pgp"]
        );
        assert!(with_keyrings_under(deb822, Path::new("/c/root"))
            .contains("Signed-By: /c/root/usr/share/keyrings/debian-archive-keyring.pgp\n"));
        // A fingerprint names no file and stays as it is.
        let fpr = "deb [signed-by=6ED0E7B82643E131] http://deb.debian.org/debian bookworm main\n";
        assert!(signed_by_paths(fpr).is_empty());
        assert_eq!(with_keyrings_under(fpr, Path::new("/c")), fpr);
    }

    #[test]
    fn apt_lines_parse() {
        assert_eq!(
            parse_inst("Inst nginx (1.22.1-9+deb12u9 Debian:12.15/oldstable [arm64])"),
            Some(("nginx".into(), "1.22.1-9+deb12u9".into(), "arm64".into()))
        );
        assert_eq!(
            parse_inst(
                "Inst libc6 [2.36-9+deb12u10] (2.36-9+deb12u14 Debian:12.15/oldstable [arm64])"
            ),
            Some(("libc6".into(), "2.36-9+deb12u14".into(), "arm64".into()))
        );
        assert_eq!(
            parse_inst("Inst libnginx-mod-http-echo (1:0.63-4 Debian:12.15/oldstable [arm64])"),
            Some((
                "libnginx-mod-http-echo".into(),
                "1:0.63-4".into(),
                "arm64".into()
            ))
        );
        // As apt names them in its archives (seen: `libcap2_1%3a2.66-4+deb12u3+b1_arm64.deb`).
        assert_eq!(
            archive_name("libcap2", "1:2.66-4+deb12u3+b1", "arm64"),
            "libcap2_1%3a2.66-4+deb12u3+b1_arm64.deb"
        );
        assert_eq!(
            archive_name("nginx-common", "1.26.3-3+deb13u10", "all"),
            "nginx-common_1.26.3-3+deb13u10_all.deb"
        );
        assert_eq!(parse_inst("Conf nginx (1.22)"), None);
    }

    #[test]
    fn a_packages_file_names_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("list");
        std::fs::write(&f, "# web\nnginx-light\n\ndocker.io # engine\nBad Name\n").unwrap();
        let e = read_list(&f).unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains("Bad Name"), "{e}");
        std::fs::write(&f, "# web\nnginx-light\n\ndocker.io # engine\n").unwrap();
        assert_eq!(read_list(&f).unwrap(), ["nginx-light", "docker.io"]);
    }
}
