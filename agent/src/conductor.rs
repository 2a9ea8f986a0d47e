//! The card's root side of the container engine (`herd engine-apply`, run by `herd-engine.service` as
//! root): every round it asks Docker what it says of itself and of its swarm (over the engine's unix
//! socket, root's alone), writes the node's report for the agent to gossip, reads the member table from
//! the local agent, and does this node's part of the plan every node computes the same way
//! ([`crate::model::engine::plan`]). A graceful stop leaves the swarm, a manager asking to be demoted
//! first. The Engine API's shapes and requests are [`crate::swarm`]'s; this file is their transport.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::config::{Config, EngineKind};
use crate::gossip::wire::ClusterKey;
use crate::gossip::{Liveness, NodeKey};
use crate::model::engine::{plan, EngineReport, Member, Role, Settings, Situation, Step};
use crate::model::join::{self, ForMe, Offer, Offers, MAX_OFFERS};
use crate::model::views::NodeView;
use crate::swarm::{self, Node, Request};

/// Docker's socket (docker.io's `docker.socket`).
pub const DOCKER_SOCKET: &str = "/run/docker.sock";
/// The swarm this node formed or joined, kept across restarts (the unit's `StateDirectory`): a worker's
/// engine does not name its swarm, and a node that knew one never forms another.
pub const KNOWN_SWARM: &str = "/var/lib/herd-engine/swarm";
/// How often a round runs.
const ROUND: Duration = Duration::from_secs(5);
/// How long one Engine API call may take (a join waits for the manager's certificate).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest answer read from the engine (a `GET /nodes` of a few hundred nodes).
const MAX_ANSWER: usize = 4 << 20;

/// Where the root side reads and writes.
#[derive(Debug, Clone)]
pub struct Paths {
    pub socket: PathBuf,
    pub report: PathBuf,
    pub known_swarm: PathBuf,
    /// The join offers this node makes when it leads (its agent gossips them).
    pub offers: PathBuf,
}

impl Paths {
    /// The card's: Docker's socket, and the files in `engine.run_dir` and the unit's state directory.
    pub fn card(config: &Config) -> Paths {
        let run = &config.engine.run_dir;
        Paths {
            socket: DOCKER_SOCKET.into(),
            report: run.join(crate::model::engine::REPORT_FILE),
            known_swarm: KNOWN_SWARM.into(),
            offers: run.join(join::OFFERS_FILE),
        }
    }
}

/// The plan's rules from `[engine]`.
pub fn settings(config: &Config) -> Settings {
    let e = &config.engine;
    Settings {
        expect: e.expect,
        five_managers_from: e.five_managers_from,
        min_manager_memory: e.min_manager_memory_mib << 20,
        settle: e.settle,
        remove_after: e.remove_after,
    }
}

/// Runs rounds until SIGTERM, then leaves the swarm. Returns at once when `[engine]` names no engine.
pub fn run(config: &Config, paths: &Paths) -> anyhow::Result<()> {
    if config.engine.kind != EngineKind::Swarm {
        eprintln!("herd engine-apply: [engine] kind is \"none\" in herd.toml: nothing to do");
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut conductor = Conductor::new(config, paths);
        loop {
            conductor.round().await;
            tokio::select! {
                _ = tokio::time::sleep(ROUND) => {}
                _ = term.recv() => break,
                _ = interrupt.recv() => break,
            }
        }
        conductor.leave().await;
        Ok(())
    })
}

/// The Engine API over Docker's unix socket: one HTTP/1.1 connection per call (hyper's client).
pub struct Docker {
    socket: PathBuf,
}

impl Docker {
    pub fn new(socket: impl Into<PathBuf>) -> Docker {
        Docker {
            socket: socket.into(),
        }
    }

    /// Sends `req`; the status and the body.
    pub async fn call(&self, req: &Request) -> anyhow::Result<(u16, String)> {
        tokio::time::timeout(CALL_TIMEOUT, self.exchange(req))
            .await
            .with_context(|| {
                format!(
                    "the engine did not answer {} {} in {} s",
                    req.method,
                    req.path,
                    CALL_TIMEOUT.as_secs()
                )
            })?
    }

