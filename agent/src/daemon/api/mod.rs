//! The HTTP side of the agent (warp): the dashboard at `/`, the original endpoints (`/nodes/…`,
//! `/meta-data/…`), the v1 API, `/healthz` and `/metrics`. Every node serves the whole cluster's view from
//! its own gossip state. Write endpoints need the API token when one is set (`Authorization: Bearer …`,
//! or HTTP Basic with the token as password, which browsers ask for); with `api.protect_reads` every
//! endpoint but `/healthz` does. Every error is JSON `{"error": "…"}` with its status. What clients can
//! hold (connections, time, event streams) is bounded in `server`.

pub mod metrics;
pub mod server;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use base64::Engine;
use serde::Serialize;
use tokio_stream::StreamExt;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::handle::Handle;
use super::metadata::{ChangeError, MetaData, SERVICES_KEY};
use super::upgrade::{Refused, Upgrades};
use crate::config::Secret;
use crate::gossip::Liveness;
use crate::model::views::{
    self, ErrorView, MonitoringView, NodeView, ServiceNodeView, ServicesView,
};

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
    /// Event streams left before `/api/v1/events` answers 503.
    streams: Arc<tokio::sync::Semaphore>,
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
        ApiState {
            handle,
            metadata,
            token,
            protect_reads,
            cluster: cluster.to_string(),
            limits,
            counters: Default::default(),
            streams: Arc::new(tokio::sync::Semaphore::new(limits.event_streams)),
            templates: Arc::new(tera),
            upgrades: None,
            upgrade_slot: Arc::new(tokio::sync::Semaphore::new(1)),
            serving: Arc::new(tokio::sync::Semaphore::new(MAX_SERVING)),
        }
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
    let task = tokio::spawn(server::run(
        listener,
        routes(state),
        limits,
        counters,
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
    let events = warp::path!("api" / "v1" / "events")
        .and(warp::get())
        .and(st.clone())
        .and_then(|s: ApiState| async move {
            let permit = Arc::clone(&s.streams).try_acquire_owned().map_err(|_| {
                reject(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "{} event streams are open, the most this node serves; try again later",
                        s.limits.event_streams
                    ),
                )
            })?;
            let stream = event_stream(s.handle.subscribe()).map(move |e| {
                let _held = &permit;
                e
            });
            Ok::<_, Rejection>(warp::sse::reply(warp::sse::keep_alive().stream(stream)))
        });
    let upgrade_view = warp::path!("api" / "v1" / "upgrade")
        .and(warp::get())
        .and(st.clone())
        .and_then(upgrade_view);
    let upload = warp::path!("api" / "v1" / "upgrade" / "artifact")
        .and(warp::put())
        .and(authorized(all.clone()))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and_then(upload);
    let download = warp::path!("api" / "v1" / "upgrade" / "artifact" / String)
        .and(warp::get())
        .and(st.clone())
        .and_then(download);
    let give_key = warp::path!("api" / "v1" / "upgrade" / "key")
        .and(warp::put())
        .and(authorized(all.clone()))
        .and(warp::body::content_length_limit(MAX_BODY))
        .and(warp::body::bytes())
        .and_then(give_key);
    let install = warp::path!("api" / "v1" / "upgrade" / "install")
        .and(warp::post())
        .and(authorized(all.clone()))
        .and(warp::body::content_length_limit(MAX_INSTALL_REQUEST))
        .and(warp::body::bytes())
        .and_then(install);
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

    index
        .or(alive)
        .or(monitoring)
        .or(working)
        .or(add)
        .or(remove)
        .or(nodes)
        .or(events)
        .or(upgrade_view)
        .or(upload)
        .or(download)
        .or(install)
        .or(give_key)
        .or(healthz)
        .or(metrics)
        .recover(recover)
}

/// Passes the state on when the request carries the right token (or no token is configured).
fn authorized(
    st: impl Filter<Extract = (ApiState,), Error = Infallible> + Clone + Send + Sync,
) -> impl Filter<Extract = (ApiState,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(st)
        .and_then(|header: Option<String>, s: ApiState| async move {
            check_token(header.as_deref(), s.token.as_ref())?;
            Ok::<_, Rejection>(s)
        })
}

