//! `cargo xtask`: all of herd's build logic, in Rust (the cargo-xtask convention). A thin `main` that
//! reads the flags once (`flags.rs`) and dispatches to one module per task.

mod bare;
mod base;
mod bench;
mod build;
mod ci;
mod deps;
mod e2e;
mod flags;
mod image;
mod packages;
mod release;
mod screenshot;
mod util;
mod zig;

use clap::Parser;

use crate::flags::Task;

fn main() -> std::process::ExitCode {
    // `cargo xtask` runs this binary with the task as its first argument.
    let flags = flags::Xtask::parse();
    match run(flags.task) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Ci => ci::run(),
        Task::Build => build::build_all().map(drop),
        Task::Image(f) => image::make(&f),
        Task::Base(f) => base::run(&f),
        Task::E2e(f) => e2e::run(&f),
        Task::Fixture(f) => image::fixture(&f),
        Task::Bench(f) => bench::run(&f),
        Task::Deps => packages::run(),
        Task::Bare => bare::run(),
        Task::Release(f) => release::run(&f),
        Task::Screenshot => screenshot::run(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    /// xtask's modules form a tree, as rust-analyzer's tasks do: read from their `crate::` paths, no
    /// module uses one that uses it back, however far round; and no file is compiled in from elsewhere
    /// by `#[path]` (the agent's own layout test, `agent/tests/layout.rs`, is this test's twin).
    #[test]
    fn the_tasks_form_a_tree() {
        let dir = crate::util::root().join("xtask/src");
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                !text.lines().any(|l| l.trim_start().starts_with("#[path")),
                "{name}.rs includes a file by #[path]"
            );
            let uses = graph.entry(name.clone()).or_default();
            for (i, _) in text.match_indices("crate::") {
                let used: String = text[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !used.is_empty() && used != name {
                    uses.insert(used);
                }
            }
        }
        assert!(graph.len() > 10, "xtask's modules not found: {graph:?}");
        // Depth-first, with the path so far: a module met again on it closes a circle.
        fn visit(
            m: &str,
            g: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(at) = path.iter().position(|p| p == m) {
                let mut c = path[at..].to_vec();
                c.push(m.to_string());
                return Some(c);
            }
            if !done.insert(m.to_string()) {
                return None;
            }
            path.push(m.to_string());
            for next in g.get(m).into_iter().flatten() {
                if let Some(c) = visit(next, g, path, done) {
                    return Some(c);
                }
            }
            path.pop();
            None
        }
        let mut done = BTreeSet::new();
        for m in graph.keys() {
            if let Some(c) = visit(m, &graph, &mut Vec::new(), &mut done) {
                panic!("xtask's modules in a circle: {}", c.join(" → "));
            }
        }
    }
}
