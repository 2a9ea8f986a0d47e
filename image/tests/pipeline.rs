//! The whole job on fixtures: outputs and their checksums, the Imager manifest, `.img.xz` in and out, a
//! URL base with its published checksum, and bad inputs that must leave the output directory empty.

use std::path::{Path, PathBuf};
use std::process::Command;

use herd_image::fixture::Fixture;
use herd_image::overlay::Values;
use herd_image::pipeline::{run, sha256_file, Base, PipelineOptions};
use herd_image::{Arch, BakeOptions};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

fn agent_binary(arch: Arch) -> herd_image::Result<PathBuf> {
    let p = herd_image::built_agent(arch);
    assert!(p.exists(), "{}: run `cargo xtask build` first", p.display());
    Ok(p)
}

fn options(base: Base, dir: &Path, xz: bool) -> PipelineOptions {
    PipelineOptions {
        base,
        cache_dir: dir.join("cache"),
        out_dir: dir.join("out"),
        name: "herd-test".into(),
        bake: BakeOptions {
            overlay: workspace().join("overlay"),
            values: Values {
                cluster: "test".into(),
                cluster_key: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into(),
                api_token: "0123456789abcdef0123".into(),
                seeds: "[]".into(),
                hostname_template: "herd-{id:6}".into(),
                signing_public_key: String::new(),
                engine: "none".into(),
                engine_expect: 1,
            },
            userconf: None,
            ssh_keys: None,
            wifi: None,
            packages: None,
        },
        xz,
        checksum: false,
        url_base: None,
        imager_customisation: false,
    }
}

fn xz(path: &Path) -> PathBuf {
    let out = path.with_extension("img.xz");
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "xz -c -T0 -1 '{}' > '{}'",
            path.display(),
            out.display()
        ))
        .status()
        .unwrap()
        .success();
    assert!(ok);
    out
}

/// Everything in the output directory (hidden partial files included).
fn outputs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("out"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_local_img_with_xz_becomes_img_sha256_xz_and_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    Fixture::default().build(&base).unwrap();
    let base_sha = sha256_file(&base).unwrap();
    let s = run(
        &options(Base::File(base.clone()), dir.path(), true),
        agent_binary,
    )
    .unwrap();
    assert_eq!(
        sha256_file(&base).unwrap(),
        base_sha,
        "the base is never modified"
    );
    assert_eq!(
        outputs(dir.path()),
        [
            "herd-test.img",
            "herd-test.img.sha256",
            "herd-test.img.xz",
            "herd-test.png",
            "herd-test.rpi-imager-manifest"
        ]
    );
    // Planned on the base while the copy was made, written into the copy: a clean filesystem holding
    // the agent byte for byte, and the copy is all that changed.
    let out = dir.path().join("out");
    let img = herd_image::Image::open(&out.join("herd-test.img")).unwrap();
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(img.root().spec())
        .output()
        .unwrap();
    assert!(fsck.status.success(), "{fsck:?}");
    assert_eq!(
        img.root().read(herd_image::bake::BINARY).unwrap(),
        std::fs::read(agent_binary(Arch::Arm64).unwrap()).unwrap()
    );
    assert!(img.boot().unwrap().exists("ssh"));
    // The .sha256 is what sha256sum says, in its format.
    let check = Command::new("sha256sum")
        .arg("-c")
        .arg("herd-test.img.sha256")
        .current_dir(&out)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    // The .xz holds the same image.
    let xz_sha = Command::new("sh")
        .arg("-c")
        .arg("xz -dc herd-test.img.xz | sha256sum")
        .current_dir(&out)
        .output()
        .unwrap();
    let image_sha256 = s.image_sha256.clone().unwrap();
    assert!(String::from_utf8_lossy(&xz_sha.stdout).starts_with(&image_sha256));
    // The manifest is one Imager loads, and it describes these very files.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.manifest.as_ref().unwrap()).unwrap()).unwrap();
    let os = imager_entry(&m);
    assert_eq!(os["extract_sha256"], image_sha256.as_str());
    assert_eq!(os["extract_size"], s.image_size);
    let xz_path = out.join("herd-test.img.xz").canonicalize().unwrap();
    assert_eq!(os["url"], format!("file://{}", xz_path.display()));
    assert_eq!(
        os["image_download_sha256"].as_str().unwrap(),
        sha256_file(&xz_path).unwrap()
    );
    assert_eq!(
        os["image_download_size"],
        std::fs::metadata(&xz_path).unwrap().len()
    );
    let icon = os["icon"]
        .as_str()
        .unwrap()
        .strip_prefix("file://")
        .unwrap();
    assert!(std::fs::read(icon)
        .unwrap()
        .starts_with(b"\x89PNG\r\n\x1a\n"));
    assert_eq!(os["devices"][0], "pi5-64bit");
    assert_eq!(os["architecture"], "armv8");
    assert_eq!(
        os["init_format"], "none",
        "herd baked the user, keys and Wi-Fi: Imager offers no customisation by default"
    );
}

