//! The crate's rooms stay rooms: read from the sources' `crate::`, `super::` and `self::` paths, no two
//! modules import each other in a circle (a child using its parent's items is part of the parent and does
//! not count), the rooms (`gossip`, `daemon`, `ops`, `model`, `config`, `files`, `installer`,
//! `client`) form no circle either, and the sans-IO core in `gossip/` uses nothing outside it: no crate
//! module, no runtime, socket, file, clock, thread or global randomness.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`daemon::api`) → the module paths its code names.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn sources() -> Vec<(String, PathBuf)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "main.rs"))
        .map(|p| {
            let rel = p.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
                parts.pop();
            }
            (parts.join("::"), p)
        })
        .collect()
}

/// The code of a file without comments and without its `#[cfg(test)]` module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod ") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path the code names from `crate::`, `super::` or `self::`, made absolute for module `module`;
/// `use crate::{a::b, c}` groups are expanded.
fn paths(module: &str, code: &str) -> Vec<Vec<String>> {
    fn ident(s: &str) -> usize {
        s.char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
            .map_or(s.len(), |(i, _)| i)
    }
    /// Reads `a::b::{c, d::e}` at the start of `s` into full paths after `prefix`.
    fn read(prefix: &[String], s: &str, out: &mut Vec<Vec<String>>) {
        let mut path = prefix.to_vec();
        let mut rest = s;
        loop {
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 0;
                let mut start = 0;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => {
                            read(&path, group[start..i].trim(), out);
                            return;
                        }
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            read(&path, group[start..i].trim(), out);
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
                return;
            }
            let n = ident(rest);
            if n == 0 {
                break;
            }
            path.push(rest[..n].to_string());
            rest = &rest[n..];
            match rest.strip_prefix("::") {
                Some(r) => rest = r,
                None => break,
            }
        }
        out.push(path);
    }
    let here: Vec<String> = module
        .split("::")
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let mut out = Vec::new();
    for (i, _) in code.match_indices("::") {
        let before = &code[..i];
        let word_start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(0, |j| j + 1);
        // Only the first segment of a path: `crate::a::b` is read once, from `crate`.
        if before[..word_start].ends_with("::") {
            continue;
        }
        let base = match &before[word_start..] {
            "crate" => Vec::new(),
            "self" => here.clone(),
            "super" => here[..here.len().saturating_sub(1)].to_vec(),
            _ => continue,
        };
        let mut rest = &code[i + 2..];
        let mut base = base;
        // `super::super::x`
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        read(&base, rest, &mut out);
    }
    out
}

fn graph() -> Graph {
    let files = sources();
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut g = Graph::new();
    for (module, path) in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let edges = g.entry(module.clone()).or_default();
        for p in paths(module, &code(&text)) {
            // The module named: the longest prefix of the path that is a module of the crate.
            let target = (0..=p.len())
                .rev()
                .map(|n| p[..n].join("::"))
                .find(|m| modules.contains(m))
                .unwrap_or_default();
            let is_ancestor = target.is_empty()
                || *module == target
                || module.starts_with(&format!("{target}::"));
            if !is_ancestor {
                edges.insert(target);
            }
        }
    }
    g
}

