//! `bench image`: the image pipeline on a Raspberry Pi OS–sized fixture, next to the plain file operations
//! it cannot beat, measured in the same run.
//!
//! The fixture (2.7 GB like Raspberry Pi OS Lite: 512 MiB boot, a root filesystem holding 1.7 GB of
//! binaries and text; quick mode: 0.3 GB) is built once and cached in `~/.cache/herd/bench/`, as is its
//! `.img.xz`. From `.img` the pipeline is compared with `cp --sparse=always` of the same file; from
//! `.img.xz` with `xz -dc > /dev/null` (xz's default, one thread, as the target is written; the
//! multi-threaded `xz -dc -T0` the pipeline itself uses is shown beside it). The default run writes the
//! image only; `--checksum` (one SHA-256 pass) is timed too, next to `cp` + `openssl dgst -sha256`. Each
//! figure is the best of three runs, with the output removed between runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use herd_image::fixture::Fixture;
use herd_image::overlay::Values;
use herd_image::pipeline::{Base, PipelineOptions, Summary};
use herd_image::{Arch, BakeOptions};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("ci is in the workspace")
        .into()
}

fn cache() -> PathBuf {
    crate::cache_dir("bench")
}

fn fixture(quick: bool) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (name, boot, root, bins, texts) = if quick {
        ("pi-0.3g", 64, 256, 8, 6)
    } else {
        ("pi-2.7g", 512, 2176, 48, 32)
    };
    let dir = cache();
    std::fs::create_dir_all(&dir)?;
    let img = dir.join(format!("{name}.img"));
    let xz = dir.join(format!("{name}.img.xz"));
    if !img.exists() {
        println!(
            "(building the {name} fixture once; cached in {})",
            dir.display()
        );
        let mut fill = Vec::new();
        // Binaries of 8–24 MiB, text of 4–12 MiB: about two thirds of the root's size.
        for i in 0..bins {
            fill.push((
                format!("/usr/lib/bench/lib{i}.so"),
                ((8 + i % 3 * 8) as u64) << 20,
            ));
        }
        for i in 0..texts {
            fill.push((
                format!("/usr/share/doc/bench/{i}.txt"),
                ((4 + i % 3 * 4) as u64) << 20,
            ));
        }
        let partial = img.with_extension("partial");
        Fixture {
            aligned_2025: true,
            arch: Arch::Arm64,
            boot_mib: boot,
            root_mib: root,
            fill,
        }
        .build(&partial)?;
        std::fs::rename(&partial, &img)?;
    }
    if !xz.exists() {
        let partial = xz.with_extension("partial");
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "xz -c -T0 -6 '{}' > '{}'",
                img.display(),
                partial.display()
            ))
            .status()?
            .success();
        if !ok {
            bail!("xz failed");
        }
        std::fs::rename(&partial, &xz)?;
    }
    Ok((img, xz))
}

fn best_of_3(mut f: impl FnMut() -> anyhow::Result<Duration>) -> anyhow::Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..3 {
        best = best.min(f()?);
    }
    Ok(best)
}

fn timed(cmd: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let ok = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdout(Stdio::null())
        .status()?
        .success();
    if !ok {
        bail!("{cmd} failed");
    }
    Ok(t.elapsed())
}

