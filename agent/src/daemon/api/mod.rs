//! The HTTP side of the agent (warp): the dashboard at `/`, the original endpoints (`/nodes/…`,
//! `/meta-data/…`), the v1 API, `/healthz` and `/metrics`. Every node serves the whole cluster's view from
//! its own gossip state. Write endpoints need the API token when one is set (`Authorization: Bearer …`,
//! or HTTP Basic with the token as password, which browsers ask for); with `api.protect_reads` every
//! endpoint but `/healthz` does. Every error is JSON `{"error": "…"}` with its status. What clients can
//! hold (connections, time, event streams) is bounded in `server`.

mod auth;
mod dashboard;
mod logs;
pub mod metrics;
pub mod server;
mod services;
mod upgrade;

use self::auth::{authorized, proven_body, readable, token_required};
use self::dashboard::dashboard;
use self::services::{change_services, working_service};
use self::upgrade::{download, install, upgrade_view, upload};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio_stream::StreamExt;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::handle::Handle;
use super::metadata::MetaData;
use super::upgrade::Upgrades;
use crate::config::Secret;
use crate::gossip::Liveness;
use crate::model::views::{self, ErrorView, MonitoringView};

/// Largest request body accepted (the write endpoints take none; an install request and an artifact
/// have their own limits).
const MAX_BODY: u64 = 1024;
/// Largest install request (JSON: a hash, up to 64 sources, a timeout).
const MAX_INSTALL_REQUEST: u64 = 16 * 1024;
/// Artifacts served to other nodes at once (each is read into memory).
const MAX_SERVING: usize = 2;
/// Time an artifact upload may take (a Pi Zero behind a slow link).
const UPLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// What request handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub handle: Handle,
    pub metadata: Arc<Mutex<MetaData>>,
    pub token: Option<Secret>,
    /// Reads need the token too (`api.protect_reads`).
    pub protect_reads: bool,
    pub cluster: String,
    pub limits: server::Limits,
    pub counters: Arc<server::Counters>,
    /// Event streams' places: `/api/v1/events` answers 503 when a client finds none.
    streams: Arc<server::Admission>,
    /// The addresses that may take reserved places (connections, event streams): this card itself (the
    /// CLI, the upgrade installer's proof) and the cluster's members.
    trusted: Arc<dyn Fn(std::net::IpAddr) -> bool + Send + Sync>,
    /// The nonces the token's proofs are made with.
    nonces: Arc<auth::Nonces>,
    /// Where reboot, shutdown, identify and restart are handed to the root unit (none: 404).
    actions: Option<Arc<super::actions::Actions>>,
    /// The journal `/api/v1/logs` reads.
    journal: Arc<super::logs::Journal>,
    templates: Arc<tera::Tera>,
    /// `herd upgrade`'s artifacts and installs (none: the routes answer 404).
    pub upgrades: Option<Arc<Upgrades>>,
    /// One upload or install at a time (each may hold an artifact in memory).
    upgrade_slot: Arc<tokio::sync::Semaphore>,
    /// Artifacts served to other nodes at once.
    serving: Arc<tokio::sync::Semaphore>,
}

impl ApiState {
    pub fn new(
        handle: Handle,
        metadata: Arc<Mutex<MetaData>>,
        token: Option<Secret>,
        protect_reads: bool,
        cluster: &str,
        limits: server::Limits,
    ) -> ApiState {
        let mut tera = tera::Tera::new();
        tera.add_raw_template("dashboard.html", include_str!("dashboard.html"))
            .expect("the embedded dashboard template parses");
        tera.add_raw_template("node.html", include_str!("node.html"))
            .expect("the embedded node page template parses");
        ApiState {
            handle: handle.clone(),
            metadata,
            token,
            protect_reads,
            cluster: cluster.to_string(),
            limits,
            counters: Default::default(),
            streams: Arc::new(server::Admission::new(
                limits.event_streams,
                limits.reserved_streams,
                limits.streams_per_address,
                limits.streams_per_subnet,
            )),
            trusted: {
                let members = handle.clone();
                Arc::new(move |ip| server::is_local(ip) || members.is_member_address(ip))
            },
            nonces: Default::default(),
            journal: Arc::new(super::logs::Journal::new(None)),
            actions: None,
            templates: Arc::new(tera),
            upgrades: None,
            upgrade_slot: Arc::new(tokio::sync::Semaphore::new(1)),
            serving: Arc::new(tokio::sync::Semaphore::new(MAX_SERVING)),
        }
    }

