//! The service meta-data endpoints: which alive nodes run a service, and this node's own list changed
//! (`/nodes/workingService/:service`, `/meta-data/add-service/:service`, `/meta-data/remove-service/…`).

use std::sync::Arc;

use warp::http::StatusCode;
use warp::{Rejection, Reply};

use super::{reject, ApiState};
use crate::daemon::metadata::{ChangeError, SERVICES_KEY};
use crate::gossip::Liveness;
use crate::model::views::{self, ServiceNodeView, ServicesView};

pub(super) async fn working_service(service: String, s: ApiState) -> Result<impl Reply, Rejection> {
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

pub(super) async fn change_services(
    s: ApiState,
    name: String,
    add: bool,
) -> Result<impl Reply, Rejection> {
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
