//! `herd-bench`: runs one of herd's benchmarks and prints its figures (`cargo xtask bench` calls it).

use anyhow::bail;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The HTTP benchmark runs this binary again as its load generator, in a process of its own.
    if args.first().map(String::as_str) == Some("http-load") {
        let [_, url, rate, secs] = &args[..] else {
            bail!("usage: herd-bench http-load URL RATE SECONDS");
        };
        let r = herd_ci::bench::http::load(url, rate.parse()?, secs.parse()?)?;
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let quick = args.iter().any(|a| a == "--quick");
    let names: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let names = if names.is_empty() {
        vec!["gossip", "http", "footprint", "image"]
    } else {
        names
    };
    for name in names {
        match name {
            "gossip" => herd_ci::bench::gossip::run(quick)?,
            "http" => herd_ci::bench::http::run(quick)?,
            "image" => herd_ci::bench::image::run(quick)?,
            "footprint" => herd_ci::bench::footprint::run(quick)?,
            other => bail!("unknown benchmark {other:?}; known: gossip, http, footprint, image"),
        }
    }
    Ok(())
}