/// Passes the state on for a read: always, or with the token under `api.protect_reads`.
fn readable(
    st: impl Filter<Extract = (ApiState,), Error = Infallible> + Clone + Send + Sync,
) -> impl Filter<Extract = (ApiState,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(st)
        .and_then(|header: Option<String>, s: ApiState| async move {
            if s.protect_reads {
                check_token(header.as_deref(), s.token.as_ref())?;
            }
            Ok::<_, Rejection>(s)
        })
}

/// Checks an `Authorization` header against the token: `Bearer <token>`, or `Basic` with the token as
/// the password (any user name), which is what a browser sends after asking. Schemes are
/// case-insensitive (RFC 7235 §2.1).
fn check_token(header: Option<&str>, token: Option<&Secret>) -> Result<(), Rejection> {
    let Some(token) = token else {
        return Ok(());
    };
    let given = header.and_then(|h| {
        let (scheme, credentials) = h.trim_start().split_once(' ')?;
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            Some(credentials.as_bytes().to_vec())
        } else if scheme.eq_ignore_ascii_case("basic") {
            let pair = base64::engine::general_purpose::STANDARD
                .decode(credentials)
                .ok()?;
            let colon = pair.iter().position(|b| *b == b':')?;
            Some(pair[colon + 1..].to_vec())
        } else {
            None
        }
    });
    match given {
        None => Err(reject(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs the API token: `Authorization: Bearer <token>` (api.token)",
        )),
        Some(given) if constant_time_eq(&given, token.0.as_bytes()) => Ok(()),
        Some(_) => Err(reject(StatusCode::UNAUTHORIZED, "wrong API token")),
    }
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
                let kind = serde_json::to_value(e.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
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

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn working_service(service: String, s: ApiState) -> Result<impl Reply, Rejection> {
    crate::model::published::check_service_name(&service)
        .map_err(|e| reject(StatusCode::BAD_REQUEST, e))?;
    let v: Vec<ServiceNodeView> = views::nodes(&s.handle.members())
        .into_iter()
        .filter(|n| n.state == Liveness::Alive && n.services.contains(&service))
        .map(|n| ServiceNodeView {
            id: n.id,
            name: n.name,
            address: n.address,
            http_port: n.http_port,
        })
        .collect();
    Ok(warp::reply::json(&v))
}

async fn change_services(s: ApiState, name: String, add: bool) -> Result<impl Reply, Rejection> {
    let metadata = Arc::clone(&s.metadata);
    // The write fsyncs: keep it off the async threads. The lock serialises writers.
    let result = tokio::task::spawn_blocking(move || {
        let mut m = metadata.lock().expect("meta-data lock poisoned");
        let changed = if add { m.add(&name) } else { m.remove(&name) }?;
        Ok::<_, ChangeError>((changed, m.services().clone(), m.gossip_value()))
    })
    .await
    .map_err(|_| reject(StatusCode::INTERNAL_SERVER_ERROR, "meta-data writer failed"))?;
    let (changed, services, value) = result.map_err(|e| {
        let status = match e {
            ChangeError::BadName(_) => StatusCode::BAD_REQUEST,
            ChangeError::TooMany => StatusCode::PAYLOAD_TOO_LARGE,
            ChangeError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        reject(status, e.to_string())
    })?;
    if changed {
        s.handle
            .set(SERVICES_KEY, &value)
            .map_err(|e| reject(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    }
    let me = s.handle.members().into_iter().find(|m| m.is_self);
    Ok(warp::reply::json(&ServicesView {
        id: s.handle.id().to_string(),
        name: me
            .and_then(|m| m.kvs.get("name").cloned())
            .unwrap_or_default(),
        services: services.into_iter().collect(),
        changed,
    }))
}

/// One row of the dashboard, formatted for people.
#[derive(Serialize)]
struct Row {
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
    services: Vec<String>,
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
            services: n.services.clone(),
            version: n.version.clone().unwrap_or_else(dash),
            last_heard: if n.is_self {
                "self".into()
            } else {
                ago(n.last_heard_ms)
            },
        }
    }
}

fn bytes(n: u64) -> String {
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

fn ago(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1000..=119_999 => format!("{:.1} s", ms as f64 / 1000.0),
        120_000..=7_199_999 => format!("{} min", ms / 60_000),
        _ => format!("{} h", ms / 3_600_000),
    }
}

async fn dashboard(s: ApiState) -> Result<impl Reply, Rejection> {
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
    let html = s.templates.render("dashboard.html", &ctx).map_err(|e| {
        tracing::error!(error = %e, "dashboard template");
        reject(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the dashboard failed to render",
        )
    })?;
    Ok(warp::reply::html(html))
}

fn upgrades(s: &ApiState) -> Result<Arc<Upgrades>, Rejection> {
    s.upgrades
        .clone()
        .ok_or_else(|| reject(StatusCode::NOT_FOUND, "this agent takes no upgrades"))
}

fn refusal(r: Refused) -> Rejection {
    reject(
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
        r.message,
    )
}

/// Runs `f` on a blocking thread (files, fsync, HTTP fetches).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Refused> + Send + 'static,
) -> Result<T, Rejection> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| reject(StatusCode::INTERNAL_SERVER_ERROR, "the upgrade task failed"))?
        .map_err(refusal)
}

