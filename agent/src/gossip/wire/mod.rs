//! The one place that knows herd's bytes on the wire: message types (here), their compact binary
//! encoding (`codec.rs`), the authenticated encryption that wraps every datagram (`seal.rs`), and every
//! node's own keys (`keys.rs`).
//!
//! # Datagram
//! ```text
//! 0      2        3      4            12       20                 44
//! | "hd" | version | flags | cluster id | sender | nonce (24 bytes) | ciphertext of the payload | tag (16 bytes) |
//! ```
//! Bytes 0..20 are sent in clear so that a packet of another cluster or protocol version is dropped before
//! any decryption, and so that the receiver knows which key opens it; they are the AEAD's associated data,
//! so they cannot be altered either. The AEAD is XChaCha20-Poly1305: fast in software (the Raspberry Pi 4
//! has no AES instructions) and with nonces large enough to draw at random.
//!
//! Every datagram proves its sender, one of two ways (flags):
//! - **paired** (bit 1): sealed under the key its sender and receiver share (`keys::pair_key`: their
//!   X25519 secret and the cluster key), which only those two can make. Everything between members who
//!   know each other's keys goes so: it costs nothing more than the cluster key did.
//! - **introduced** (bit 0): sealed under the cluster key, carrying the sender's public keys (which
//!   its id names) and its Ed25519 signature over the header, the keys and the payload: for a receiver
//!   that may not know the sender yet (a seed, a member that just joined). 128 bytes more and one
//!   signature check, until the two are paired.
//!
//! So holding the cluster key lets a node speak as itself, or as members it invents with keys of their
//! own, never as another. An insecure cluster (no key, `insecure = true`) sends introduced datagrams in
//! clear with no flag (still signed) and pairs with a key made without a cluster key; the two kinds
//! never accept each other's packets.
//!
//! # Payload
//! Integers are LEB128 varints except node ids, which are fixed 8-byte little-endian (they are random, so a
//! varint would only grow them). Every key/value carries its node's Ed25519 signature, and a delta that
//! starts a node's state carries its public keys. Decoding is bounded: every length is checked against the
//! bytes that remain before anything is allocated, and any inconsistency is an error, never a panic.

mod codec;
mod keys;
mod seal;

use std::fmt;

pub use self::keys::{
    id_of, kv_message, pair_key, NodeKey, PublicKey, Signature, PUBLIC_KEY_LEN, SIGNATURE_LEN,
};
pub use self::seal::{
    cluster_id, open, peek_sender, seal, sealed_len, ClusterKey, Opened, Seal, Security,
    INTRODUCTION_LEN,
};

/// The largest datagram herd sends or accepts: below the 1500-byte Ethernet MTU minus IP/UDP headers and a
/// margin for tunnels, so no datagram relies on IP fragmentation.
pub const MAX_DATAGRAM: usize = 1400;
/// Longest key of a node's key/value state.
pub const MAX_KEY_LEN: usize = 64;
/// Longest value of a node's key/value state: one key/value always fits an otherwise empty datagram.
pub const MAX_VALUE_LEN: usize = 1024;

const MAGIC: [u8; 2] = *b"hd";
/// 2: packets carry a sequence number (replay protection). 3: every node's own keys (signed state,
/// paired datagrams), the sender in the clear header.
pub const VERSION: u8 = 3;
const FLAG_ENCRYPTED: u8 = 1;
const FLAG_PAIRED: u8 = 2;
const HEADER_LEN: usize = 20;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes a sealed datagram adds around its payload.
pub const SEAL_OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
/// The payload budget of one datagram, whatever the security mode.
pub const MAX_PAYLOAD: usize = MAX_DATAGRAM - SEAL_OVERHEAD;

/// A node's identity: 64 random (or derived) bits, shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for NodeId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() != 16 {
            return Err(format!("node id {s:?} is not 16 hex digits"));
        }
        u64::from_str_radix(s, 16)
            .map(NodeId)
            .map_err(|_| format!("node id {s:?} is not 16 hex digits"))
    }
}

/// What a node knows of another: enough to tell who is behind without sending the state itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestEntry {
    pub node: NodeId,
    pub generation: u64,
    pub heartbeat: u64,
    pub max_version: u64,
}

