//! The dashboard at `/`: the server renders every node's row (`dashboard.html`, tera), and the page's
//! script redraws the rows from `/api/v1/nodes` every 2 s; and a page per node at `/node/:id`.

use std::net::SocketAddr;

use serde::Serialize;
use warp::http::StatusCode;
use warp::{Rejection, Reply};

use super::{reject, ApiState};
use crate::gossip::Liveness;
use crate::model::health::State;
use crate::model::views::{self, NodeView};

/// One row of the dashboard, formatted for people.
#[derive(Serialize)]
pub(super) struct Row {
    id: String,
    short_id: String,
    name: String,
    self_class: &'static str,
    link: Option<String>,
    ip: String,
    port: String,
    state: Liveness,
    phi_text: String,
    phi_pct: u32,
    phi_class: &'static str,
    cpu: String,
    mem: String,
    load: String,
    temp: String,
    health: String,
    health_class: &'static str,
    health_title: String,
    services: Vec<String>,
    /// The container engine's role (`[engine]`), as the node reports it; its error as the title.
    engine: String,
    engine_title: String,
    version: String,
    last_heard: String,
}

impl Row {
    fn new(n: &NodeView) -> Row {
        let m = n.monitoring.as_ref();
        let dash = || "–".to_string();
        Row {
            id: n.id.clone(),
            short_id: n.id.chars().take(8).collect(),
            name: if n.name.is_empty() {
                n.id.clone()
            } else {
                n.name.clone()
            },
            self_class: if n.is_self { "self" } else { "" },
            link: match (n.address, n.http_port) {
                (Some(ip), Some(port)) => Some(format!("http://{}/", SocketAddr::new(ip, port))),
                _ => None,
            },
            ip: n.address.map_or_else(dash, |a| a.to_string()),
            port: n.gossip_port.map_or_else(dash, |p| p.to_string()),
            state: n.state,
            phi_text: format!(
                "{} / {}",
                if n.phi > 1e6 {
                    "∞".to_string()
                } else {
                    format!("{:.2}", n.phi)
                },
                n.threshold
            ),
            phi_pct: ((n.phi / n.threshold).clamp(0.0, 1.0) * 100.0).round() as u32,
            phi_class: if n.phi >= n.threshold {
                "bad"
            } else if n.phi >= n.threshold / 2.0 {
                "warn"
            } else {
                ""
            },
            cpu: m.map_or_else(dash, |m| format!("{:.1} %", m.cpu)),
            mem: m.map_or_else(dash, |m| {
                format!("{} / {}", bytes(m.mem_used), bytes(m.mem_total))
            }),
            load: m.map_or_else(dash, |m| {
                format!("{:.2} {:.2} {:.2}", m.load[0], m.load[1], m.load[2])
            }),
            temp: m
                .and_then(|m| m.temp)
                .map_or_else(dash, |t| format!("{t:.1} °C")),
            health: {
                let worst = n.health.state;
                let names: Vec<&str> = n
                    .health
                    .checks
                    .iter()
                    .filter(|c| c.state == worst && worst > State::Ok)
                    .map(|c| c.name.as_str())
                    .collect();
                if names.is_empty() {
                    worst.as_str().to_string()
                } else {
                    format!("{}: {}", worst.as_str(), names.join(", "))
                }
            },
            health_class: match n.health.state {
                State::Ok => "ok",
                State::Warning => "warn",
                State::Critical => "bad",
                State::Unknown => "",
            },
            health_title: n
                .health
                .checks
                .iter()
                .map(|c| {
                    let advice = c
                        .advice
                        .as_ref()
                        .map(|a| format!(". {a}"))
                        .unwrap_or_default();
                    format!("{}: {}, {}{advice}", c.name, c.state.as_str(), c.detail)
                })
                .collect::<Vec<_>>()
                .join("\n"),
            services: n.services.clone(),
            engine: engine_role(n.engine.as_ref()),
            engine_title: n
                .engine
                .as_ref()
                .and_then(|e| e.error.clone())
                .unwrap_or_default(),
            version: n.version.clone().unwrap_or_else(dash),
            last_heard: if n.is_self {
                "self".into()
            } else {
                ago(n.last_heard_ms)
            },
        }
    }
}

