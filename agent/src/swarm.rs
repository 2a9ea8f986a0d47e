//! The card's root side of the container engine, Docker Swarm: what it asks the Docker Engine API, what
//! it makes of the answers (this node's report, the swarm's list of its nodes) and the request each of
//! the plan's steps becomes. Sans-IO: the transport (the engine's unix socket, root's alone) lives apart,
//! and the API is spoken rather than the `docker` command so that a join token travels in a request
//! body, never on a command line every local user can read in `/proc`.
//!
//! The shapes are the Engine API's: moby/moby `api/types/swarm/swarm.go` l.200-215 (`Info`, under
//! `GET /info`'s `Swarm`), `api/types/swarm/node.go` l.4-18, 94-118 (`Node`, `NodeStatus`,
//! `ManagerStatus`), `api/swagger.yaml` l.12453-12552 (`/nodes/{id}`, `/nodes/{id}/update` with the
//! object's `version`), l.12575-12760 (`/swarm/init`, `/swarm/join`, `/swarm/leave`), at b985e231.

use std::net::IpAddr;

use serde::Deserialize;

use crate::model::engine::{EngineReport, Role, Step, SwarmNode};

/// The port Swarm's managers listen on for the swarm's own traffic.
pub const SWARM_PORT: u16 = 2377;

/// One call of the Engine API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: &'static str,
    pub path: String,
    pub body: Option<String>,
}

/// `GET /info`'s `Swarm`: this node's engine, as it says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Local {
    #[serde(rename = "NodeID", default)]
    pub node_id: String,
    /// `inactive`, `pending`, `active`, `error` or `locked`.
    pub local_node_state: String,
    /// Whether this node is a manager.
    #[serde(default)]
    pub control_available: bool,
    #[serde(default)]
    pub error: String,
    /// Present on managers only: workers do not see the cluster object.
    #[serde(default)]
    pub cluster: Option<Cluster>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Cluster {
    #[serde(rename = "ID")]
    pub id: String,
}

#[derive(Deserialize)]
struct SystemInfo {
    #[serde(rename = "Swarm")]
    swarm: Local,
}

/// Reads `GET /info`'s answer.
pub fn parse_info(body: &str) -> Result<Local, String> {
    serde_json::from_str::<SystemInfo>(body)
        .map(|i| i.swarm)
        .map_err(|e| format!("the engine's /info: {e}"))
}

/// The prefix of the node labels herd keeps; labels under any other name are the operator's.
pub const LABEL_PREFIX: &str = "herd.";

/// The labels herd keeps on a member's swarm node, from what it gossips of itself: its board model, CPU
/// family and count, and the services its meta-data names (comma-separated, sorted), so a service can be
/// placed with `--constraint node.labels.herd.model==…`.
pub fn herd_labels(
    facts: Option<&crate::model::published::Facts>,
    services: &[String],
) -> std::collections::BTreeMap<String, String> {
    let mut labels = std::collections::BTreeMap::new();
    if let Some(f) = facts {
        if let Some(model) = &f.model {
            labels.insert(format!("{LABEL_PREFIX}model"), model.clone());
        }
        labels.insert(format!("{LABEL_PREFIX}arch"), f.arch.clone());
        if let Some(cpus) = f.cpus {
            labels.insert(format!("{LABEL_PREFIX}cpus"), cpus.to_string());
        }
    }
    let mut services = services.to_vec();
    services.sort();
    labels.insert(format!("{LABEL_PREFIX}services"), services.join(","));
    labels
}

/// The update that makes `node`'s `herd.` labels `want`, the operator's own labels and the rest of its
/// spec kept; `None` when they already are.
pub fn label_request(
    node: &Node,
    want: &std::collections::BTreeMap<String, String>,
) -> Option<Request> {
    let have: std::collections::BTreeMap<String, String> = node.spec["Labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.starts_with(LABEL_PREFIX))
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    if &have == want {
        return None;
    }
    let mut spec = node.spec.clone();
    let mut labels: serde_json::Map<String, serde_json::Value> = spec["Labels"]
        .as_object()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !k.starts_with(LABEL_PREFIX))
        .collect();
    for (k, v) in want {
        labels.insert(k.clone(), serde_json::Value::from(v.as_str()));
    }
    spec["Labels"] = serde_json::Value::Object(labels);
    Some(Request {
        method: "POST",
        path: format!("/nodes/{}/update?version={}", node.id, node.version),
        body: Some(spec.to_string()),
    })
}

