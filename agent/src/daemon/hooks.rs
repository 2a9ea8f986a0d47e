//! Event hooks (`[[handlers]]` in herd.toml), like Serf's event handlers: on a member's join, leave,
//! failure or update the agent runs the configured commands (`sh -c`), one at a time in event order,
//! each with a timeout, with the member in `HERD_*` environment variables, and logs what they print and
//! how they ended.
//!
//! "update" means the member's services, name or addresses changed: monitoring samples, which change every
//! few seconds, do not count. "health" means the member's health problems changed: a check that became
//! warning or critical, or went back to ok (a node first seen with a problem counts too). A failed node
//! that comes back, or restarts, is a join again.

use std::collections::{HashMap, VecDeque};
use std::process::Stdio;
use std::sync::Arc;

use tokio::sync::{broadcast, Notify};

use super::handle::Handle;
use crate::config::{HandlerEvent, HandlerSection};
use crate::gossip::{EventKind, Liveness, NodeId};
use crate::model::health::State;
use crate::model::views::NodeView;

/// Events waiting for their handlers beyond this are dropped (and logged): a handler that hangs for its
/// whole timeout on every event must not make the agent's memory grow without end.
const QUEUE_LIMIT: usize = 10_000;

/// One handler run: what happened and the environment describing it.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub event: HandlerEvent,
    pub env: Vec<(String, String)>,
}

/// The environment handlers get for `member`.
pub fn environment(
    event: HandlerEvent,
    member: &NodeView,
    cluster: &str,
    me: &NodeView,
) -> Vec<(String, String)> {
    let opt = |v: Option<String>| v.unwrap_or_default();
    vec![
        ("HERD_EVENT".into(), event.as_str().into()),
        ("HERD_CLUSTER".into(), cluster.into()),
        ("HERD_SELF_ID".into(), me.id.clone()),
        ("HERD_SELF_NAME".into(), me.name.clone()),
        ("HERD_MEMBER_ID".into(), member.id.clone()),
        ("HERD_MEMBER_NAME".into(), member.name.clone()),
        (
            "HERD_MEMBER_ADDRESS".into(),
            opt(member.address.map(|a| a.to_string())),
        ),
        (
            "HERD_MEMBER_GOSSIP_PORT".into(),
            opt(member.gossip_port.map(|p| p.to_string())),
        ),
        (
            "HERD_MEMBER_HTTP_PORT".into(),
            opt(member.http_port.map(|p| p.to_string())),
        ),
        (
            "HERD_MEMBER_STATE".into(),
            format!("{:?}", member.state).to_lowercase(),
        ),
        ("HERD_MEMBER_SERVICES".into(), member.services.join(",")),
        (
            "HERD_MEMBER_HEALTH".into(),
            member.health.state.as_str().into(),
        ),
        ("HERD_MEMBER_PROBLEMS".into(), problems_of(member)),
    ]
}

/// The member's health problems: `check:state` for each check that is warning or critical, by name
/// (`clock:warning,power:critical`), what a "health" event compares.
fn problems_of(n: &NodeView) -> String {
    let mut p: Vec<String> = n
        .health
        .checks
        .iter()
        .filter(|c| c.state > State::Ok)
        .map(|c| format!("{}:{}", c.name, c.state.as_str()))
        .collect();
    p.sort();
    p.join(",")
}

/// What an update handler cares about: a change of anything else is not an update.
fn identity_of(n: &NodeView) -> Identity {
    (
        n.name.clone(),
        n.address,
        n.gossip_port,
        n.http_port,
        n.services.clone(),
    )
}