    /// Serving the journal files in `directory` rather than the system journal.
    pub fn with_journal_directory(mut self, directory: Option<std::path::PathBuf>) -> ApiState {
        self.journal = Arc::new(super::logs::Journal::new(directory));
        self
    }

    /// With the actions, handed over in `state_dir`.
    pub fn with_actions(mut self, state_dir: &std::path::Path) -> ApiState {
        self.actions = Some(Arc::new(super::actions::Actions::new(state_dir)));
        self
    }

    /// With `herd upgrade`'s endpoints.
    pub fn with_upgrades(mut self, upgrades: Upgrades) -> ApiState {
        self.upgrades = Some(Arc::new(upgrades));
        self
    }
}

/// A refused request, turned into a JSON error by [`recover`].
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl warp::reject::Reject for ApiError {}

fn reject(status: StatusCode, message: impl Into<String>) -> Rejection {
    warp::reject::custom(ApiError {
        status,
        message: message.into(),
    })
}

/// Binds `addr` and serves until `shutdown` completes. Returns the bound address and the server's task.
pub async fn serve(
    state: ApiState,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("api.bind: cannot listen on TCP {addr}"))?;
    let local = listener.local_addr()?;
    let (limits, counters) = (state.limits, Arc::clone(&state.counters));
    let trusted = Arc::clone(&state.trusted);
    let task = tokio::spawn(server::run(
        listener,
        routes(state),
        limits,
        counters,
        trusted,
        shutdown,
    ));
    Ok((local, task))
}

