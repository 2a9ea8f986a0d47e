//! Keys and sealing: the cluster key (and the keyring of a rotation), and every datagram sealed with
//! XChaCha20-Poly1305 under it, its clear header as associated data, or opened and checked.

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
    /// No encryption or authentication: only when the operator said `insecure = true`.
    Insecure,
    /// Seal with the first key; accept any (the others are older keys kept during a rotation).
    Keyring(Vec<XChaCha20Poly1305>),
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
            .map(|k| XChaCha20Poly1305::new((&k.0).into()))
            .collect();
        Security::Keyring(ciphers)
    }
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

/// The length of the datagram [`seal`] makes of a payload of `payload_len` bytes.
pub fn sealed_len(security: &Security, payload_len: usize) -> usize {
    match security {
        Security::Insecure => payload_len + SEAL_OVERHEAD - NONCE_LEN - TAG_LEN,
        Security::Keyring(_) => payload_len + SEAL_OVERHEAD,
    }
}

/// Wraps an encoded payload into a datagram.
pub fn seal(security: &Security, cluster: u64, payload: &[u8], rng: &mut impl RngCore) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + SEAL_OVERHEAD);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    match security {
        Security::Insecure => {
            out.push(0);
            out.extend_from_slice(&cluster.to_le_bytes());
            out.extend_from_slice(payload);
        }
        Security::Keyring(ciphers) => {
            out.push(FLAG_ENCRYPTED);
            out.extend_from_slice(&cluster.to_le_bytes());
            let mut nonce = [0u8; NONCE_LEN];
            rng.fill_bytes(&mut nonce);
            let aad = out.clone();
            let sealed = ciphers[0]
                .encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: payload,
                        aad: &aad,
                    },
                )
                .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&sealed);
        }
    }
    debug_assert_eq!(out.len(), sealed_len(security, payload.len()));
    out
}

/// Checks and unwraps a datagram, returning its payload.
pub fn open(security: &Security, cluster: u64, datagram: &[u8]) -> Result<Vec<u8>, WireError> {
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
    let body = &datagram[HEADER_LEN..];
    match (security, flags & FLAG_ENCRYPTED != 0) {
        (Security::Insecure, false) => Ok(body.to_vec()),
        (Security::Insecure, true) => Err(WireError::Encrypted),
        (Security::Keyring(_), false) => Err(WireError::Unencrypted),
        (Security::Keyring(ciphers), true) => {
            if body.len() < NONCE_LEN + TAG_LEN {
                return Err(WireError::NotAuthentic);
            }
            let (nonce, sealed) = body.split_at(NONCE_LEN);
            let aad = &datagram[..HEADER_LEN];
            ciphers
                .iter()
                .find_map(|c| {
                    c.decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad })
                        .ok()
                })
                .ok_or(WireError::NotAuthentic)
        }
    }
}
