//! `herd upgrade`'s endpoints: this node's upgrade state, an artifact uploaded (checked whole, then kept
//! and served to the other nodes), and the install request handed to the card's installer.

use std::sync::Arc;

use tokio_stream::StreamExt;
use warp::http::StatusCode;
use warp::{Rejection, Reply};

use super::{reject, ApiState, UPLOAD_TIMEOUT};
use crate::daemon::upgrade::{Refused, Upgrades};
use crate::gossip::Liveness;
use crate::model::views;

pub(super) fn upgrades(s: &ApiState) -> Result<Arc<Upgrades>, Rejection> {
    s.upgrades
        .clone()
        .ok_or_else(|| reject(StatusCode::NOT_FOUND, "this agent takes no upgrades"))
}

pub(super) fn refusal(r: Refused) -> Rejection {
    reject(
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
        r.message,
    )
}

/// Runs `f` on a blocking thread (files, fsync, HTTP fetches).
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Refused> + Send + 'static,
) -> Result<T, Rejection> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| reject(StatusCode::INTERNAL_SERVER_ERROR, "the upgrade task failed"))?
        .map_err(refusal)
}

pub(super) fn upgrade_slot(s: &ApiState) -> Result<tokio::sync::OwnedSemaphorePermit, Rejection> {
    Arc::clone(&s.upgrade_slot)
        .try_acquire_owned()
        .map_err(|_| {
            reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "another artifact upload or install is in progress on this node",
            )
        })
}

pub(super) async fn upgrade_view(s: ApiState) -> Result<impl Reply, Rejection> {
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
pub(super) async fn upload(
    s: ApiState,
    proven: Option<String>,
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
    super::auth::check_body(&proven, &bytes)?;
    let view = blocking(move || u.accept(&bytes)).await?;
    Ok(warp::reply::json(&view))
}

/// `GET /api/v1/upgrade/artifact/:sha256`: the artifact this node keeps, for the other nodes.
pub(super) async fn download(sha: String, s: ApiState) -> Result<impl Reply, Rejection> {
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

/// `POST /api/v1/upgrade/install`: fetch (if needed), check, and hand over to the card's installer.
pub(super) async fn install(
    s: ApiState,
    proven: Option<String>,
    body: hyper::body::Bytes,
) -> Result<impl Reply, Rejection> {
    let u = upgrades(&s)?;
    super::auth::check_body(&proven, &body)?;
    let req: crate::model::upgrade::InstallRequest = serde_json::from_slice(&body)
        .map_err(|e| reject(StatusCode::BAD_REQUEST, format!("install request: {e}")))?;
    let _slot = upgrade_slot(&s)?;
    let alive: Vec<_> = views::nodes(&s.handle.members())
        .into_iter()
        .filter(|n| n.is_self || n.state == Liveness::Alive)
        .collect();
    let peers: Vec<String> = alive
        .iter()
        .filter(|n| !n.is_self)
        .map(|n| n.id.clone())
        .collect();
    let apis: Vec<String> = alive
        .iter()
        .filter_map(|n| Some(views::api_url(n.address?, n.http_port?)))
        .collect();
    let version = blocking(move || u.install(&req, peers, &apis)).await?;
    Ok(warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "installing": version })),
        StatusCode::ACCEPTED,
    ))
}