    async fn exchange(&self, req: &Request) -> anyhow::Result<(u16, String)> {
        use http_body_util::{BodyExt, Full, Limited};
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .with_context(|| format!("cannot reach the engine at {}", self.socket.display()))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let driver = tokio::spawn(connection);
        let body = req.body.clone().unwrap_or_default();
        let request = hyper::Request::builder()
            .method(req.method)
            // Origin form, as a client sends to the server it is connected to.
            .uri(req.path.as_str())
            .header(hyper::header::HOST, "docker")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(hyper::body::Bytes::from(body)))?;
        let answer = sender.send_request(request).await?;
        let status = answer.status().as_u16();
        let bytes = Limited::new(answer.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("the engine's answer to {}: {e}", req.path))?
            .to_bytes();
        driver.abort();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// `req`, which must succeed: an error carries the engine's own message.
    pub async fn expect(&self, req: &Request) -> anyhow::Result<String> {
        let (status, body) = self.call(req).await?;
        if !(200..300).contains(&status) {
            bail!(
                "{} {}: {status}: {}",
                req.method,
                req.path,
                engine_message(&body)
            );
        }
        Ok(body)
    }

    async fn get(&self, path: &str) -> anyhow::Result<String> {
        self.expect(&Request {
            method: "GET",
            path: path.into(),
            body: None,
        })
        .await
    }
}

/// The engine's error message (`{"message": …}`), cut short and printable.
fn engine_message(body: &str) -> String {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string());
    message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect()
}

/// Whether the kernel's clock is synchronised (adjtimex says so once an NTP client disciplines it).
pub fn clock_synced() -> bool {
    // SAFETY: adjtimex with modes 0 only reads the kernel's state into the zeroed struct.
    let mut tx: nix::libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { nix::libc::adjtimex(&mut tx) };
    state >= 0 && state != nix::libc::TIME_ERROR
}

/// How long the set of up members has stayed the same.
#[derive(Debug, Default)]
pub struct Stability {
    up: BTreeSet<String>,
    since: Option<Instant>,
}

impl Stability {
    /// Notes the up members seen now; how long that set has been the same.
    pub fn observe(&mut self, members: &[NodeView], now: Instant) -> Duration {
        let up: BTreeSet<String> = members
            .iter()
            .filter(|n| matches!(n.state, Liveness::Alive | Liveness::Suspect))
            .map(|n| n.id.clone())
            .collect();
        if self.since.is_none() || up != self.up {
            self.up = up;
            self.since = Some(now);
        }
        now - self.since.unwrap_or(now)
    }
}

/// The root side's state between rounds.
struct Conductor {
    paths: Paths,
    docker: Docker,
    agent: String,
    token: Option<String>,
    /// The agent's state directory: its node key, and the offers it hands over.
    state_dir: PathBuf,
    /// The cluster keys, current first (none on an insecure cluster).
    clusters: Vec<Option<ClusterKey>>,
    /// Offers made, kept while the token is the same (a new nonce every round would churn the gossip).
    made: Vec<(String, Offer)>,
    rounds: u64,
    settings: Settings,
    stability: Stability,
    known: Option<String>,
    /// What was last logged of the plan's waiting, so a reason is logged once, not every round.
    said: Option<String>,
}

