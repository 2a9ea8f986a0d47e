//! Ansible inventories from the live cluster: the dynamic-inventory protocol (`herd inventory --list` /
//! `--host NAME`) and static INI files for the groups a playbook targets (`herd hosts --playbook FILE`).
//!
//! Hosts are the alive members, named by their node name (made unique with the id where two share one),
//! with `ansible_host` set to their address. Groups: `alive`; one per service a node runs (the service
//! name, with characters Ansible does not allow in group names turned into `_`); `arch_<arch>`; and
//! `model_<board model>` (lowercase, `_` for anything else).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::gossip::Liveness;
use crate::model::views::NodeView;

/// An Ansible group name for `s`: letters, digits and `_`, not starting with a digit.
pub fn group_name(s: &str) -> String {
    let mut g: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if g.starts_with(|c: char| c.is_ascii_digit()) || g.is_empty() {
        g.insert(0, '_');
    }
    g
}

/// The inventory: hosts (alive nodes) with their variables, and groups.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// Host name → variables.
    pub hosts: BTreeMap<String, Value>,
    /// Group → host names.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Host name → node, for callers that need more than the variables.
    pub nodes: BTreeMap<String, NodeView>,
}

/// The name a node goes by in inventories: its node name, or `name-<id8>` when two alive nodes share it.
/// Names are checked when gossiped, but an inventory line is no place to trust a peer: anything but
/// `A-Z a-z 0-9 . _ -` becomes `-` (`#` starts an INI comment, `[1:3]` is an Ansible host range, `:` a
/// port, `,` and spaces separate hosts).
fn host_names(nodes: &[&NodeView]) -> Vec<String> {
    let clean = |n: &NodeView| {
        let s: String = n
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        if s.is_empty() {
            format!("herd-{}", &n.id[..n.id.len().min(8)])
        } else {
            s
        }
    };
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for n in nodes {
        *count.entry(clean(n)).or_default() += 1;
    }
    nodes
        .iter()
        .map(|n| {
            let c = clean(n);
            if count[&c] > 1 {
                format!("{c}-{}", &n.id[..n.id.len().min(8)])
            } else {
                c
            }
        })
        .collect()
}

impl Inventory {
    pub fn from_nodes(all: &[NodeView]) -> Inventory {
        let alive: Vec<&NodeView> = all.iter().filter(|n| n.state == Liveness::Alive).collect();
        let mut inv = Inventory::default();
        inv.groups.insert("alive".into(), Vec::new());
        for (n, host) in alive.iter().zip(host_names(&alive)) {
            let mut vars = json!({
                "herd_id": n.id,
                "herd_name": n.name,
                "herd_services": n.services,
            });
            let v = vars.as_object_mut().expect("object");
            if let Some(a) = n.address {
                v.insert("ansible_host".into(), json!(a.to_string()));
            }
            if let Some(p) = n.gossip_port {
                v.insert("herd_gossip_port".into(), json!(p));
            }
            if let Some(p) = n.http_port {
                v.insert("herd_http_port".into(), json!(p));
            }
            if let Some(m) = &n.monitoring {
                v.insert("herd_monitoring".into(), json!(m));
            }
            let mut groups = vec!["alive".to_string()];
            if let Some(f) = &n.facts {
                v.insert("herd_arch".into(), json!(f.arch));
                groups.push(format!("arch_{}", group_name(&f.arch)));
                if let Some(model) = &f.model {
                    v.insert("herd_model".into(), json!(model));
                    groups.push(format!("model_{}", group_name(&model.to_lowercase())));
                }
            }
            groups.extend(n.services.iter().map(|s| group_name(s)));
            for g in groups {
                inv.groups.entry(g).or_default().push(host.clone());
            }
            inv.hosts.insert(host.clone(), vars);
            inv.nodes.insert(host, (*n).clone());
        }
        inv
    }

    /// `--list`: every group with its hosts, and every host's variables under `_meta`.
    pub fn list(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (g, hosts) in &self.groups {
            out.insert(g.clone(), json!({ "hosts": hosts }));
        }
        out.insert("_meta".into(), json!({ "hostvars": self.hosts }));
        Value::Object(out)
    }

    /// `--host NAME`: that host's variables, `{}` for an unknown host (as Ansible expects).
    pub fn host(&self, name: &str) -> Value {
        self.hosts.get(name).cloned().unwrap_or_else(|| json!({}))
    }

    /// A static INI inventory holding `groups` (each with its hosts and their variables).
    pub fn ini(&self, groups: &[String]) -> String {
        let mut out = String::from("# Written by `herd hosts` from the live cluster.\n");
        for g in groups {
            out.push_str(&format!("\n[{g}]\n"));
            for h in self.groups.get(g).into_iter().flatten() {
                out.push_str(&format!("{h}{}\n", ini_vars(&self.hosts[h])));
            }
        }
        out
    }
}

