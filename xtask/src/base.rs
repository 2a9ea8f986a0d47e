//! `cargo xtask base debian [--arch arm64|armhf]`: a Raspberry Pi-layout base image made from Debian's
//! own packages (MBR; FAT32 `bootfs` for `/boot/firmware`; ext4 `rootfs`), with systemd, DHCP networking,
//! avahi-daemon, OpenSSH and Debian's kernel with its initramfs (plus `raspi-firmware`, so it also boots a
//! real Pi). The root is installed by `mmdebstrap` (qemu-user runs the foreign packages' scripts) and
//! packed without loop mounts (`mke2fs -d`, `mkfs.vfat`/`mcopy` at partition offsets). The result is
//! cached under `~/.cache/herd/base/`, named by a hash of its recipe: the second run takes no time.
//! `cargo xtask image --base debian` (or `debian-armhf`) bakes herd into it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use herd_image::Arch;
use sha2::{Digest, Sha256};

use crate::deps::{ensure_packages, is_root};
use crate::util::{cache_dir, root, run as run_step};

pub use crate::flags::Suite;

impl Suite {
    pub fn name(self) -> &'static str {
        match self {
            Suite::Bookworm => "bookworm",
            Suite::Trixie => "trixie",
        }
    }
}

/// What Trixie bases add, as Raspberry Pi OS Trixie Lite has them: NetworkManager behind netplan,
/// cloud-init, and what Wi-Fi needs (NetworkManager only recommends wpa_supplicant, without which it
/// cannot join a network; the regulatory database; `iw`, `rfkill`).
const TRIXIE_PACKAGES: &[&str] = &[
    "network-manager",
    "netplan.io",
    "cloud-init",
    "wpasupplicant",
    "wireless-regdb",
    "iw",
    "rfkill",
];
/// Not installed: the packages the Wi-Fi test's access point needs inside a VM (hostapd; busybox's
/// udhcpd hands out addresses), downloaded for the base's release and architecture and kept beside the
/// base image (`<base>.test-debs/`), where `cargo xtask e2e` takes them from.
const TEST_DEBS: &[&str] = &["hostapd", "busybox"];
/// The kernel command line of a Trixie base also keeps radios blocked until a country is set, as Raspberry
/// Pi OS does (there by systemd-rfkill state saved for the Pis' own Wi-Fi devices, which a VM's radio is
/// not).
const TRIXIE_CMDLINE: &[&str] = &["rfkill.default_state=0"];
/// Bookworm's customize hook, after the common one: the first user made as pi-gen's Bookworm branch
/// makes it (stage1/01-sys-tweaks/00-run.sh: `pi`, uid 1000, a login shell, no password), for userconf
/// to rename.
const BOOKWORM_CUSTOMIZE: &str = r#"set -e
chroot "$1" useradd -m -u 1000 -U -s /bin/bash -G sudo,adm,video,plugdev,netdev pi 2>/dev/null ||
    chroot "$1" useradd -m -u 1000 -U -s /bin/bash -G sudo pi
"#;
/// Trixie's customize hook, after the common one: no systemd-networkd; the first user made as Raspberry
/// Pi OS makes it since February 2026 (uid 1000, no login shell: userconf renames it).
const TRIXIE_CUSTOMIZE: &str = r#"set -e
rm -f "$1/etc/systemd/network/20-wired.network"
systemctl --root="$1" disable systemd-networkd.service 2>/dev/null || true
cp -rT --no-preserve=ownership,timestamps "$HERD_TRIXIE_FILES/rootfs" "$1"
chmod 600 "$1/etc/netplan/01-network-manager-all.yaml"
chroot "$1" useradd -m -u 1000 -U -s /usr/sbin/nologin -G sudo,adm,video,plugdev,netdev pi 2>/dev/null ||
    chroot "$1" useradd -m -u 1000 -U -s /usr/sbin/nologin -G sudo pi
