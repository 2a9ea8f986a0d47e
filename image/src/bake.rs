//! The pipeline's core: put herd into an image file (already a copy of the base).

use std::path::{Path, PathBuf};

use crate::ext4::{Entry, Plan};
use crate::fat::set_cmdline_token;
use crate::overlay::{self, Values};
use crate::wifi::{self, Wifi};
use crate::{Arch, Error, Image, Result};

/// What goes into the image.
#[derive(Clone)]
pub struct BakeOptions {
    /// The overlay tree (`overlay/` of the workspace).
    pub overlay: PathBuf,
    pub values: Values,
    /// `name:crypt-hash` for `userconf.txt` on the boot partition.
    pub userconf: Option<String>,
    /// Authorized SSH keys for the user (password login over SSH is then turned off).
    pub ssh_keys: Option<(String, String)>,
    /// A Wi-Fi network to join (see `wifi`).
    pub wifi: Option<Wifi>,
    /// Debian packages for the card to install at first boot (see `packages`).
    pub packages: Option<crate::packages::Request>,
}

impl std::fmt::Debug for BakeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BakeOptions")
            .field("overlay", &self.overlay)
            .field("cluster", &self.values.cluster)
            .field("wifi", &self.wifi)
            .field("packages", &self.packages)
            .field("secrets", &"***")
            .finish()
    }
}

/// What was done.
#[derive(Debug, Clone)]
pub struct Baked {
    pub arch: Arch,
    /// Root filesystem paths written, with their sizes.
    pub root_files: Vec<(String, u64)>,
    /// Boot partition files written.
    pub boot_files: Vec<String>,
    /// Symlinks made (path, target): the overlay's units enabled as `systemctl enable` would.
    pub links: Vec<(String, String)>,
    /// The base runs cloud-init at boot (Raspberry Pi OS Trixie since late 2025): Imager then customises
    /// it through cloud-init files, not `firstrun.sh`.
    pub cloud_init: bool,
    /// The packages put on the boot partition for first boot.
    pub packages: Option<crate::packages::Manifest>,
}

/// Where the enable symlink lives and what it points to.
pub const UNIT: &str = "/etc/systemd/system/herd.service";
pub const UNIT_LINK: &str = "/etc/systemd/system/multi-user.target.wants/herd.service";
pub const BINARY: &str = "/usr/local/bin/herd";

/// Bakes herd into `image`; `binary_for` returns the agent binary for the image's architecture.
pub fn bake(
    image: &Path,
    opts: &BakeOptions,
    binary_for: impl FnOnce(Arch) -> Result<PathBuf>,
) -> Result<Baked> {
    let prepared = prepare(image, opts, binary_for)?;
    finish(image, prepared)
}

/// A bake worked out on one image and ready to be written into it or into an identical copy.
#[derive(Debug)]
pub struct Prepared {
    arch: Arch,
    links: Vec<(String, String)>,
    plan: Plan,
    root_files: Vec<(String, u64)>,
    boot: Vec<(String, Vec<u8>)>,
    /// Tokens to set on `cmdline.txt` (read and rewritten on the copy, in `finish`).
    cmdline: Vec<String>,
    cloud_init: bool,
    packages: Option<crate::packages::Resolved>,
    /// Bytes to add to the root partition before anything is written (see `root_fits`).
    grow_root: u64,
}

impl Prepared {
    pub fn arch(&self) -> Arch {
        self.arch
    }
}