/// Walks a manifest through Imager 2.x's own steps, as its source states them (rpi-imager at commit
/// 72ad1179, v2.0.11.1+), and returns the boards on which the entry is offered:
/// - `src/hwlistmodel.cpp` lines 27-39, `HWListModel::reload()`: no top-level `imager` object, or no
///   `devices` array in it, and the device list is not loaded (returns false); lines 49-71 read each
///   device's `name`, `tags`, `icon`, `description`, `matching_type`;
/// - `src/wizard/DeviceSelectionStep.qml` line 23: Next is enabled only once a device is selected, so an
///   empty device list is a dead end;
/// - `src/imagewriter.cpp` lines 2298-2339, `filterOsListWithHWTags`: an entry with `devices` is kept iff
///   one of them is among the selected board's tags; one without is kept only for an "inclusive" board
///   (`src/hwlistmodel.h` lines 49-51);
/// - `src/oslistmodel.cpp` lines 25-52: an entry whose `init_format` is not one of '', systemd,
///   cloudinit, cloudinit-rpi, rpi-preseed, none is pruned.
fn boards_offering_the_entry(m: &serde_json::Value) -> Vec<String> {
    let devices = m["imager"]["devices"]
        .as_array()
        .expect("Imager's HWListModel::reload() needs imager.devices, an array");
    assert!(
        !devices.is_empty(),
        "no board to select: Imager's Next stays disabled"
    );
    let mut offered = Vec::new();
    for d in devices {
        let name = d["name"].as_str().expect("a board has a name");
        let tags: Vec<&str> = d["tags"]
            .as_array()
            .expect("a board has tags")
            .iter()
            .map(|t| t.as_str().expect("tags are strings"))
            .collect();
        assert!(d["description"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(d["icon"].as_str().is_some_and(|s| !s.is_empty()));
        let inclusive = d["matching_type"] == "inclusive";
        let shown = m["os_list"].as_array().unwrap().iter().any(|os| {
            let valid = [
                "",
                "systemd",
                "cloudinit",
                "cloudinit-rpi",
                "rpi-preseed",
                "none",
            ]
            .contains(&os["init_format"].as_str().unwrap_or(""));
            let matches = match os["devices"].as_array() {
                Some(ds) => ds.iter().any(|t| tags.contains(&t.as_str().unwrap_or(""))),
                None => inclusive,
            };
            valid && matches
        });
        assert!(shown, "board {name:?} (tags {tags:?}) is offered no image");
        offered.push(name.to_string());
    }
    // Every tag the entry names is some listed board's, or it names a board Imager never shows.
    for os in m["os_list"].as_array().unwrap() {
        for t in os["devices"].as_array().unwrap() {
            assert!(
                devices
                    .iter()
                    .any(|d| d["tags"].as_array().unwrap().contains(t)),
                "device tag {t} is on no listed board"
            );
        }
    }
    offered
}

#[test]
fn imager_can_walk_the_manifest_on_every_board_the_image_runs_on() {
    for (arch, boards) in [
        (
            Arch::Arm64,
            &[
                "Raspberry Pi 5",
                "Raspberry Pi 4",
                "Raspberry Pi 3",
                "Raspberry Pi Zero 2 W",
            ][..],
        ),
        (
            Arch::Armhf,
            &[
                "Raspberry Pi 5",
                "Raspberry Pi 4",
                "Raspberry Pi 3",
                "Raspberry Pi Zero 2 W",
                "Raspberry Pi 2",
                "Raspberry Pi 1 and Zero",
            ][..],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.img");
        Fixture {
            arch,
            ..Fixture::default()
        }
        .build(&base)
        .unwrap();
        let mut opts = options(Base::File(base), dir.path(), false);
        opts.checksum = true;
        let s = run(&opts, agent_binary).unwrap();
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(s.manifest.unwrap()).unwrap()).unwrap();
        assert_eq!(boards_offering_the_entry(&m), boards, "{arch:?}");
        assert_eq!(imager_entry(&m)["init_format"], "none");
        // Handing the customisation to Imager: its firstrun.sh on a base without cloud-init.
        opts.imager_customisation = true;
        std::fs::remove_dir_all(dir.path().join("out")).unwrap();
        let s = run(&opts, agent_binary).unwrap();
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(s.manifest.unwrap()).unwrap()).unwrap();
        boards_offering_the_entry(&m);
        assert_eq!(imager_entry(&m)["init_format"], "systemd");
    }
}

/// The one entry of an Imager os-list manifest, checked against the schema's rules (Imager 2.x): every
/// required field there with its type, absolute URLs, a SHA-256 of 64 hex digits, a YYYY-MM-DD date,
/// device tags and `init_format` / `architecture` values Imager knows (others are dropped or unloadable).
fn imager_entry(m: &serde_json::Value) -> &serde_json::Value {
    let list = m["os_list"].as_array().expect("os_list is an array");
    assert_eq!(list.len(), 1);
    let os = &list[0];
    for field in ["name", "description", "icon", "url", "release_date"] {
        assert!(
            os[field].as_str().is_some_and(|v| !v.is_empty()),
            "{field}: {os}"
        );
    }
    for field in ["extract_size", "image_download_size"] {
        assert!(os[field].as_u64().is_some_and(|n| n > 0), "{field}: {os}");
    }
    for field in ["extract_sha256", "image_download_sha256"] {
        let v = os[field].as_str().unwrap_or("");
        assert!(
            v.len() == 64
                && v.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{field}: {v:?}"
        );
    }
    for field in ["url", "icon"] {
        let v = os[field].as_str().unwrap();
        assert!(
            ["file:///", "https://", "http://"]
                .iter()
                .any(|p| v.starts_with(p)),
            "{field} is not an absolute URL: {v}"
        );
    }
    let date = os["release_date"].as_str().unwrap();
    assert!(
        date.len() == 10
            && date.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }),
        "{date}"
    );
    let known = [
        "pi5-64bit",
        "pi4-64bit",
        "pi3-64bit",
        "pi5-32bit",
        "pi4-32bit",
        "pi3-32bit",
        "pi2-32bit",
        "pi1-32bit",
    ];
    let devices = os["devices"].as_array().expect("devices");
    assert!(!devices.is_empty());
    for d in devices {
        assert!(known.contains(&d.as_str().unwrap()), "device {d}");
    }
    assert!(
        ["none", "systemd", "cloudinit", "cloudinit-rpi"]
            .contains(&os["init_format"].as_str().unwrap()),
        "{os}"
    );
    assert!(
        ["armv8", "armhf", "armel"].contains(&os["architecture"].as_str().unwrap()),
        "{os}"
    );
    os
}