impl Conductor {
    fn new(config: &Config, paths: &Paths) -> Conductor {
        let known = std::fs::read_to_string(&paths.known_swarm)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| join::swarm_id_ok(s));
        Conductor {
            paths: paths.clone(),
            docker: Docker::new(&paths.socket),
            agent: config.api.local_url(),
            token: config.api.token.as_ref().map(|t| t.0.clone()),
            state_dir: config.state_dir.clone(),
            clusters: match config.cluster_keys() {
                keys if keys.is_empty() => vec![None],
                keys => keys.into_iter().map(Some).collect(),
            },
            made: Vec::new(),
            rounds: 0,
            settings: settings(config),
            stability: Stability::default(),
            known,
            said: None,
        }
    }

    fn say(&mut self, line: String) {
        if self.said.as_deref() != Some(&line) {
            eprintln!("herd engine-apply: {line}");
            self.said = Some(line);
        }
    }

    async fn round(&mut self) {
        if let Err(e) = self.try_round().await {
            self.say(format!("{e:#}"));
        }
    }

    async fn try_round(&mut self) -> anyhow::Result<()> {
        let local = match self.docker.get("/info").await {
            Ok(body) => swarm::parse_info(&body).map_err(anyhow::Error::msg)?,
            Err(e) => {
                let report = EngineReport {
                    error: Some(engine_message(&format!(
                        "the engine does not answer: {e:#}"
                    ))),
                    ..EngineReport::default()
                };
                self.write_report(&report)?;
                return Err(e);
            }
        };
        if let Some(cluster) = &local.cluster {
            self.remember(&cluster.id)?;
        }
        let nodes = if local.control_available {
            swarm::parse_nodes(&self.docker.get("/nodes").await?).map_err(anyhow::Error::msg)?
        } else {
            Vec::new()
        };
        let leads = nodes.iter().any(|n| n.id == local.node_id && n.leader);
        let report = swarm::report(&local, self.known.as_deref(), leads);
        self.write_report(&report)?;

        let views = crate::client::Client::with_timeout(
            &self.agent,
            self.token.clone(),
            Duration::from_secs(5),
        )
        .and_then(|c| c.nodes())
        .context("the local agent does not answer")?;
        let stable_for = self.stability.observe(&views, Instant::now());
        let Some(me) = views.iter().find(|n| n.is_self) else {
            bail!("the local agent lists no node as itself");
        };
        let (me_id, me_addr) = (me.id.parse().ok(), me.address);
        let (Some(me_id), Some(me_addr)) = (me_id, me_addr) else {
            bail!("the local agent does not say its own id and address yet");
        };
        let mut members: Vec<Member> = views.iter().filter_map(NodeView::engine_member).collect();
        // This node's own entry carries the report just read, not the one gossiped a round ago.
        if let Some(m) = members.iter_mut().find(|m| m.id == me_id) {
            m.engine = Some(report.clone());
        }
        let listing: Vec<_> = nodes.iter().map(Node::listing).collect();
        let planned = plan(
            &Situation {
                me: me_id,
                members: &members,
                stable_for,
                clock_synced: clock_synced(),
                known_swarm: self.known.as_deref(),
                swarm_nodes: if leads { &listing[..] } else { &[][..] },
            },
            &self.settings,
        );
        if let Some(why) = &planned.waiting {
            self.say(format!("waiting: {why}"));
        }
        self.rounds += 1;
        if leads {
            if let Some(swarm) = &planned.swarm {
                self.offer(swarm, me_id, &views).await?;
            }
        } else if self.paths.offers.exists() {
            std::fs::remove_file(&self.paths.offers)
                .with_context(|| format!("cannot remove {}", self.paths.offers.display()))?;
            self.made.clear();
        }
        for step in &planned.steps {
            let token = match step {
                Step::Join { swarm, .. } => Some(self.token_for(swarm, &views)?),
                _ => None,
            };
            let req = swarm::request(step, me_addr, token.as_deref(), &nodes)
                .map_err(anyhow::Error::msg)?;
            self.say(format!("{step:?}"));
            // A formed swarm's id is read from the engine next round (init answers the node's id).
            self.docker
                .expect(&req)
                .await
                .with_context(|| format!("{step:?}"))?;
            match step {
                Step::Join { swarm, .. } => self.remember(swarm)?,
                Step::Leave => self.forget()?,
                _ => {}
            }
        }
        // Labels after the steps, and only in a round without any: an update names the node's
        // version, which a promotion or demotion has just moved on.
        if leads && planned.steps.is_empty() {
            self.label(&views, &nodes).await?;
        }
        Ok(())
    }

    /// The leader's offers: the worker token sealed to each up member outside the swarm (at most
    /// [`MAX_OFFERS`] at a time, taken in turn), for its agent to gossip.
    async fn offer(
        &mut self,
        swarm: &str,
        me: crate::gossip::NodeId,
        views: &[NodeView],
    ) -> anyhow::Result<()> {
        let mut waiting: Vec<(crate::gossip::NodeId, &str)> = views
            .iter()
            .filter(|n| !n.is_self && n.state == Liveness::Alive)
            .filter(|n| {
                n.engine
                    .as_ref()
                    .is_none_or(|e| e.swarm.as_deref() != Some(swarm) || e.error.is_some())
            })
            .filter_map(|n| Some((n.id.parse().ok()?, n.public_key.as_deref()?)))
            .collect();
        waiting.sort();
        let offers = if waiting.is_empty() {
            Vec::new()
        } else {
            let token = swarm::parse_worker_token(&self.docker.get("/swarm").await?)
                .map_err(anyhow::Error::msg)?;
            let node = self.node_key()?;
            if node.id() != me {
                bail!(
                    "the node key in {} is not this node's",
                    self.state_dir.display()
                );
            }
            let start = (self.rounds as usize / 6) % waiting.len();
            let turn = waiting
                .iter()
                .cycle()
                .skip(start)
                .take(waiting.len().min(MAX_OFFERS));
            let mut offers = Vec::new();
            let mut rng = rand::thread_rng();
            for (id, public) in turn {
                if let Some((_, o)) = self.made.iter().find(|(t, o)| t == &token && o.to == *id) {
                    offers.push(o.clone());
                    continue;
                }
                let Ok(key) = join::public_key(*id, public) else {
                    continue;
                };
                let cluster = self.clusters.first().cloned().flatten();
                if let Some(o) = join::seal(&token, swarm, &node, &key, cluster.as_ref(), &mut rng)
                {
                    self.made.retain(|(_, m)| m.to != o.to);
                    self.made.push((token.clone(), o.clone()));
                    offers.push(o);
                }
            }
            offers
        };
        let value = Offers {
            swarm: swarm.to_string(),
            offers,
        };
        write_file(&self.paths.offers, &value.to_gossip(), false)
    }

    /// The leader keeps each member's swarm node labelled with its facts and services (a few nodes a
    /// round, so a large swarm's first round is not one long burst of updates).
    async fn label(&mut self, views: &[NodeView], nodes: &[Node]) -> anyhow::Result<()> {
        const PER_ROUND: usize = 5;
        let updates = views.iter().filter_map(|n| {
            let id = n.engine.as_ref()?.node.as_deref()?;
            let node = nodes.iter().find(|x| x.id == id)?;
            swarm::label_request(node, &swarm::herd_labels(n.facts.as_ref(), &n.services))
        });
        for req in updates.take(PER_ROUND).collect::<Vec<_>>() {
            self.docker
                .expect(&req)
                .await
                .context("labelling a swarm node")?;
        }
        Ok(())
    }

    /// The worker token for joining `swarm`: the offer its leader made this node, opened.
    fn token_for(&self, swarm: &str, views: &[NodeView]) -> anyhow::Result<String> {
        let path = self.state_dir.join(join::OFFER_FILE);
        let text = crate::model::engine::read_bounded(&path, 16 * 1024)
            .map_err(anyhow::Error::msg)?
            .with_context(|| {
                format!(
                    "no join offer has reached this node yet ({})",
                    path.display()
                )
            })?;
        let offers: Vec<ForMe> = serde_json::from_str(&text)
            .with_context(|| format!("{}: not the agent's offers", path.display()))?;
        let node = self.node_key()?;
        let clusters: Vec<Option<&ClusterKey>> = self.clusters.iter().map(Option::as_ref).collect();
        let mut why = format!("no join offer for swarm {swarm} has reached this node yet");
        for offer in offers.iter().filter(|o| o.swarm == swarm) {
            let from = views
                .iter()
                .find(|n| n.id.parse().ok() == Some(offer.from))
                .and_then(|n| n.public_key.as_deref())
                .map(|k| join::public_key(offer.from, k));
            match from {
                Some(Ok(key)) => match join::open(offer, &node, &key, &clusters) {
                    Ok(token) => return Ok(token),
                    Err(e) => why = e,
                },
                Some(Err(e)) => why = e,
                None => why = format!("the offer's maker {} is not a member", offer.from),
            }
        }
        bail!(why)
    }

    /// This node's keys (the agent's; read, never made here).
    fn node_key(&self) -> anyhow::Result<NodeKey> {
        let path = self.state_dir.join("node.key");
        let text = crate::model::engine::read_bounded(&path, 256)
            .map_err(anyhow::Error::msg)?
            .with_context(|| format!("{}: the agent has not made its key yet", path.display()))?;
        NodeKey::from_base64(&text).with_context(|| format!("{}: not a node key", path.display()))
    }

    fn write_report(&self, report: &EngineReport) -> anyhow::Result<()> {
        write_file(&self.paths.report, &report.to_gossip(), false)
    }

    fn remember(&mut self, swarm: &str) -> anyhow::Result<()> {
        if !join::swarm_id_ok(swarm) {
            bail!("the engine named swarm {swarm:?}, not an id");
        }
        if self.known.as_deref() != Some(swarm) {
            write_file(&self.paths.known_swarm, swarm, true)?;
            self.known = Some(swarm.to_string());
        }
        Ok(())
    }

    /// A swarm left on purpose (it was not the cluster's) is not one this node keeps from forming.
    fn forget(&mut self) -> anyhow::Result<()> {
        self.known = None;
        match std::fs::remove_file(&self.paths.known_swarm) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e)
                .with_context(|| format!("cannot remove {}", self.paths.known_swarm.display())),
            _ => Ok(()),
        }
    }

    /// The graceful stop: a manager asks to be demoted (its leaving would leave a Raft voter that never
    /// answers), and leaves only if that was granted; a worker leaves.
    async fn leave(&mut self) {
        let Ok(body) = self.docker.get("/info").await else {
            return;
        };
        let Ok(local) = swarm::parse_info(&body) else {
            return;
        };
        if local.local_node_state != "active" {
            return;
        }
        if local.control_available {
            let demoted = async {
                let nodes = swarm::parse_nodes(&self.docker.get("/nodes").await?)
                    .map_err(anyhow::Error::msg)?;
                let others = nodes
                    .iter()
                    .filter(|n| n.role == Role::Manager && n.id != local.node_id)
                    .count();
                if others == 0 {
                    bail!("it is the swarm's only manager");
                }
                let step = Step::Demote {
                    node: local.node_id.clone(),
                };
                let req =
                    swarm::request(&step, std::net::Ipv4Addr::UNSPECIFIED.into(), None, &nodes)
                        .map_err(anyhow::Error::msg)?;
                self.docker.expect(&req).await
            }
            .await;
            if let Err(e) = demoted {
                eprintln!(
                    "herd engine-apply: stopping as a manager, not leaving the swarm (cannot step \
                     down: {e:#}); the leader takes this node out once it is gone"
                );
                return;
            }
        }
        let leave = Request {
            method: "POST",
            path: "/swarm/leave".into(),
            body: None,
        };
        match self.docker.expect(&leave).await {
            Ok(_) => eprintln!("herd engine-apply: left the swarm"),
            Err(e) => eprintln!("herd engine-apply: cannot leave the swarm: {e:#}"),
        }
    }
}