/// Everything up to the writes, reading `image` only: the root filesystem's state and architecture,
/// the rendered overlay, the free-space check and the write session. Safe to run on the base image
/// while its copy is being made.
pub fn prepare(
    image: &Path,
    opts: &BakeOptions,
    binary_for: impl FnOnce(Arch) -> Result<PathBuf>,
) -> Result<Prepared> {
    if let Some(line) = &opts.userconf {
        let name = line.split(':').next().unwrap_or_default();
        crate::imager::check_user_name(name).map_err(Error::Invalid)?;
    }
    if let Some(request) = &opts.packages {
        for n in &request.names {
            crate::packages::check_name(n)
                .map_err(|e| Error::Invalid(format!("--packages: {e}")))?;
        }
    }
    let img = Image::open(image)?;
    let root = img.root();
    if root.needs_recovery()? {
        return Err(Error::Invalid(format!(
            "{}: the root filesystem was not cleanly unmounted (its journal needs recovery); \
             run e2fsck on the base first",
            image.display()
        )));
    }
    let arch = img.arch()?;
    let cloud = crate::cloudinit::CloudInit::read(&root, &img.boot()?)?;
    let cloud_init = cloud.is_some();
    let seed = cloud.as_ref().is_some_and(|c| c.seed);
    let binary = binary_for(arch)?;
    let bin = std::fs::read(&binary).map_err(crate::io(&binary))?;
    let (packages, grow_root) = match &opts.packages {
        Some(request) => {
            let (resolved, grow) = resolve_packages(image, &img, arch, request)?;
            (Some(resolved), grow)
        }
        None => (None, 0),
    };

    let mut entries = overlay::render(&opts.overlay, &opts.values)?;
    entries.push(Entry::root_file(BINARY, bin, 0o755));
    // On a base with cloud-init, herd's per-card name must win, every boot, even when user-data (Imager's
    // customisation) names the card: cloud-init is told to leave the host name and /etc/hosts alone.
    if let Some(ci) = &cloud {
        if !opts.values.hostname_template.is_empty() {
            let drop_in = CLOUD_INIT_DROP_IN.rsplit('/').next().unwrap_or_default();
            if let Some(later) = ci
                .drop_ins
                .iter()
                .find(|n| n.as_bytes() > drop_in.as_bytes())
            {
                return Err(Error::Invalid(format!(
                    "{}: /etc/cloud/cloud.cfg.d/{later} sorts after herd's {drop_in}, so cloud-init would \
                     let it override herd's settings (it reads cloud.cfg.d in byte order, the last one \
                     winning); rename it on the base",
                    image.display()
                )));
            }
            entries.push(Entry::root_file(
                CLOUD_INIT_DROP_IN,
                cloud_init_drop_in(ci.list("cloud_init_modules")),
                0o644,
            ));
        }
    }
    // cloud-init's first stage reads its seed from the boot partition. Started before that partition is
    // mounted, it mounts it read-only somewhere of its own, and /boot/firmware, mounted meanwhile, comes
    // up read-only too (seen in QEMU): userconf.txt then cannot be consumed. It waits for the mount.
    if cloud_init {
        entries.push(Entry::root_file(
            CLOUD_INIT_ORDER,
            CLOUD_INIT_ORDER_UNIT.as_bytes(),
            0o644,
        ));
    }
    let mut boot = Vec::new();
    let mut cmdline = Vec::new();
    if let Some(w) = &opts.wifi {
        entries.push(Entry::root_file(wifi::NM_STATE_PATH, wifi::NM_STATE, 0o644));
        entries.push(Entry::root_file(
            wifi::UNBLOCK_UNIT_PATH,
            wifi::UNBLOCK_UNIT,
            0o644,
        ));
        entries.push(Entry::root_file(
            wifi::UNBLOCK_RULE_PATH,
            wifi::UNBLOCK_RULE,
            0o644,
        ));
        if seed {
            // cloud-init renders the network for NetworkManager itself: one place only. A base whose
            // seed is not read (no meta-data) gets the NetworkManager profile, as one without cloud-init.
            boot.push((
                "network-config".to_string(),
                w.network_config().into_bytes(),
            ));
        } else {
            entries.push(Entry::root_file(
                "/etc/NetworkManager/system-connections/herd-wifi.nmconnection",
                w.nm_profile(),
                0o600,
            ));
        }
        cmdline.push(w.cmdline_token());
    }
    let links = enable_links(&entries);
    for (path, target) in &links {
        entries.push(Entry::Symlink {
            path: path.clone(),
            target: target.clone(),
        });
    }
    // The first user (uid 1000, the one userconf renames to `--user`) gets a login shell: Raspberry Pi OS
    // Trixie creates it without one since February 2026, and userconf does not change it.
    if opts.userconf.is_some() {
        let shell = if root.exists("/usr/bin/bash") {
            "/bin/bash"
        } else {
            "/bin/sh"
        };
        if let Some(passwd) = root
            .read("/etc/passwd")
            .ok()
            .and_then(|p| with_login_shell(&String::from_utf8_lossy(&p), shell))
        {
            entries.push(Entry::root_file("/etc/passwd", passwd, 0o644));
        }
    }
    if let Some((user, keys)) = &opts.ssh_keys {
        // In a root-owned place named after the final user: it survives the first-boot rename of the
        // first user (pi → user), which moves home directories around.
        entries.push(Entry::root_file(
            format!("/etc/ssh/authorized_keys.d/{user}"),
            keys.clone(),
            0o644,
        ));
        entries.push(Entry::root_file(SSHD_DROP_IN, SSHD_KEY_ONLY, 0o644));
    }
    let root_files = entries
        .iter()
        .filter_map(|e| match e {
            Entry::File { path, contents, .. } => Some((path.clone(), contents.len() as u64)),
            _ => None,
        })
        .collect();
    let plan = root.plan(&entries)?;

    if let Some(line) = &opts.userconf {
        boot.push(("userconf.txt".to_string(), format!("{line}\n").into_bytes()));
    }
    // SSH on at first boot.
    boot.push(("ssh".to_string(), Vec::new()));
    Ok(Prepared {
        arch,
        links,
        plan,
        root_files,
        boot,
        cmdline,
        cloud_init,
        packages,
        grow_root,
    })
}