pub fn run(quick: bool) -> anyhow::Result<()> {
    let binary = herd_image::built_agent(herd_image::Arch::Arm64);
    if !binary.exists() {
        bail!("{} is missing: run `cargo xtask build`", binary.display());
    }
    let (img, xz) = fixture(quick)?;
    let size = std::fs::metadata(&img)?.len();
    let out = tempfile::Builder::new()
        .prefix("herd-bench-image")
        .tempdir_in(cache())?;
    let opts = |base: &Path, checksum: bool| PipelineOptions {
        base: Base::File(base.into()),
        cache_dir: out.path().join("cache"),
        out_dir: out.path().join("out"),
        name: "bench".into(),
        bake: BakeOptions {
            overlay: workspace().join("overlay"),
            values: Values {
                cluster: "bench".into(),
                cluster_key: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into(),
                api_token: "0123456789abcdef0123".into(),
                seeds: "[]".into(),
                hostname_template: String::new(),
                signing_public_key: String::new(),
                engine: "none".into(),
                engine_expect: 1,
            },
            userconf: None,
            ssh_keys: None,
            wifi: None,
            packages: None,
        },
        xz: false,
        checksum,
        url_base: None,
        imager_customisation: false,
    };
    let clean = || {
        let _ = std::fs::remove_dir_all(out.path().join("out"));
        let _ = std::fs::remove_file(out.path().join("copy.img"));
    };
    // The steps of the fastest run so far, shown next to its time.
    let last: std::cell::RefCell<Option<(Duration, Summary)>> = std::cell::RefCell::new(None);
    let pipeline = |base: &Path, checksum: bool| -> anyhow::Result<Duration> {
        clean();
        let t = Instant::now();
        let s = herd_image::pipeline::run(&opts(base, checksum), |_| Ok(binary.clone()))
            .context("pipeline")?;
        let took = t.elapsed();
        let mut best = last.borrow_mut();
        if best.as_ref().is_none_or(|(d, _)| took < *d) {
            *best = Some((took, s));
        }
        Ok(took)
    };
    let steps_of = || {
        last.borrow_mut()
            .take()
            .map(|(_, s)| s.timings)
            .unwrap_or_default()
    };
    let copy_cmd = format!(
        "cp --sparse=always '{}' '{}'",
        img.display(),
        out.path().join("copy.img").display()
    );
    let cp = best_of_3(|| {
        clean();
        timed(&copy_cmd)
    })?;
    let from_img = best_of_3(|| pipeline(&img, false))?;
    let steps_img = steps_of();
    let unxz = best_of_3(|| timed(&format!("xz -dc '{}' > /dev/null", xz.display())))?;
    let unxz_mt = best_of_3(|| timed(&format!("xz -dc -T0 '{}' > /dev/null", xz.display())))?;
    let from_xz = best_of_3(|| pipeline(&xz, false))?;
    let steps_xz = steps_of();
    let copy_and_hash_cmd = format!(
        "{copy_cmd} && openssl dgst -sha256 '{}'",
        out.path().join("copy.img").display()
    );
    let cp_sha = best_of_3(|| {
        clean();
        timed(&copy_and_hash_cmd)
    })?;
    let from_img_sha = best_of_3(|| pipeline(&img, true))?;
    let steps_img_sha = steps_of();
    clean();

    let steps = |t: &[(&str, Duration)]| {
        t.iter()
            .map(|(s, d)| format!("{s} {:.2} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "\n## Image pipeline: {:.2} GB Pi-layout image, best of 3\n",
        size as f64 / 1e9
    );
    println!(
        "| input | baseline | baseline time | pipeline time | ratio | target | pipeline steps |"
    );
    println!("|---|---|---|---|---|---|---|");
    let row = |input: &str,
               baseline: &str,
               b: Duration,
               p: Duration,
               target: Option<f64>,
               t: &[(&str, Duration)]| {
        let ratio = p.as_secs_f64() / b.as_secs_f64();
        let verdict = match target {
            Some(x) if ratio <= x => format!("≤ {x}× met"),
            Some(x) => format!("≤ {x}× MISSED"),
            None => "—".into(),
        };
        println!(
            "| {input} | {baseline} | {:.2} s | {:.2} s | {ratio:.2}× | {verdict} | {} |",
            b.as_secs_f64(),
            p.as_secs_f64(),
            steps(t)
        );
    };
    row(
        "`.img`",
        "`cp --sparse=always`",
        cp,
        from_img,
        Some(1.1),
        &steps_img,
    );
    let xz_input = format!(
        "`.img.xz` ({:.2} GB)",
        std::fs::metadata(&xz)?.len() as f64 / 1e9
    );
    row(
        &xz_input,
        "`xz -dc > /dev/null`",
        unxz,
        from_xz,
        Some(1.2),
        &steps_xz,
    );
    row(
        &xz_input,
        "`xz -dc -T0 > /dev/null` (what the pipeline runs)",
        unxz_mt,
        from_xz,
        None,
        &steps_xz,
    );
    row(
        "`.img` with `--checksum`",
        "`cp --sparse=always` + `openssl dgst -sha256`",
        cp_sha,
        from_img_sha,
        None,
        &steps_img_sha,
    );
    println!("\nThe default run writes the image to flash; the SHA-256 (`--checksum`, or free with `--xz`, which");
    println!("hashes while it compresses) is one sequential pass over the whole image and is timed separately.");
    match std::env::var_os("HERD_BENCH_DEBIAN_BASE") {
        Some(base) => with_packages(Path::new(&base), &binary, &opts, out.path())?,
        None => println!(
            "\n(`--packages` not measured: no Debian base given; `cargo xtask bench image` gives one)"
        ),
    }
    Ok(())
}

/// What the packages a build carries cost (`--packages`, resolved by apt against a real base): the
/// pipeline on herd's Debian base without and with them, next to `cp` of that base. apt's indexes and the
/// files are downloaded on the first run and cached (`~/.cache/herd/apt`), so best of 3 is a rebuild's
/// cost: apt reading the base's sources again, resolving, checking the cached files, and writing them to
/// the boot partition.
fn with_packages(
    base: &Path,
    binary: &Path,
    opts: &dyn Fn(&Path, bool) -> PipelineOptions,
    out: &Path,
) -> anyhow::Result<()> {
    const PACKAGES: [&str; 1] = ["nginx-light"];
    let clean = || {
        let _ = std::fs::remove_dir_all(out.join("out"));
        let _ = std::fs::remove_file(out.join("copy.img"));
    };
    let copy_cmd = format!(
        "cp --sparse=always '{}' '{}'",
        base.display(),
        out.join("copy.img").display()
    );
    let cp = best_of_3(|| {
        clean();
        timed(&copy_cmd)
    })?;
    let mut carried = (0, 0u64);
    let mut run = |packages: bool| -> anyhow::Result<Duration> {
        clean();
        let mut o = opts(base, false);
        if packages {
            o.bake.packages = Some(herd_image::packages::Request {
                names: PACKAGES.iter().map(|p| p.to_string()).collect(),
                cache: crate::cache_dir("apt"),
            });
        }
        let t = Instant::now();
        let s = herd_image::pipeline::run(&o, |_| Ok(binary.to_path_buf())).context("pipeline")?;
        let took = t.elapsed();
        if let Some(m) = s.baked.packages {
            carried = (m.debs.len(), m.debs.iter().map(|d| d.size).sum());
        }
        Ok(took)
    };
    let plain = best_of_3(|| run(false))?;
    let packed = best_of_3(|| run(true))?;
    clean();
    if carried.0 == 0 {
        bail!("--packages {}: nothing was carried", PACKAGES.join(","));
    }
    println!(
        "\n## With packages: herd's Debian base (Bookworm arm64, {:.2} GB), `--packages {}` ({} files, \
         {:.1} MB), best of 3\n",
        std::fs::metadata(base)?.len() as f64 / 1e9,
        PACKAGES.join(","),
        carried.0,
        carried.1 as f64 / 1e6
    );
    println!(
        "| build | time | against `cp --sparse=always` ({:.2} s) |",
        cp.as_secs_f64()
    );
    println!("|---|---|---|");
    for (what, t) in [("without packages", plain), ("with packages", packed)] {
        println!(
            "| {what} | {:.2} s | {:.2}× |",
            t.as_secs_f64(),
            t.as_secs_f64() / cp.as_secs_f64()
        );
    }
    println!(
        "\nWith packages, apt reads the base's sources and resolves (the indexes and files cached after the \
         first build); the first build also downloads them."
    );
    Ok(())
}
