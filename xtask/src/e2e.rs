//! `cargo xtask e2e`: boot-and-join on the real image. Makes (or takes from the cache) the Debian bases,
//! bakes the herd image for each architecture exactly as `cargo xtask image` does (no seeds: the VMs must
//! find each other with mDNS), makes `herd upgrade`'s artifacts (a second build of the agent and a broken
//! one, `cargo xtask release`), and runs the QEMU harness (`ci/src/e2e/`). Serial consoles and timings
//! land in `target/e2e/`.

use anyhow::bail;
use herd_image::Arch;

use crate::deps::{ensure_packages, is_root};
use crate::util::{root, run as run_step, test_profile_run};

/// The user the test images are built with (from userconf.txt, as a Raspberry Pi Imager user would be);
/// not the Trixie base's first user (`pi`), so that userconf renames it as on Raspberry Pi OS.
const USER: &str = "alice";
/// The Wi-Fi network of the Wi-Fi test (an access point inside one VM).
const WIFI_SSID: &str = "herd e2e";

/// What the 64-bit VMs' images carry for their first boot: a web server with a service of its own, which
/// the test reaches on port 80.
const PACKAGES: [&str; 1] = ["nginx-light"];

/// `--packages` resolved against a base's own state: what it has installed resolves to nothing, and what
/// it lacks brings no package the base already has at that version (nothing is downloaded again).
fn packages_resolve_against(base: &std::path::Path, arch: Arch, what: &str) -> anyhow::Result<()> {
    use herd_image::packages::{installed_on, resolve, Request};
    let img = herd_image::Image::open(base)?;
    let root = img.root();
    let installed = installed_on(&root)?;
    let cache = crate::util::cache_dir().join("apt");
    let quiet = &mut |_: &str| {};
    // Two the base has (the bases install them, as Raspberry Pi OS Lite does).
    let have = ["openssh-server", "sudo"];
    for p in have {
        if !installed.keys().any(|(n, _)| n == p) {
            bail!("{what}: the base does not list {p} as installed; its dpkg status was misread");
        }
    }
    let request = |names: &[&str]| Request {
        names: names.iter().map(|n| n.to_string()).collect(),
        cache: cache.clone(),
    };
    let none = resolve(&root, arch, &request(&have), quiet)?;
    if !none.manifest.debs.is_empty() {
        bail!(
            "{what}: {} are installed on the base, yet resolving them downloads {:?}",
            have.join(", "),
            none.manifest
                .debs
                .iter()
                .map(|d| &d.file)
                .collect::<Vec<_>>()
        );
    }
    let got = resolve(&root, arch, &request(&PACKAGES), quiet)?;
    let again: Vec<&str> = got
        .manifest
        .debs
        .iter()
        .filter(|d| installed.get(&(d.package.clone(), d.arch.clone())) == Some(&d.version))
        .map(|d| d.file.as_str())
        .collect();
    if got.manifest.debs.is_empty() || !again.is_empty() {
        bail!(
            "{what}: {} resolved to {} files, of which already installed on the base: {again:?}",
            PACKAGES.join(", "),
            got.manifest.debs.len()
        );
    }
    for p in PACKAGES {
        if !got.manifest.debs.iter().any(|d| d.package == p) {
            bail!("{what}: {p} itself is not among what was resolved");
        }
    }
    println!(
        "==> packages on {what}: {} resolve to {} files ({:.1} MB), none of the base's {} installed \
         packages among them; {} (installed) resolve to none",
        PACKAGES.join(", "),
        got.manifest.debs.len(),
        got.total() as f64 / 1e6,
        installed.len(),
        have.join(" and ")
    );
    Ok(())
}

/// A copy of the Trixie base with Raspberry Pi OS Trixie's apt layout, which herd's bases (one-line
/// `sources.list`, keys in `trusted.gpg.d`, as mmdebstrap makes them) do not have: the Debian archive as a
/// deb822 source whose `Signed-By` names a keyring (pi-gen `stage0/00-configure-apt/files/debian.sources`
/// lines 1-5, commit b434ecdf; Raspberry Pi's own archive, `raspi.sources` there, is not reachable from
/// here), and armhf as a foreign architecture (`dpkg --add-architecture armhf`, pi-gen
/// `stage0/00-configure-apt/00-run.sh` line 17, commit 04250ea5). The keyring is the base's own under a
/// name no build machine has, so a `Signed-By` read on the build machine instead of in the copy fails.
fn raspios_apt_layout(
    base: &std::path::Path,
    out: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    use herd_image::ext4::Entry;
    let copy = out.join("raspios-apt-layout.img");
    std::fs::copy(base, &copy)?;
    let img = herd_image::Image::open(&copy)?;
    let root = img.root();
    let keyring = root.read("/usr/share/keyrings/debian-archive-keyring.pgp")?;
    let renamed = "/usr/share/keyrings/herd-e2e-debian-archive.pgp";
    root.apply(&[
        Entry::root_file(
            "/etc/apt/sources.list",
            "# Raspberry Pi OS Trixie: see sources.list.d/debian.sources\n",
            0o644,
        ),
        Entry::root_file(
            "/etc/apt/sources.list.d/debian.sources",
            format!(
                "Types: deb\nURIs: http://deb.debian.org/debian/\nSuites: trixie\n\
                 Components: main contrib non-free non-free-firmware\nSigned-By: {renamed}\n"
            ),
            0o644,
        ),
        Entry::root_file(renamed, keyring, 0o644),
        Entry::root_file("/var/lib/dpkg/arch", "arm64\narmhf\n", 0o644),
    ])?;
    Ok(copy)
}

