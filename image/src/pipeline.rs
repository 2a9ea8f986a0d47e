//! The whole image job: get the base (local `.img`, `.img.xz` or URL, downloaded once with its published
//! checksum checked and cached), copy it (sparse, reflinked where the filesystem can), bake herd into the
//! copy, and write the outputs: the `.img`; with `xz`, the `.img.xz`, both checksums and a Raspberry Pi
//! Imager manifest, all from one pass (the hashing rides along with the compression); with `checksum`
//! alone, the `.img.sha256` and a manifest for the raw image. Everything is written to temporary names
//! and renamed at the end, so a failure leaves no half-written output behind; the base is only ever read.
//!
//! Why the checksum is not in the default run: it is one sequential SHA-256 pass over the whole image
//! (about 1.5 GB/s at best, with SHA-NI), which costs four times the copy itself and buys nothing for
//! `dd` or Imager's own verification; publishing (`xz`) needs it, and there it is free.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::bake::{finish, prepare, BakeOptions, Baked};
use crate::{Arch, Error, Result};

/// Where the base image comes from.
#[derive(Debug, Clone)]
pub enum Base {
    File(PathBuf),
    Url(String),
}

impl Base {
    pub fn parse(s: &str) -> Base {
        if s.contains("://") {
            Base::Url(s.to_string())
        } else {
            Base::File(PathBuf::from(s))
        }
    }
}

/// The latest Raspberry Pi OS Lite (64-bit); redirects to the newest `.img.xz`.
pub const DEFAULT_BASE: &str = "https://downloads.raspberrypi.com/raspios_lite_arm64_latest";

#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub base: Base,
    /// Where downloads are kept between runs.
    pub cache_dir: PathBuf,
    pub out_dir: PathBuf,
    /// File stem of the outputs, e.g. `herd-lab`.
    pub name: String,
    pub bake: BakeOptions,
    /// Also write a multi-threaded `.img.xz`, the checksums and an Imager manifest pointing at it.
    pub xz: bool,
    /// Write the `.img.sha256` and an Imager manifest for the raw image (implied by `xz`).
    pub checksum: bool,
    /// Where the outputs will be published (`https://host/dir`): the manifest's URLs point there.
    /// `None`: absolute `file://` URLs of the outputs where they are written.
    pub url_base: Option<String>,
    /// Leave the user, SSH keys and Wi-Fi to Raspberry Pi Imager's customisation (the manifest then
    /// offers it); otherwise herd bakes them and the manifest turns Imager's customisation off.
    pub imager_customisation: bool,
}