/// Resolves and downloads `--packages` for the base in `img`, and checks they fit on its boot partition
/// and, installed, on its root: with the bytes the root partition must grow by for that (0: none).
fn resolve_packages(
    image: &Path,
    img: &Image,
    arch: Arch,
    request: &crate::packages::Request,
) -> Result<(crate::packages::Resolved, u64)> {
    let resolved = crate::packages::resolve(&img.root(), arch, request, &mut |line| {
        eprintln!("    apt: {line}")
    })?;
    let boot = img.boot()?;
    fits(&resolved.manifest, boot.free()?)
        .map_err(|why| Error::Invalid(format!("{}: {why}", image.display())))?;
    let cmdline = if boot.exists("cmdline.txt") {
        String::from_utf8_lossy(&boot.read("cmdline.txt")?).into_owned()
    } else {
        String::new()
    };
    let grows = grows_root_at_first_boot(&cmdline);
    let (note, grow) = root_fits(&resolved, img.root().free()?, grows);
    if grow > 0 && !img.root_is_last {
        return Err(Error::Invalid(format!(
            "{}: {note}, but another partition lies after the root, so it cannot grow",
            image.display()
        )));
    }
    eprintln!("    {note}");
    Ok((resolved, grow))
}

/// Whether Raspberry Pi OS grows the root file system to the card at first boot: Bookworm's kernel
/// command line runs `init=/usr/lib/raspberrypi-sys-mods/firstboot`, Trixie's carries a `resize` token
/// that the initramfs reads (docs/IMAGE.md cites both).
fn grows_root_at_first_boot(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .any(|t| t == "resize" || t == "init=/usr/lib/raspberrypi-sys-mods/firstboot")
}

/// Room dpkg needs beyond what the packages install: its unpacking beside the files it replaces, and a
/// system that still has space to log and run.
const ROOT_MARGIN: u64 = 64 << 20;

/// Whether the packages, once installed, fit on a root with `free` bytes: a root that is grown at first
/// boot has the card's room, one that is not must hold them now, or be made larger in the image. A line
/// saying what was found, and the bytes to add to the root partition (0: none).
fn root_fits(resolved: &crate::packages::Resolved, free: u64, grows: bool) -> (String, u64) {
    let total: u64 = resolved.installed.iter().sum();
    let mb = |b: u64| b as f64 / 1e6;
    if grows {
        let note = format!(
            "installed, the packages take {:.1} MB of the root file system, which the card grows to \
             its size at first boot",
            mb(total)
        );
        return (note, 0);
    }
    if total + ROOT_MARGIN > free {
        let short = total + ROOT_MARGIN - free;
        // The groups resize2fs adds carry their own inode tables and bitmaps (about 2 MiB in each
        // 128 MiB with mke2fs' defaults), and 5% is reserved for root: an eighth more covers both.
        let grow = (short + short / 8).div_ceil(ROOT_GROW_STEP) * ROOT_GROW_STEP;
        let sizes = resolved
            .manifest
            .debs
            .iter()
            .map(|d| d.package.as_str())
            .zip(resolved.installed.iter().copied());
        let note = format!(
            "installed, --packages {} takes {:.1} MB (with {} MiB kept free), the root file system \
             has {:.1} MB free and this base does not grow it at first boot (its cmdline.txt has \
             neither Raspberry Pi OS's 'resize' nor its firstboot init=), so the image's root \
             partition is made {} MiB larger; the largest: {}",
            resolved.manifest.requested.join(","),
            mb(total),
            ROOT_MARGIN >> 20,
            mb(free),
            grow >> 20,
            largest(sizes)
        );
        return (note, grow);
    }
    let note = format!(
        "installed, the packages take {:.1} MB of the root file system's {:.1} MB free",
        mb(total),
        mb(free)
    );
    (note, 0)
}

