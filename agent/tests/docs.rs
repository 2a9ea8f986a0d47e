//! The documentation against the code: every relative link of every Markdown file in the repository
//! reaches a file (and, with `#anchor`, a heading of it), and every `cargo xtask TASK` and `herd COMMAND
//! [SUBCOMMAND]` written in code (spans and blocks) names a task xtask dispatches and a command the real
//! `herd` binary lists in its help.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ is in the workspace")
        .to_path_buf()
}

/// Every Markdown file of the repository, outside build output and VCS metadata.
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "node_modules" {
                    walk(&p, out);
                }
            } else if name.ends_with(".md") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo(), &mut out);
    out.sort();
    out
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and `_` dropped, spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.starts_with("```") {
                fenced = !fenced;
            }
            !fenced
        })
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect()
}

/// The targets of `[text](target)` links.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].trim().to_string());
        }
    }
    out
}

#[test]
fn every_relative_link_reaches_a_file_and_its_heading() {
    let files = markdown_files();
    assert!(files.len() >= 10, "found only {files:?}");
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = link.split_once('#').unwrap_or((&link, ""));
            let target = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            checked += 1;
            if !target.exists() {
                broken.push(format!("{}: {link}: no such file", file.display()));
            } else if !anchor.is_empty() && target.extension().is_some_and(|e| e == "md") {
                let text = std::fs::read_to_string(&target).unwrap();
                if !anchors(&text).contains(anchor) {
                    broken.push(format!("{}: {link}: no such heading", file.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(
        checked >= 20,
        "only {checked} relative links: is the scan still finding them?"
    );
}

/// What is written as code: inline spans and fenced blocks.
fn code(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut block: Option<String> = None;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            match block.take() {
                Some(b) => out.push(b),
                None => block = Some(String::new()),
            }
            continue;
        }
        if let Some(b) = &mut block {
            b.push_str(line);
            b.push('\n');
        } else {
            out.extend(line.split('`').skip(1).step_by(2).map(String::from));
        }
    }
    out
}

/// The words after each `program` in `code` (where the program starts a word or follows a `/`).
fn invocations(code: &str, program: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices(program) {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| !(c.is_whitespace() || c == '/' || c == '(' || c == '$')) {
            continue;
        }
        let after = &code[i + program.len()..];
        if !after.starts_with(' ') {
            continue;
        }
        let words: Vec<String> = after
            .split_whitespace()
            .take(2)
            .take_while(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
            .take_while(|w| !w.starts_with('-'))
            .map(String::from)
            .collect();
        if !words.is_empty() {
            out.push(words);
        }
    }
    out
}

/// The tasks `cargo xtask` dispatches: the variants of `enum Task` in xtask/src/flags.rs, in kebab
/// case as clap names them (`E2e` → `e2e`).
fn xtask_tasks() -> BTreeSet<String> {
    let flags = std::fs::read_to_string(repo().join("xtask/src/flags.rs")).unwrap();
    let body = &flags[flags.find("pub enum Task {").expect("xtask's enum Task")..];
    let mut tasks = BTreeSet::new();
    for line in body.lines().skip(1).take_while(|l| !l.starts_with('}')) {
        let variant: String = line
            .trim()
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        if variant.starts_with(|c: char| c.is_ascii_uppercase()) {
            let mut kebab = String::new();
            for (i, c) in variant.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    kebab.push('-');
                }
                kebab.push(c.to_ascii_lowercase());
            }
            tasks.insert(kebab);
        }
    }
    tasks
}

/// The subcommands the real binary's help lists, for `herd` and for `herd COMMAND`.
fn herd_commands(args: &[&str]) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A command's own line; the wrapped rest of its description is indented further.
        .filter(|l| !l[2..].starts_with(' '))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

#[test]
fn every_command_in_the_docs_exists() {
    let tasks = xtask_tasks();
    assert!(tasks.contains("image") && tasks.contains("ci"), "{tasks:?}");
    let commands = herd_commands(&[]);
    assert!(
        commands.contains("agent") && commands.contains("upgrade"),
        "{commands:?}"
    );
    let mut wrong = Vec::new();
    let (mut xtasks, mut herds) = (0, 0);
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let where_ = file.strip_prefix(repo()).unwrap().display().to_string();
        for snippet in code(&text) {
            for words in invocations(&snippet, "cargo xtask") {
                xtasks += 1;
                if !tasks.contains(&words[0]) {
                    wrong.push(format!(
                        "{where_}: `cargo xtask {}`: no such task",
                        words[0]
                    ));
                }
            }
            for words in invocations(&snippet, "herd") {
                herds += 1;
                if !commands.contains(&words[0]) {
                    wrong.push(format!("{where_}: `herd {}`: no such command", words[0]));
                    continue;
                }
                let sub = herd_commands(&[&words[0]]);
                if let (Some(second), false) = (words.get(1), sub.is_empty()) {
                    if !sub.contains(second) {
                        wrong.push(format!(
                            "{where_}: `herd {} {second}`: no such subcommand",
                            words[0]
                        ));
                    }
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(
        xtasks >= 20 && herds >= 20,
        "only {xtasks} xtask and {herds} herd command lines found: is the scan still finding them?"
    );
}
