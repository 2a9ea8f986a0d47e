//! Keys and sealing: the cluster key (and the keyring of a rotation), and every datagram sealed with
//! XChaCha20-Poly1305, its clear header as associated data, under the cluster key with the sender's keys
//! and signature inside (introduced) or under the pair key of its sender and receiver (paired), or opened
//! and checked.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

use super::*;

/// A 256-bit cluster key. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; 32]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(***)")
    }
}

impl ClusterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ClusterKey(bytes)
    }

    /// Parses the base64 form used in configuration files (`herd keygen` prints one).
    pub fn from_base64(text: &str) -> Result<Self, String> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| "is not valid base64".to_string())?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|v: Vec<u8>| format!("decodes to {} bytes, expected 32", v.len()))?;
        Ok(ClusterKey(bytes))
    }

    /// The key's bytes, for a key derived from it (a join offer's, `model::join`).
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_base64(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    pub fn generate(rng: &mut impl RngCore) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        ClusterKey(bytes)
    }
}

/// How datagrams are protected: a keyring, or explicitly nothing.
#[derive(Clone)]
pub enum Security {
    /// No cluster key: introduced datagrams go in clear (signed), paired ones are sealed with a pair key made
    /// without one. Only when the operator said `insecure = true`.
    Insecure,
    /// Seal with the first key; accept any (the others are older keys kept during a rotation).
    Keyring(Vec<(XChaCha20Poly1305, ClusterKey)>),
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Security::Insecure => f.write_str("Insecure"),
            Security::Keyring(k) => write!(f, "Keyring({} keys: ***)", k.len()),
        }
    }
}

impl Security {
    /// A keyring sealing with `primary` and also accepting `older` keys.
    pub fn keyring(primary: &ClusterKey, older: &[ClusterKey]) -> Self {
        let ciphers = std::iter::once(primary)
            .chain(older)
            .map(|k| (XChaCha20Poly1305::new((&k.0).into()), k.clone()))
            .collect();
        Security::Keyring(ciphers)
    }

    /// The cluster keys a pair key may be made with, the one to seal with first (all zeros on an
    /// insecure cluster).
    fn pair_bases(&self) -> Vec<[u8; 32]> {
        match self {
            Security::Insecure => vec![[0u8; 32]],
            Security::Keyring(keys) => keys.iter().map(|(_, k)| k.0).collect(),
        }
    }
}

/// How a datagram is sealed.
#[derive(Debug, Clone, Copy)]
pub enum Seal<'a> {
    /// Under the cluster key, carrying the sender's public keys and its signature over all of it: for a
    /// receiver that may not know the sender's keys yet (a seed, a node that just joined).
    Introduced { key: &'a NodeKey },
    /// Under the pair key of the sender and `receiver`, from their X25519 secret `shared`.
    Paired {
        receiver: NodeId,
        shared: &'a [u8; 32],
    },
}

/// A datagram opened: its sender, proven either way, the public keys it introduced itself with (when
/// it was introduced), and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub sender: NodeId,
    pub introduced: Option<PublicKey>,
    pub payload: Vec<u8>,
}

/// A stable 64-bit id of a cluster name (FNV-1a), sent in clear so foreign packets are dropped cheaply.
pub fn cluster_id(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Bytes an introduced datagram adds to its payload: the sender's public keys and its signature.
pub const INTRODUCTION_LEN: usize = PUBLIC_KEY_LEN + SIGNATURE_LEN;

/// The length of the datagram [`seal`] makes of a payload of `payload_len` bytes.
pub fn sealed_len(security: &Security, paired: bool, payload_len: usize) -> usize {
    match (security, paired) {
        (_, true) => payload_len + SEAL_OVERHEAD,
        (Security::Insecure, false) => {
            payload_len + INTRODUCTION_LEN + SEAL_OVERHEAD - NONCE_LEN - TAG_LEN
        }
        (Security::Keyring(_), false) => payload_len + INTRODUCTION_LEN + SEAL_OVERHEAD,
    }
}

/// What the sender of an introduced datagram signs: a label, the clear header, its public keys and
/// the payload.
fn introduction(header: &[u8], keys: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + header.len() + keys.len() + payload.len());
    m.extend_from_slice(b"herd intro v3\0");
    m.extend_from_slice(header);
    m.extend_from_slice(keys);
    m.extend_from_slice(payload);
    m
}

