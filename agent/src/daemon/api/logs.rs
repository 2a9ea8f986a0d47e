//! `GET /api/v1/logs`: this node's journal, as plain lines (`journalctl -o short-iso`), streamed and
//! bounded as [`crate::daemon::logs`] says. Always with the token, whatever `api.protect_reads` says:
//! a journal may hold secrets. Each read is logged with who asked.

use std::convert::Infallible;

use tokio_stream::StreamExt;
use warp::http::StatusCode;
use warp::{Rejection, Reply};

use super::{reject, server, ApiState};
use crate::daemon::logs::{self, Refused};
use crate::model::logs::LogQuery;

pub(super) async fn serve(
    query: String,
    peer: Option<server::Peer>,
    s: ApiState,
) -> Result<impl Reply, Rejection> {
    let q = LogQuery::parse(&query).map_err(|e| reject(StatusCode::BAD_REQUEST, e))?;
    let who = peer.map_or_else(|| "?".to_string(), |p| p.0.ip().to_string());
    let rx = s.journal.read(&q).await.map_err(|e| match e {
        Refused::Busy => reject(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} log readers already on this node, its most at once: try again later",
                logs::MAX_READERS
            ),
        ),
        Refused::Unavailable(why) => reject(StatusCode::SERVICE_UNAVAILABLE, why),
    })?;
    tracing::info!(
        from = %who,
        lines = q.lines,
        unit = q.unit.as_deref().unwrap_or("*"),
        follow = q.follow,
        "journal read"
    );
    let body = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Ok(warp::reply::with_header(
        warp::reply::stream(body),
        "content-type",
        "text/plain; charset=utf-8",
    ))
}