/// The worker join token from `GET /swarm`'s answer (a manager's: moby `api/types/swarm/swarm.go`,
/// `Swarm.JoinTokens.Worker`). The manager token is never read: a node joins as a worker and the leader
/// promotes it.
pub fn parse_worker_token(body: &str) -> Result<String, String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("the engine's /swarm: {e}"))?;
    let token = v["JoinTokens"]["Worker"].as_str().unwrap_or_default();
    if crate::model::join::token_ok(token) {
        Ok(token.to_string())
    } else {
        Err("the engine's /swarm has no worker join token".into())
    }
}

/// A node of the swarm as `GET /nodes` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: String,
    /// The object's version, which an update must name.
    pub version: u64,
    /// Its spec as the engine holds it: an update sends it back with the role changed, so that labels
    /// and availability set by others are kept.
    pub spec: serde_json::Value,
    pub role: Role,
    /// A worker ready, or a manager reachable.
    pub reachable: bool,
    pub leader: bool,
}

impl Node {
    pub fn listing(&self) -> SwarmNode {
        SwarmNode {
            node: self.id.clone(),
            role: self.role,
            reachable: self.reachable,
        }
    }
}

/// Reads `GET /nodes`'s answer.
pub fn parse_nodes(body: &str) -> Result<Vec<Node>, String> {
    let raw: Vec<serde_json::Value> =
        serde_json::from_str(body).map_err(|e| format!("the engine's /nodes: {e}"))?;
    raw.into_iter()
        .map(|n| {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            let id = text(&n["ID"]);
            if id.is_empty() {
                return Err("the engine's /nodes: a node without an ID".to_string());
            }
            let role = match n["Spec"]["Role"].as_str() {
                Some("manager") => Role::Manager,
                Some("worker") => Role::Worker,
                other => return Err(format!("the engine's /nodes: node {id} has role {other:?}")),
            };
            let manager = &n["ManagerStatus"];
            let reachable = match role {
                Role::Manager => manager["Reachability"].as_str() == Some("reachable"),
                _ => n["Status"]["State"].as_str() == Some("ready"),
            };
            Ok(Node {
                version: n["Version"]["Index"].as_u64().unwrap_or(0),
                spec: n["Spec"].clone(),
                role,
                reachable,
                leader: manager["Leader"].as_bool().unwrap_or(false),
                id,
            })
        })
        .collect()
}

/// This node's report: `swarm` is the swarm it joined or formed (remembered by the root side, since a
/// worker's engine does not say), `leads` whether the swarm's list shows it as leader.
pub fn report(local: &Local, swarm: Option<&str>, leads: bool) -> EngineReport {
    let error = (!local.error.is_empty() || local.local_node_state == "error").then(|| {
        let text = if local.error.is_empty() {
            "the engine's swarm state is error"
        } else {
            &local.error
        };
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(200)
            .collect::<String>()
    });
    let swarm = local
        .cluster
        .as_ref()
        .map(|c| c.id.clone())
        .or(swarm.map(str::to_string));
    match local.local_node_state.as_str() {
        "inactive" | "" => EngineReport {
            error,
            ..EngineReport::default()
        },
        _ if swarm.is_none() || local.node_id.is_empty() => EngineReport {
            error: error.or(Some("in a swarm this node does not know the id of".into())),
            ..EngineReport::default()
        },
        _ => {
            let role = if local.control_available {
                Role::Manager
            } else {
                Role::Worker
            };
            EngineReport {
                swarm,
                node: Some(local.node_id.clone()),
                role,
                leader: leads && role == Role::Manager,
                error,
            }
        }
    }
}

