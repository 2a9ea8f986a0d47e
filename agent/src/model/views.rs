//! The JSON shapes of the API, built from the gossip's member table. The README shows an example of each.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::gossip::{Liveness, Member};
use crate::model::health::{self, Health, HealthView, HEALTH_KEY};
use crate::model::published::{self, Facts, Sample, FACTS_KEY, SAMPLE_KEY, SERVICES_KEY};

/// Everything about one node: `GET /api/v1/nodes` returns an array of these.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    pub id: String,
    pub name: String,
    pub address: Option<IpAddr>,
    pub gossip_port: Option<u16>,
    pub http_port: Option<u16>,
    pub state: Liveness,
    pub phi: f64,
    pub threshold: f64,
    pub generation: u64,
    /// Milliseconds since this node's heartbeat last arrived (0 for the serving node).
    pub last_heard_ms: u64,
    /// Whether this is the node serving the request.
    pub is_self: bool,
    pub version: Option<String>,
    pub services: Vec<String>,
    pub monitoring: Option<Sample>,
    pub facts: Option<Facts>,
    pub uptime_s: Option<u64>,
    /// The generation of the serving node that this node last said, in a sealed Syn, it holds: how
    /// `herd upgrade` proves a new agent is known to its peers without asking them (absent for the
    /// serving node, and from agents before 0.1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knows_serving_node_as: Option<u64>,
    /// The node's public keys (base64 of the Ed25519 key, then the X25519 key), which its id names
    /// (absent from agents before per-node keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// The node's health checks, with advice (every check `unknown` for agents before health).
    #[serde(default)]
    pub health: HealthView,
    /// What the node's container engine says of itself (its swarm, role, whether it leads), on cards
    /// that run one (docs/ENGINE.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<crate::model::engine::EngineReport>,
}

impl NodeView {
    /// This node as the engine's plan sees it; `None` for an id that is not one.
    pub fn engine_member(&self) -> Option<crate::model::engine::Member> {
        use crate::gossip::Liveness;
        Some(crate::model::engine::Member {
            id: self.id.parse().ok()?,
            addr: self.address,
            liveness: self.state,
            gone_for: matches!(self.state, Liveness::Dead | Liveness::Left)
                .then(|| std::time::Duration::from_millis(self.last_heard_ms)),
            healthy: self.health.state != crate::model::health::State::Critical,
            memory: self.monitoring.as_ref().map(|m| m.mem_total),
            engine: self.engine.clone(),
        })
    }

    pub fn from_member(m: &Member) -> NodeView {
        let kv = |k: &str| m.kvs.get(k).map(String::as_str);
        let facts: Option<Facts> = kv(FACTS_KEY).and_then(|v| serde_json::from_str(v).ok());
        let monitoring: Option<Sample> = kv(SAMPLE_KEY).and_then(|v| serde_json::from_str(v).ok());
        let health: Option<Health> = kv(HEALTH_KEY).and_then(|v| serde_json::from_str(v).ok());
        NodeView {
            id: m.id.to_string(),
            name: kv("name").unwrap_or("").to_string(),
            address: m.addr.map(|a| a.ip()),
            gossip_port: m.addr.map(|a| a.port()),
            http_port: kv("http").and_then(|p| p.parse().ok()),
            state: m.liveness,
            phi: if m.phi.is_finite() { m.phi } else { f64::MAX },
            threshold: m.threshold,
            generation: m.generation,
            last_heard_ms: m.last_heard.as_millis() as u64,
            is_self: m.is_self,
            version: kv("version").map(str::to_string),
            services: kv(SERVICES_KEY)
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default(),
            health: health::checks(
                health.as_ref(),
                health::Readings {
                    temp: monitoring.as_ref().and_then(|m| m.temp),
                    disk: monitoring.as_ref().map(|m| (m.disk_used, m.disk_total)),
                    memory: monitoring.as_ref().map(|m| m.mem_total),
                    model: facts.as_ref().and_then(|f| f.model.as_deref()),
                },
            ),
            monitoring,
            uptime_s: facts.as_ref().map(|f| published::uptime(f.boot).as_secs()),
            facts,
            knows_serving_node_as: m.knows_me_as,
            engine: kv(crate::model::engine::ENGINE_KEY).and_then(|v| serde_json::from_str(v).ok()),
            public_key: Some({
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(m.public_key)
            }),
        }
    }
}

/// A node's API as the other nodes reach it: `http://IP:PORT` from its gossiped address and port.
pub fn api_url(ip: std::net::IpAddr, port: u16) -> String {
    format!("http://{}", std::net::SocketAddr::new(ip, port))
}

/// All nodes, the serving node first, then by name.
pub fn nodes(members: &[Member]) -> Vec<NodeView> {
    let mut v: Vec<NodeView> = members.iter().map(NodeView::from_member).collect();
    v.sort_by(|a, b| {
        b.is_self
            .cmp(&a.is_self)
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.id.cmp(&b.id))
    });
    v
}

/// `GET /nodes/monitoring`: one entry per node.
#[derive(Debug, Clone, Serialize)]
pub struct MonitoringView {
    pub id: String,
    pub name: String,
    pub address: Option<IpAddr>,
    pub state: Liveness,
    pub monitoring: Option<Sample>,
    pub facts: Option<Facts>,
    pub uptime_s: Option<u64>,
}

impl From<NodeView> for MonitoringView {
    fn from(n: NodeView) -> Self {
        MonitoringView {
            id: n.id,
            name: n.name,
            address: n.address,
            state: n.state,
            monitoring: n.monitoring,
            facts: n.facts,
            uptime_s: n.uptime_s,
        }
    }
}

/// `GET /nodes/workingService/:service`: one entry per alive node running the service.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceNodeView {
    pub id: String,
    pub name: String,
    pub address: Option<IpAddr>,
    pub http_port: Option<u16>,
}

/// `PUT /meta-data/…`: the node's services after the change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServicesView {
    pub id: String,
    pub name: String,
    pub services: Vec<String>,
    /// Whether the request changed anything (adding a present service or removing an absent one does
    /// not).
    pub changed: bool,
}

/// An error body: `{"error": "…"}`.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorView {
    pub error: String,
}