/// The root partition grows in whole steps of this.
const ROOT_GROW_STEP: u64 = 16 << 20;

/// Whether the packages fit on a boot partition with `free` bytes, leaving the margin.
fn fits(manifest: &crate::packages::Manifest, free: u64) -> std::result::Result<(), String> {
    let total: u64 = manifest.debs.iter().map(|d| d.size).sum();
    // Each file takes whole clusters; a few for the directory and the manifest.
    let needed = total + manifest.debs.len() as u64 * 4096 + crate::packages::BOOT_MARGIN;
    if needed > free {
        return Err(format!(
            "--packages {} needs {:.1} MB on the boot partition (with {} MiB kept free), which has \
             {:.1} MB free; the largest: {}",
            manifest.requested.join(","),
            total as f64 / 1e6,
            crate::packages::BOOT_MARGIN >> 20,
            free as f64 / 1e6,
            largest(manifest.debs.iter().map(|d| (d.package.as_str(), d.size)))
        ));
    }
    Ok(())
}

/// The three largest of (package, bytes), with their sizes.
fn largest<'a>(sizes: impl Iterator<Item = (&'a str, u64)>) -> String {
    let mut by_size: Vec<(&str, u64)> = sizes.collect();
    by_size.sort_by_key(|(_, s)| std::cmp::Reverse(*s));
    by_size
        .iter()
        .take(3)
        .map(|(p, s)| format!("{p} ({:.1} MB)", *s as f64 / 1e6))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes a prepared bake into `image` (the image it was prepared on, or a byte-identical copy).
pub fn finish(image: &Path, prepared: Prepared) -> Result<Baked> {
    let mut img = Image::open(image)?;
    if prepared.grow_root > 0 {
        img = img.grow_root(prepared.grow_root)?;
    }
    img.root().run(&prepared.plan)?;
    let boot = img.boot()?;
    let mut boot_files = Vec::new();
    for (name, contents) in &prepared.boot {
        boot.write(name, contents)?;
        boot_files.push(name.clone());
    }
    let mut packages = None;
    if let Some(resolved) = &prepared.packages {
        crate::packages::write(&boot, resolved)?;
        boot_files.push(crate::packages::MANIFEST.to_string());
        packages = Some(resolved.manifest.clone());
    }
    if !prepared.cmdline.is_empty() {
        let text = String::from_utf8_lossy(&boot.read("cmdline.txt")?).into_owned();
        let line = prepared
            .cmdline
            .iter()
            .fold(text, |line, token| set_cmdline_token(&line, token));
        boot.write("cmdline.txt", line.as_bytes())?;
        boot_files.push("cmdline.txt".into());
    }
    boot.close()?;
    Ok(Baked {
        arch: prepared.arch,
        root_files: prepared.root_files,
        boot_files,
        links: prepared.links,
        cloud_init: prepared.cloud_init,
        packages,
    })
}

/// Where herd's cloud-init settings go: last in byte order, so they win over the base's own (cloud-init
/// reads `cloud.cfg.d` in byte order, the last file setting a key winning; Raspberry Pi OS's is
/// `99_raspberry-pi.cfg`, after any `99-…`, since `_` sorts after `-`).
pub const CLOUD_INIT_DROP_IN: &str = "/etc/cloud/cloud.cfg.d/zz-herd.cfg";

/// Key-only SSH, when the image carries authorized keys. sshd keeps the first value it reads for each
/// keyword (sshd_config(5)) and reads `sshd_config.d/*.conf` in glob order, so this sorts first: before
/// cloud-init's `50-cloud-init.conf` (cloud-init `cloudinit/ssh_util.py` line 565, commit 04eacd06),
/// which an Imager `ssh_pwauth: true` fills with `PasswordAuthentication yes`.
pub const SSHD_DROP_IN: &str = "/etc/ssh/sshd_config.d/00-herd.conf";
const SSHD_KEY_ONLY: &str = "# Written by herd: key-only SSH.\n\
AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/authorized_keys.d/%u\n\
PasswordAuthentication no\nKbdInteractiveAuthentication no\n";

/// A drop-in that starts cloud-init's first stage once the boot partition is mounted.
pub const CLOUD_INIT_ORDER: &str =
    "/etc/systemd/system/cloud-init-local.service.d/10-herd-boot-firmware.conf";
const CLOUD_INIT_ORDER_UNIT: &str = "# Written by herd: cloud-init reads its seed from the mounted boot \
partition\n# rather than mounting it read-only beside /boot/firmware (which then comes up read-only).\n\
[Unit]\nRequiresMountsFor=/boot/firmware\n";

/// cloud-init modules that name the machine.
const HOSTNAME_MODULES: [&str; 3] = ["set_hostname", "update_hostname", "update_etc_hosts"];

/// herd's cloud-init drop-in, given the base's effective `cloud_init_modules` (cloud.cfg merged with
/// cloud.cfg.d, see [`crate::cloudinit`]): `preserve_hostname` (which the early, pre-network naming
/// honours too), and that list without the three modules that name the machine, so that not even a
/// user-data `manage_etc_hosts: true` rewrites `/etc/hosts`. User-data could still list modules
/// itself; Imager's does not.
pub fn cloud_init_drop_in(modules: Option<Vec<crate::cloudinit::ListItem>>) -> String {
    let mut out = String::from(
        "# Written by herd: this card's host name comes from hostname_template (herd-hostname.service).\n\
         # cloud-init leaves the host name and /etc/hosts alone, even when user-data names the card.\n\
         preserve_hostname: true\nmanage_etc_hosts: false\n",
    );
    if let Some(modules) = modules {
        out.push_str("cloud_init_modules:\n");
        for item in modules {
            if !HOSTNAME_MODULES.contains(&item.name.as_str()) {
                out.push_str(&format!(" - {}\n", item.flow));
            }
        }
    }
    out
}

/// `/etc/passwd` with the shell of uid 1000 set to `shell` when it has none (`nologin`, `false`); `None`
/// when nothing needs to change.
pub fn with_login_shell(passwd: &str, shell: &str) -> Option<String> {
    let mut changed = false;
    let lines: Vec<String> = passwd
        .lines()
        .map(|line| {
            let mut f: Vec<&str> = line.split(':').collect();
            let no_shell = f.len() == 7
                && f[2] == "1000"
                && (f[6].ends_with("/nologin") || f[6].ends_with("/false") || f[6].is_empty());
            if no_shell {
                f[6] = shell;
                changed = true;
            }
            f.join(":")
        })
        .collect();
    changed.then(|| lines.join("\n") + "\n")
}

/// The `.wants` symlinks `systemctl enable` would make for the units among `entries`: one per target of
/// each `WantedBy=` in the unit's `[Install]` section.
fn enable_links(entries: &[Entry]) -> Vec<(String, String)> {
    const DIR: &str = "/etc/systemd/system/";
    let mut links = Vec::new();
    for e in entries {
        let Entry::File { path, contents, .. } = e else {
            continue;
        };
        let Some(unit) = path.strip_prefix(DIR).filter(|u| !u.contains('/')) else {
            continue;
        };
        if ![".service", ".timer", ".path"]
            .iter()
            .any(|x| unit.ends_with(x))
        {
            continue;
        }
        let mut install = false;
        for line in String::from_utf8_lossy(contents).lines() {
            let line = line.trim();
            if line.starts_with('[') {
                install = line == "[Install]";
            } else if let Some(targets) = line.strip_prefix("WantedBy=").filter(|_| install) {
                for target in targets.split_whitespace() {
                    links.push((format!("{DIR}{target}.wants/{unit}"), path.clone()));
                }
            }
        }
    }
    links
}

#[cfg(test)]
mod tests {
    #[test]
    fn packages_that_do_not_fit_name_the_largest() {
        use crate::packages::{Deb, Manifest};
        let deb = |p: &str, size: u64| Deb {
            package: p.into(),
            version: "1".into(),
            arch: "arm64".into(),
            file: format!("{p}_1_arm64.deb"),
            size,
            sha256: String::new(),
        };
        let m = Manifest {
            requested: vec!["docker.io".into()],
            debs: vec![
                deb("runc", 8_000_000),
                deb("docker.io", 30_000_000),
                deb("containerd", 20_000_000),
            ],
        };
        assert!(super::fits(&m, 100 << 20).is_ok());
        let e = super::fits(&m, 60 << 20).unwrap_err();
        assert!(e.contains("needs 58.0 MB"), "{e}");
        assert!(
            e.contains("docker.io (30.0 MB), containerd (20.0 MB), runc (8.0 MB)"),
            "{e}"
        );
    }

    #[test]
    fn packages_must_fit_the_root_unless_the_card_grows_it() {
        use crate::packages::{Deb, Manifest, Resolved};
        let deb = |p: &str| Deb {
            package: p.into(),
            version: "1".into(),
            arch: "arm64".into(),
            file: format!("{p}_1_arm64.deb"),
            size: 1,
            sha256: String::new(),
        };
        // Installed sizes of docker.io's set on Trixie arm64 (its largest four), as dpkg-deb read them.
        let r = Resolved {
            manifest: Manifest {
                requested: vec!["docker.io".into()],
                debs: vec![deb("git"), deb("docker.io"), deb("containerd"), deb("runc")],
            },
            files: Vec::new(),
            installed: vec![50_745_344, 71_918_592, 84_662_272, 10_151_936],
        };
        let total = 217_478_144u64;
        let (ok, grow) = super::root_fits(&r, total + (64 << 20), false);
        assert_eq!(grow, 0, "{ok}");
        assert!(
            ok.contains("217.5 MB of the root file system's 284.6 MB free"),
            "{ok}"
        );
        // 4 MiB short: an eighth more for the new groups' metadata, in whole 16 MiB steps.
        let (e, grow) = super::root_fits(&r, total + (60 << 20), false);
        assert_eq!(grow, 16 << 20, "{e}");
        assert!(e.contains("takes 217.5 MB (with 64 MiB kept free)"), "{e}");
        assert!(e.contains("does not grow it at first boot"), "{e}");
        assert!(e.contains("made 16 MiB larger"), "{e}");
        assert!(
            e.contains("containerd (84.7 MB), docker.io (71.9 MB), git (50.7 MB)"),
            "{e}"
        );
        // docker.io on herd's Trixie base (416.2 MB free): 397.3 MB installed.
        let big = Resolved {
            installed: vec![397_300_000],
            ..r.clone()
        };
        let short = 397_300_000 + (64 << 20) - 416_200_000u64;
        let (_, grow) = super::root_fits(&big, 416_200_000, false);
        assert!(grow >= short + short / 8 && grow < short + short / 8 + (16 << 20));
        assert_eq!(grow % (16 << 20), 0);
        let (ok, grow) = super::root_fits(&r, 1 << 20, true);
        assert_eq!(grow, 0);
        assert!(ok.contains("grows to its size at first boot"), "{ok}");
    }

    #[test]
    fn raspberry_pi_os_cmdlines_grow_the_root_and_herds_bases_do_not() {
        // pi-gen stage1/00-boot-files/files/cmdline.txt (04bc6843, Trixie), line 1: the `resize` token.
        assert!(super::grows_root_at_first_boot(
            "console=serial0,115200 console=tty1 root=PARTUUID=1-02 rootfstype=ext4 fsck.repair=yes \
             rootwait resize"
        ));
        // Bookworm images: `init=/usr/lib/raspberrypi-sys-mods/firstboot` (../shared/REFERENCE.md,
        // raspberrypi-sys-mods' firstboot grows the partition, then removes the token and reboots).
        assert!(super::grows_root_at_first_boot(
            "console=tty1 root=PARTUUID=1-02 rootfstype=ext4 fsck.repair=yes rootwait quiet \
             init=/usr/lib/raspberrypi-sys-mods/firstboot"
        ));
        // After that first boot, or on herd's Debian bases: nothing grows it.
        assert!(!super::grows_root_at_first_boot(
            "console=ttyAMA0 root=LABEL=rootfs rootfstype=ext4 fsck.repair=yes rootwait"
        ));
        assert!(!super::grows_root_at_first_boot(
            "resize2fs=no init=/sbin/init"
        ));
    }

    use super::with_login_shell;

    #[test]
    fn the_cloud_init_drop_in_keeps_every_module_but_the_naming_ones() {
        use crate::cloudinit::{CloudInit, Seed};
        const NO_SEED: Seed = Seed {
            meta_data: false,
            cmdline: "",
            boot_label: "bootfs",
        };
        let cfg = "users:\n - default\n\ncloud_init_modules:\n - seed_random\n - bootcmd\n - write_files\n \
                   - growpart\n - resizefs\n - [set_hostname, always]\n - update_hostname\n - \
                   update_etc_hosts\n - ca_certs\n - rsyslog\n - users_groups\n - ssh\n\n\
                   cloud_config_modules:\n - locale\n";
        let base = CloudInit::from_sources(cfg, vec![], &NO_SEED);
        let d = super::cloud_init_drop_in(base.list("cloud_init_modules"));
        assert!(
            d.contains("preserve_hostname: true\nmanage_etc_hosts: false\n"),
            "{d}"
        );
        assert!(!d.contains("hostname\"") && !d.contains("locale"), "{d}");
        // Read back as cloud-init will, with the drop-in last: the base's list minus the naming ones.
        let name = super::CLOUD_INIT_DROP_IN.rsplit('/').next().unwrap();
        let merged = |drop_ins: Vec<(String, String)>| {
            CloudInit::from_sources(cfg, drop_ins, &NO_SEED)
                .list("cloud_init_modules")
                .unwrap()
                .into_iter()
                .map(|i| i.flow)
                .collect::<Vec<_>>()
        };
        let want = [
            "seed_random",
            "bootcmd",
            "write_files",
            "growpart",
            "resizefs",
            "ca_certs",
            "rsyslog",
            "users_groups",
            "ssh",
        ]
        .map(|m| format!("{m:?}"));
        let rpi = (
            "99_raspberry-pi.cfg".to_string(),
            "preserve_hostname: false\n".to_string(),
        );
        let ours = (name.to_string(), d.clone());
        assert_eq!(merged(vec![rpi.clone(), ours.clone()]), want);
        // A base whose drop-in sets the list: that list is the one herd starts from.
        let theirs = (
            "90_modules.cfg".to_string(),
            "cloud_init_modules:\n - [set_hostname, always]\n - [rpi_userconf, once]\n".to_string(),
        );
        let base = CloudInit::from_sources(cfg, vec![theirs.clone()], &NO_SEED);
        let d = super::cloud_init_drop_in(base.list("cloud_init_modules"));
        let ours = (name.to_string(), d);
        let all = CloudInit::from_sources(cfg, vec![theirs, rpi, ours], &NO_SEED);
        let list = all.list("cloud_init_modules").unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].name, "rpi_userconf");
        assert_eq!(list[0].flow, "[\"rpi_userconf\",\"once\"]");
        // ... and herd's preserve_hostname wins over 99_raspberry-pi.cfg's.
        assert_eq!(all.drop_ins.last().unwrap(), name);
        assert_eq!(all.setting("preserve_hostname").as_bool(), Some(true));
        // A base without the list still gets the settings.
        assert!(super::cloud_init_drop_in(None).ends_with("manage_etc_hosts: false\n"));
    }

    #[test]
    fn only_the_first_user_without_a_shell_gets_one() {
        let passwd =
            "root:x:0:0:root:/root:/bin/bash\nsshd:x:101:65534::/run/sshd:/usr/sbin/nologin\n\
                      pi:x:1000:1000:,,,:/home/pi:/usr/sbin/nologin\n";
        assert_eq!(
            with_login_shell(passwd, "/bin/bash").unwrap(),
            "root:x:0:0:root:/root:/bin/bash\nsshd:x:101:65534::/run/sshd:/usr/sbin/nologin\n\
             pi:x:1000:1000:,,,:/home/pi:/bin/bash\n"
        );
        let bookworm = "root:x:0:0:root:/root:/bin/bash\npi:x:1000:1000:,,,:/home/pi:/bin/bash\n";
        assert_eq!(with_login_shell(bookworm, "/bin/bash"), None);
        assert_eq!(
            with_login_shell("root:x:0:0::/root:/bin/sh\n", "/bin/sh"),
            None
        );
    }
}
