//! The image pipeline's core on Pi-layout fixtures (old and 2025 alignment, arm64 and armhf), proven with
//! the real tools: `e2fsck -fn`, `fsck.fat -n`, `sfdisk --dump`, `debugfs`, `systemd-analyze verify`,
//! and the baked binary run under qemu-user.

use std::path::{Path, PathBuf};
use std::process::Command;

use herd_image::ext4::Entry;
use herd_image::fixture::Fixture;
use herd_image::overlay::Values;
use herd_image::{bake, Arch, BakeOptions, Error, Image};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

/// The cross-built agent (`cargo xtask build`; `cargo xtask ci` builds it before the tests).
fn agent_binary(arch: Arch) -> PathBuf {
    let p = herd_image::built_agent(arch);
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask build` first",
        p.display()
    );
    p
}

fn options() -> BakeOptions {
    BakeOptions {
        overlay: workspace().join("overlay"),
        values: Values {
            cluster: "fixture".into(),
            cluster_key: KEY.into(),
            api_token: TOKEN.into(),
            seeds: herd_image::overlay::seeds_toml(&["pi1.local:7496".into()]),
            hostname_template: "herd-{id:6}".into(),
            signing_public_key: "6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw=".into(),
            engine: "none".into(),
            engine_expect: 3,
        },
        userconf: Some("alice:$6$saltsalt$hash".into()),
        ssh_keys: Some(("alice".into(), "ssh-ed25519 AAAAC3Nz alice@laptop\n".into())),
        wifi: None,
        packages: None,
    }
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn sha256(path: &Path) -> String {
    let (ok, out) = run(Command::new("sha256sum").arg(path));
    assert!(ok);
    out.split_whitespace().next().unwrap().to_string()
}

/// Copies a partition out of the image (fsck.fat has no offset option).
fn extract(image: &Path, start: u64, size: u64, to: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(image).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    let mut out = std::fs::File::create(to).unwrap();
    std::io::copy(&mut f.take(size), &mut out).unwrap();
}

fn check_pipeline(fixture: Fixture) {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    fixture.build(&base).unwrap();
    let base_sha = sha256(&base);
    let (ok, table_before) = run(Command::new("sfdisk").arg("--dump").arg(&base));
    assert!(ok, "{table_before}");

    let out = dir.path().join("out.img");
    std::fs::copy(&base, &out).unwrap();
    let opts = options();
    let baked = bake(&out, &opts, |arch| Ok(agent_binary(arch))).unwrap();
    assert_eq!(baked.arch, fixture.arch);

    // The base is untouched; the table is unchanged.
    assert_eq!(sha256(&base), base_sha);
    let (_, table_after) = run(Command::new("sfdisk").arg("--dump").arg(&out));
    let strip = |t: &str| {
        t.replace(out.to_str().unwrap(), "X")
            .replace(base.to_str().unwrap(), "X")
    };
    assert_eq!(strip(&table_after), strip(&table_before));

    // Both filesystems are clean.
    let img = Image::open(&out).unwrap();
    let (ok, text) = run(Command::new("e2fsck").arg("-fn").arg(img.root().spec()));
    assert!(ok, "e2fsck: {text}");
    let fat = dir.path().join("boot.fat");
    extract(&out, img.boot.start, img.boot.size, &fat);
    let (ok, text) = run(Command::new("fsck.fat").arg("-n").arg(&fat));
    assert!(ok, "fsck.fat: {text}");

    // Every injected file reads back byte for byte, with its mode and owner.
    let root = img.root();
    let mut expected = herd_image::overlay::render(&opts.overlay, &opts.values).unwrap();
    expected.push(Entry::root_file(
        "/usr/local/bin/herd",
        std::fs::read(agent_binary(fixture.arch)).unwrap(),
        0o755,
    ));
    expected.push(Entry::root_file(
        "/etc/ssh/authorized_keys.d/alice",
        b"ssh-ed25519 AAAAC3Nz alice@laptop\n",
        0o644,
    ));
    // Key-only SSH, in a drop-in sshd reads before any other: it keeps the first value of each keyword,
    // and cloud-init writes `50-cloud-init.conf` (`PasswordAuthentication yes` for Imager's
    // `ssh_pwauth: true`; cloud-init `cloudinit/ssh_util.py` line 565, commit 04eacd06).
    let sshd = herd_image::bake::SSHD_DROP_IN;
    let name = sshd.rsplit('/').next().unwrap();
    assert!(
        name.as_bytes() < b"50-cloud-init.conf".as_slice() && name.as_bytes() < b"01".as_slice(),
        "{name} is not read first"
    );
    let text = String::from_utf8(root.read(sshd).unwrap()).unwrap();
    assert!(
        text.contains("\nPasswordAuthentication no\n")
            && text.contains("\nKbdInteractiveAuthentication no\n"),
        "{text}"
    );
    for e in &expected {
        let Entry::File {
            path,
            contents,
            mode,
            uid,
            gid,
        } = e
        else {
            continue;
        };
        assert_eq!(&root.read(path).unwrap(), contents, "{path}");
        let st = root.stat(path).unwrap();
        assert_eq!((st.mode, st.uid, st.gid), (*mode, *uid, *gid), "{path}");
    }
    // The units are enabled as their [Install] sections say: the wants symlinks resolve to them.
    for (link, unit) in [
        (herd_image::bake::UNIT_LINK, herd_image::bake::UNIT),
        (
            "/etc/systemd/system/sysinit.target.wants/herd-hostname.service",
            "/etc/systemd/system/herd-hostname.service",
        ),
        // herd upgrade's installer (started by the path unit) and its resumption after a power cut.
        (
            "/etc/systemd/system/multi-user.target.wants/herd-upgrade.path",
            "/etc/systemd/system/herd-upgrade.path",
        ),
        (
            "/etc/systemd/system/multi-user.target.wants/herd-upgrade-resume.service",
            "/etc/systemd/system/herd-upgrade-resume.service",
        ),
        // herd reboot, shutdown, identify and restart: the root unit the agent hands them to.
        (
            "/etc/systemd/system/multi-user.target.wants/herd-action.path",
            "/etc/systemd/system/herd-action.path",
        ),
        // --packages: the first-boot installer (it does nothing on a card without packages).
        (
            "/etc/systemd/system/multi-user.target.wants/herd-packages.service",
            "/etc/systemd/system/herd-packages.service",
        ),
        // [engine]: the swarm's root side (it does nothing on a card without docker.io).
        (
            "/etc/systemd/system/multi-user.target.wants/herd-engine.service",
            "/etc/systemd/system/herd-engine.service",
        ),
    ] {
        assert_eq!(root.stat(link).unwrap().kind, "symlink", "{link}");
        assert_eq!(root.resolve(link).unwrap(), unit);
    }
    // The rendered config parses with the agent's own loader, with the values baked in.
    // The config holds the cluster key and the API token: root's alone.
    let st = root.stat("/etc/herd/herd.toml").unwrap();
    assert_eq!((st.mode & 0o777, st.uid, st.gid), (0o600, 0, 0), "{st:?}");
    let toml = String::from_utf8(root.read("/etc/herd/herd.toml").unwrap()).unwrap();
    let config = herd::config::Config::parse(&toml).unwrap();
    assert_eq!(config.cluster, "fixture");
    assert_eq!(config.gossip.seeds, ["pi1.local:7496"]);
    assert_eq!(config.hostname_template, "herd-{id:6}");
    assert_eq!(config.engine.kind, herd::config::EngineKind::None);
    assert_eq!(config.engine.expect, 3);
    assert!(config.api.token.is_some());
    // The boot partition has the user and SSH switched on.
    let boot = img.boot().unwrap();
    assert_eq!(
        boot.read("userconf.txt").unwrap(),
        b"alice:$6$saltsalt$hash\n"
    );
    assert!(boot.exists("ssh"));
    assert!(String::from_utf8(boot.read("cmdline.txt").unwrap())
        .unwrap()
        .contains("rootwait"));
    // The first user, renamed to alice at first boot, can log in: Trixie made it without a shell.
    let passwd = String::from_utf8(root.read("/etc/passwd").unwrap()).unwrap();
    assert!(
        passwd.contains("\npi:x:1000:1000:,,,:/home/pi:/bin/bash\n")
            && passwd.starts_with("root:x:0:0:root:/root:/bin/bash\n")
            && passwd.contains("messagebus:x:100:101::/nonexistent:/usr/sbin/nologin"),
        "{passwd}"
    );
    let st = root.stat("/etc/passwd").unwrap();
    assert_eq!((st.mode & 0o777, st.uid, st.gid), (0o644, 0, 0));
    // No machine identity is baked in.
    assert_eq!(root.read("/etc/machine-id").unwrap(), b"");

    // The baked binary runs for the image's architecture.
    let bin = dir.path().join("herd-from-image");
    std::fs::write(&bin, root.read("/usr/local/bin/herd").unwrap()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The agents are static: no sysroot. The 32-bit one runs on the oldest CPU a Pi has (ARM1176).
    let (qemu, cpu) = match fixture.arch {
        Arch::Arm64 => ("qemu-aarch64-static", "cortex-a53"),
        Arch::Armhf => ("qemu-arm-static", "arm1176"),
        Arch::Amd64 => panic!("no fixture is made for amd64"),
    };
    let (ok, text) = run(Command::new(qemu)
        .args(["-cpu", cpu])
        .arg(&bin)
        .arg("--version"));
    assert!(ok, "{qemu}: {text}");
    assert_eq!(text.trim(), format!("herd {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn bakes_a_2025_aligned_arm64_image() {
    check_pipeline(Fixture::default());
}

#[test]
fn bakes_an_old_aligned_armhf_image() {
    check_pipeline(Fixture {
        aligned_2025: false,
        arch: Arch::Armhf,
        ..Fixture::default()
    });
}

#[test]
fn partitions_are_found_by_type_and_signature_not_offset() {
    let dir = tempfile::tempdir().unwrap();
    for (aligned, boot_start) in [(false, 8192 * 512), (true, 16384 * 512)] {
        let p = dir.path().join(format!("{aligned}.img"));
        Fixture {
            aligned_2025: aligned,
            ..Fixture::default()
        }
        .build(&p)
        .unwrap();
        let img = Image::open(&p).unwrap();
        assert_eq!(img.boot.start, boot_start);
        assert_eq!(img.root.start, boot_start + 64 * 1024 * 1024);
        assert_eq!(img.arch().unwrap(), Arch::Arm64);
    }
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
    std::fs::create_dir_all(root.join("usr/local/bin")).unwrap();
    // The units it depends on (network-online.target, …) come from this machine's systemd.
    std::fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
    let (ok, text) = run(Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(root.join("usr/lib/systemd/")));
    assert!(ok, "systemd's units (apt-get install systemd): {text}");
    let units = [
        "herd.service",
        "herd-hostname.service",
        "herd-upgrade.path",
        "herd-upgrade.service",
        "herd-upgrade-resume.service",
        "herd-action.path",
        "herd-action.service",
        "herd-packages.service",
        "herd-engine.service",
    ];
    for unit in units {
        let from = workspace().join("overlay/etc/systemd/system").join(unit);
        std::fs::copy(&from, root.join("etc/systemd/system").join(unit)).unwrap();
    }
    // verify checks that the ExecStart binary exists and is executable.
    std::fs::copy("/bin/true", root.join("usr/local/bin/herd")).unwrap();
    std::fs::copy("/bin/true", root.join("usr/local/bin/herd.previous")).unwrap();
    let (ok, text) = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(units.map(|u| root.join("etc/systemd/system").join(u))));
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
}

#[test]
fn bad_images_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options();
    let binary = |arch| Ok(agent_binary(arch));

    let missing = dir.path().join("missing.img");
    let e = bake(&missing, &opts, binary).unwrap_err();
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("missing.img"),
        "{e}"
    );

    let zeros = dir.path().join("zeros.img");
    std::fs::write(&zeros, vec![0u8; 1 << 20]).unwrap();
    let e = bake(&zeros, &opts, binary).unwrap_err();
    assert!(e.to_string().contains("no MBR partition table"), "{e}");

    let good = dir.path().join("good.img");
    Fixture::default().build(&good).unwrap();
    let truncated = dir.path().join("truncated.img");
    std::fs::copy(&good, &truncated).unwrap();
    let len = std::fs::metadata(&truncated).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let e = bake(&truncated, &opts, binary).unwrap_err();
    assert!(e.to_string().contains("truncated image"), "{e}");

    // No ext4: wipe the root superblock's magic.
    let no_root = dir.path().join("noroot.img");
    std::fs::copy(&good, &no_root).unwrap();
    let img = Image::open(&no_root).unwrap();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&no_root)
            .unwrap();
        f.seek(SeekFrom::Start(img.root.start + 1024 + 56)).unwrap();
        f.write_all(&[0, 0]).unwrap();
    }
    let e = bake(&no_root, &opts, binary).unwrap_err();
    assert!(e.to_string().contains("no ext4 root partition"), "{e}");

    // A root filesystem too small for the overlay: refused before anything is written.
    let full = dir.path().join("full.img");
    Fixture {
        root_mib: 16,
        fill: vec![("/var/cache/blob".into(), 10 << 20)],
        ..Fixture::default()
    }
    .build(&full)
    .unwrap();
    let before = sha256(&full);
    let e = bake(&full, &opts, binary).unwrap_err();
    assert!(e.to_string().contains("root filesystem is too full"), "{e}");
    assert_eq!(sha256(&full), before, "nothing written");
}

/// Bakes a fixture with Wi-Fi; returns the image and the temporary directory holding it.
fn bake_with_wifi(fixture: Fixture, setup: impl FnOnce(&Image)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("out.img");
    fixture.build(&img).unwrap();
    setup(&Image::open(&img).unwrap());
    let mut opts = options();
    opts.wifi =
        Some(herd_image::wifi::Wifi::new("ThisIsASSID", "ThisIsAPassword", "gb", true).unwrap());
    bake(&img, &opts, |arch| Ok(agent_binary(arch))).unwrap();
    let image = Image::open(&img).unwrap();
    let (ok, text) = run(Command::new("e2fsck").arg("-fn").arg(image.root().spec()));
    assert!(ok, "e2fsck: {text}");
    (dir, img)
}

/// The WPA key of ThisIsASSID / ThisIsAPassword (IEEE 802.11i, H.4.1).
const PSK: &str = "0dc0d6eb90555ed6419756b9a15ec3e3209b63df707dd508d14581f8982721af";

#[test]
fn wifi_on_a_base_without_cloud_init_is_a_networkmanager_profile() {
    let (_dir, img) = bake_with_wifi(Fixture::default(), |_| {});
    let image = Image::open(&img).unwrap();
    let root = image.root();
    let profile = "/etc/NetworkManager/system-connections/herd-wifi.nmconnection";
    let st = root.stat(profile).unwrap();
    assert_eq!((st.mode & 0o777, st.uid, st.gid), (0o600, 0, 0), "{st:?}");
    let text = String::from_utf8(root.read(profile).unwrap()).unwrap();
    assert!(
        text.contains("ssid=ThisIsASSID\n") && text.contains("hidden=true\n"),
        "{text}"
    );
    assert!(text.contains(&format!("psk={PSK}\n")), "{text}");
    assert!(!text.contains("ThisIsAPassword"));
    // The radio is on and unblocked before NetworkManager starts.
    let state = String::from_utf8(
        root.read("/var/lib/NetworkManager/NetworkManager.state")
            .unwrap(),
    )
    .unwrap();
    assert!(state.contains("WirelessEnabled=true"), "{state}");
    let link = "/etc/systemd/system/sysinit.target.wants/herd-wifi-unblock.service";
    assert_eq!(
        root.resolve(link).unwrap(),
        "/etc/systemd/system/herd-wifi-unblock.service"
    );
    let rule = String::from_utf8(
        root.read("/etc/udev/rules.d/80-herd-wifi-unblock.rules")
            .unwrap(),
    )
    .unwrap();
    assert!(
        rule.contains("SUBSYSTEM==\"rfkill\", ATTR{type}==\"wlan\", ATTR{soft}=\"0\""),
        "{rule}"
    );
    // The regulatory domain is on the kernel command line, which stays one line.
    let boot = image.boot().unwrap();
    let cmdline = String::from_utf8(boot.read("cmdline.txt").unwrap()).unwrap();
    assert_eq!(cmdline.lines().count(), 1, "{cmdline:?}");
    assert!(
        cmdline.contains("rootwait") && cmdline.contains(" cfg80211.ieee80211_regdom=GB"),
        "{cmdline:?}"
    );
    assert!(!boot.exists("network-config"));
    assert!(
        !root.exists(herd_image::bake::CLOUD_INIT_DROP_IN)
            && !root.exists(herd_image::bake::CLOUD_INIT_ORDER),
        "no cloud-init, no drop-in"
    );
    // systemd accepts the unit.
    let unit = tempfile::tempdir().unwrap();
    let path = unit.path().join("herd-wifi-unblock.service");
    std::fs::write(
        &path,
        root.read("/etc/systemd/system/herd-wifi-unblock.service")
            .unwrap(),
    )
    .unwrap();
    let (ok, text) = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    assert!(ok, "{text}");
}

/// A cloud-init base as Raspberry Pi OS Trixie ships it since 2025-11-24 (pi-gen cb05dfcc): NoCloud
/// seeded from the boot partition (`99_raspberry-pi.cfg`), and `meta-data` there
/// (`stage2/04-cloud-init/01-run.sh` line 10 at tag 2026-06-18-raspios-trixie-arm64); `seed: false` is
/// the 2025-10-01 image, whose install of the seed files is commented out (pi-gen e4640531).
fn cloud_init_base(seed: bool) -> impl FnOnce(&Image) {
    move |image: &Image| {
        image
            .root()
            .apply(&[
                Entry::root_file("/usr/bin/cloud-init", "#!/usr/bin/python3\n", 0o755),
                Entry::root_file(
                    "/etc/cloud/cloud.cfg",
                    "cloud_init_modules:\n - seed_random\n - set_hostname\n - users_groups\n",
                    0o644,
                ),
                Entry::root_file(
                    "/etc/cloud/cloud.cfg.d/99_raspberry-pi.cfg",
                    "datasource_list: [ NoCloud, None ]\ndatasource:\n  NoCloud:\n    seedfrom: file:///boot/firmware\n",
                    0o644,
                ),
            ])
            .unwrap();
        if seed {
            let boot = image.boot().unwrap();
            boot.write("meta-data", b"dsmode: local\ninstance_id: rpios-image\n")
                .unwrap();
            boot.close().unwrap();
        }
    }
}

#[test]
fn wifi_on_a_cloud_init_base_whose_seed_is_unread_is_a_networkmanager_profile() {
    let (_dir, img) = bake_with_wifi(Fixture::default(), cloud_init_base(false));
    let image = Image::open(&img).unwrap();
    let root = image.root();
    let profile = "/etc/NetworkManager/system-connections/herd-wifi.nmconnection";
    let text = String::from_utf8(root.read(profile).unwrap()).unwrap();
    assert!(text.contains("ssid=ThisIsASSID\n"), "{text}");
    assert!(!image.boot().unwrap().exists("network-config"));
    // Still a cloud-init base: the naming drop-in, read last.
    let drop_in =
        String::from_utf8(root.read(herd_image::bake::CLOUD_INIT_DROP_IN).unwrap()).unwrap();
    assert!(
        drop_in.contains("preserve_hostname: true")
            && drop_in.contains(" - \"users_groups\"\n")
            && !drop_in.contains("set_hostname"),
        "{drop_in}"
    );
}

#[test]
fn wifi_on_a_cloud_init_base_goes_to_its_network_config_only() {
    let (_dir, img) = bake_with_wifi(Fixture::default(), cloud_init_base(true));
    let image = Image::open(&img).unwrap();
    let root = image.root();
    assert!(!root.exists("/etc/NetworkManager/system-connections/herd-wifi.nmconnection"));
    let boot = image.boot().unwrap();
    let config = String::from_utf8(boot.read("network-config").unwrap()).unwrap();
    for want in [
        "version: 2",
        "eth0:",
        "wlan0:",
        "regulatory-domain: \"GB\"",
        "\"ThisIsASSID\":",
        &format!("password: \"{PSK}\""),
        "hidden: true",
    ] {
        assert!(config.contains(want), "{want} missing:\n{config}");
    }
    assert!(!config.contains("ThisIsAPassword"));
    // The real netplan renders it for NetworkManager, IPv6 kept on both interfaces. cloud-init passes a
    // version-2 network-config to netplan as it is ("V2 to V2 passthrough", cloud-init
    // `cloudinit/net/netplan.py` line 465, commit 04eacd06) in /etc/netplan/50-cloud-init.yaml, and
    // Raspberry Pi OS makes NetworkManager the renderer (pi-gen
    // `stage2/04-cloud-init/files/00-network-manager-all.yaml` at tag 2025-10-01-raspios-trixie-arm64).
    let np = tempfile::tempdir().unwrap();
    for (path, text) in [
        (
            "lib/netplan/00-network-manager-all.yaml",
            "network:\n  version: 2\n  renderer: NetworkManager\n",
        ),
        ("etc/netplan/50-cloud-init.yaml", config.as_str()),
    ] {
        let p = np.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    let (ok, text) = run(Command::new("netplan")
        .arg("generate")
        .arg("--root-dir")
        .arg(np.path()));
    assert!(ok, "netplan generate: {text}");
    let dir = np.path().join("run/NetworkManager/system-connections");
    let mut profiles: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    profiles.sort();
    assert_eq!(profiles.len(), 2, "{profiles:?}");
    for p in &profiles {
        let ipv6 = p.split("[ipv6]\n").nth(1).unwrap_or("");
        assert!(ipv6.starts_with("method=auto\n"), "IPv6 dropped:\n{p}");
        assert!(p.contains("[ipv4]\nmethod=auto\n"), "{p}");
    }
    assert!(
        profiles.iter().any(|p| p.contains("type=ethernet"))
            && profiles.iter().any(|p| p.contains("type=wifi")
                && p.contains("ssid=ThisIsASSID\n")
                && p.contains(&format!("psk={PSK}\n"))),
        "{profiles:?}"
    );
    let cmdline = String::from_utf8(boot.read("cmdline.txt").unwrap()).unwrap();
    assert!(
        cmdline.contains("cfg80211.ieee80211_regdom=GB"),
        "{cmdline:?}"
    );
    // cloud-init is told to leave the host name to herd.
    let drop_in =
        String::from_utf8(root.read(herd_image::bake::CLOUD_INIT_DROP_IN).unwrap()).unwrap();
    assert!(drop_in.contains("preserve_hostname: true"), "{drop_in}");
    // And its first stage waits for the boot partition's mount.
    let order = String::from_utf8(root.read(herd_image::bake::CLOUD_INIT_ORDER).unwrap()).unwrap();
    assert!(
        order.contains("[Unit]\nRequiresMountsFor=/boot/firmware\n"),
        "{order}"
    );
}

/// `--packages` on the boot partition: every file and the manifest read back, and fsck.fat finds nothing
/// to repair (it did, at every card's boot, when they went into a directory of their own: fatfs 0.3.6
/// writes a new directory's `.` and `..` with long-name entries).
#[test]
fn packages_on_the_boot_partition_leave_it_clean() {
    use herd_image::packages::{Deb, Manifest, Resolved, FILE_PREFIX, MANIFEST};
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("base.img");
    Fixture::default().build(&image).unwrap();
    let mut debs = Vec::new();
    let mut files = Vec::new();
    for (i, name) in [
        "libcap2_1%3a2.66-4+deb12u3+b1_arm64.deb",
        "nginx-common_1.22.1-9+deb12u9_all.deb",
    ]
    .iter()
    .enumerate()
    {
        let body = vec![i as u8; 70_000 + i * 1000];
        let path = dir.path().join(name);
        std::fs::write(&path, &body).unwrap();
        debs.push(Deb {
            package: name.split('_').next().unwrap().into(),
            version: "1".into(),
            arch: "arm64".into(),
            file: name.to_string(),
            size: body.len() as u64,
            sha256: sha256(&path),
        });
        files.push(path);
    }
    let resolved = Resolved {
        manifest: Manifest {
            requested: vec!["nginx-light".into()],
            debs,
        },
        files,
        installed: vec![0; 3],
    };
    let img = Image::open(&image).unwrap();
    let boot = img.boot().unwrap();
    herd_image::packages::write(&boot, &resolved).unwrap();
    boot.close().unwrap();
    let boot = img.boot().unwrap();
    for (deb, path) in resolved.manifest.debs.iter().zip(&resolved.files) {
        let back = boot.read(&format!("{FILE_PREFIX}{}", deb.file)).unwrap();
        assert_eq!(back, std::fs::read(path).unwrap(), "{}", deb.file);
    }
    let manifest: Manifest = serde_json::from_slice(&boot.read(MANIFEST).unwrap()).unwrap();
    assert_eq!(manifest, resolved.manifest);
    let fat = dir.path().join("boot.fat");
    extract(&image, img.boot.start, img.boot.size, &fat);
    let (ok, text) = run(Command::new("fsck.fat").arg("-n").arg(&fat));
    assert!(
        ok && !text.contains("Auto-") && !text.contains("Expected"),
        "fsck.fat: {text}"
    );
}

/// A root that must hold more than it has room for (packages on a base that does not grow it at first
/// boot) grows in the image: the partition table, the file's length and the ext4 file system agree
/// (`sfdisk --dump`, `e2fsck -fn`), the files inside read back and the boot partition is untouched.
#[test]
fn the_root_partition_grows_in_the_image() {
    for fixture in [
        Fixture::default(),
        Fixture {
            aligned_2025: true,
            ..Fixture::default()
        },
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("base.img");
        fixture.build(&path).unwrap();
        let img = Image::open(&path).unwrap();
        assert!(img.root_is_last);
        let (boot, root) = (img.boot, img.root);
        let free = img.root().free().unwrap();
        let os_release = img.root().read("/etc/os-release").unwrap();
        let boot_bytes = {
            let b = img.boot().unwrap();
            b.read("cmdline.txt").unwrap()
        };
        let img = img.grow_root(40_000_000).unwrap();
        let mib = 1u64 << 20;
        assert_eq!(img.root.start, root.start);
        assert_eq!(
            img.root.size,
            root.size + 39 * mib,
            "40 MB is 38.2 MiB, rounded up"
        );
        assert_eq!(img.boot, boot);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            img.root.start + img.root.size
        );
        let (ok, text) = run(Command::new("sfdisk").arg("--dump").arg(&path));
        assert!(ok, "sfdisk: {text}");
        let line = text.lines().find(|l| l.contains("type=83")).unwrap();
        let sectors = format!("size= {}", img.root.size / 512);
        assert!(
            line.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .contains(&sectors),
            "{sectors} in {text}"
        );
        let (ok, text) = run(Command::new("e2fsck").arg("-fn").arg(img.root().spec()));
        assert!(ok, "e2fsck: {text}");
        let grown = img.root().free().unwrap();
        assert!(
            grown > free + 36 * mib,
            "free {free} -> {grown}: the new groups' metadata takes little"
        );
        assert_eq!(img.root().read("/etc/os-release").unwrap(), os_release);
        assert_eq!(img.boot().unwrap().read("cmdline.txt").unwrap(), boot_bytes);
    }
}
