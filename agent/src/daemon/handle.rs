//! A cheap, cloneable handle on a running agent's state, for readers and writers on other tasks and
//! threads: the HTTP API, the event handlers, the monitoring loop, tests.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use hyper::body::Bytes;
use tokio::sync::broadcast;

use crate::gossip::{Event, Gossiper, Member, NodeId, Stats};
use crate::model::history::{History, Series};

/// Shared access to a running agent's state. Locks are brief and never held across an `.await`.
#[derive(Clone)]
pub struct Handle {
    pub(super) gossiper: Arc<Mutex<Gossiper>>,
    pub(super) started: Instant,
    pub(super) events: broadcast::Sender<Event>,
    /// The last hour of every node's figures (in memory only).
    pub(super) history: Arc<Mutex<History>>,
    /// Its JSON as last encoded, and the history's revision then.
    pub(super) history_json: Arc<Mutex<Option<(u64, Bytes)>>>,
}

impl Handle {
    fn lock(&self) -> MutexGuard<'_, Gossiper> {
        self.gossiper.lock().expect("gossiper lock poisoned")
    }

    /// Whether `ip` is a member's: an authentic gossip datagram came from it lately.
    pub fn is_member_address(&self, ip: std::net::IpAddr) -> bool {
        self.lock().heard_from(ip, self.started.elapsed())
    }

    pub fn id(&self) -> NodeId {
        self.lock().id()
    }

    /// Every known member as seen by this agent.
    pub fn members(&self) -> Vec<Member> {
        let now = self.started.elapsed();
        self.lock().members(now)
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats().clone()
    }

    /// Membership events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Every node's last hour, the serving node first, as JSON. Encoded once for each change and shared
    /// by every reader, so readers by the hundred hold one copy between them.
    pub fn history_json(&self) -> Bytes {
        let history = self.history.lock().expect("history lock poisoned");
        let mut cache = self
            .history_json
            .lock()
            .expect("history cache lock poisoned");
        match &*cache {
            Some((revision, json)) if *revision == history.revision() => json.clone(),
            _ => {
                let json = Bytes::from(
                    serde_json::to_vec(&history.all()).expect("history encodes as JSON"),
                );
                *cache = Some((history.revision(), json.clone()));
                json
            }
        }
    }

    /// One node's last hour.
    pub fn history_of(&self, node: &str) -> Option<Series> {
        self.history
            .lock()
            .expect("history lock poisoned")
            .series(node)
    }

    /// Sets a key of this node's gossiped state.
    pub fn set(&self, key: &str, value: &str) -> anyhow::Result<()> {
        Ok(self.lock().set(key, value)?)
    }
}