/// The Engine API call a step of the plan becomes. `me` is herd's own address (the swarm advertises it
/// and listens on it only), `token` the worker join token for a join, `nodes` the swarm's list for a
/// promotion or demotion (an update names the object's version and sends its whole spec back).
pub fn request(
    step: &Step,
    me: IpAddr,
    token: Option<&str>,
    nodes: &[Node],
) -> Result<Request, String> {
    let listen = std::net::SocketAddr::new(me, SWARM_PORT).to_string();
    let json = |v: serde_json::Value| Some(v.to_string());
    Ok(match step {
        Step::Form => Request {
            method: "POST",
            path: "/swarm/init".into(),
            body: json(serde_json::json!({
                "ListenAddr": listen,
                "AdvertiseAddr": listen,
            })),
        },
        Step::Join { via, .. } => {
            let token = token.ok_or("no join token has reached this node yet")?;
            Request {
                method: "POST",
                path: "/swarm/join".into(),
                body: json(serde_json::json!({
                    "ListenAddr": listen,
                    "AdvertiseAddr": listen,
                    "RemoteAddrs": [std::net::SocketAddr::new(*via, SWARM_PORT).to_string()],
                    "JoinToken": token,
                })),
            }
        }
        Step::Leave => Request {
            method: "POST",
            path: "/swarm/leave?force=1".into(),
            body: None,
        },
        Step::Promote { node } | Step::Demote { node } => {
            let n = nodes
                .iter()
                .find(|n| &n.id == node)
                .ok_or_else(|| format!("node {node} is not in the swarm's list"))?;
            let mut spec = n.spec.clone();
            let role = if matches!(step, Step::Promote { .. }) {
                "manager"
            } else {
                "worker"
            };
            spec["Role"] = serde_json::Value::from(role);
            Request {
                method: "POST",
                path: format!("/nodes/{}/update?version={}", n.id, n.version),
                body: Some(spec.to_string()),
            }
        }
        Step::Remove { node } => Request {
            method: "DELETE",
            path: format!("/nodes/{node}?force=1"),
            body: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `GET /nodes` on a manager of three: itself (leader), a reachable manager, a worker that is down.
    /// The fields are those of moby's `Node` (api/types/swarm/node.go l.4-18).
    const NODES: &str = r#"[
      {"ID":"24ifsmvkjbyhk","Version":{"Index":8},"Spec":{"Labels":{"herd.model":"pi4"},"Role":"manager","Availability":"active"},
       "Description":{"Hostname":"herd-3f2a9c"},"Status":{"State":"ready","Addr":"10.0.0.1"},
       "ManagerStatus":{"Leader":true,"Reachability":"reachable","Addr":"10.0.0.1:2377"}},
      {"ID":"7kq2a0b6nr1zz","Version":{"Index":21},"Spec":{"Role":"manager","Availability":"active"},
       "Status":{"State":"ready"},"ManagerStatus":{"Reachability":"reachable","Addr":"10.0.0.2:2377"}},
      {"ID":"c1xw9x0f3t4kp","Version":{"Index":30},"Spec":{"Role":"worker","Availability":"active"},
       "Status":{"State":"down"}}
    ]"#;

    #[test]
    fn herds_labels_follow_the_facts_and_leave_the_operators_alone() {
        let nodes = parse_nodes(NODES).unwrap();
        let facts: crate::model::published::Facts = serde_json::from_value(serde_json::json!({
            "model": "Raspberry Pi 4 Model B Rev 1.4", "arch": "aarch64", "os": null, "boot": 1,
            "agent": "0.1.0", "cpus": 4,
        }))
        .unwrap();
        let want = herd_labels(Some(&facts), &["web".into(), "db".into()]);
        assert_eq!(want["herd.services"], "db,web");
        // The first node carries herd.model=pi4 (stale) and nothing else of herd's: updated, at its
        // version, with its role and availability kept and only herd's labels changed.
        let req = label_request(&nodes[0], &want).unwrap();
        assert_eq!(req.path, "/nodes/24ifsmvkjbyhk/update?version=8");
        let spec: serde_json::Value = serde_json::from_str(req.body.as_deref().unwrap()).unwrap();
        assert_eq!(spec["Role"], "manager");
        assert_eq!(spec["Availability"], "active");
        assert_eq!(
            spec["Labels"]["herd.model"],
            "Raspberry Pi 4 Model B Rev 1.4"
        );
        assert_eq!(spec["Labels"]["herd.cpus"], "4");
        // Once they are as wanted, nothing is sent; an operator's own label is kept through an update.
        let mut done = nodes[0].clone();
        done.spec = spec.clone();
        assert!(label_request(&done, &want).is_none());
        done.spec["Labels"]["zone"] = "attic".into();
        assert!(label_request(&done, &want).is_none());
        let fewer = herd_labels(Some(&facts), &["web".into()]);
        let spec: serde_json::Value = serde_json::from_str(
            label_request(&done, &fewer)
                .unwrap()
                .body
                .as_deref()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(spec["Labels"]["zone"], "attic");
        assert_eq!(spec["Labels"]["herd.services"], "web");
    }

    #[test]
    fn the_worker_token_is_read_and_the_managers_is_not() {
        let body = r#"{"ID":"qz2ssj0yrm1nbrnpe5rgvt8yx","JoinTokens":{
            "Worker":"SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdbx",
            "Manager":"SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-7p73s1dx5in4tatdymyhg9hu2"}}"#;
        let t = parse_worker_token(body).unwrap();
        assert!(t.ends_with("-1awxwuwd3z9j1z3puu7rcgdbx"), "{t}");
        assert!(parse_worker_token(r#"{"JoinTokens":{"Worker":"$(reboot)"}}"#).is_err());
        assert!(parse_worker_token("{}").is_err());
    }

    #[test]
    fn the_swarms_list_becomes_the_plans() {
        let nodes = parse_nodes(NODES).unwrap();
        let listing: Vec<SwarmNode> = nodes.iter().map(Node::listing).collect();
        assert_eq!(
            listing,
            [
                SwarmNode {
                    node: "24ifsmvkjbyhk".into(),
                    role: Role::Manager,
                    reachable: true
                },
                SwarmNode {
                    node: "7kq2a0b6nr1zz".into(),
                    role: Role::Manager,
                    reachable: true
                },
                SwarmNode {
                    node: "c1xw9x0f3t4kp".into(),
                    role: Role::Worker,
                    reachable: false
                },
            ]
        );
        assert!(nodes[0].leader && !nodes[1].leader);
        assert!(parse_nodes(r#"[{"ID":"x","Spec":{"Role":"boss"}}]"#)
            .unwrap_err()
            .contains("boss"));
        assert!(parse_nodes("{}").is_err());
    }

    #[test]
    fn the_engines_word_becomes_the_nodes_report() {
        let manager = parse_info(
            r#"{"Name":"pi","Swarm":{"NodeID":"24ifsmvkjbyhk","NodeAddr":"10.0.0.1","LocalNodeState":"active",
                "ControlAvailable":true,"Error":"","RemoteManagers":[],"Nodes":3,"Managers":2,
                "Cluster":{"ID":"f4c2x3m5l0p9q8r7s6t5u4v3w","Version":{"Index":10}}}}"#,
        )
        .unwrap();
        let r = report(&manager, None, true);
        assert_eq!(r.swarm.as_deref(), Some("f4c2x3m5l0p9q8r7s6t5u4v3w"));
        assert_eq!((r.role, r.leader), (Role::Manager, true));
        assert_eq!(EngineReport::check(&r.to_gossip()), Ok(()));
        // A worker's engine shows no cluster: the swarm it joined is the root side's memory.
        let worker = parse_info(
            r#"{"Swarm":{"NodeID":"c1xw9x0f3t4kp","LocalNodeState":"active","ControlAvailable":false,
                "Error":""}}"#,
        )
        .unwrap();
        let r = report(&worker, Some("f4c2x3m5l0p9q8r7s6t5u4v3w"), true);
        assert_eq!((r.role, r.leader), (Role::Worker, false));
        assert_eq!(r.swarm.as_deref(), Some("f4c2x3m5l0p9q8r7s6t5u4v3w"));
        assert!(report(&worker, None, false).error.is_some());
        let lost = parse_info(
            r#"{"Swarm":{"NodeID":"c1xw9x0f3t4kp","LocalNodeState":"error","Error":"node is not part of\nthis swarm"}}"#,
        )
        .unwrap();
        let r = report(&lost, Some("f4c2x3m5l0p9q8r7s6t5u4v3w"), false);
        assert_eq!(r.error.as_deref(), Some("node is not part of this swarm"));
        assert_eq!(EngineReport::check(&r.to_gossip()), Ok(()));
        let none = parse_info(r#"{"Swarm":{"LocalNodeState":"inactive"}}"#).unwrap();
        assert_eq!(report(&none, None, false), EngineReport::default());
    }

    #[test]
    fn steps_become_engine_api_calls_with_the_token_in_the_body_only() {
        let me: IpAddr = "10.0.0.3".parse().unwrap();
        let nodes = parse_nodes(NODES).unwrap();
        let join = request(
            &Step::Join {
                swarm: "s".into(),
                via: "10.0.0.1".parse().unwrap(),
            },
            me,
            Some("SWMTKN-1-secret"),
            &nodes,
        )
        .unwrap();
        assert_eq!((join.method, join.path.as_str()), ("POST", "/swarm/join"));
        let body: serde_json::Value = serde_json::from_str(join.body.as_deref().unwrap()).unwrap();
        assert_eq!(body["RemoteAddrs"][0], "10.0.0.1:2377");
        assert_eq!(body["AdvertiseAddr"], "10.0.0.3:2377");
        assert_eq!(body["JoinToken"], "SWMTKN-1-secret");
        assert!(!join.path.contains("SWMTKN"));
        assert!(request(
            &Step::Join {
                swarm: "s".into(),
                via: me
            },
            me,
            None,
            &nodes
        )
        .unwrap_err()
        .contains("no join token"));
        // A promotion sends the node's whole spec back, its labels kept, at the version read.
        let promote = request(
            &Step::Promote {
                node: "c1xw9x0f3t4kp".into(),
            },
            me,
            None,
            &nodes,
        )
        .unwrap();
        assert_eq!(promote.path, "/nodes/c1xw9x0f3t4kp/update?version=30");
        let spec: serde_json::Value =
            serde_json::from_str(promote.body.as_deref().unwrap()).unwrap();
        assert_eq!(spec["Role"], "manager");
        assert_eq!(spec["Availability"], "active");
        let demote = request(
            &Step::Demote {
                node: "24ifsmvkjbyhk".into(),
            },
            me,
            None,
            &nodes,
        )
        .unwrap();
        let spec: serde_json::Value =
            serde_json::from_str(demote.body.as_deref().unwrap()).unwrap();
        assert_eq!(
            (spec["Role"].as_str(), &spec["Labels"]["herd.model"]),
            (Some("worker"), &serde_json::json!("pi4"))
        );
        assert!(request(
            &Step::Demote {
                node: "gone".into()
            },
            me,
            None,
            &nodes
        )
        .is_err());
        assert_eq!(
            request(
                &Step::Remove {
                    node: "c1xw9x0f3t4kp".into()
                },
                me,
                None,
                &nodes
            )
            .unwrap(),
            Request {
                method: "DELETE",
                path: "/nodes/c1xw9x0f3t4kp?force=1".into(),
                body: None
            }
        );
        let form = request(&Step::Form, me, None, &[]).unwrap();
        assert_eq!(form.path, "/swarm/init");
        assert!(form
            .body
            .unwrap()
            .contains("\"ListenAddr\":\"10.0.0.3:2377\""));
    }
}