fn upgrade_slot(s: &ApiState) -> Result<tokio::sync::OwnedSemaphorePermit, Rejection> {
    Arc::clone(&s.upgrade_slot)
        .try_acquire_owned()
        .map_err(|_| {
            reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "another artifact upload or install is in progress on this node",
            )
        })
}

async fn upgrade_view(s: ApiState) -> Result<impl Reply, Rejection> {
    let u = upgrades(&s)?;
    let me = views::nodes(&s.handle.members())
        .into_iter()
        .find(|n| n.is_self);
    let view = blocking(move || {
        Ok(crate::model::upgrade::UpgradeView {
            id: me.as_ref().map(|m| m.id.clone()).unwrap_or_default(),
            name: me.map(|m| m.name).unwrap_or_default(),
            version: crate::VERSION.to_string(),
            arch: crate::release::Arch::this_machine().map(|a| a.name().to_string()),
            has_key: u.key().is_some(),
            artifact: u.kept(),
            busy: u.busy(),
            last: u.last(),
        })
    })
    .await?;
    Ok(warp::reply::json(&view))
}

/// `PUT /api/v1/upgrade/artifact`: the body is read with a size and a time limit, one upload at a time,
/// and kept only once it checked out whole.
async fn upload(
    s: ApiState,
    length: Option<u64>,
    body: impl tokio_stream::Stream<Item = Result<impl warp::Buf, warp::Error>> + Send,
) -> Result<impl Reply, Rejection> {
    use crate::model::upgrade::MAX_ARTIFACT;
    let u = upgrades(&s)?;
    let too_large = |n: u64| {
        reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("an artifact of {n} bytes or more; this node takes at most {MAX_ARTIFACT}"),
        )
    };
    match length {
        Some(n) if n > MAX_ARTIFACT => return Err(too_large(n)),
        Some(_) => {}
        None => {
            return Err(reject(
                StatusCode::LENGTH_REQUIRED,
                "send the artifact with a Content-Length",
            ))
        }
    }
    let _slot = upgrade_slot(&s)?;
    let read = async {
        let mut bytes = Vec::with_capacity(length.unwrap_or(0) as usize);
        tokio::pin!(body);
        while let Some(chunk) = body.next().await {
            let mut chunk = chunk.map_err(|e| {
                reject(
                    StatusCode::BAD_REQUEST,
                    format!("reading the artifact: {e}"),
                )
            })?;
            while warp::Buf::has_remaining(&chunk) {
                let part = warp::Buf::chunk(&chunk);
                if (bytes.len() + part.len()) as u64 > MAX_ARTIFACT {
                    return Err(too_large((bytes.len() + part.len()) as u64));
                }
                bytes.extend_from_slice(part);
                let n = part.len();
                warp::Buf::advance(&mut chunk, n);
            }
        }
        Ok(bytes)
    };
    let bytes = tokio::time::timeout(UPLOAD_TIMEOUT, read)
        .await
        .map_err(|_| {
            reject(
                StatusCode::REQUEST_TIMEOUT,
                format!("the upload took more than {} s", UPLOAD_TIMEOUT.as_secs()),
            )
        })??;
    let view = blocking(move || u.accept(&bytes)).await?;
    Ok(warp::reply::json(&view))
}