pub fn run(flags: &crate::flags::E2e) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the boot-and-join test builds a LAN of network namespaces and the Debian base, which needs \
             root; run:\n    sudo env PATH=\"$PATH\" cargo xtask e2e"
        );
    }
    ensure_packages("boot-and-join test", crate::packages::E2E_NEEDS)?;
    let out = root().join("target/e2e");
    std::fs::create_dir_all(&out)?;
    let mut arches = vec![Arch::Arm64];
    if !flags.no_armhf {
        arches.push(Arch::Armhf);
    }
    let mut harness = test_profile_run("herd-ci", "herd-e2e");
    // A random password: the test logs in with its SSH key, and gives this to sudo, which asks for it.
    let password = out.join("password");
    let mut random = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut random)?;
    std::fs::write(
        &password,
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            + "\n",
    )?;
    // A key to log in with: the test logs in over SSH (the user's shell, the keys surviving the rename).
    let key = out.join("id_e2e");
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(out.join("id_e2e.pub"));
    let mut keygen = std::process::Command::new("ssh-keygen");
    keygen
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "herd-e2e", "-f"])
        .arg(&key);
    run_step("an SSH key for the test (ssh-keygen)", keygen)?;
    // The Wi-Fi network of the Trixie image (the VM's access point has the same passphrase).
    let wifi_password = out.join("wifi-password");
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut random)?;
    std::fs::write(
        &wifi_password,
        random[..10]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            + "\n",
    )?;
    let mut wifi_debs = None;
    let builds: Vec<_> = crate::base::E2E_BASES
        .iter()
        .copied()
        .filter(|(arch, _)| arches.contains(arch))
        .collect();
    // Those not cached are built side by side.
    let bases = crate::base::ensure_all(&builds)?;
    for ((arch, suite), base) in builds.iter().zip(&bases) {
        packages_resolve_against(base, *arch, &format!("{} {}", suite.name(), arch.name()))?;
        if *suite == crate::flags::Suite::Trixie {
            let copy = raspios_apt_layout(base, &out)?;
            let result = packages_resolve_against(
                &copy,
                *arch,
                "trixie arm64 with Raspberry Pi OS's apt layout (deb822, Signed-By, armhf foreign)",
            );
            let _ = std::fs::remove_file(&copy);
            result?;
        }
    }
    for ((arch, suite), base) in builds.into_iter().zip(bases) {
        let name = format!("e2e-{}-{}", arch.name(), suite.name());
        let mut image = crate::flags::Image {
            cluster: "e2e".into(),
            base: Some(base.to_string_lossy().into_owned()),
            out: Some(out.clone()),
            name: Some(name.clone()),
            user: Some(USER.into()),
            password_file: Some(password.clone()),
            ssh_key: Some(out.join("id_e2e.pub")),
            ..Default::default()
        };
        // Packages installed at first boot, offline, on the 64-bit VMs of both releases
        // (checked by `ci/src/e2e/packages.rs`).
        if arch == Arch::Arm64 {
            image.packages = PACKAGES.iter().map(|p| p.to_string()).collect();
        }
        // Wi-Fi on the release whose base has NetworkManager and the access point's packages.
        if suite == crate::flags::Suite::Trixie && arch == Arch::Arm64 {
            wifi_debs = Some(crate::base::test_debs(&base));
            image.wifi_ssid = Some(WIFI_SSID.into());
            image.wifi_country = Some("GB".into());
            image.wifi_password_file = Some(wifi_password.clone());
        }
        crate::image::make(&image)?;
        harness
            .arg(format!("--{}", arch.name()))
            .arg(out.join(format!("{name}.img")));
    }
    // herd upgrade's artifacts: a second build of the 64-bit agent (same code, another version) and a
    // broken one, both signed with the test cluster's key.
    let version = env!("CARGO_PKG_VERSION");
    let secrets = root().join("secrets/e2e.toml");
    let good = crate::release::make(&crate::release::Options {
        cluster: "e2e".into(),
        version: format!("{version}+e2e"),
        arches: vec![Arch::Arm64],
        binaries: vec![],
        secrets: secrets.clone(),
        out: out.join("upgrade.herd"),
    })?;
    let broken_version = format!("{version}+e2e.broken");
    let script = out.join("broken-agent");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh
# herd's e2e: a deliberately broken agent. It says its version, then fails at start.
             if [ \"$1\" = --version ]; then echo \"herd {broken_version}\"; exit 0; fi
             echo \"broken on purpose\" >&2
exit 1
"
        ),
    )?;
    let broken = crate::release::make(&crate::release::Options {
        cluster: "e2e".into(),
        version: broken_version,
        arches: vec![],
        binaries: vec![(Arch::Arm64, script)],
        secrets: secrets.clone(),
        out: out.join("broken.herd"),
    })?;
    harness
        .arg("--upgrade")
        .arg(good)
        .arg("--upgrade-broken")
        .arg(broken)
        .arg("--secrets")
        .arg(secrets);
    harness
        .arg("--user")
        .arg(USER)
        .arg("--ssh-identity")
        .arg(&key)
        .arg("--password-file")
        .arg(&password)
        .arg("--out")
        .arg(&out);
    if let Some(debs) = wifi_debs {
        harness
            .args(["--wifi-ssid", WIFI_SSID, "--wifi-password-file"])
            .arg(&wifi_password)
            .arg("--wifi-debs")
            .arg(debs);
    }
    run_step("boot and join (herd-e2e)", harness)
}