/// Every route, with errors turned into JSON.
pub fn routes(state: ApiState) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let all = warp::any().map(move || state.clone());
    // Every read goes through `readable`: open, or with the token under `api.protect_reads`.
    let st = readable(all.clone());

    let index = warp::path::end()
        .and(warp::get())
        .and(st.clone())
        .and_then(dashboard);
    let node_page = warp::path!("node" / String)
        .and(warp::get())
        .and(st.clone())
        .and_then(dashboard::node_page);
    let alive = warp::path!("nodes" / "alive")
        .and(warp::get())
        .and(st.clone())
        .map(|s: ApiState| {
            let ips: Vec<String> = s
                .handle
                .members()
                .iter()
                .filter(|m| m.liveness == Liveness::Alive)
                .filter_map(|m| m.addr.map(|a| a.ip().to_string()))
                .collect();
            warp::reply::json(&ips)
        });
    let monitoring = warp::path!("nodes" / "monitoring")
        .and(warp::get())
        .and(st.clone())
        .map(|s: ApiState| {
            let v: Vec<MonitoringView> = views::nodes(&s.handle.members())
                .into_iter()
                .map(MonitoringView::from)
                .collect();
            warp::reply::json(&v)
        });
    let working = warp::path!("nodes" / "workingService" / String)
        .and(warp::get())
        .and(st.clone())
        .and_then(working_service);
    let add = warp::path!("meta-data" / "add-service" / String)
        .and(warp::put())
        .and(authorized(all.clone()))
        .and(small_body())
        .and_then(|name: String, s: ApiState| change_services(s, name, true));
    let remove = warp::path!("meta-data" / "remove-service" / String)
        .and(warp::put())
        .and(authorized(all.clone()))
        .and(small_body())
        .and_then(|name: String, s: ApiState| change_services(s, name, false));
    let nodes = warp::path!("api" / "v1" / "nodes")
        .and(warp::get())
        .and(st.clone())
        .map(|s: ApiState| warp::reply::json(&views::nodes(&s.handle.members())));
    let history = warp::path!("api" / "v1" / "history")
        .and(warp::get())
        .and(st.clone())
        .map(|s: ApiState| {
            let mut reply = warp::reply::Response::new(s.handle.history_json().into());
            reply.headers_mut().insert(
                warp::http::header::CONTENT_TYPE,
                warp::http::HeaderValue::from_static("application/json"),
            );
            reply
        });
    let history_of = warp::path!("api" / "v1" / "history" / String)
        .and(warp::get())
        .and(st.clone())
        .and_then(|node: String, s: ApiState| async move {
            match s.handle.history_of(&node) {
                Some(series) => Ok(warp::reply::json(&series)),
                None => Err(reject(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no history of node {:?} here: not a member, or none of its samples yet",
                        node.chars().take(40).collect::<String>()
                    ),
                )),
            }
        });
    let events = warp::path!("api" / "v1" / "events")
        .and(warp::get())
        .and(st.clone())
        .and(warp::ext::optional::<server::Peer>())
        .and_then(|s: ApiState, peer: Option<server::Peer>| async move {
            let ip = peer.map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |p| p.0.ip());
            let permit = s.streams.admit(ip, &*s.trusted).ok_or_else(|| {
                reject(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "no event stream free for {ip}: this node serves {} in all, {} per address \
                         and {} per subnet; try again later",
                        s.limits.event_streams,
                        s.limits.streams_per_address,
                        s.limits.streams_per_subnet
                    ),
                )
            })?;
            let stream = event_stream(s.handle.subscribe()).map(move |e| {
                let _held = &permit;
                e
            });
            Ok::<_, Rejection>(warp::sse::reply(warp::sse::keep_alive().stream(stream)))
        });
    let logs = warp::path!("api" / "v1" / "logs")
        .and(warp::get())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::ext::optional::<server::Peer>())
        .and(token_required(all.clone()))
        .and_then(logs::serve);
    let action = warp::path!("api" / "v1" / "actions" / String)
        .and(warp::post())
        .and(small_body())
        .and(warp::ext::optional::<server::Peer>())
        .and(token_required(all.clone()))
        .and_then(act);
    let upgrade_view = warp::path!("api" / "v1" / "upgrade")
        .and(warp::get())
        .and(st.clone())
        .and_then(upgrade_view);
    let upload = warp::path!("api" / "v1" / "upgrade" / "artifact")
        .and(warp::put())
        .and(authorized(all.clone()))
        .and(proven_body())
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and_then(upload);
    // Open even under `api.protect_reads`, as `/healthz`: an artifact holds only signed binaries, and
    // the nodes that fetch it from each other must not need the operator's token to do so.
    let download = warp::path!("api" / "v1" / "upgrade" / "artifact" / String)
        .and(warp::get())
        .and(all.clone())
        .and_then(download);
    let install = warp::path!("api" / "v1" / "upgrade" / "install")
        .and(warp::post())
        .and(authorized(all.clone()))
        .and(proven_body())
        .and(warp::body::content_length_limit(MAX_INSTALL_REQUEST))
        .and(warp::body::bytes())
        .and_then(install);
    // Open even under `api.protect_reads`: a nonce is what a proof of the token is made with.
    let nonce = warp::path!("api" / "v1" / "auth" / "nonce")
        .and(warp::get())
        .and(all.clone())
        .map(|s: ApiState| {
            warp::reply::json(&crate::model::proof::NonceView {
                node: s.handle.id().to_string(),
                nonce: s.nonces.issue(),
            })
        });
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({ "status": "ok" })));
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(st.clone())
        .map(|s: ApiState| {
            let members = s.handle.members();
            let threshold = members.first().map_or(0.0, |m| m.threshold);
            let mut text = metrics::render(&members, &s.handle.stats(), threshold);
            metrics::render_api(&mut text, &s.counters);
            warp::reply::with_header(text, "content-type", "text/plain; version=0.0.4")
        });

    // In three boxed groups: one chain of twenty `or`s nests types deeper than the compiler's default
    // recursion limit allows in every crate that runs the agent.
    let cluster = boxed(
        index
            .or(alive)
            .or(monitoring)
            .or(working)
            .or(add)
            .or(remove)
            .or(nodes),
    );
    let card = boxed(
        history
            .or(history_of)
            .or(node_page)
            .or(events)
            .or(logs)
            .or(action),
    );
    let rest = boxed(
        upgrade_view
            .or(upload)
            .or(download)
            .or(install)
            .or(nonce)
            .or(healthz)
            .or(metrics),
    );
    cluster.or(card).unify().or(rest).unify().recover(recover)
}

/// A group of routes behind one boxed type.
fn boxed<F, R>(routes: F) -> warp::filters::BoxedFilter<(Box<dyn Reply>,)>
where
    F: Filter<Extract = (R,), Error = Rejection> + Clone + Send + Sync + 'static,
    R: Reply + 'static,
{
    routes.map(|r: R| Box::new(r) as Box<dyn Reply>).boxed()
}

