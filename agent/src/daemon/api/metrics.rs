//! `GET /metrics` in the Prometheus text exposition format (version 0.0.4).

use std::fmt::Write;

use std::sync::atomic::Ordering;

use super::server::Counters;
use crate::gossip::{Liveness, Member, Stats};
use crate::model::health::State;

/// Renders the node's metrics.
pub fn render(members: &[Member], stats: &Stats, threshold: f64) -> String {
    let mut out = String::with_capacity(1024 + members.len() * 96);
    let o = &mut out;

    header(
        o,
        "herd_members",
        "gauge",
        "Members known to this node, by state.",
    );
    for (state, label) in [
        (Liveness::Alive, "alive"),
        (Liveness::Suspect, "suspect"),
        (Liveness::Dead, "dead"),
        (Liveness::Left, "left"),
    ] {
        let n = members.iter().filter(|m| m.liveness == state).count();
        let _ = writeln!(o, "herd_members{{state=\"{label}\"}} {n}");
    }

    let name = "herd_gossip_packets_total";
    header(o, name, "counter", "Gossip datagrams received and sent.");
    let _ = writeln!(o, "{name}{{direction=\"in\"}} {}", stats.packets_in);
    let _ = writeln!(o, "{name}{{direction=\"out\"}} {}", stats.packets_out);

    let name = "herd_gossip_bytes_total";
    header(o, name, "counter", "Gossip bytes received and sent.");
    let _ = writeln!(o, "{name}{{direction=\"in\"}} {}", stats.bytes_in);
    let _ = writeln!(o, "{name}{{direction=\"out\"}} {}", stats.bytes_out);

    let name = "herd_gossip_rejected_packets_total";
    header(
        o,
        name,
        "counter",
        "Datagrams or node states dropped: failed authentication, another cluster or version (old: an \
         agent from before per-node keys), malformed, replayed, a bad field, a missing signature, a \
         paired datagram from a sender whose keys are not known here.",
    );
    for (reason, value) in [
        ("auth", stats.rejected_auth),
        ("foreign", stats.rejected_foreign),
        ("old", stats.old_protocol),
        ("malformed", stats.rejected_malformed),
        ("replay", stats.rejected_replay),
        ("invalid", stats.rejected_invalid),
        ("signature", stats.rejected_signature),
        ("unknown_sender", stats.unknown_senders),
    ] {
        let _ = writeln!(o, "{name}{{reason=\"{reason}\"}} {value}");
    }

    for (name, help, value) in [
        (
            "herd_gossip_unheard_dropped_total",
            "Datagrams not sent to an address not heard from, its send budget spent.",
            stats.unheard_dropped,
        ),
        (
            "herd_gossip_unheard_heartbeats_total",
            "Heartbeats not counted: they came from an address other than their sender's.",
            stats.unheard_heartbeats,
        ),
        (
            "herd_gossip_unwatched_heartbeats_total",
            "Heartbeats of nodes not watched: this node already watches its share from that address.",
            stats.unwatched_heartbeats,
        ),
        (
            "herd_gossip_refused_members_total",
            "News of members refused because the member table was full.",
            stats.refused_members,
        ),
        (
            "herd_gossip_limited_replies_total",
            "Replies cut to the size of the datagram they answer (its source was not its sender's address).",
            stats.limited_replies,
        ),
        (
            "herd_gossip_refutations_total",
            "Times this node raised its generation to refute what peers believed of it (a conviction, or \
             its own state of a former life).",
            stats.refutations,
        ),
        (
            "herd_gossip_claims_of_self_total",
            "Claims by peers of a newer generation of this node: refuted only when signed by its own key.",
            stats.claims_of_self,
        ),
        (
            "herd_gossip_cannot_refute_total",
            "Refutations this node could not make: its own key signed a generation at the ceiling.",
            stats.cannot_refute,
        ),
        (
            "herd_gossip_unchecked_dropped_total",
            "Node states left for a later exchange: their source had spent its share of signature checks.",
            stats.unchecked_dropped,
        ),
    ] {
        header(o, name, "counter", help);
        let _ = writeln!(o, "{name} {value}");
    }

    let name = "herd_gossip_largest_datagram_bytes";
    header(o, name, "gauge", "Largest datagram this node has sent.");
    let _ = writeln!(o, "{name} {}", stats.largest_datagram_out);

    let name = "herd_phi_threshold";
    header(
        o,
        name,
        "gauge",
        "Phi at which a peer is declared dead (suspect at half).",
    );
    let _ = writeln!(o, "{name} {}", number(threshold));

    let name = "herd_phi";
    header(
        o,
        name,
        "gauge",
        "Suspicion level of each peer (phi accrual failure detector).",
    );
    for m in members.iter().filter(|m| !m.is_self) {
        let peer_name = m.kvs.get("name").map(String::as_str).unwrap_or("");
        let _ = writeln!(
            o,
            "{name}{{peer=\"{}\",name=\"{}\"}} {}",
            m.id,
            escape(peer_name),
            number(m.phi)
        );
    }

    let name = "herd_health";
    header(
        o,
        name,
        "gauge",
        "Each node's health checks as it gossiped them: -1 unknown (no source on that machine), 0 ok, \
         1 warning, 2 critical (GET /api/v1/nodes gives the words and the advice).",
    );
    for m in members.iter().filter(|m| m.liveness == Liveness::Alive) {
        let view = crate::model::views::NodeView::from_member(m);
        for c in &view.health.checks {
            let value = match c.state {
                State::Unknown => -1,
                State::Ok => 0,
                State::Warning => 1,
                State::Critical => 2,
            };
            let _ = writeln!(
                o,
                "{name}{{node=\"{}\",name=\"{}\",check=\"{}\"}} {value}",
                m.id,
                escape(&view.name),
                c.name
            );
        }
    }
    out
}

/// Appends the API front's counters.
pub fn render_api(o: &mut String, c: &Counters) {
    let name = "herd_api_connections_total";
    header(
        o,
        name,
        "counter",
        "API connections: accepted, refused at once (over the cap in all or per address), dropped for a \
         timeout, or ended in another error.",
    );
    for (label, v) in [
        ("accepted", &c.accepted),
        ("refused", &c.refused),
        ("timed_out", &c.timed_out),
        ("failed", &c.failed),
    ] {
        let _ = writeln!(
            o,
            "{name}{{outcome=\"{label}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    let name = "herd_api_connections_open";
    header(o, name, "gauge", "API connections open now.");
    let _ = writeln!(o, "{name} {}", c.open.load(Ordering::Relaxed));
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A sample value: Prometheus spells infinity `+Inf`.
fn number(x: f64) -> String {
    if x.is_infinite() {
        if x > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if x.is_nan() {
        "NaN".to_string()
    } else {
        format!("{x}")
    }
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
