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
    let p = arch.built_agent();
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
            },
            userconf: None,
            ssh_keys: None,
        },
        xz,
        checksum: false,
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
    // The manifest has what Raspberry Pi Imager reads.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.manifest.as_ref().unwrap()).unwrap()).unwrap();
    let os = &m["os_list"][0];
    for field in [
        "name",
        "description",
        "url",
        "extract_size",
        "extract_sha256",
        "image_download_size",
        "image_download_sha256",
        "release_date",
        "devices",
        "init_format",
    ] {
        assert!(!os[field].is_null(), "{field} missing: {os}");
    }
    assert_eq!(os["extract_sha256"], image_sha256.as_str());
    assert_eq!(os["extract_size"], s.image_size);
    assert_eq!(os["url"], "herd-test.img.xz");
    assert_eq!(
        os["image_download_sha256"].as_str().unwrap(),
        sha256_file(&out.join("herd-test.img.xz")).unwrap()
    );
    assert_eq!(os["devices"][0], "pi5-64bit");
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
    let os = &m["os_list"][0];
    assert_eq!(os["url"], "herd-test.img");
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