/// `POST /api/v1/actions/:action`: hands the action to the card's root unit, and says what follows.
async fn act(
    name: String,
    peer: Option<server::Peer>,
    s: ApiState,
) -> Result<impl Reply, Rejection> {
    use super::actions::Refused;
    use crate::model::actions::{Action, ActionView};
    let action = Action::parse(&name).map_err(|e| reject(StatusCode::NOT_FOUND, e))?;
    let Some(actions) = s.actions.as_ref() else {
        return Err(reject(
            StatusCode::NOT_FOUND,
            "this agent takes no actions (run outside a card's herd.service)",
        ));
    };
    let from = peer.map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |p| p.0.ip());
    actions.ask(action, from).map_err(|e| match e {
        Refused::NoLed => reject(
            StatusCode::CONFLICT,
            "this board has no activity LED (/sys/class/leds/ACT or led0): nothing to blink",
        ),
        Refused::UnderWay(why) => reject(StatusCode::CONFLICT, why),
        Refused::Failed(why) => reject(StatusCode::INTERNAL_SERVER_ERROR, why),
    })?;
    let view = ActionView {
        node: s.handle.id().to_string(),
        name: views::nodes(&s.handle.members())
            .into_iter()
            .find(|n| n.is_self)
            .map(|n| n.name)
            .unwrap_or_default(),
        action,
        said: action.doing(),
    };
    Ok(warp::reply::with_status(
        warp::reply::json(&view),
        StatusCode::ACCEPTED,
    ))
}

/// Membership events as server-sent events. A subscriber that falls more than the channel's capacity
/// behind gets a `gap` event saying how many it missed (then carries on), never a silent loss: `herd
/// watch` answers a gap by reading the members again.
pub fn event_stream(
    events: tokio::sync::broadcast::Receiver<crate::gossip::Event>,
) -> impl tokio_stream::Stream<Item = Result<warp::sse::Event, Infallible>> + Send + 'static {
    use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
    tokio_stream::wrappers::BroadcastStream::new(events).map(|e| {
        let event = match e {
            Ok(e) => {
                let kind = e.kind.as_str().to_string();
                warp::sse::Event::default().event(kind).json_data(&e)
            }
            Err(BroadcastStreamRecvError::Lagged(missed)) => warp::sse::Event::default()
                .event("gap")
                .json_data(serde_json::json!({ "missed": missed })),
        };
        Ok(event.unwrap_or_default())
    })
}

/// Refuses a declared body larger than [`MAX_BODY`] (the write endpoints read none; no `Content-Length`
/// is fine).
fn small_body() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and_then(|len: Option<u64>| async move {
            match len {
                Some(n) if n > MAX_BODY => Err(reject(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body of {n} bytes; this endpoint takes at most {MAX_BODY}"),
                )),
                _ => Ok(()),
            }
        })
        .untuple_one()
}

/// Turns every rejection into a JSON error with the right status.
async fn recover(err: Rejection) -> Result<impl Reply, Infallible> {
    let (status, message) = if let Some(e) = err.find::<ApiError>() {
        (e.status, e.message.clone())
    } else if err.is_not_found() {
        (StatusCode::NOT_FOUND, "no such endpoint".to_string())
    } else if err.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body larger than this endpoint takes".to_string(),
        )
    } else if err.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "this endpoint needs a Content-Length".to_string(),
        )
    } else if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this endpoint".to_string(),
        )
    } else {
        (StatusCode::BAD_REQUEST, format!("bad request: {err:?}"))
    };
    let reply = warp::reply::with_status(warp::reply::json(&ErrorView { error: message }), status);
    // A browser asks for the token (as a password) when it is told how.
    let challenge = if status == StatusCode::UNAUTHORIZED {
        "Basic realm=\"herd\", charset=\"UTF-8\""
    } else {
        ""
    };
    let mut response = reply.into_response();
    if !challenge.is_empty() {
        response.headers_mut().insert(
            "www-authenticate",
            warp::http::HeaderValue::from_static(challenge),
        );
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::{Event, EventKind, NodeId};

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_gets_a_gap_then_the_rest() {
        let (tx, rx) = tokio::sync::broadcast::channel(2);
        let event = |n| Event {
            kind: EventKind::Dead,
            node: NodeId(n),
            generation: 1,
            at: std::time::Duration::ZERO,
        };
        for n in 1..=5 {
            tx.send(event(n)).unwrap();
        }
        drop(tx);
        let texts: Vec<String> = event_stream(rx)
            .map(|e| e.unwrap().to_string())
            .collect()
            .await;
        assert_eq!(texts.len(), 3, "{texts:?}");
        assert!(
            texts[0].contains("event:gap") && texts[0].contains(r#""missed":3"#),
            "{texts:?}"
        );
        assert!(texts[1].contains("event:dead") && texts[2].contains("0000000000000005"));
    }
}