/// What the run produced.
#[derive(Debug, Clone)]
pub struct Summary {
    pub image: PathBuf,
    pub image_size: u64,
    /// With `xz` or `checksum`.
    pub image_sha256: Option<String>,
    pub xz: Option<PathBuf>,
    /// With `xz` or `checksum`.
    pub manifest: Option<PathBuf>,
    pub baked: Baked,
    /// Step name and how long it took.
    pub timings: Vec<(&'static str, Duration)>,
}

/// Removes a temporary output unless it was kept.
struct Partial(Option<PathBuf>);

impl Partial {
    fn keep(mut self) -> PathBuf {
        self.0.take().expect("kept once")
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn tool(what: &str, out: std::process::Output) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Tool {
        what: what.to_string(),
        output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

fn spawn_err(what: &str, package: &str) -> impl FnOnce(std::io::Error) -> Error {
    let what = format!("{what} (apt-get install {package})");
    move |e| Error::Tool {
        what,
        output: e.to_string(),
    }
}

/// Runs the job; `binary_for` gives the agent binary for the image's architecture.
pub fn run(
    opts: &PipelineOptions,
    binary_for: impl FnOnce(Arch) -> Result<PathBuf>,
) -> Result<Summary> {
    let mut timings = Vec::new();
    let name = &opts.name;
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(Error::Invalid(format!(
            "output name {name:?}: use letters, digits, '-', '_' and '.'"
        )));
    }
    if let Some(base) = &opts.url_base {
        check_url_base(base)?;
    }
    if opts.imager_customisation {
        let b = &opts.bake;
        let baked: Vec<&str> = [
            (b.userconf.is_some(), "a user"),
            (b.ssh_keys.is_some(), "SSH keys"),
            (b.wifi.is_some(), "Wi-Fi"),
        ]
        .iter()
        .filter_map(|(set, what)| set.then_some(*what))
        .collect();
        if !baked.is_empty() {
            return Err(Error::Invalid(format!(
                "Imager's customisation is to set the user, SSH keys and Wi-Fi, but this build bakes \
                 {}: choose one source (two would fight at first boot)",
                baked.join(", ")
            )));
        }
    }
    std::fs::create_dir_all(&opts.out_dir).map_err(crate::io(&opts.out_dir))?;

    // 1. The base, as a local file.
    let t = Instant::now();
    let base = match &opts.base {
        Base::File(p) => {
            let meta = std::fs::metadata(p).map_err(crate::io(p))?;
            if !meta.is_file() {
                return Err(Error::Invalid(format!("{}: not a file", p.display())));
            }
            p.clone()
        }
        Base::Url(url) => download(url, &opts.cache_dir)?,
    };
    timings.push(("get base", t.elapsed()));

    // 2. A private copy to work on, and 3. herd going in. From a local `.img` the bake is prepared on
    // the base (read only) while the kernel copies it, so only the writes wait for the copy.
    let partial_img = opts.out_dir.join(format!(".{name}.img.partial"));
    let _ = std::fs::remove_file(&partial_img);
    let partial = Partial(Some(partial_img.clone()));
    let compressed = base.extension().is_some_and(|e| e == "xz");
    let prepared = if compressed {
        let t = Instant::now();
        decompress(&base, &partial_img)?;
        timings.push(("decompress", t.elapsed()));
        let t = Instant::now();
        let prepared = prepare(&partial_img, &opts.bake, binary_for)?;
        timings.push(("prepare", t.elapsed()));
        prepared
    } else {
        let t = Instant::now();
        let copying = Copy::start(&base, &partial_img)?;
        let t_prepare = Instant::now();
        let prepared = prepare(&base, &opts.bake, binary_for);
        let took_prepare = t_prepare.elapsed();
        // The copy is waited for even when preparing failed, so that nothing writes after we return.
        copying.wait()?;
        timings.push(("copy", t.elapsed()));
        timings.push(("prepare (during the copy)", took_prepare));
        prepared?
    };
    let t = Instant::now();
    let baked = finish(&partial_img, prepared)?;
    timings.push(("inject", t.elapsed()));
    let image_size = std::fs::metadata(&partial_img)
        .map_err(crate::io(&partial_img))?
        .len();

    // 4. Publishing outputs, each under a temporary name.
    let image = opts.out_dir.join(format!("{name}.img"));
    let partial_xz = opts.out_dir.join(format!(".{name}.img.xz.partial"));
    let xz_guard = Partial(Some(partial_xz.clone()));
    let final_xz = opts.out_dir.join(format!("{name}.img.xz"));
    let sums = if opts.xz {
        let t = Instant::now();
        let sums = compress(&partial_img, &partial_xz)?;
        timings.push(("xz + sha256", t.elapsed()));
        Some((sums.0, final_xz.clone(), sums.1, sums.2))
    } else if opts.checksum {
        let t = Instant::now();
        let sha = sha256_file(&partial_img)?;
        timings.push(("sha256", t.elapsed()));
        Some((sha.clone(), image.clone(), image_size, sha))
    } else {
        None
    };
    let sha_path = opts.out_dir.join(format!("{name}.img.sha256"));
    let partial_sha = opts.out_dir.join(format!(".{name}.sha256.partial"));
    let sha_guard = Partial(Some(partial_sha.clone()));
    let manifest = opts.out_dir.join(format!("{name}.rpi-imager-manifest"));
    let partial_manifest = opts.out_dir.join(format!(".{name}.manifest.partial"));
    let manifest_guard = Partial(Some(partial_manifest.clone()));
    let icon = opts.out_dir.join(format!("{name}.png"));
    let partial_icon = opts.out_dir.join(format!(".{name}.png.partial"));
    let icon_guard = Partial(Some(partial_icon.clone()));
    if let Some((image_sha, download, download_size, download_sha)) = &sums {
        let url_of = |path: &Path| -> Result<String> {
            let file = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match &opts.url_base {
                Some(base) => Ok(format!("{}/{file}", base.trim_end_matches('/'))),
                None => {
                    let dir = opts
                        .out_dir
                        .canonicalize()
                        .map_err(crate::io(&opts.out_dir))?;
                    Ok(file_url(&dir.join(file)))
                }
            }
        };
        std::fs::write(&partial_icon, ICON).map_err(crate::io(&partial_icon))?;
        let icon_url = url_of(&icon)?;
        let url = url_of(download)?;
        let manifest_json = crate::imager::manifest(&crate::imager::Entry {
            cluster: &opts.bake.values.cluster,
            arch: baked.arch,
            icon_url: &icon_url,
            url: &url,
            extract_size: image_size,
            extract_sha256: image_sha,
            download_size: *download_size,
            download_sha256: download_sha,
            release_date: &today(),
            customisation: if opts.imager_customisation {
                crate::imager::Customisation::Imager {
                    cloud_init: baked.cloud_init,
                }
            } else {
                crate::imager::Customisation::Off
            },
        });
        std::fs::write(
            &partial_manifest,
            serde_json::to_vec_pretty(&manifest_json).expect("json"),
        )
        .map_err(crate::io(&partial_manifest))?;
        std::fs::write(&partial_sha, format!("{image_sha}  {name}.img\n"))
            .map_err(crate::io(&partial_sha))?;
    }

    // 5. Every output takes its final name.
    let rename = |from: PathBuf, to: &Path| std::fs::rename(&from, to).map_err(crate::io(to));
    rename(partial.keep(), &image)?;
    let (mut image_sha256, mut xz, mut manifest_out) = (None, None, None);
    if let Some((sha, ..)) = sums {
        rename(sha_guard.keep(), &sha_path)?;
        if opts.xz {
            rename(xz_guard.keep(), &final_xz)?;
            xz = Some(final_xz);
        }
        rename(icon_guard.keep(), &icon)?;
        rename(manifest_guard.keep(), &manifest)?;
        image_sha256 = Some(sha);
        manifest_out = Some(manifest);
    }
    Ok(Summary {
        image,
        image_size,
        image_sha256,
        xz,
        manifest: manifest_out,
        baked,
        timings,
    })
}

/// The manifest's icon (64×64 PNG), written next to the manifest as `NAME.png`.
const ICON: &[u8] = include_bytes!("../assets/herd-icon.png");

/// Checks `--url-base`: an absolute http(s) URL, nothing Imager or a shell would split.
fn check_url_base(base: &str) -> Result<()> {
    let rest = base
        .strip_prefix("https://")
        .or_else(|| base.strip_prefix("http://"));
    match rest {
        Some(rest)
            if !rest.is_empty()
                && !rest.starts_with('/')
                && !base.contains(|c: char| {
                    c.is_whitespace() || c.is_control() || "\"<>\\^`{|}#?".contains(c)
                }) =>
        {
            Ok(())
        }
        _ => Err(Error::Invalid(format!(
            "url base {base:?}: give the http:// or https:// address of the directory the outputs \
             will be published in, e.g. https://example.com/herd"
        ))),
    }
}

/// A `file://` URL of an absolute path, percent-encoded (RFC 8089).
fn file_url(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut url = String::from("file://");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// Prints `label: N% of S GB` on stderr once a second while `child` writes `out`, reading progress from
/// the output's growing size; clears the line at the end. Returns the child's stderr and status as
/// soon as it exits.
fn watch(child: Child, out: &Path, total: u64, label: &str) -> Result<std::process::Output> {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let r = child.wait_with_output();
        let _ = done_tx.send(());
        r
    });
    let mut shown = false;
    while done_rx.recv_timeout(Duration::from_secs(1)).is_err() {
        shown = true;
        let done = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
        progress(label, done, total);
    }
    if shown {
        eprint!("\r\x1b[K");
    }
    waiter
        .join()
        .expect("waiter does not panic")
        .map_err(|e| Error::Tool {
            what: label.to_string(),
            output: e.to_string(),
        })
}

fn progress(label: &str, done: u64, total: u64) {
    if total > 0 {
        eprint!(
            "\r    {label}: {:.0}% of {:.2} GB",
            done as f64 * 100.0 / total as f64,
            total as f64 / 1e9
        );
    } else {
        eprint!("\r    {label}: {:.2} GB", done as f64 / 1e9);
    }
}

/// `cp` keeping the base's holes (and reflinking where the filesystem can): the kernel copies the data
/// extents without this process or `cp` reading them.
struct Copy {
    child: Child,
    from: PathBuf,
    to: PathBuf,
    total: u64,
}

impl Copy {
    fn start(from: &Path, to: &Path) -> Result<Copy> {
        let total = std::fs::metadata(from).map_err(crate::io(from))?.len();
        let child = Command::new("cp")
            .args(["--sparse=auto", "--reflink=auto"])
            .arg(from)
            .arg(to)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err("cp", "coreutils"))?;
        Ok(Copy {
            child,
            from: from.into(),
            to: to.into(),
            total,
        })
    }