/// Writes `content` to `path` atomically, its directory made first: readable by all (the report and the
/// sealed offers, for the agent), or `private` to root.
fn write_file(path: &Path, content: &str, private: bool) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
    }
    let write = if private {
        crate::files::write_private
    } else {
        crate::files::write_atomic
    };
    write(path, content).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transport against a real HTTP/1.1 server on a unix socket (hyper's, standing where Docker's
    /// socket would: dockerd cannot run on the test machine): the request as sent (method, origin-form
    /// path, JSON body), an answer read whole, the engine's error message carried, an answer past the
    /// bound refused, a socket with nobody behind it named.
    #[tokio::test]
    async fn the_engine_api_is_spoken_over_a_unix_socket() {
        use http_body_util::{BodyExt, Full};
        use std::sync::{Arc, Mutex};
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let log = log.clone();
                            async move {
                                let (head, body) = req.into_parts();
                                let body = body.collect().await.unwrap().to_bytes();
                                log.lock().unwrap().push(format!(
                                    "{} {} {}",
                                    head.method,
                                    head.uri,
                                    String::from_utf8_lossy(&body)
                                ));
                                let (status, text) = match head.uri.path() {
                                    "/info" => (
                                        200,
                                        r#"{"Swarm":{"LocalNodeState":"inactive"}}"#.to_string(),
                                    ),
                                    "/swarm/init" => (
                                        503,
                                        r#"{"message":"This node is already part of a swarm."}"#
                                            .into(),
                                    ),
                                    _ => (200, "x".repeat(MAX_ANSWER + 1)),
                                };
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .body(Full::new(hyper::body::Bytes::from(text)))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let docker = Docker::new(&socket);
        let info = docker.get("/info").await.unwrap();
        assert_eq!(
            swarm::parse_info(&info).unwrap().local_node_state,
            "inactive"
        );
        let init = swarm::request(&Step::Form, "10.0.0.1".parse().unwrap(), None, &[]).unwrap();
        let e = format!("{:#}", docker.expect(&init).await.unwrap_err());
        assert_eq!(
            e,
            "POST /swarm/init: 503: This node is already part of a swarm."
        );
        assert!(
            docker.get("/nodes").await.is_err(),
            "an answer past the bound"
        );
        assert_eq!(
            seen.lock().unwrap()[..2],
            [
                "GET /info ".to_string(),
                r#"POST /swarm/init {"AdvertiseAddr":"10.0.0.1:2377","ListenAddr":"10.0.0.1:2377"}"#
                    .to_string()
            ]
        );
        let e = format!(
            "{:#}",
            Docker::new(dir.path().join("none"))
                .get("/info")
                .await
                .unwrap_err()
        );
        assert!(e.contains("cannot reach the engine at"), "{e}");
    }

    #[test]
    fn the_engines_message_is_read_short_and_printable() {
        assert_eq!(
            engine_message(r#"{"message":"This node is already part of a swarm.\n"}"#),
            "This node is already part of a swarm. "
        );
        assert_eq!(engine_message("plain"), "plain");
        assert_eq!(engine_message(&"x".repeat(500)).len(), 200);
    }
}