systemctl --root="$1" enable NetworkManager.service NetworkManager-wait-online.service
mkdir "$1/tmp/herd-test-debs"
chroot "$1" sh -c "cd /tmp/herd-test-debs && apt-get download $HERD_TEST_DEBS"
mv "$1"/tmp/herd-test-debs/*.deb "$HERD_TEST_DEBS_DIR"
rmdir "$1/tmp/herd-test-debs"
chroot "$1" apt-get clean
"#;
const MIRROR: &str = "http://deb.debian.org/debian";
/// The boot partition: where the 2025 Raspberry Pi OS images put it (8 MiB aligned, 512 MiB).
const BOOT_START: u64 = 16384;
const BOOT_SECTORS: u64 = 512 * 2048;
/// The packages on top of Debian's `apt` variant (essential + apt).
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "systemd-timesyncd",
    "udev",
    "kmod",
    "dbus",
    "e2fsprogs",
    "dosfstools",
    "avahi-daemon",
    "libnss-mdns",
    "openssh-server",
    "sudo",
    "iproute2",
    "iputils-ping",
    "ca-certificates",
    "less",
    "nano",
    "raspi-firmware",
];
/// What the customize hook does in the finished root (`$1`) before it is packed: the initramfs (once;
/// raspi-firmware's hook copies it to /boot/firmware), the files of `xtask/base-debian/rootfs`, no
/// machine-id and no SSH host keys (each card makes its own), the units enabled.
const CUSTOMIZE: &str = r#"set -e
rm "$1/usr/sbin/update-initramfs"
chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
chroot "$1" update-initramfs -c -k all
cp -rT --no-preserve=ownership,timestamps "$HERD_BASE_FILES/rootfs" "$1"
rm -f "$1"/etc/ssh/ssh_host_*
: > "$1/etc/machine-id"
rm -f "$1/var/lib/dbus/machine-id"
systemctl --root="$1" enable systemd-networkd.service ssh-host-keys.service userconf.service
systemctl --root="$1" disable e2scrub_reap.service 2>/dev/null || true
chroot "$1" apt-get clean
"#;
/// What the essential hook does before the packages are installed: the initramfs settings go in, and
/// `update-initramfs` is diverted to a no-op, so the initramfs is made once at the end (the customize
/// hook) instead of once by the kernel's hook and again by the trigger other packages pull: under
/// qemu-user each run takes minutes.
const ESSENTIAL: &str = r#"set -e
cp -rT --no-preserve=ownership,timestamps "$HERD_BASE_FILES/early" "$1"
chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs
printf '#!/bin/sh\n# cargo xtask base: the initramfs is made once, at the end\nexit 0\n' > "$1/usr/sbin/update-initramfs"
chmod 755 "$1/usr/sbin/update-initramfs"
"#;

struct Recipe {
    arch: Arch,
    suite: Suite,
}

impl Recipe {
    fn same(&self, other: &Recipe) -> bool {
        self.arch == other.arch && self.suite == other.suite
    }

    fn kernel(&self) -> &'static str {
        match self.arch {
            Arch::Arm64 => "linux-image-arm64",
            Arch::Armhf => "linux-image-armmp",
            Arch::Amd64 => "linux-image-amd64",
        }
    }

    fn files(&self) -> PathBuf {
        root().join("xtask/base-debian")
    }

    fn trixie_files(&self) -> PathBuf {
        root().join("xtask/base-trixie")
    }

    fn packages(&self) -> Vec<&'static str> {
        let mut p = PACKAGES.to_vec();
        if self.suite == Suite::Trixie {
            p.extend(TRIXIE_PACKAGES);
        }
        p
    }

    fn customize(&self) -> String {
        match self.suite {
            Suite::Bookworm => format!("{CUSTOMIZE}{BOOKWORM_CUSTOMIZE}"),
            Suite::Trixie => format!("{CUSTOMIZE}{TRIXIE_CUSTOMIZE}"),
        }
    }

    /// Everything the image is made from, as text: its hash names the cached image.
    fn describe(&self) -> anyhow::Result<String> {
        let mut text = format!(
            "debian base v1\nsuite {}\nmirror {MIRROR}\narch {}\nkernel {}\npackages {}\n\
             boot {BOOT_START}+{BOOT_SECTORS} fat32 1 sector per cluster\nessential {ESSENTIAL}\ncustomize {}\n",
            self.suite.name(),
            self.arch.name(),
            self.kernel(),
            self.packages().join(","),
            self.customize()
        );
        if self.suite == Suite::Trixie {
            text.push_str(&format!(
                "test-debs {}\ncmdline {}\n",
                TEST_DEBS.join(","),
                TRIXIE_CMDLINE.join(" ")
            ));
        }
        let mut dirs = vec![(self.files(), "")];
        if self.suite == Suite::Trixie {
            dirs.push((self.trixie_files(), "trixie/"));
        }
        for (dir, prefix) in dirs {
            let mut files = Vec::new();
            walk(&dir, &mut files)?;
            files.sort();
            for f in files {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&f)?.permissions().mode() & 0o111 != 0;
                let rel = f.strip_prefix(&dir).unwrap_or(&f).display();
                let body =
                    std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?;
                text.push_str(&format!(
                    "file {prefix}{rel} exec={mode} {}\n",
                    hex(&Sha256::digest(&body))
                ));
            }
        }
        Ok(text)
    }

    fn cached(&self) -> anyhow::Result<PathBuf> {
        let hash = hex(&Sha256::digest(self.describe()?.as_bytes()));
        Ok(cache_dir().join("base").join(format!(
            "debian-{}-{}-{}.img",
            self.suite.name(),
            self.arch.name(),
            &hash[..12]
        )))
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bases the boot-and-join test boots: what Raspberry Pi OS is today on 64-bit (Trixie), then
/// Bookworm, and Bookworm on 32-bit, which most 32-bit Raspberry Pi OS Lite cards still run.
pub const E2E_BASES: &[(Arch, Suite)] = &[
    (Arch::Arm64, Suite::Trixie),
    (Arch::Arm64, Suite::Bookworm),
    (Arch::Armhf, Suite::Bookworm),
];

pub fn run(flags: &crate::flags::Base) -> anyhow::Result<()> {
    let crate::flags::BaseKind::Debian = flags.kind;
    if flags.all {
        if flags.rebuild {
            bail!(
                "--all does not take --rebuild: remove the cached bases in {} to build them again",
                cache_dir().join("base").display()
            );
        }
        for path in ensure_all(E2E_BASES)? {
            println!("==> base: {}", path.display());
        }
        return Ok(());
    }
    let (arch, suite) = (flags.arch, flags.suite);
    let recipe = Recipe { arch, suite };
    if flags.rebuild {
        let path = recipe.cached()?;
        if path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    let path = ensure(arch, suite)?;
    println!("==> base: {}", path.display());
    println!(
        "    bake herd into it with: cargo xtask image --cluster NAME --base debian{}{}",
        if suite == Suite::Trixie {
            "-trixie"
        } else {
            ""
        },
        if arch == Arch::Arm64 { "" } else { "-armhf" }
    );
    Ok(())
}

/// The cached Debian base for `arch` and `suite`, built first if there is none for the current recipe.
pub fn ensure(arch: Arch, suite: Suite) -> anyhow::Result<PathBuf> {
    Ok(ensure_all(&[(arch, suite)])?.remove(0))
}

/// The cached bases for each of `wanted`, those missing built at once, side by side: each build is
/// mostly one emulated `dpkg` at a time, so two of them take about as long as the longest (from
/// nothing, the three of the e2e test took 38 min one after the other). A build's mmdebstrap output
/// goes to its log beside the cache, and its last line is shown every minute.
pub fn ensure_all(wanted: &[(Arch, Suite)]) -> anyhow::Result<Vec<PathBuf>> {
    let recipes: Vec<Recipe> = wanted
        .iter()
        .map(|&(arch, suite)| Recipe { arch, suite })
        .collect();
    let paths = recipes
        .iter()
        .map(Recipe::cached)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut missing = Vec::new();
    for (recipe, path) in recipes.iter().zip(&paths) {
        if path.exists() {
            println!("==> base: cached {} (recipe unchanged)", path.display());
        } else if !missing.iter().any(|(r, _): &(&Recipe, _)| r.same(recipe)) {
            missing.push((recipe, path.clone()));
        }
    }
    if missing.is_empty() {
        return Ok(paths);
    }
    if !is_root() {
        let (suite, arch) = (missing[0].0.suite.name(), missing[0].0.arch.name());
        bail!(
            "building the Debian base installs packages into a root file system (mmdebstrap), which \
             needs root; run:\n    sudo env PATH=\"$PATH\" cargo xtask base debian --suite {suite} --arch {arch}"
        );
    }
    ensure_packages("Debian base image", crate::packages::BASE_NEEDS)?;
    for (recipe, _) in &missing {
        ensure_binfmt(recipe.arch)?;
    }
    if let [(recipe, path)] = missing.as_slice() {
        build_cached(recipe, path, None)?;
        return Ok(paths);
    }
    let started = Instant::now();
    let logs: Vec<PathBuf> = missing
        .iter()
        .map(|(_, path)| path.with_extension("log"))
        .collect();
    let names: Vec<String> = missing
        .iter()
        .map(|(r, _)| format!("{} {}", r.suite.name(), r.arch.name()))
        .collect();
    println!(
        "==> base: building {} side by side (mmdebstrap's output in {})",
        names.join(", "),
        logs.iter()
            .map(|l| l.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = missing
            .iter()
            .zip(&logs)
            .map(|((recipe, path), log)| scope.spawn(move || build_cached(recipe, path, Some(log))))
            .collect();
        while !handles.iter().all(|h| h.is_finished()) {
            let tick = Instant::now();
            while tick.elapsed() < std::time::Duration::from_secs(60)
                && !handles.iter().all(|h| h.is_finished())
            {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            for ((name, log), h) in names.iter().zip(&logs).zip(&handles) {
                if !h.is_finished() {
                    println!(
                        "==> base: {name}, {} min: {}",
                        started.elapsed().as_secs() / 60,
                        last_line(log)
                    );
                }
            }
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the build panicked")))
            })
            .collect::<Vec<_>>()
    });
    let mut failed = Vec::new();
    for ((name, log), result) in names.iter().zip(&logs).zip(results) {
        if let Err(e) = result {
            failed.push(format!("{name}: {e:#} (its log: {})", log.display()));
        }
    }
    if !failed.is_empty() {
        bail!("base build failed:\n    {}", failed.join("\n    "));
    }
    println!(
        "==> base: {} built in {:.0} s",
        names.join(", "),
        started.elapsed().as_secs_f64()
    );
    Ok(paths)
}

/// The last non-empty line of a log, for a progress line.
fn last_line(log: &Path) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    line.chars().take(100).collect()
}

/// Builds `recipe` into `path` in a work directory beside it (what an interrupted build left goes first).
fn build_cached(recipe: &Recipe, path: &Path, log: Option<&Path>) -> anyhow::Result<()> {
    let dir = path.parent().expect("in the cache");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let work = dir.join(format!(
        ".work-{}",
        path.file_stem().unwrap_or_default().to_string_lossy()
    ));
    if work.exists() {
        // Left by an interrupted build, maybe with mmdebstrap's mounts of /proc, /sys and /dev still on
        // it (a killed mmdebstrap does not unmount): those go first, or removing the directory would
        // reach into the host's /dev.
        for m in mounts_under(&work)? {
            let mut umount = Command::new("umount");
            umount.arg("--lazy").arg(&m);
            run_step("unmount what an interrupted base build left", umount)?;
        }
        std::fs::remove_dir_all(&work)
            .with_context(|| format!("cannot remove {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;
    let result = build(recipe, &work, path, log);
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// The mount points at or below `dir`, deepest first (from /proc/self/mountinfo, whose fifth field is the
/// mount point with space, tab, newline and backslash as octal escapes).
fn mounts_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("cannot read mountinfo")?;
    Ok(parse_mounts_under(&info, dir))
}

fn parse_mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let unescape = |s: &str| {
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let octal = b.get(i + 1..i + 4).and_then(|d| {
                std::str::from_utf8(d)
                    .ok()
                    .and_then(|d| u8::from_str_radix(d, 8).ok())
            });
            match (b[i], octal) {
                (b'\\', Some(c)) => {
                    out.push(c);
                    i += 4;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
    };
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found
}

/// Where the packages of the Wi-Fi test's access point (`TEST_DEBS`) are kept for the Trixie base `base`.
pub fn test_debs(base: &Path) -> PathBuf {
    base.with_extension("test-debs")
}

/// binfmt_misc must run the foreign packages' maintainer scripts through qemu-user.
fn ensure_binfmt(arch: Arch) -> anyhow::Result<()> {
    let name = match arch {
        Arch::Arm64 => "qemu-aarch64",
        Arch::Armhf => "qemu-arm",
        // This machine's own family: nothing to emulate.
        Arch::Amd64 => return Ok(()),
    };
    let misc = Path::new("/proc/sys/fs/binfmt_misc");
    if !misc.join("status").exists() {
        let mut mount = Command::new("mount");
        mount.args(["-t", "binfmt_misc", "binfmt_misc"]).arg(misc);
        run_step("mount binfmt_misc", mount).context(
            "binfmt_misc is not mounted; run: mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc",
        )?;
    }
    let entry = misc.join(name);
    let enabled = std::fs::read_to_string(&entry).is_ok_and(|t| t.starts_with("enabled"));
    if !enabled {
        let mut enable = Command::new("update-binfmts");
        enable.args(["--enable", name]);
        run_step("enable qemu-user for foreign binaries", enable)
            .with_context(|| format!("run: update-binfmts --enable {name}"))?;
    }
    Ok(())
}

fn build(recipe: &Recipe, work: &Path, out: &Path, log: Option<&Path>) -> anyhow::Result<()> {
    let arch = recipe.arch.name();
    let suite = recipe.suite.name();
    let rootfs = work.join("rootfs");
    let debs = work.join("test-debs");
    let started = Instant::now();
    println!(
        "==> base: installing Debian {suite} {arch} with mmdebstrap (minutes: the packages' scripts run \
         under qemu-user)"
    );
    let mut m = Command::new("mmdebstrap");
    m.args([
        "--mode=root",
        "--variant=apt",
        &format!("--arch={arch}"),
        "--components=main,non-free-firmware",
        &format!(
            "--include={},{}",
            recipe.packages().join(","),
            recipe.kernel()
        ),
        "--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        &format!("--essential-hook={ESSENTIAL}"),
        &format!("--customize-hook={}", recipe.customize()),
        suite,
    ])
    .arg(&rootfs)
    .arg(MIRROR)
    .env("HERD_BASE_FILES", recipe.files())
    .env("HERD_TRIXIE_FILES", recipe.trixie_files())
    .env("HERD_TEST_DEBS", TEST_DEBS.join(" "))
    .env("HERD_TEST_DEBS_DIR", &debs);
    std::fs::create_dir_all(&debs)?;
    if let Some(log) = log {
        let file = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        m.stdout(file.try_clone()?).stderr(file);
    }
    run_step(&format!("mmdebstrap ({suite} {arch})"), m)?;
    let installed = started.elapsed();

    // The boot partition's files (kernel, initrd, device trees, config.txt from raspi-firmware) go to
    // the FAT; /boot/firmware stays as its empty mount point in the root.
    let firmware = work.join("firmware");
    std::fs::rename(rootfs.join("boot/firmware"), &firmware)?;
    std::fs::create_dir(rootfs.join("boot/firmware"))?;
    let cmdline = firmware.join("cmdline.txt");
    let line = match std::fs::read_to_string(&cmdline) {
        Ok(t) => t,
        Err(_) => "console=tty0 rw fsck.repair=yes rootwait".into(),
    };
    let mut tokens: Vec<String> = line
        .split_whitespace()
        .filter(|t| !t.starts_with("root=") && !t.starts_with("rootfstype="))
        .map(String::from)
        .collect();
    tokens.insert(0, "root=LABEL=rootfs".into());
    tokens.insert(1, "rootfstype=ext4".into());
    if recipe.suite == Suite::Trixie {
        tokens.extend(TRIXIE_CMDLINE.iter().map(|t| t.to_string()));
    }
    std::fs::write(&cmdline, tokens.join(" ") + "\n")?;
    if recipe.suite == Suite::Trixie {
        // cloud-init's NoCloud seed, all comments, as Raspberry Pi OS ships it.
        for f in ["user-data", "meta-data", "network-config"] {
            std::fs::copy(recipe.trixie_files().join("boot").join(f), firmware.join(f))?;
        }
    }

    let root_bytes = du(&rootfs)?;
    // As Raspberry Pi OS sizes its root: the content + 20% + 200 MiB, in whole MiB.
    let root_mib = (root_bytes * 12 / 10) / (1 << 20) + 200;
    let root_start = BOOT_START + BOOT_SECTORS;
    let root_sectors = root_mib * 2048;
    let total = (root_start + root_sectors) * 512;
    let partial = out.with_extension("img.partial");
    let f = std::fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    f.set_len(total)?;
    drop(f);
    let result = (|| -> anyhow::Result<()> {
        let mut sfdisk = Command::new("sfdisk");
        sfdisk
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(&partial);
        let table = format!(
            "label: dos\nstart={BOOT_START}, size={BOOT_SECTORS}, type=c\nstart={root_start}, size={root_sectors}, type=83\n"
        );
        pipe("partition table (sfdisk)", sfdisk, &table)?;
        // One sector per cluster, as pi-gen's images have made it since 2026-03 (46c69572,
        // export-image/prerun.sh line 65).
        let mut vfat = Command::new("mkfs.vfat");
        vfat.args([
            "-F",
            "32",
            "-s",
            "1",
            "-n",
            "bootfs",
            "--offset",
            &BOOT_START.to_string(),
        ])
        .arg(&partial)
        .arg((BOOT_SECTORS / 2).to_string());
        quiet("boot file system (mkfs.vfat)", vfat)?;
        let entries: Vec<PathBuf> = std::fs::read_dir(&firmware)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        if !entries.is_empty() {
            let mut mcopy = Command::new("mcopy");
            mcopy
                .arg("-s")
                .arg("-i")
                .arg(format!("{}@@{}", partial.display(), BOOT_START * 512))
                .args(&entries)
                .arg("::/")
                .env("MTOOLS_SKIP_CHECK", "1");
            quiet(
                &format!("boot files (mcopy, {} entries)", entries.len()),
                mcopy,
            )?;
        }
        let mut mke2fs = Command::new("mke2fs");
        mke2fs
            .args(["-q", "-F", "-t", "ext4", "-L", "rootfs", "-b", "4096", "-d"])
            .arg(&rootfs)
            .args(["-E", &format!("offset={},root_owner=0:0", root_start * 512)])
            .arg(&partial)
            .arg((root_sectors / 8).to_string());
        quiet("root file system (mke2fs -d)", mke2fs)?;
        // What `cargo xtask image` will check: the partitions are found and the architecture is right.
        let img = herd_image::Image::open(&partial).context("the packed image does not open")?;
        let found = img.arch().context("the packed image's architecture")?;
        if found != recipe.arch {
            bail!("the packed image is {}, not {arch}", found.name());
        }
        if recipe.suite == Suite::Trixie {
            // The test packages first: a cached base always has them beside it.
            let to = test_debs(out);
            if to.exists() {
                std::fs::remove_dir_all(&to)?;
            }
            std::fs::rename(&debs, &to)?;
        }
        std::fs::rename(&partial, out)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result?;
    println!(
        "==> base: {} ({:.2} GB, root {} MiB): installed in {:.0} s, packed in {:.0} s",
        out.display(),
        total as f64 / 1e9,
        root_mib,
        installed.as_secs_f64(),
        (started.elapsed() - installed).as_secs_f64()
    );
    Ok(())
}

/// Runs `cmd` with its output kept back, and shown only if it fails.
fn quiet(step: &str, mut cmd: Command) -> anyhow::Result<()> {
    println!("==> {step}");
    let out = cmd
        .output()
        .with_context(|| format!("{step}: cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{step} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs `cmd` with `input` on its standard input.
fn pipe(step: &str, mut cmd: Command, input: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("{step}: cannot start"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("{step} failed ({status})");
    }
    Ok(())
}

/// Bytes used under `dir` (allocated blocks, as mke2fs will need them), not following symlinks.
fn du(dir: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let md = e.path().symlink_metadata()?;
        total += md.blocks() * 512 + 4096;
        if md.is_dir() {
            total += du(&e.path())?;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_left_on_an_interrupted_build_are_found_deepest_first() {
        let info = "22 1 0:21 / /proc rw - proc proc rw\n\
                    90 80 0:5 / /c/.work-x/rootfs/dev rw - devtmpfs udev rw\n\
                    91 90 0:24 / /c/.work-x/rootfs/dev/pts rw - devpts devpts rw\n\
                    92 80 0:22 / /c/.work-x/root\\040fs rw - sysfs sysfs rw\n\
                    93 1 0:22 / /c/.work-xy/rootfs/sys rw - sysfs sysfs rw\n";
        let found = parse_mounts_under(info, Path::new("/c/.work-x"));
        assert_eq!(
            found,
            [
                PathBuf::from("/c/.work-x/rootfs/dev/pts"),
                PathBuf::from("/c/.work-x/rootfs/dev"),
                PathBuf::from("/c/.work-x/root fs"),
            ]
        );
    }

    /// The bases' userconf refuses a name as userconf-pi's `validate_user` does (userconf-service lines
    /// 7-25 at RPi-Distro/userconf-pi 1e8dc53f): the reasons go into the file, it becomes
    /// `failed_userconf.txt` (lines 48-52) and the script never finishes, as the real one waits at its
    /// prompt. herd refuses every such name before it writes userconf.txt, and a backslash besides, which
    /// the real bracket expression lets through. The script runs as `nobody` when the test is root, so a
    /// name it accepts fails at the rename and touches no account of this machine.
    #[test]
    fn the_bases_userconf_refuses_names_as_userconf_pi_does_and_herd_refuses_them_first() {
        use std::os::unix::fs::chown;
        use std::process::Stdio;
        use std::time::Duration;
        let script = root().join("xtask/base-debian/rootfs/usr/local/sbin/userconf");
        let long = "a".repeat(33);
        for (name, refused) in [
            ("alice", false),
            ("ops-1", false),
            ("al\\ice", false),
            ("ops_1", true),
            ("_ops", true),
            ("1ops", true),
            ("Alice", true),
            ("root", true),
            ("", true),
            (long.as_str(), true),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("userconf.txt");
            let line = format!("{name}:$6$salt$hash");
            std::fs::write(&file, format!("{line}\n")).unwrap();
            let mut cmd = if is_root() {
                chown(dir.path(), Some(65534), Some(65534)).unwrap();
                chown(&file, Some(65534), Some(65534)).unwrap();
                let mut c = Command::new("setpriv");
                c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh"]);
                c
            } else {
                Command::new("sh")
            };
            let mut child = cmd
                .arg(&script)
                .arg(&file)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let failed = dir.path().join("failed_userconf.txt");
            let mut waited = Duration::ZERO;
            let seen_refused = loop {
                if failed.exists() {
                    std::thread::sleep(Duration::from_millis(300));
                    assert!(
                        child.try_wait().unwrap().is_none(),
                        "{name:?}: refused, but the script did not stay waiting"
                    );
                    break true;
                }
                if child.try_wait().unwrap().is_some() {
                    break false;
                }
                assert!(
                    waited < Duration::from_secs(20),
                    "{name:?}: neither refused nor done"
                );
                std::thread::sleep(Duration::from_millis(50));
                waited += Duration::from_millis(50);
            };
            let _ = child.kill();
            let _ = child.wait();
            // A process still waiting in `sleep` (the script exec'd it) is the child itself.
            assert_eq!(seen_refused, refused, "{name:?}");
            if refused {
                let text = std::fs::read_to_string(&failed).unwrap();
                assert!(text.starts_with(&line), "{name:?}: {text}");
                assert!(text.contains("Entered username is invalid:"), "{text}");
                assert!(!file.exists());
                assert!(
                    herd_image::imager::check_user_name(name).is_err(),
                    "{name:?}: herd would have written a name the card refuses"
                );
            } else {
                assert!(
                    file.exists(),
                    "{name:?}: accepted, so only the rename (not root) failed"
                );
            }
        }
        assert!(herd_image::imager::check_user_name("al\\ice").is_err());
    }

    #[test]
    fn the_recipe_names_the_cache() {
        let recipe = |arch, suite| Recipe { arch, suite };
        let arm64 = recipe(Arch::Arm64, Suite::Bookworm).cached().unwrap();
        let armhf = recipe(Arch::Armhf, Suite::Bookworm).cached().unwrap();
        let trixie = recipe(Arch::Arm64, Suite::Trixie).cached().unwrap();
        assert_ne!(arm64, armhf);
        assert_ne!(arm64, trixie);
        assert!(arm64.to_string_lossy().contains("debian-bookworm-arm64-"));
        assert!(trixie.to_string_lossy().contains("debian-trixie-arm64-"));
        assert_eq!(
            recipe(Arch::Arm64, Suite::Bookworm).cached().unwrap(),
            arm64,
            "stable"
        );
        let text = recipe(Arch::Arm64, Suite::Bookworm).describe().unwrap();
        assert!(text.contains("file early/etc/initramfs-tools/hooks/herd-base-modules exec=true"));
        assert!(text.contains("linux-image-arm64"));
        assert!(!text.contains("trixie") && !text.contains("cloud-init"));
        assert!(text.contains("useradd -m -u 1000 -U -s /bin/bash"));
        let text = recipe(Arch::Arm64, Suite::Trixie).describe().unwrap();
        assert!(text.contains("network-manager,netplan.io,cloud-init,wpasupplicant"));
        assert!(text.contains("test-debs hostapd,busybox"));
        assert!(text.contains("file rootfs/usr/local/sbin/userconf exec=true"));
        assert!(text.contains("-s /usr/sbin/nologin"));
    }
}