/// ` key=value` pairs for an INI host line; lists and objects as JSON (Ansible parses them back).
fn ini_vars(vars: &Value) -> String {
    let mut s = String::new();
    for (k, v) in vars.as_object().into_iter().flatten() {
        let text = match v {
            Value::String(t) => t.clone(),
            other => other.to_string(),
        };
        // Quoted when needed, for the POSIX shlex split Ansible's INI parser does: inside double quotes
        // only `\` and `"` need a backslash.
        if text.is_empty() || text.contains(|c: char| c.is_whitespace() || "'\"#;=\\".contains(c)) {
            s.push_str(&format!(
                " {k}=\"{}\"",
                text.replace('\\', "\\\\").replace('"', "\\\"")
            ));
        } else {
            s.push_str(&format!(" {k}={text}"));
        }
    }
    s
}

/// The host patterns a playbook's plays target (`hosts:`), split into group or host names: `web:&db,!x`
/// gives `web`, `db`, `x`. Patterns with Jinja (`{{ }}`) or wildcards are reported, not guessed at.
pub fn playbook_groups(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read playbook {}", path.display()))?;
    let docs = yaml_rust2::YamlLoader::load_from_str(&text)
        .with_context(|| format!("{} is not YAML", path.display()))?;
    let Some(plays) = docs.first().and_then(|d| d.as_vec()) else {
        bail!("{}: a playbook is a list of plays", path.display());
    };
    let mut groups: Vec<String> = Vec::new();
    for (i, play) in plays.iter().enumerate() {
        if play["import_playbook"].as_str().is_some() {
            continue;
        }
        let patterns: Vec<String> = match &play["hosts"] {
            yaml_rust2::Yaml::String(s) => vec![s.clone()],
            yaml_rust2::Yaml::Array(a) => a
                .iter()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect(),
            _ => bail!("{}: play {} has no hosts:", path.display(), i + 1),
        };
        for p in patterns {
            if p.contains("{{") || p.contains('*') || p.contains('~') || p.contains('[') {
                bail!(
                    "{}: play {}: hosts pattern {p:?} is computed or a wildcard; write the inventory \
                     with `herd inventory --list` instead",
                    path.display(),
                    i + 1
                );
            }
            for part in p.split([':', ',']) {
                let name = part.trim().trim_start_matches(['!', '&']).trim();
                if !name.is_empty() && name != "all" && !groups.iter().any(|g| g == name) {
                    groups.push(name.to_string());
                }
            }
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_are_what_ansible_accepts() {
        assert_eq!(group_name("nginx_webserver"), "nginx_webserver");
        assert_eq!(group_name("web-1.lb"), "web_1_lb");
        assert_eq!(group_name("3d"), "_3d");
        assert_eq!(
            group_name(&"Raspberry Pi 4 Model B Rev 1.5".to_lowercase()),
            "raspberry_pi_4_model_b_rev_1_5"
        );
    }

    #[test]
    fn playbook_patterns_become_groups() {
        let dir = std::env::temp_dir().join(format!("herd-inv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("play.yml");
        std::fs::write(
            &p,
            "- hosts: web:&alive,!db\n  tasks: []\n- hosts: [lb, web]\n  tasks: []\n- hosts: all\n  tasks: []\n",
        )
        .unwrap();
        assert_eq!(playbook_groups(&p).unwrap(), ["web", "alive", "db", "lb"]);
        std::fs::write(&p, "- hosts: '{{ target }}'\n  tasks: []\n").unwrap();
        assert!(format!("{:#}", playbook_groups(&p).unwrap_err()).contains("computed"));
        std::fs::write(&p, "hosts: web\n").unwrap();
        assert!(format!("{:#}", playbook_groups(&p).unwrap_err()).contains("list of plays"));
        std::fs::write(&p, "- hosts: [unclosed\n").unwrap();
        assert!(format!("{:#}", playbook_groups(&p).unwrap_err()).contains("not YAML"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn host_names_never_carry_ansible_syntax() {
        let node = |name: &str, id: &str| NodeView {
            name: name.into(),
            id: id.into(),
            ..serde_json::from_value(json!({
                "id": id, "name": name, "state": "alive", "is_self": false, "generation": 1,
                "phi": 0.0, "threshold": 8.0, "last_heard_ms": 0, "services": []
            }))
            .expect("a node view")
        };
        let nodes = [
            node("pi4#", "aa"),
            node("web[1:3]", "bb"),
            node("a b,c:d", "cc"),
        ];
        let refs: Vec<&NodeView> = nodes.iter().collect();
        assert_eq!(host_names(&refs), ["pi4-", "web-1-3-", "a-b-c-d"]);
    }

    #[test]
    fn ini_values_with_spaces_are_quoted() {
        assert_eq!(
            ini_vars(&json!({"a": "x y", "b": 3, "c": ["s"], "d": "it's"})),
            r#" a="x y" b=3 c="[\"s\"]" d="it's""#
        );
    }
}