#[test]
fn a_url_base_points_the_manifest_at_the_published_files_and_is_checked() {
    // A 32-bit base with cloud-init, as Raspberry Pi OS Trixie since late 2025.
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    Fixture {
        arch: Arch::Armhf,
        fill: vec![("/usr/bin/cloud-init".into(), 64)],
        ..Fixture::default()
    }
    .build(&base)
    .unwrap();
    let mut opts = options(Base::File(base), dir.path(), false);
    opts.checksum = true;
    opts.url_base = Some("https://example.com/herd/".into());
    let s = run(&opts, agent_binary).unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.manifest.unwrap()).unwrap()).unwrap();
    let os = imager_entry(&m);
    assert_eq!(os["url"], "https://example.com/herd/herd-test.img");
    assert_eq!(os["icon"], "https://example.com/herd/herd-test.png");
    assert_eq!(os["init_format"], "none");
    assert_eq!(os["architecture"], "armhf");
    assert_eq!(os["devices"][4], "pi1-32bit");
    for bad in [
        "example.com/herd",
        "ftp://x/y",
        "https://",
        "https://x/a b",
        "https:///x",
    ] {
        opts.url_base = Some(bad.into());
        let e = run(&opts, agent_binary).unwrap_err().to_string();
        assert!(e.contains("url base"), "{bad}: {e}");
    }
}

#[test]
fn checksum_alone_describes_the_raw_image() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    Fixture::default().build(&base).unwrap();
    let mut opts = options(Base::File(base), dir.path(), false);
    opts.checksum = true;
    let s = run(&opts, agent_binary).unwrap();
    assert_eq!(
        outputs(dir.path()),
        [
            "herd-test.img",
            "herd-test.img.sha256",
            "herd-test.png",
            "herd-test.rpi-imager-manifest"
        ]
    );
    let out = dir.path().join("out");
    let check = Command::new("sha256sum")
        .arg("-c")
        .arg("herd-test.img.sha256")
        .current_dir(&out)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.manifest.unwrap()).unwrap()).unwrap();
    let os = imager_entry(&m);
    let img = dir.path().join("out/herd-test.img").canonicalize().unwrap();
    assert_eq!(os["url"], format!("file://{}", img.display()));
    assert_eq!(os["extract_sha256"], os["image_download_sha256"]);
    assert_eq!(os["image_download_size"], s.image_size);
}

