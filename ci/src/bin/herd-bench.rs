//! `herd-bench`: runs one of herd's benchmarks and prints its figures (`cargo xtask bench` calls it).

use anyhow::bail;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let names: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let names = if names.is_empty() {
        vec!["gossip"]
    } else {
        names
    };
    for name in names {
        match name {
            "gossip" => herd_ci::bench::gossip::run(quick)?,
            other => bail!("unknown benchmark {other:?}; known: gossip"),
        }
    }
    Ok(())
}