/// `GET /api/v1/upgrade/artifact/:sha256`: the artifact this node keeps, for the other nodes.
async fn download(sha: String, s: ApiState) -> Result<impl Reply, Rejection> {
    let u = upgrades(&s)?;
    let _permit = Arc::clone(&s.serving).try_acquire_owned().map_err(|_| {
        reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is serving the artifact to others; try another",
        )
    })?;
    let bytes = blocking(move || {
        u.read(&sha).ok_or_else(|| Refused {
            status: 404,
            message: format!("this node does not have artifact {sha}"),
        })
    })
    .await?;
    Ok(warp::reply::with_header(
        bytes,
        "content-type",
        "application/octet-stream",
    ))
}

/// `PUT /api/v1/upgrade/key`: the cluster's signing key, for a node configured without one.
async fn give_key(s: ApiState, body: hyper::body::Bytes) -> Result<impl Reply, Rejection> {
    let u = upgrades(&s)?;
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let _slot = upgrade_slot(&s)?;
    let new = blocking(move || u.trust(&text)).await?;
    Ok(warp::reply::json(&serde_json::json!({ "changed": new })))
}

/// `POST /api/v1/upgrade/install`: fetch (if needed), check, and hand over to the card's installer.
async fn install(s: ApiState, body: hyper::body::Bytes) -> Result<impl Reply, Rejection> {
    let u = upgrades(&s)?;
    let req: crate::model::upgrade::InstallRequest = serde_json::from_slice(&body)
        .map_err(|e| reject(StatusCode::BAD_REQUEST, format!("install request: {e}")))?;
    let _slot = upgrade_slot(&s)?;
    let peers: Vec<String> = s
        .handle
        .members()
        .iter()
        .filter(|m| !m.is_self && m.liveness == Liveness::Alive)
        .map(|m| m.id.to_string())
        .collect();
    let version = blocking(move || u.install(&req, peers)).await?;
    Ok(warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "installing": version })),
        StatusCode::ACCEPTED,
    ))
}

/// Turns every rejection into a JSON error with the right status.
async fn recover(err: Rejection) -> Result<impl Reply, Infallible> {
    let (status, message) = if let Some(e) = err.find::<ApiError>() {
        (e.status, e.message.clone())
    } else if err.is_not_found() {
        (StatusCode::NOT_FOUND, "no such endpoint".to_string())
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

    #[test]
    fn tokens_are_taken_as_bearer_or_as_a_basic_password_in_any_case() {
        let token = Secret("s3cret".into());
        let basic = |pair: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        };
        for ok in [
            "Bearer s3cret".to_string(),
            "bearer s3cret".to_string(),
            basic("admin:s3cret"),
            basic(":s3cret"),
            format!("BASIC {}", &basic("x:s3cret")[6..]),
        ] {
            assert!(check_token(Some(&ok), Some(&token)).is_ok(), "{ok}");
        }
        for bad in [
            None,
            Some("Bearer wrong".to_string()),
            Some(basic("s3cret:wrong")),
            Some(basic("no-colon")),
            Some("Digest s3cret".to_string()),
        ] {
            assert!(
                check_token(bad.as_deref(), Some(&token)).is_err(),
                "{bad:?}"
            );
        }
        assert!(check_token(None, None).is_ok(), "no token configured");
    }
}