/// Starts the handler tasks on the current runtime; nothing when no handler is configured.
pub fn spawn(
    handlers: Vec<HandlerSection>,
    handle: Handle,
    cluster: String,
) -> Vec<tokio::task::JoinHandle<()>> {
    if handlers.is_empty() {
        return Vec::new();
    }
    let queue: Arc<std::sync::Mutex<VecDeque<Job>>> = Default::default();
    let ready = Arc::new(Notify::new());
    let wanted: Vec<HandlerEvent> = handlers.iter().flat_map(|h| h.on.clone()).collect();
    let wants_update = wanted.contains(&HandlerEvent::Update);
    let wants_health = wanted.contains(&HandlerEvent::Health);
    let collector = {
        let (queue, ready, handle) = (queue.clone(), ready.clone(), handle.clone());
        let mut events = handle.subscribe();
        tokio::spawn(async move {
            let mut seen: HashMap<NodeId, _> = HashMap::new();
            // The problems last seen of each member, for "health".
            let mut health: HashMap<NodeId, String> = HashMap::new();
            for m in handle.members() {
                let view = NodeView::from_member(&m);
                health.insert(m.id, problems_of(&view));
                seen.insert(m.id, (identity_of(&view), m.liveness));
            }
            let push = |job: Job| {
                let mut q = queue.lock().expect("queue lock");
                if q.len() >= QUEUE_LIMIT {
                    tracing::warn!(
                        event = job.event.as_str(),
                        "handler queue full: event dropped"
                    );
                    return;
                }
                q.push_back(job);
                drop(q);
                ready.notify_one();
            };
            loop {
                let e = match events.recv().await {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // Events were lost: what they said is found by comparing the members with what
                        // was last seen of each, so no join, leave or failure goes without its handler.
                        tracing::warn!(
                            missed = n,
                            "event handlers fell behind: catching up from the member list"
                        );
                        let members = handle.members();
                        let Some(me) = members.iter().find(|m| m.is_self) else {
                            continue;
                        };
                        let me = NodeView::from_member(me);
                        for m in members.iter().filter(|m| !m.is_self) {
                            let view = NodeView::from_member(m);
                            let problems = problems_of(&view);
                            let was = health.insert(m.id, problems.clone());
                            if wants_health && health_changed(was.as_deref(), &problems) {
                                push(Job {
                                    event: HandlerEvent::Health,
                                    env: environment(HandlerEvent::Health, &view, &cluster, &me),
                                });
                            }
                            let before = seen.insert(m.id, (identity_of(&view), m.liveness));
                            let Some(event) = catch_up_event(before.as_ref(), &view, m.liveness)
                            else {
                                continue;
                            };
                            if wanted.contains(&event) {
                                push(Job {
                                    event,
                                    env: environment(event, &view, &cluster, &me),
                                });
                            }
                        }
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let Some(event) = handler_event(e.kind) else {
                    if e.kind == EventKind::Reaped {
                        seen.remove(&e.node);
                        health.remove(&e.node);
                    }
                    continue;
                };
                // Most events are monitoring updates: skip what no handler wants before copying the
                // member list. With an "update" handler every membership event is followed, to know
                // each member's last identity.
                if !wants_update && !wants_health && !wanted.contains(&event) {
                    continue;
                }
                let members = handle.members();
                let (Some(member), Some(me)) = (
                    members.iter().find(|m| m.id == e.node),
                    members.iter().find(|m| m.is_self),
                ) else {
                    continue;
                };
                let view = NodeView::from_member(member);
                let me = NodeView::from_member(me);
                if wants_health && !member.is_self {
                    let problems = problems_of(&view);
                    let was = health.insert(e.node, problems.clone());
                    if health_changed(was.as_deref(), &problems) {
                        push(Job {
                            event: HandlerEvent::Health,
                            env: environment(HandlerEvent::Health, &view, &cluster, &me),
                        });
                    }
                }
                let id = identity_of(&view);
                // An "updated" event is an update only when it changed the member's identity.
                let unchanged = seen.get(&e.node).map(|(id, _)| id) == Some(&id);
                seen.insert(e.node, (id, member.liveness));
                if !wanted.contains(&event) || (event == HandlerEvent::Update && unchanged) {
                    continue;
                }
                push(Job {
                    event,
                    env: environment(event, &view, &cluster, &me),
                });
            }
        })
    };
    let runner = tokio::spawn(async move {
        loop {
            let job = queue.lock().expect("queue lock").pop_front();
            let Some(job) = job else {
                ready.notified().await;
                continue;
            };
            for h in handlers.iter().filter(|h| h.on.contains(&job.event)) {
                run(h, &job).await;
            }
        }
    });
    vec![collector, runner]
}

type Identity = (
    String,
    Option<std::net::IpAddr>,
    Option<u16>,
    Option<u16>,
    Vec<String>,
);

/// After lost events: the handler event that brings a member from what was last seen of it (`before`)
/// to what it is now, if any.
fn catch_up_event(
    before: Option<&(Identity, Liveness)>,
    now: &NodeView,
    liveness: Liveness,
) -> Option<HandlerEvent> {
    let up = |l: Liveness| matches!(l, Liveness::Alive | Liveness::Suspect);
    match before {
        None if up(liveness) => Some(HandlerEvent::Join),
        None => None,
        Some((_, was)) if up(*was) && liveness == Liveness::Dead => Some(HandlerEvent::Failure),
        Some((_, was)) if up(*was) && liveness == Liveness::Left => Some(HandlerEvent::Leave),
        Some((_, was)) if !up(*was) && up(liveness) => Some(HandlerEvent::Join),
        Some((id, _)) if up(liveness) && *id != identity_of(now) => Some(HandlerEvent::Update),
        Some(_) => None,
    }
}

/// Whether a member's problems changed enough for a "health" event: any change once seen, or problems at
/// first sight.
fn health_changed(before: Option<&str>, now: &str) -> bool {
    match before {
        None => !now.is_empty(),
        Some(b) => b != now,
    }
}

/// The handler event a membership event is, if any.
fn handler_event(kind: EventKind) -> Option<HandlerEvent> {
    match kind {
        EventKind::Joined | EventKind::Recovered | EventKind::Restarted => Some(HandlerEvent::Join),
        EventKind::Left => Some(HandlerEvent::Leave),
        EventKind::Dead => Some(HandlerEvent::Failure),
        EventKind::Updated => Some(HandlerEvent::Update),
        EventKind::Suspect | EventKind::Reaped => None,
    }
}

/// Runs one handler for one job and logs how it went.
async fn run(h: &HandlerSection, job: &Job) {
    let member = job
        .env
        .iter()
        .find(|(k, _)| k == "HERD_MEMBER_NAME")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    // Starting can fail for a while (out of file descriptors or processes): a failure handler must still
    // run, so try again, 1 + 2 + 4 + 8 + 16 s apart, before giving up on it.
    let mut wait = std::time::Duration::from_secs(1);
    let child = loop {
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&h.command)
            .envs(job.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        match child {
            Ok(c) => break c,
            Err(e) if wait <= std::time::Duration::from_secs(16) => {
                tracing::warn!(command = %h.command, error = %e, retry_in = ?wait, "cannot start event handler yet");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => {
                tracing::error!(command = %h.command, event = job.event.as_str(), %member, error = %e, "cannot start event handler: gave up");
                return;
            }
        }
    };
    match tokio::time::timeout(h.timeout, child.wait_with_output()).await {
        Err(_) => tracing::warn!(
            command = %h.command,
            event = job.event.as_str(),
            %member,
            timeout = ?h.timeout,
            "event handler timed out and was killed"
        ),
        Ok(Err(e)) => tracing::error!(command = %h.command, error = %e, "event handler failed"),
        Ok(Ok(out)) => {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                tracing::info!(event = job.event.as_str(), %member, "handler: {line}");
            }
            for line in String::from_utf8_lossy(&out.stderr).lines() {
                tracing::warn!(event = job.event.as_str(), %member, "handler stderr: {line}");
            }
            if out.status.success() {
                tracing::info!(command = %h.command, event = job.event.as_str(), %member, "event handler done");
            } else {
                tracing::warn!(command = %h.command, event = job.event.as_str(), %member, status = %out.status, "event handler failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, services: &[&str]) -> NodeView {
        let mut v: NodeView = serde_json::from_value(serde_json::json!({
            "id": "00000000000000aa", "name": name, "state": "alive", "is_self": false,
            "generation": 1, "phi": 0.0, "threshold": 8.0, "last_heard_ms": 0, "services": []
        }))
        .expect("a node view");
        v.services = services.iter().map(|s| s.to_string()).collect();
        v
    }

    #[test]
    fn lost_events_are_made_up_from_the_member_list() {
        let web = view("pi-1", &["web"]);
        let seen = |l| (identity_of(&web), l);
        use HandlerEvent::*;
        use Liveness::*;
        let cases = [
            (None, Alive, Some(Join)),
            (None, Dead, None),
            (Some(seen(Alive)), Dead, Some(Failure)),
            (Some(seen(Suspect)), Dead, Some(Failure)),
            (Some(seen(Alive)), Left, Some(Leave)),
            (Some(seen(Dead)), Alive, Some(Join)),
            (Some(seen(Dead)), Dead, None),
            (Some(seen(Alive)), Alive, None),
        ];
        for (before, now, want) in cases {
            assert_eq!(
                catch_up_event(before.as_ref(), &web, now),
                want,
                "{before:?} → {now:?}"
            );
        }
        let moved = view("pi-1", &["web", "db"]);
        assert_eq!(
            catch_up_event(Some(&seen(Alive)), &moved, Alive),
            Some(Update)
        );
    }
}
