//! What proves a node's word: its signature on each key/value of its state, checked before the state is
//! taken, and the secret it shares with each peer, which seals what the two say to each other. A
//! simulation of many nodes in one process may share the results of these pure computations between its
//! nodes ([`CryptoMemo`]), so a thousand nodes do not each check the same signature.

use std::collections::HashSet;
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};

use super::wire::{kv_message, KeyValue, PublicKey};
use super::*;

/// Two nodes, the lower id first.
type Pair = (NodeId, NodeId);

/// Signature checks and key agreements already made by some node of a simulation. Sharing them changes
/// no outcome: a check is remembered by a hash of everything it read (key, message, signature) and only
/// when it succeeded, and a pair's secret is the same whichever of the two computes it (its ids name
/// their keys). The agent has none: each of its checks is made once anyway (a key/value is checked
/// when it is new, never again).
#[derive(Debug, Default)]
pub struct CryptoMemo {
    verified: Mutex<HashSet<[u8; 32]>>,
    shared: Mutex<HashMap<Pair, Option<[u8; 32]>>>,
    keys: Mutex<HashMap<NodeId, PublicKey>>,
}

/// The most senders not yet members whose introductions are remembered: enough for a cluster starting
/// all at once; a key holder introducing invented members by the thousand only pushes out the oldest
/// (whose datagrams then wait until their state arrives by gossip).
const INTRODUCED_CAP: usize = 1024;

/// A sender not (yet) a member here that introduced itself: its keys (checked against its id and its
/// signature), when, and whether it holds this node's keys (it addressed this node by id, which it can
/// know only from this node's state or introduction, or paired a datagram): so the two can pair before
/// its state arrives.
#[derive(Debug, Clone)]
pub(super) struct Introduced {
    pub(super) key: PublicKey,
    pub(super) at: Duration,
    pub(super) knows_me: bool,
}

impl Gossiper {
    /// Notes what a datagram of `sender`'s (in its `generation`) proved: its keys when it introduced
    /// itself and is not a member here, and whether it holds this node's keys. Another generation of a
    /// member that introduces itself restarted and forgot this node (a lower one too: its generation
    /// file was lost): what this node says to it is introduced again until it knows it anew.
    pub(super) fn note_sender(
        &mut self,
        sender: NodeId,
        generation: u64,
        introduced: Option<PublicKey>,
        holds_my_keys: bool,
        now: Duration,
    ) {
        if let Some(s) = self.nodes.get_mut(&sender) {
            if generation != s.generation && introduced.is_some() {
                s.knows_my_keys = false;
            }
            s.knows_my_keys |= holds_my_keys;
            return;
        }
        if let Some(known) = self.introduced.get_mut(&sender) {
            known.knows_me |= holds_my_keys;
            known.at = now;
            return;
        }
        let Some(key) = introduced else {
            return;
        };
        if self.introduced.len() >= INTRODUCED_CAP {
            let oldest = self
                .introduced
                .iter()
                .min_by_key(|(_, i)| i.at)
                .map(|(id, _)| *id)
                .expect("full");
            self.introduced.remove(&oldest);
            self.shared.remove(&oldest);
        }
        self.introduced.insert(
            sender,
            Introduced {
                key,
                at: now,
                knows_me: holds_my_keys,
            },
        );
    }

    /// Whether every key/value of `kvs` carries the signature of `key` (node `node`) in `generation`.
    pub(super) fn signed(
        &mut self,
        key: &PublicKey,
        node: NodeId,
        generation: u64,
        kvs: &[KeyValue],
    ) -> bool {
        self.stats.signatures_checked += kvs.len() as u64;
        kvs.iter().all(|kv| {
            let message = kv_message(
                self.cluster_id,
                node,
                generation,
                &kv.key,
                kv.version,
                kv.value.as_deref(),
            );
            let Some(memo) = &self.memo else {
                return key.verify(&message, &kv.signature);
            };
            let seen: [u8; 32] = Sha256::new()
                .chain_update(key.bytes())
                .chain_update(&message)
                .chain_update(kv.signature)
                .finalize()
                .into();
            if memo.verified.lock().expect("not poisoned").contains(&seen) {
                return true;
            }
            let ok = key.verify(&message, &kv.signature);
            if ok {
                memo.verified.lock().expect("not poisoned").insert(seen);
            }
            ok
        })
    }

    /// The public keys `bytes` of node `id`, checked (see [`PublicKey::for_node`]).
    pub(super) fn public_key(
        &self,
        id: NodeId,
        bytes: &[u8; wire::PUBLIC_KEY_LEN],
    ) -> Result<PublicKey, wire::WireError> {
        let Some(memo) = &self.memo else {
            return PublicKey::for_node(id, bytes);
        };
        if let Some(key) = memo.keys.lock().expect("not poisoned").get(&id) {
            if key.bytes() == bytes {
                return Ok(key.clone());
            }
        }
        let key = PublicKey::for_node(id, bytes)?;
        memo.keys
            .lock()
            .expect("not poisoned")
            .insert(id, key.clone());
        Ok(key)
    }

    /// The X25519 secret this node shares with `peer`, made when first needed; `None` when its keys
    /// are not known here (or are of small order).
    pub(super) fn shared_secret(&mut self, peer: NodeId) -> Option<[u8; 32]> {
        if let Some(shared) = self.shared.get(&peer) {
            return *shared;
        }
        let key = match self.nodes.get(&peer) {
            Some(s) => s.key.clone(),
            None => self.introduced.get(&peer)?.key.clone(),
        };
        let pair = (self.id.min(peer), self.id.max(peer));
        let memoised = self
            .memo
            .as_ref()
            .and_then(|m| m.shared.lock().expect("not poisoned").get(&pair).copied());
        self.stats.key_agreements += 1;
        let shared = match memoised {
            Some(shared) => shared,
            None => {
                let shared = self.key.shared_with(&key);
                if let Some(m) = &self.memo {
                    m.shared.lock().expect("not poisoned").insert(pair, shared);
                }
                shared
            }
        };
        self.shared.insert(peer, shared);
        shared
    }
}