/// A bounded digest. `entries` lists every node the sender knows whose id lies in the cyclic id range
/// `[start, end)` (the whole ring when `start == end`), so a node in that range that is missing from the
/// list is a node the sender has never heard of. Entries outside the range (the sender itself, nodes with
/// news) are listed individually and imply nothing about their neighbours.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Digest {
    pub start: NodeId,
    pub end: NodeId,
    /// How many members the sender knows: lets a newcomer size its expectations before it knows them all.
    pub known: u64,
    pub entries: Vec<DigestEntry>,
}

impl Digest {
    /// Whether `node` lies in the range the digest is complete for.
    pub fn covers(&self, node: NodeId) -> bool {
        let (s, e, n) = (self.start.0, self.end.0, node.0);
        match s.cmp(&e) {
            std::cmp::Ordering::Less => s <= n && n < e,
            std::cmp::Ordering::Greater => n >= s || n < e,
            std::cmp::Ordering::Equal => true,
        }
    }
}

/// One versioned key of a node's state; `value: None` is a deletion. `signature` is the node's own over
/// all of it and its generation ([`kv_message`]).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub version: u64,
    pub value: Option<String>,
    pub signature: Signature,
}

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &self.key)
            .field("version", &self.version)
            .field("value", &self.value)
            .finish_non_exhaustive()
    }
}

/// The part of one node's state that a peer lacks: its key/values with versions above `from_version`, in
/// version order (a truncated delta still leaves the receiver with a consistent "max version seen"). A
/// delta from version 0 (a node or generation the peer does not know) carries the node's public keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDelta {
    pub node: NodeId,
    pub generation: u64,
    pub heartbeat: u64,
    pub from_version: u64,
    /// The node's public keys: present exactly when `from_version` is 0.
    pub keys: Option<[u8; PUBLIC_KEY_LEN]>,
    pub kvs: Vec<KeyValue>,
}

/// A gossip message. One exchange is Syn (digest) → Ack (deltas, and entries for what the responder lacks
/// or knows fresher) → Ack2 (deltas); Leave announces a graceful shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Syn {
        digest: Digest,
    },
    Ack {
        /// How many members the responder knows.
        known: u64,
        /// Answers to the digest, read one by one (no range: they are not a census).
        entries: Vec<DigestEntry>,
        deltas: Vec<NodeDelta>,
    },
    Ack2 {
        deltas: Vec<NodeDelta>,
    },
    /// A graceful leave: the sender's newest key/values, its signed goodbye (`_left`) last.
    Leave {
        delta: NodeDelta,
    },
    /// "I am alive", straight to one of the sender's monitors (detection by monitors).
    Heartbeat,
    /// A monitor's probe of a node it is about to convict (`target` is the receiver).
    Ping {
        target: NodeId,
    },
    /// "Probe `target` for me": a monitor asks another node, in case only the path between the
    /// monitor and the target is broken.
    PingReq {
        target: NodeId,
    },
    /// `target` answered a probe (sent by the target itself, or relayed by the node that probed it for
    /// the monitor).
    PingAck {
        target: NodeId,
    },
}

/// A decoded payload: who sent it (which incarnation), its place in the sender's sequence, and what.
/// The sender travels in the datagram's clear header, the rest in the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub sender: NodeId,
    /// The node it is for (`NodeId(0)`: whoever listens at the address, for a Syn to a seed).
    pub to: NodeId,
    pub generation: u64,
    /// Counts the sender's datagrams within its generation: a receiver accepts each (generation, seq)
    /// once, so a captured datagram replayed later is dropped (see `gossip::replay`).
    pub seq: u64,
    pub message: Message,
}

/// The largest generation a datagram may carry: generations count seconds since 2025, so 2^40 lasts
/// 34,000 years, and a peer can never push a generation so high that no node could refute it by raising
/// its own.
pub const MAX_GENERATION: u64 = 1 << 40;
/// The largest heartbeat a datagram may carry, apart from `u64::MAX` (a graceful leave) and
/// `u64::MAX - 1` (convicted): 2^48 rounds last 890,000 years at ten rounds a second.
pub const MAX_HEARTBEAT: u64 = 1 << 48;