    fn wait(self) -> Result<()> {
        tool(
            &format!("copying {}", self.from.display()),
            watch(self.child, &self.to, self.total, "copying")?,
        )
    }
}

/// `xz -dc` straight into `to` (no copy through this process), with progress.
fn decompress(from: &Path, to: &Path) -> Result<()> {
    // The uncompressed size, for the progress figure (0 when xz cannot tell).
    let total: u64 = Command::new("xz")
        .args(["--robot", "--list"])
        .arg(from)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.starts_with("totals"))
                .and_then(|l| l.split('\t').nth(4).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0);
    let out = File::create(to).map_err(crate::io(to))?;
    let child = Command::new("xz")
        .args(["-dc", "-T0"])
        .arg(from)
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err("xz", "xz-utils"))?;
    let result = watch(child, to, total, "decompressing")?;
    if !result.status.success() {
        return Err(Error::Tool {
            what: format!("decompressing {} (corrupt .xz?)", from.display()),
            output: String::from_utf8_lossy(&result.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Compresses `image` into `to` with a multi-threaded `xz`, hashing both sides on the way: returns the
/// image's SHA-256, the `.xz`'s size and its SHA-256. One read of the image; the hashing runs beside the
/// compression, which is many times slower.
fn compress(image: &Path, to: &Path) -> Result<(String, u64, String)> {
    let total = std::fs::metadata(image).map_err(crate::io(image))?.len();
    let mut input = File::open(image).map_err(crate::io(image))?;
    let mut output = File::create(to).map_err(crate::io(to))?;
    let mut child = Command::new("xz")
        .args(["-c", "-T0", "-6"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err("xz", "xz-utils"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    // Feeds xz and hashes what it feeds; shows progress.
    let feeder = std::thread::spawn(move || -> std::io::Result<String> {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let (mut done, mut last) = (0u64, Instant::now());
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            stdin.write_all(&buf[..n])?;
            done += n as u64;
            if last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                progress("compressing", done, total);
            }
        }
        eprint!("\r\x1b[K");
        Ok(hex(&h.finalize()))
    });
    let mut h = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let written: std::io::Result<()> = (|| loop {
        let n = stdout.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
        output.write_all(&buf[..n])?;
        size += n as u64;
    })();
    // On a failed write, closing the pipe stops xz, which stops the feeder: no one waits forever.
    drop(stdout);
    let fed = feeder.join().expect("feeder does not panic");
    let result = child
        .wait_with_output()
        .map_err(spawn_err("xz", "xz-utils"))?;
    if !result.status.success() {
        return Err(Error::Tool {
            what: "compressing the image".into(),
            output: String::from_utf8_lossy(&result.stderr).trim().to_string(),
        });
    }
    written.map_err(crate::io(to))?;
    let image_sha = fed.map_err(crate::io(image))?;
    Ok((image_sha, size, hex(&h.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file, hex. A reader thread keeps the next blocks coming while this one hashes, so the
/// copy out of the page cache overlaps the hashing.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(crate::io(path))?;
    let (full, filled) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(4);
    let (empty, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
    for _ in 0..6 {
        let _ = empty.send(vec![0u8; 4 << 20]);
    }
    let reader = std::thread::spawn(move || {
        while let Ok(mut buf) = recycled.recv() {
            buf.resize(buf.capacity(), 0);
            let mut n = 0;
            while n < buf.len() {
                match f.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) => {
                        let _ = full.send(Err(e));
                        return;
                    }
                }
            }
            buf.truncate(n);
            let last = n == 0;
            if full.send(Ok(buf)).is_err() || last {
                return;
            }
        }
    });
    let mut h = Sha256::new();
    let result = loop {
        match filled.recv() {
            Ok(Ok(buf)) if buf.is_empty() => break Ok(()),
            Ok(Ok(buf)) => {
                h.update(&buf);
                let _ = empty.send(buf);
            }
            Ok(Err(e)) => break Err(e),
            Err(_) => break Err(std::io::Error::other("reader stopped")),
        }
    };
    drop(empty);
    let _ = reader.join();
    result.map_err(crate::io(path))?;
    Ok(hex(&h.finalize()))
}

/// Downloads `url` (and `url.sha256`) into `cache`, once; checks the checksum every time.
fn download(url: &str, cache: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(cache).map_err(crate::io(cache))?;
    // Follow redirects (…_latest) to the real file name.
    let out = Command::new("curl")
        .args(["-fsSLI", "-o", "/dev/null", "-w", "%{url_effective}", url])
        .output()
        .map_err(spawn_err("curl", "curl"))?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "cannot reach {url}: {}. Without network, download the image elsewhere and pass the \
             local file: --base path/to/image.img.xz",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let real = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let file_name = real
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::Invalid(format!("{real}: no file name in the URL")))?
        .to_string();
    let local = cache.join(&file_name);
    // The published checksum: "<hex>  <name>".
    let sums = Command::new("curl")
        .args(["-fsSL", &format!("{real}.sha256")])
        .output()
        .map_err(spawn_err("curl", "curl"))?;
    if !sums.status.success() {
        return Err(Error::Invalid(format!(
            "{real}.sha256: cannot fetch the published checksum: {}",
            String::from_utf8_lossy(&sums.stderr).trim()
        )));
    }
    let expected = String::from_utf8_lossy(&sums.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_lowercase();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Invalid(format!("{real}.sha256 holds no SHA-256")));
    }
    if !local.exists() {
        let partial = Partial(Some(cache.join(format!("{file_name}.partial"))));
        let target = partial.0.clone().expect("set");
        eprintln!("==> downloading {real}");
        let status = Command::new("curl")
            .args(["-fL", "--progress-bar", "-o"])
            .arg(&target)
            .arg(&real)
            .status()
            .map_err(spawn_err("curl", "curl"))?;
        if !status.success() {
            return Err(Error::Invalid(format!(
                "downloading {real} failed ({status})"
            )));
        }
        std::fs::rename(partial.keep(), &local).map_err(crate::io(&local))?;
    }
    let got = sha256_file(&local)?;
    if got != expected {
        let _ = std::fs::remove_file(&local);
        return Err(Error::Invalid(format!(
            "{real}: wrong checksum: got {got}, the published .sha256 says {expected}; the cached \
             copy was deleted, run again to download it afresh"
        )));
    }
    Ok(local)
}

/// Today's date (UTC), YYYY-MM-DD.
fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn today_is_a_date() {
        let t = super::today();
        assert_eq!(t.len(), 10);
        assert!(t.starts_with("20"));
    }
}