#[test]
fn an_xz_base_from_a_url_is_checked_against_its_published_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("base.img");
    Fixture::default().build(&raw).unwrap();
    let compressed = xz(&raw);
    let sha = sha256_file(&compressed).unwrap();
    let sums = PathBuf::from(format!("{}.sha256", compressed.display()));
    std::fs::write(&sums, format!("{sha}  base.img.xz\n")).unwrap();
    let url = format!("file://{}", compressed.display());
    run(
        &options(Base::Url(url.clone()), dir.path(), false),
        agent_binary,
    )
    .unwrap();
    assert!(dir.path().join("cache/base.img.xz").exists(), "cached");
    // Neither --xz nor --checksum: the image to flash, and nothing else.
    assert_eq!(outputs(dir.path()), ["herd-test.img"]);

    // A wrong published checksum: refused, the cached copy dropped, nothing written.
    std::fs::remove_dir_all(dir.path().join("out")).unwrap();
    std::fs::write(&sums, format!("{}  base.img.xz\n", "0".repeat(64))).unwrap();
    let e = run(&options(Base::Url(url), dir.path(), false), agent_binary).unwrap_err();
    assert!(e.to_string().contains("wrong checksum"), "{e}");
    assert!(!dir.path().join("cache/base.img.xz").exists());
    assert!(outputs(dir.path()).is_empty(), "{:?}", outputs(dir.path()));
}

#[test]
fn bad_bases_fail_clearly_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.img");
    Fixture::default().build(&good).unwrap();

    let corrupt = dir.path().join("corrupt.img.xz");
    std::fs::write(&corrupt, b"\xfd7zXZ\x00 this is not really xz").unwrap();
    let truncated = dir.path().join("truncated.img");
    std::fs::copy(&good, &truncated).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap();
    f.set_len(f.metadata().unwrap().len() / 3).unwrap();
    let zeros = dir.path().join("zeros.img");
    std::fs::write(&zeros, vec![0u8; 1 << 20]).unwrap();

    let cases: Vec<(Base, &str)> = vec![
        (Base::File(dir.path().join("missing.img")), "missing.img"),
        (Base::File(corrupt), "corrupt .xz"),
        (Base::File(truncated), "truncated image"),
        (Base::File(zeros), "no MBR partition table"),
        (
            // Nothing listens on port 1: as good as no network.
            Base::Url("http://127.0.0.1:1/raspios.img.xz".into()),
            "--base path/to/image.img.xz",
        ),
    ];
    for (base, expected) in cases {
        let e = run(&options(base.clone(), dir.path(), true), agent_binary).unwrap_err();
        assert!(e.to_string().contains(expected), "{base:?}: {e}");
        assert!(
            outputs(dir.path()).is_empty(),
            "{base:?} left {:?}",
            outputs(dir.path())
        );
    }
}

/// `--packages` that cannot be had stop the build before any output is written, with the package and
/// the reason named, and the base is left as it was. (Resolving against real bases and their archives is
/// `cargo xtask e2e`'s, which has the bases.)
#[test]
fn packages_that_cannot_be_had_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    Fixture::default().build(&base).unwrap();
    let before = sha256_file(&base).unwrap();
    let with = |names: &[&str]| {
        let mut o = options(Base::File(base.clone()), dir.path(), false);
        o.bake.packages = Some(herd_image::packages::Request {
            names: names.iter().map(|n| n.to_string()).collect(),
            cache: dir.path().join("apt"),
        });
        o
    };
    for (names, expected) in [
        // Not a package name at all: refused before apt is asked.
        (&["Nginx"][..], "\"Nginx\" is not a Debian package name"),
        (
            &["-oAPT::Get::Trivial-Only"][..],
            "is not a Debian package name",
        ),
        // The fixture has a dpkg database but no apt sources: nothing to resolve against.
        (&["nginx-light"][..], "the base has no apt sources"),
    ] {
        let e = run(&with(names), agent_binary).unwrap_err().to_string();
        assert!(e.contains(expected), "{names:?}: {e}");
        assert!(
            outputs(dir.path()).is_empty(),
            "{names:?} left {:?}",
            outputs(dir.path())
        );
    }
    assert_eq!(sha256_file(&base).unwrap(), before, "the base was modified");
}