/// A node's engine in a word or two (the page's script words it the same way): none reported, its
/// error, or its role, a leading manager said so.
pub(super) fn engine_role(e: Option<&crate::model::engine::EngineReport>) -> String {
    use crate::model::engine::Role;
    match e {
        None => "–".into(),
        Some(e) if e.error.is_some() => "error".into(),
        Some(e) => match e.role {
            Role::None => "none".into(),
            Role::Worker => "worker".into(),
            Role::Manager if e.leader => "manager, leads".into(),
            Role::Manager => "manager".into(),
        },
    }
}

pub(super) fn bytes(n: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut x = n as f64;
    let mut i = 0;
    while x >= 1024.0 && i < units.len() - 1 {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", units[i])
    }
}

pub(super) fn ago(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1000..=119_999 => format!("{:.1} s", ms as f64 / 1000.0),
        120_000..=7_199_999 => format!("{} min", ms / 60_000),
        _ => format!("{} h", ms / 3_600_000),
    }
}

pub(super) async fn dashboard(s: ApiState) -> Result<impl Reply, Rejection> {
    let nodes = views::nodes(&s.handle.members());
    let alive = nodes.iter().filter(|n| n.state == Liveness::Alive).count();
    let mut ctx = tera::Context::new();
    ctx.insert("cluster", &s.cluster);
    ctx.insert(
        "self_name",
        &nodes
            .iter()
            .find(|n| n.is_self)
            .map(|n| n.name.clone())
            .unwrap_or_default(),
    );
    ctx.insert("summary", &format!("{alive} of {} alive", nodes.len()));
    ctx.insert("version", crate::VERSION);
    ctx.insert("rows", &nodes.iter().map(Row::new).collect::<Vec<_>>());
    render(&s, "dashboard.html", &ctx, "the dashboard")
}

/// Renders one of the embedded templates; a failure is logged and answered 500 naming the page.
fn render(
    s: &ApiState,
    template: &str,
    ctx: &tera::Context,
    page: &str,
) -> Result<warp::reply::Html<String>, Rejection> {
    let html = s.templates.render(template, ctx).map_err(|e| {
        tracing::error!(error = %e, template, "template failed to render");
        reject(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{page} failed to render"),
        )
    })?;
    Ok(warp::reply::html(html))
}

/// A node's page at `/node/:id`: its hour drawn, its health with advice, the membership events seen
/// here (`node.html`; the page's script reads `/api/v1/history/:id` and `/api/v1/nodes`).
pub(super) async fn node_page(id: String, s: ApiState) -> Result<impl Reply, Rejection> {
    let nodes = views::nodes(&s.handle.members());
    let Some(node) = nodes.iter().find(|n| n.id == id) else {
        return Err(reject(
            StatusCode::NOT_FOUND,
            format!(
                "no member {:?} here (the dashboard at / lists them)",
                id.chars().take(40).collect::<String>()
            ),
        ));
    };
    let mut ctx = tera::Context::new();
    ctx.insert("cluster", &s.cluster);
    ctx.insert("id", &node.id);
    ctx.insert(
        "name",
        if node.name.is_empty() {
            &node.id
        } else {
            &node.name
        },
    );
    ctx.insert("state", &node.state);
    // Each node reads its own journal: another's is on that node's own page.
    ctx.insert("is_self", &node.is_self);
    let own_page = match (node.address, node.http_port) {
        (Some(addr), Some(port)) => {
            format!(
                "http://{}/node/{}",
                std::net::SocketAddr::new(addr, port),
                node.id
            )
        }
        _ => String::new(),
    };
    ctx.insert("own_page", &own_page);
    render(&s, "node.html", &ctx, "the node's page")
}