/// A circle of `g`, if it has one, as the modules along it.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
        n: &str,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|s| s == m).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(g, m, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(g, n, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

fn room(module: &str) -> String {
    module.split("::").next().unwrap_or("").to_string()
}

fn rooms(g: &Graph) -> Graph {
    let mut r = Graph::new();
    for (from, tos) in g {
        let edges = r.entry(room(from)).or_default();
        for to in tos {
            if room(to) != room(from) {
                edges.insert(room(to));
            }
        }
    }
    r
}

#[test]
fn no_module_imports_another_in_a_circle() {
    let g = graph();
    assert!(g.len() > 20, "the crate's modules were not found: {g:?}");
    if let Some(c) = find_cycle(&g) {
        panic!("import circle: {}", c.join(" → "));
    }
}

#[test]
fn the_rooms_form_no_circle() {
    let r = rooms(&graph());
    for room in [
        "gossip",
        "daemon",
        "ops",
        "model",
        "config",
        "files",
        "installer",
        "actuator",
        "packages",
        "swarm",
        "conductor",
        "client",
    ] {
        assert!(r.contains_key(room), "no room {room}: {r:?}");
    }
    if let Some(c) = find_cycle(&r) {
        panic!("rooms in a circle: {}", c.join(" → "));
    }
    // The operator's tools read the cluster through the API only.
    assert!(!r["ops"].contains("daemon"), "ops uses daemon: {r:?}");
    // The root installer is a program apart: it trusts nothing of the agent's code but the shared
    // rooms, and the one HTTP client serves everyone.
    assert!(
        !r["installer"].contains("daemon"),
        "installer uses daemon: {r:?}"
    );
    // So is the root side of the actions: it reads the request and nothing else of the agent's.
    assert!(
        r["actuator"]
            .iter()
            .all(|x| x == "model" || x == "config" || x == "gossip"),
        "actuator must rest on model and config only: {r:?}"
    );
    // And the packages' installer: it reads the manifest and writes its status file.
    assert!(
        r["packages"].iter().all(|x| x == "files"),
        "packages must rest on files only: {r:?}"
    );
    // The engine's root side speaks to Docker and knows the plan's shapes, nothing of the agent's.
    assert!(
        r["swarm"].iter().all(|x| x == "model"),
        "swarm must rest on model only: {r:?}"
    );
    // Its loop is a program apart too: Docker's socket, the local agent through the API, the plan.
    assert!(
        r["conductor"].iter().all(
            |x| ["swarm", "model", "config", "client", "gossip", "files"].contains(&x.as_str())
        ),
        "conductor must not reach into the agent: {r:?}"
    );
    assert!(
        r["client"].iter().all(|x| x == "model" || x == "gossip"),
        "client must rest on model only: {r:?}"
    );
    assert!(
        r["model"].iter().all(|x| x == "gossip"),
        "model must rest on gossip only: {r:?}"
    );
}

#[test]
fn the_gossip_core_touches_no_io_and_nothing_outside_it() {
    let g = graph();
    for (module, uses) in &g {
        if room(module) == "gossip" {
            let outside: Vec<&String> = uses.iter().filter(|u| room(u) != "gossip").collect();
            assert!(outside.is_empty(), "{module} uses {outside:?}");
        }
    }
    let forbidden = [
        "tokio",
        "warp",
        "mdns_sd",
        "sysinfo",
        "std::fs",
        "std::net::UdpSocket",
        "UdpSocket",
        "std::process",
        "std::thread",
        "Instant",
        "SystemTime",
        "thread_rng",
        "OsRng",
        "from_entropy",
        "getrandom",
        "std::env",
    ];
    for (module, path) in sources() {
        if room(&module) != "gossip" {
            continue;
        }
        let code = code(&std::fs::read_to_string(&path).unwrap());
        for word in forbidden {
            assert!(
                !code.contains(word),
                "{} (sans-IO) uses {word}",
                path.display()
            );
        }
    }
}

/// The checks above can fail: on a made-up crate they find what they must.
#[test]
fn the_checks_find_a_made_up_circle() {
    let p = paths(
        "daemon::agent",
        "use crate::{daemon::api::{self, ApiState}, config::Config};\nuse super::handle::Handle;\nlet x = crate::files::write_atomic(a);",
    );
    let names: BTreeSet<String> = p.iter().map(|p| p.join("::")).collect();
    for want in [
        "daemon::api::self",
        "daemon::api::ApiState",
        "config::Config",
        "daemon::handle::Handle",
        "files::write_atomic",
    ] {
        assert!(names.contains(want), "{want} not in {names:?}");
    }
    let mut g = Graph::new();
    g.entry("daemon::agent".into())
        .or_default()
        .insert("daemon::api".into());
    g.entry("daemon::api".into())
        .or_default()
        .insert("daemon::agent".into());
    assert_eq!(
        find_cycle(&g).unwrap(),
        ["daemon::agent", "daemon::api", "daemon::agent"]
    );
    g.get_mut("daemon::api").unwrap().clear();
    assert_eq!(find_cycle(&g), None);
}

/// `cargo test -p herd --test layout -- --ignored --nocapture`: the graph the checks read.
#[test]
#[ignore]
fn print_the_module_graph() {
    for (m, uses) in graph() {
        println!("{m} -> {uses:?}");
    }
    println!("{:?}", rooms(&graph()));
}