fn check_ranges(generation: u64, heartbeat: u64) -> Result<(), WireError> {
    if generation > MAX_GENERATION {
        return Err(WireError::Malformed("generation out of range"));
    }
    if heartbeat > MAX_HEARTBEAT && heartbeat < u64::MAX - 1 {
        return Err(WireError::Malformed("heartbeat out of range"));
    }
    Ok(())
}

/// Why a datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("datagram of {0} bytes exceeds the {MAX_DATAGRAM}-byte limit")]
    TooLarge(usize),
    #[error("not a herd datagram (bad magic or too short)")]
    NotHerd,
    #[error("unsupported protocol version {0}")]
    Version(u8),
    #[error("datagram belongs to another cluster")]
    OtherCluster,
    #[error("datagram failed authentication")]
    NotAuthentic,
    #[error("unencrypted datagram on an encrypted cluster")]
    Unencrypted,
    #[error("encrypted datagram on an insecure cluster")]
    Encrypted,
    #[error("malformed payload: {0}")]
    Malformed(&'static str),
    #[error("paired datagram from a node whose keys are not known here")]
    UnknownSender,
}

// Sizes, for building messages that fit a datagram.

/// Bytes of `v` as a LEB128 varint.
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Bytes of the packet header in the payload (receiver, generation, sequence number, kind).
pub fn packet_header_len(generation: u64, seq: u64) -> usize {
    8 + varint_len(generation) + varint_len(seq) + 1
}

/// Bytes of an empty digest: range, member count (up to 2^21) and entry count (up to 16383).
pub const DIGEST_BASE_LEN: usize = 8 + 8 + 3 + 2;
/// Bytes of an empty Ack: member count, entry count and delta count.
pub const ACK_BASE_LEN: usize = 3 + 2 + 2;

impl DigestEntry {
    pub fn encoded_len(&self) -> usize {
        8 + varint_len(self.generation) + varint_len(self.heartbeat) + varint_len(self.max_version)
    }
}

impl KeyValue {
    pub fn encoded_len(&self) -> usize {
        let value = match &self.value {
            None => 0,
            Some(v) => varint_len(v.len() as u64) + v.len(),
        };
        varint_len(self.key.len() as u64)
            + self.key.len()
            + varint_len(self.version)
            + 1
            + value
            + SIGNATURE_LEN
    }
}

impl NodeDelta {
    /// Bytes of the delta without its key/values (the count is budgeted at two bytes).
    pub fn header_len(&self) -> usize {
        8 + varint_len(self.generation)
            + varint_len(self.heartbeat)
            + varint_len(self.from_version)
            + if self.from_version == 0 {
                PUBLIC_KEY_LEN
            } else {
                0
            }
            + 2
    }

    pub fn encoded_len(&self) -> usize {
        self.header_len() + self.kvs.iter().map(KeyValue::encoded_len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::codec::{put_varint, KIND_SYN};
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn rng() -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(7)
    }

    fn arb_generation() -> impl Strategy<Value = u64> {
        prop_oneof![0..=MAX_GENERATION, Just(MAX_GENERATION)]
    }

    fn arb_heartbeat() -> impl Strategy<Value = u64> {
        prop_oneof![0..=MAX_HEARTBEAT, Just(u64::MAX), Just(u64::MAX - 1)]
    }

    fn arb_entry() -> impl Strategy<Value = DigestEntry> {
        (
            any::<u64>(),
            arb_generation(),
            arb_heartbeat(),
            any::<u64>(),
        )
            .prop_map(|(n, g, h, v)| DigestEntry {
                node: NodeId(n),
                generation: g,
                heartbeat: h,
                max_version: v,
            })
    }

    fn arb_digest() -> impl Strategy<Value = Digest> {
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(arb_entry(), 0..20),
        )
            .prop_map(|(s, e, known, entries)| Digest {
                start: NodeId(s),
                end: NodeId(e),
                known,
                entries,
            })
    }

