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
    // `--detection=monitors|gossip`: the gossip benchmark measures that one only.
    let only = match args.iter().find_map(|a| a.strip_prefix("--detection=")) {
        None => None,
        Some(d @ ("monitors" | "gossip")) => Some(if d == "monitors" {
            "monitors"
        } else {
            "gossip"
        }),
        Some(d) => bail!("--detection: {d:?} is neither monitors nor gossip"),
    };
    // `--nodes=100,1000`: the gossip benchmark's cluster sizes, instead of its own.
    let nodes: Option<Vec<usize>> = match args.iter().find_map(|a| a.strip_prefix("--nodes=")) {
        None => None,
        Some(list) => Some(
            list.split(',')
                .map(|n| {
                    n.parse::<usize>()
                        .ok()
                        .filter(|n| (2..=5000).contains(n))
                        .ok_or_else(|| {
                            anyhow::anyhow!("--nodes: {n:?} is not a size from 2 to 5000")
                        })
                })
                .collect::<anyhow::Result<_>>()?,
        ),
    };
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
            "gossip" => herd_ci::bench::gossip::run(quick, nodes.as_deref(), only)?,
            "http" => herd_ci::bench::http::run(quick)?,
            "image" => herd_ci::bench::image::run(quick)?,
            "footprint" => herd_ci::bench::footprint::run(quick)?,
            other => bail!("unknown benchmark {other:?}; known: gossip, http, footprint, image"),
        }
    }
    Ok(())
}