/// Wraps the encoded payload of `sender`'s packet into a datagram. `sender` is the id of the key
/// that introduces it, or of the node whose pair key seals it.
pub fn seal(
    security: &Security,
    cluster: u64,
    sender: NodeId,
    how: Seal,
    payload: &[u8],
    rng: &mut impl RngCore,
) -> Vec<u8> {
    let paired = matches!(how, Seal::Paired { .. });
    let mut out = Vec::with_capacity(sealed_len(security, paired, payload.len()));
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    let (flag, cipher) = match (how, security) {
        (Seal::Introduced { .. }, Security::Insecure) => (0, None),
        (Seal::Introduced { .. }, Security::Keyring(keys)) => {
            (FLAG_ENCRYPTED, Some(keys[0].0.clone()))
        }
        (Seal::Paired { receiver, shared }, _) => {
            let key = pair_key(&security.pair_bases()[0], shared, sender, receiver);
            (FLAG_PAIRED, Some(XChaCha20Poly1305::new((&key).into())))
        }
    };
    out.push(flag);
    out.extend_from_slice(&cluster.to_le_bytes());
    out.extend_from_slice(&sender.0.to_le_bytes());
    let body = match how {
        Seal::Paired { .. } => payload.to_vec(),
        Seal::Introduced { key } => {
            let keys = key.public().bytes();
            let signature = key.sign(&introduction(&out, keys, payload));
            let mut body = Vec::with_capacity(payload.len() + INTRODUCTION_LEN);
            body.extend_from_slice(keys);
            body.extend_from_slice(payload);
            body.extend_from_slice(&signature);
            body
        }
    };
    match cipher {
        None => out.extend_from_slice(&body),
        Some(cipher) => {
            let mut nonce = [0u8; NONCE_LEN];
            rng.fill_bytes(&mut nonce);
            let aad = out.clone();
            let sealed = cipher
                .encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &body,
                        aad: &aad,
                    },
                )
                .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&sealed);
        }
    }
    debug_assert_eq!(out.len(), sealed_len(security, paired, payload.len()));
    out
}

/// The sender a datagram's clear header names, and whether it is paired (else introduced): what
/// [`open`] will need. Nothing is checked yet.
pub fn peek_sender(datagram: &[u8]) -> Option<(NodeId, bool)> {
    if datagram.len() < HEADER_LEN || datagram[..2] != MAGIC {
        return None;
    }
    let sender = NodeId(u64::from_le_bytes(
        datagram[12..20].try_into().expect("8 bytes"),
    ));
    Some((sender, datagram[3] == FLAG_PAIRED))
}

/// Checks and unwraps a datagram for node `me`: a paired one opens only with the X25519 secret `me`
/// shares with its sender, which `shared_with` gives (`None`: the sender's keys are not known here); an
/// introduced one only with a cluster key, then its sender's signature (an Ed25519 check: the caller
/// budgets them).
pub fn open(
    security: &Security,
    cluster: u64,
    me: NodeId,
    datagram: &[u8],
    shared_with: impl FnOnce(NodeId) -> Option<[u8; 32]>,
) -> Result<Opened, WireError> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(WireError::TooLarge(datagram.len()));
    }
    if datagram.len() < HEADER_LEN || datagram[..2] != MAGIC {
        return Err(WireError::NotHerd);
    }
    if datagram[2] != VERSION {
        return Err(WireError::Version(datagram[2]));
    }
    let flags = datagram[3];
    let id = u64::from_le_bytes(datagram[4..12].try_into().expect("8 bytes"));
    if id != cluster {
        return Err(WireError::OtherCluster);
    }
    let sender = NodeId(u64::from_le_bytes(
        datagram[12..20].try_into().expect("8 bytes"),
    ));
    let header = &datagram[..HEADER_LEN];
    let body = &datagram[HEADER_LEN..];
    let decrypt = |cipher: &XChaCha20Poly1305| -> Option<Vec<u8>> {
        if body.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, sealed) = body.split_at(NONCE_LEN);
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: header,
                },
            )
            .ok()
    };
    let introduced = match (security, flags) {
        (Security::Insecure, 0) => body.to_vec(),
        (Security::Insecure, FLAG_ENCRYPTED) => return Err(WireError::Encrypted),
        (Security::Keyring(_), 0) => return Err(WireError::Unencrypted),
        (Security::Keyring(keys), FLAG_ENCRYPTED) => keys
            .iter()
            .find_map(|(cipher, _)| decrypt(cipher))
            .ok_or(WireError::NotAuthentic)?,
        (_, FLAG_PAIRED) => {
            let shared = shared_with(sender).ok_or(WireError::UnknownSender)?;
            let payload = security
                .pair_bases()
                .iter()
                .find_map(|base| {
                    let key = pair_key(base, &shared, sender, me);
                    decrypt(&XChaCha20Poly1305::new((&key).into()))
                })
                .ok_or(WireError::NotAuthentic)?;
            return Ok(Opened {
                sender,
                introduced: None,
                payload,
            });
        }
        _ => return Err(WireError::Malformed("unknown flags")),
    };
    // Introduced: the sender's keys, which must name it, then the payload, then its signature.
    if introduced.len() < INTRODUCTION_LEN {
        return Err(WireError::NotAuthentic);
    }
    let (keys, rest) = introduced.split_at(PUBLIC_KEY_LEN);
    let (payload, signature) = rest.split_at(rest.len() - SIGNATURE_LEN);
    let key = PublicKey::for_node(sender, keys.try_into().expect("PUBLIC_KEY_LEN bytes"))
        .map_err(|_| WireError::NotAuthentic)?;
    let signature: Signature = signature.try_into().expect("SIGNATURE_LEN bytes");
    if !key.verify(&introduction(header, keys, payload), &signature) {
        return Err(WireError::NotAuthentic);
    }
    Ok(Opened {
        sender,
        introduced: Some(key),
        payload: payload.to_vec(),
    })
}