    fn arb_delta() -> impl Strategy<Value = NodeDelta> {
        let kv = (
            "[a-z_.]{0,64}",
            prop::option::of("\\PC{0,40}"),
            1u64..1000,
            any::<u8>(),
        );
        (
            any::<u64>(),
            arb_generation(),
            arb_heartbeat(),
            prop_oneof![Just(0u64), 0u64..1 << 40],
            any::<u8>(),
            prop::collection::vec(kv, 0..6),
        )
            .prop_map(|(n, g, h, from, k, kvs)| {
                let mut version = from;
                let kvs = kvs
                    .into_iter()
                    .map(|(key, value, step, s)| {
                        version += step;
                        KeyValue {
                            key,
                            version,
                            value,
                            signature: [s; SIGNATURE_LEN],
                        }
                    })
                    .collect();
                NodeDelta {
                    node: NodeId(n),
                    generation: g,
                    heartbeat: h,
                    from_version: from,
                    keys: (from == 0).then_some([k; PUBLIC_KEY_LEN]),
                    kvs,
                }
            })
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            arb_digest().prop_map(|digest| Message::Syn { digest }),
            (
                any::<u64>(),
                prop::collection::vec(arb_entry(), 0..20),
                prop::collection::vec(arb_delta(), 0..5)
            )
                .prop_map(|(known, entries, deltas)| Message::Ack {
                    known,
                    entries,
                    deltas
                }),
            prop::collection::vec(arb_delta(), 0..5).prop_map(|deltas| Message::Ack2 { deltas }),
            arb_delta().prop_map(|delta| Message::Leave { delta }),
            Just(Message::Heartbeat),
            any::<u64>().prop_map(|t| Message::Ping { target: NodeId(t) }),
            any::<u64>().prop_map(|t| Message::PingReq { target: NodeId(t) }),
            any::<u64>().prop_map(|t| Message::PingAck { target: NodeId(t) }),
        ]
    }

    fn arb_packet() -> impl Strategy<Value = Packet> {
        (
            any::<u64>(),
            any::<u64>(),
            arb_generation(),
            any::<u64>(),
            arb_message(),
        )
            .prop_map(|(s, t, g, seq, message)| Packet {
                sender: NodeId(s),
                to: NodeId(t),
                generation: g,
                seq,
                message,
            })
    }

    fn computed_len(p: &Packet) -> usize {
        let entries_len = |es: &[DigestEntry]| {
            varint_len(es.len() as u64) + es.iter().map(DigestEntry::encoded_len).sum::<usize>()
        };
        let digest_len = |d: &Digest| 16 + varint_len(d.known) + entries_len(&d.entries);
        let delta_len = |d: &NodeDelta| d.encoded_len() - 2 + varint_len(d.kvs.len() as u64);
        let deltas_len = |ds: &[NodeDelta]| {
            varint_len(ds.len() as u64) + ds.iter().map(delta_len).sum::<usize>()
        };
        packet_header_len(p.generation, p.seq)
            + match &p.message {
                Message::Syn { digest } => digest_len(digest),
                Message::Ack {
                    known,
                    entries,
                    deltas,
                } => varint_len(*known) + entries_len(entries) + deltas_len(deltas),
                Message::Ack2 { deltas } => deltas_len(deltas),
                Message::Leave { delta } => delta_len(delta),
                Message::Heartbeat => 0,
                Message::Ping { .. } | Message::PingReq { .. } | Message::PingAck { .. } => 8,
            }
    }

    /// Two nodes' keys and their shared secret.
    fn pair() -> (NodeKey, NodeKey, [u8; 32]) {
        let mut rng = rng();
        let (a, b) = (NodeKey::generate(&mut rng), NodeKey::generate(&mut rng));
        let shared = a.shared_with(b.public()).unwrap();
        (a, b, shared)
    }

    proptest! {
        #[test]
        fn packets_round_trip(p in arb_packet()) {
            let bytes = p.encode();
            prop_assert_eq!(Packet::decode(p.sender, &bytes), Ok(p.clone()));
            // The size arithmetic used to fill datagrams matches the encoder exactly.
            prop_assert_eq!(bytes.len(), computed_len(&p));
        }

        #[test]
        fn sealed_packets_round_trip(p in arb_packet(), key in any::<[u8; 32]>()) {
            let (a, b, shared) = pair();
            let security = Security::keyring(&ClusterKey::from_bytes(key), &[]);
            let payload = p.encode();
            for security in [security, Security::Insecure] {
                for paired in [false, true] {
                    let how = if paired {
                        Seal::Paired { receiver: b.id(), shared: &shared }
                    } else {
                        Seal::Introduced { key: &a }
                    };
                    let datagram = seal(&security, 42, a.id(), how, &payload, &mut rng());
                    prop_assert_eq!(datagram.len(), sealed_len(&security, paired, payload.len()));
                    let overhead = if paired { 0 } else { INTRODUCTION_LEN };
                    if !matches!(security, Security::Insecure) || paired {
                        prop_assert_eq!(datagram.len(), payload.len() + overhead + SEAL_OVERHEAD);
                    }
                    if datagram.len() > MAX_DATAGRAM {
                        prop_assert_eq!(
                            open(&security, 42, b.id(), &datagram, |_| Some(shared)),
                            Err(WireError::TooLarge(datagram.len()))
                        );
                        continue;
                    }
                    let opened = open(&security, 42, b.id(), &datagram, |s| {
                        (s == a.id()).then_some(shared)
                    })
                    .unwrap();
                    prop_assert_eq!(opened.sender, a.id());
                    prop_assert_eq!(opened.introduced.is_some(), !paired);
                    let sent = Packet { sender: a.id(), ..p.clone() };
                    prop_assert_eq!(Packet::decode(a.id(), &opened.payload), Ok(sent));
                }
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1500)) {
            let _ = Packet::decode(NodeId(1), &bytes);
            let _ = open(&Security::Insecure, 1, NodeId(2), &bytes, |_| Some([1; 32]));
            let keyring = Security::keyring(&ClusterKey::from_bytes([3; 32]), &[]);
            let _ = open(&keyring, 1, NodeId(2), &bytes, |_| Some([1; 32]));
        }

        #[test]
        fn every_truncation_is_an_error(p in arb_packet()) {
            let bytes = p.encode();
            for cut in 0..bytes.len() {
                prop_assert!(
                    Packet::decode(p.sender, &bytes[..cut]).is_err(),
                    "prefix of {} bytes decoded", cut
                );
            }
        }

        #[test]
        fn every_bit_flip_fails_authentication(
            p in arb_packet(),
            bit in any::<prop::sample::Index>(),
            paired in any::<bool>(),
            insecure in any::<bool>(),
        ) {
            let (a, b, shared) = pair();
            let security = if insecure {
                Security::Insecure
            } else {
                Security::keyring(&ClusterKey::from_bytes([9; 32]), &[])
            };
            let how = if paired {
                Seal::Paired { receiver: b.id(), shared: &shared }
            } else {
                Seal::Introduced { key: &a }
            };
            let mut datagram = seal(&security, 5, a.id(), how, &p.encode(), &mut rng());
            let i = bit.index(datagram.len() * 8);
            datagram[i / 8] ^= 1 << (i % 8);
            prop_assert!(open(&security, 5, b.id(), &datagram, |_| Some(shared)).is_err());
        }
    }

    #[test]
    fn a_paired_datagram_opens_only_for_its_receiver_with_their_secret() {
        let (a, b, shared) = pair();
        let c = NodeKey::generate(&mut rand_chacha::ChaCha8Rng::seed_from_u64(99));
        let security = Security::keyring(&ClusterKey::from_bytes([4; 32]), &[]);
        let how = Seal::Paired {
            receiver: b.id(),
            shared: &shared,
        };
        let datagram = seal(&security, 1, a.id(), how, b"hello", &mut rng());
        let opened = open(&security, 1, b.id(), &datagram, |_| Some(shared)).unwrap();
        assert!(opened.introduced.is_none() && opened.payload == b"hello");
        // A third member has the cluster key, not the pair's secret: its own secret with the sender
        // opens nothing, nor does the receiver's id with it.
        let third = c.shared_with(a.public()).unwrap();
        assert_eq!(
            open(&security, 1, c.id(), &datagram, |_| Some(third)),
            Err(WireError::NotAuthentic)
        );
        assert_eq!(
            open(&security, 1, b.id(), &datagram, |_| Some(third)),
            Err(WireError::NotAuthentic)
        );
        // A sender whose keys are not known here: refused before any decryption.
        assert_eq!(
            open(&security, 1, b.id(), &datagram, |_| None),
            Err(WireError::UnknownSender)
        );
        // Another cluster key: the pair key differs too.
        let other = Security::keyring(&ClusterKey::from_bytes([5; 32]), &[]);
        assert_eq!(
            open(&other, 1, b.id(), &datagram, |_| Some(shared)),
            Err(WireError::NotAuthentic)
        );
        // During a rotation the older key still opens it.
        let rotating = Security::keyring(
            &ClusterKey::from_bytes([5; 32]),
            &[ClusterKey::from_bytes([4; 32])],
        );
        assert!(open(&rotating, 1, b.id(), &datagram, |_| Some(shared)).is_ok());
        // The sender in the clear header is the AEAD's associated data: another name fails.
        let mut renamed = datagram.clone();
        renamed[12..20].copy_from_slice(&c.id().0.to_le_bytes());
        assert_eq!(
            open(&security, 1, b.id(), &renamed, |_| Some(shared)),
            Err(WireError::NotAuthentic)
        );
    }

    #[test]
    fn varint_len_matches_encoding() {
        for v in [0, 1, 127, 128, 16383, 16384, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }

    #[test]
    fn huge_counts_are_rejected_before_allocating() {
        // A Syn claiming 2^62 digest entries in a 30-byte datagram.
        let mut bytes = vec![0u8; 8];
        put_varint(&mut bytes, 1);
        put_varint(&mut bytes, 1);
        bytes.push(KIND_SYN);
        bytes.extend_from_slice(&[0u8; 16]);
        put_varint(&mut bytes, 100);
        put_varint(&mut bytes, 1 << 62);
        assert_eq!(
            Packet::decode(NodeId(1), &bytes),
            Err(WireError::Malformed("count exceeds the datagram"))
        );
    }

    #[test]
    fn generations_and_heartbeats_out_of_range_are_refused() {
        let packet = |generation, heartbeat| Packet {
            sender: NodeId(1),
            to: NodeId(3),
            generation: 1,
            seq: 1,
            message: Message::Ack2 {
                deltas: vec![NodeDelta {
                    node: NodeId(2),
                    generation,
                    heartbeat,
                    from_version: 0,
                    keys: Some([1; PUBLIC_KEY_LEN]),
                    kvs: vec![],
                }],
            },
        };
        for (g, h) in [
            (1, 5),
            (MAX_GENERATION, MAX_HEARTBEAT),
            (1, u64::MAX),
            (1, u64::MAX - 1),
        ] {
            assert!(
                Packet::decode(NodeId(1), &packet(g, h).encode()).is_ok(),
                "{g} {h}"
            );
        }
        for (g, h) in [
            (MAX_GENERATION + 1, 5),
            (u64::MAX, 5),
            (1, u64::MAX - 2),
            (1, MAX_HEARTBEAT + 1),
        ] {
            assert!(
                matches!(
                    Packet::decode(NodeId(1), &packet(g, h).encode()),
                    Err(WireError::Malformed(_))
                ),
                "{g} {h}"
            );
        }
        let mut p = packet(1, 1);
        p.generation = MAX_GENERATION + 1;
        assert!(Packet::decode(NodeId(1), &p.encode()).is_err());
    }

    /// Seals as a node introducing itself; opens as another (no pair secret needed).
    fn seal_anon(security: &Security, cluster: u64, payload: &[u8]) -> Vec<u8> {
        let (a, _, _) = pair();
        let how = Seal::Introduced { key: &a };
        seal(security, cluster, a.id(), how, payload, &mut rng())
    }

    fn open_anon(security: &Security, cluster: u64, datagram: &[u8]) -> Result<Vec<u8>, WireError> {
        open(security, cluster, NodeId(2), datagram, |_| None).map(|o| o.payload)
    }

    #[test]
    fn an_introduced_datagram_proves_its_sender_by_its_keys_and_signature() {
        let (a, b, _) = pair();
        let security = Security::keyring(&ClusterKey::from_bytes([4; 32]), &[]);
        let how = Seal::Introduced { key: &a };
        let datagram = seal(&security, 1, a.id(), how, b"hello", &mut rng());
        let opened = open(&security, 1, b.id(), &datagram, |_| None).unwrap();
        assert_eq!(opened.introduced.as_ref().map(PublicKey::id), Some(a.id()));
        assert_eq!(opened.payload, b"hello");
        // Another node's name on it (the header is signed and sealed): refused.
        let mut renamed = datagram.clone();
        renamed[12..20].copy_from_slice(&b.id().0.to_le_bytes());
        assert_eq!(
            open(&security, 1, b.id(), &renamed, |_| None),
            Err(WireError::NotAuthentic)
        );
        // A member holding the cluster key who signs with its own key in another's name: refused (the
        // keys carried do not name the sender).
        let forged = seal(
            &security,
            1,
            b.id(),
            Seal::Introduced { key: &a },
            b"x",
            &mut rng(),
        );
        assert_eq!(
            open(&security, 1, NodeId(3), &forged, |_| None),
            Err(WireError::NotAuthentic)
        );
    }

    #[test]
    fn keyring_accepts_old_keys_and_seals_with_the_primary() {
        let old = ClusterKey::from_bytes([1; 32]);
        let new = ClusterKey::from_bytes([2; 32]);
        let payload = b"payload";
        let from_old = seal_anon(&Security::keyring(&old, &[]), 1, payload);
        let rotating = Security::keyring(&new, std::slice::from_ref(&old));
        assert_eq!(open_anon(&rotating, 1, &from_old).unwrap(), payload);
        let from_rotating = seal_anon(&rotating, 1, payload);
        assert_eq!(
            open_anon(&Security::keyring(&new, &[]), 1, &from_rotating).unwrap(),
            payload
        );
        assert_eq!(
            open_anon(&Security::keyring(&old, &[]), 1, &from_rotating),
            Err(WireError::NotAuthentic)
        );
    }

    #[test]
    fn mismatched_modes_versions_and_clusters_are_refused() {
        let secure = Security::keyring(&ClusterKey::from_bytes([1; 32]), &[]);
        let plain = seal_anon(&Security::Insecure, 1, b"x");
        let sealed = seal_anon(&secure, 1, b"x");
        assert_eq!(open_anon(&secure, 1, &plain), Err(WireError::Unencrypted));
        assert_eq!(
            open_anon(&Security::Insecure, 1, &sealed),
            Err(WireError::Encrypted)
        );
        assert_eq!(open_anon(&secure, 2, &sealed), Err(WireError::OtherCluster));
        assert_eq!(
            open_anon(&secure, 1, &vec![0; 1401]),
            Err(WireError::TooLarge(1401))
        );
        // An agent from before per-node keys (protocol 2) is told apart from garbage.
        let mut old = sealed.clone();
        old[2] = 2;
        assert_eq!(open_anon(&secure, 1, &old), Err(WireError::Version(2)));
    }

    #[test]
    fn keys_never_print() {
        let key = ClusterKey::from_bytes([0xab; 32]);
        let text = format!("{key:?} {:?}", Security::keyring(&key, &[]));
        assert!(
            !text.contains("ab") && !text.contains(&key.to_base64()),
            "{text}"
        );
    }

    #[test]
    fn key_parsing_names_the_problem() {
        assert!(ClusterKey::from_base64("%%%")
            .unwrap_err()
            .contains("base64"));
        assert!(ClusterKey::from_base64("AAAA")
            .unwrap_err()
            .contains("3 bytes"));
        let k = ClusterKey::from_bytes([5; 32]);
        assert_eq!(ClusterKey::from_base64(&k.to_base64()).unwrap(), k);
    }

    #[test]
    fn digest_ranges_wrap() {
        let d = |s, e| Digest {
            start: NodeId(s),
            end: NodeId(e),
            known: 0,
            entries: vec![],
        };
        assert!(d(10, 20).covers(NodeId(10)) && !d(10, 20).covers(NodeId(20)));
        assert!(d(20, 10).covers(NodeId(u64::MAX)) && d(20, 10).covers(NodeId(0)));
        assert!(!d(20, 10).covers(NodeId(15)));
        assert!(d(7, 7).covers(NodeId(12345)));
    }
}
