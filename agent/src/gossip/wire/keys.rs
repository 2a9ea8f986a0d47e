//! Every node's own keys, made from one secret at its first start: an Ed25519 key that signs every
//! key/value of its state (so a peer relays it but cannot alter it, nor invent state for another node),
//! and an X25519 key that agrees with each peer on a pair key sealing what the two say to each other (so
//! a datagram proves its sender). The node id is a hash of the two public keys, so no other key can
//! speak for it. The cluster key admits a node to the cluster; only a node's own keys speak for it.
//!
//! The two keys are apart, derived from the secret with different labels, as ed25519-dalek's documentation
//! recommends over using one key pair for both signatures and Diffie-Hellman.

use curve25519_dalek::montgomery::MontgomeryPoint;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::*;

/// An Ed25519 signature.
pub type Signature = [u8; 64];
/// Bytes of a signature on the wire.
pub const SIGNATURE_LEN: usize = 64;
/// Bytes of a node's public keys on the wire: the Ed25519 key, then the X25519 key.
pub const PUBLIC_KEY_LEN: usize = 64;

/// The node id public keys name: the first 8 bytes of SHA-256 over a label and the keys. Finding keys
/// for a given id takes 2^64 tries, so an id cannot be claimed with other keys.
pub fn id_of(public: &[u8; PUBLIC_KEY_LEN]) -> NodeId {
    let h = Sha256::new()
        .chain_update(b"herd node id v3\0")
        .chain_update(public)
        .finalize();
    NodeId(u64::from_be_bytes(h[..8].try_into().expect("8 bytes")))
}

/// A node's own keys. Its `Debug` shows the id only.
#[derive(Clone)]
pub struct NodeKey {
    seed: [u8; 32],
    signing: SigningKey,
    /// The X25519 secret (clamped when used).
    dh: [u8; 32],
    public: PublicKey,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({}, ***)", self.public.id)
    }
}

impl NodeKey {
    /// The keys stored as `text` (the seed in base64, as in the state directory's `node.key`).
    pub fn from_base64(text: &str) -> Option<NodeKey> {
        use base64::Engine;
        let seed: [u8; 32] = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .ok()?
            .try_into()
            .ok()?;
        Some(NodeKey::from_seed(seed))
    }

    /// The keys whose secret is `seed` (as stored in the state directory).
    pub fn from_seed(seed: [u8; 32]) -> NodeKey {
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&seed).expect("any key length");
            mac.update(label);
            mac.finalize().into_bytes().into()
        };
        let signing = SigningKey::from_bytes(&derive(b"herd ed25519 v3"));
        let dh = derive(b"herd x25519 v3");
        let verifying = signing.verifying_key();
        let mut bytes = [0u8; PUBLIC_KEY_LEN];
        bytes[..32].copy_from_slice(&verifying.to_bytes());
        bytes[32..].copy_from_slice(&MontgomeryPoint::mul_base_clamped(dh).to_bytes());
        NodeKey {
            seed,
            public: PublicKey {
                id: id_of(&bytes),
                bytes,
                verifying,
            },
            signing,
            dh,
        }
    }

    /// A new key. Ids 0 (the "anyone" of a Syn to a seed) and `u64::MAX` are not taken.
    pub fn generate(rng: &mut impl RngCore) -> NodeKey {
        loop {
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            let key = NodeKey::from_seed(seed);
            if key.id().0 != 0 && key.id().0 != u64::MAX {
                return key;
            }
        }
    }

    /// The secret, to store.
    pub fn seed(&self) -> [u8; 32] {
        self.seed
    }

    pub fn id(&self) -> NodeId {
        self.public.id
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Signs a key/value of this node's state in `generation`.
    pub fn sign_kv(
        &self,
        cluster: u64,
        generation: u64,
        key: &str,
        version: u64,
        value: Option<&str>,
    ) -> Signature {
        let message = kv_message(cluster, self.id(), generation, key, version, value);
        self.signing.sign(&message).to_bytes()
    }

    /// Signs `message` (a datagram that introduces this node: see `seal`).
    pub fn sign(&self, message: &[u8]) -> Signature {
        self.signing.sign(message).to_bytes()
    }

    /// The X25519 secret this node shares with `peer`; `None` for a peer key of small order, which
    /// would make the secret guessable (RFC 7748's all-zero check).
    pub fn shared_with(&self, peer: &PublicKey) -> Option<[u8; 32]> {
        let theirs = MontgomeryPoint(peer.bytes[32..].try_into().expect("32 bytes"));
        let shared = theirs.mul_clamped(self.dh).to_bytes();
        (shared != [0u8; 32]).then_some(shared)
    }
}

/// A node's public keys, checked: the signing key a valid point not of small order, and the id they
/// name.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    bytes: [u8; PUBLIC_KEY_LEN],
    id: NodeId,
    verifying: VerifyingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

impl PublicKey {
    /// The keys of `bytes`, refused when they name another node than `id`, or when the signing key is
    /// not a point or is of small order (a key for which signatures prove nothing). An X25519 key of
    /// small order is caught when a secret is agreed with it ([`NodeKey::shared_with`]).
    pub fn for_node(id: NodeId, bytes: &[u8; PUBLIC_KEY_LEN]) -> Result<PublicKey, WireError> {
        if id_of(bytes) != id {
            return Err(WireError::Malformed("public key of another node"));
        }
        let verifying = VerifyingKey::from_bytes(bytes[..32].try_into().expect("32 bytes"))
            .map_err(|_| WireError::Malformed("public key is not a curve point"))?;
        if verifying.is_weak() {
            return Err(WireError::Malformed("public key of small order"));
        }
        Ok(PublicKey {
            bytes: *bytes,
            id,
            verifying,
        })
    }

    pub fn bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.bytes
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Whether `signature` is this node's over `message` (strict: no malleable or small-order forms).
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        self.verifying.verify_strict(message, &signature).is_ok()
    }
}

/// What a node signs for one key/value of its state: the cluster, the node, its generation, the key,
/// the version and the value (or its absence, a deletion), each fixed-width or length-prefixed so that
/// no two different key/values share a message.
pub fn kv_message(
    cluster: u64,
    node: NodeId,
    generation: u64,
    key: &str,
    version: u64,
    value: Option<&str>,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(48 + key.len() + value.map_or(0, str::len));
    m.extend_from_slice(b"herd kv v3\0");
    m.extend_from_slice(&cluster.to_le_bytes());
    m.extend_from_slice(&node.0.to_le_bytes());
    m.extend_from_slice(&generation.to_le_bytes());
    m.extend_from_slice(&version.to_le_bytes());
    m.extend_from_slice(&(key.len() as u32).to_le_bytes());
    m.extend_from_slice(key.as_bytes());
    match value {
        None => m.push(0),
        Some(v) => {
            m.push(1);
            m.extend_from_slice(&(v.len() as u32).to_le_bytes());
            m.extend_from_slice(v.as_bytes());
        }
    }
    m
}

/// The key that seals what nodes `a` and `b` say to each other: HMAC-SHA256 keyed with the cluster key
/// (all zeros on an insecure cluster) over a label, the two ids in order and their X25519 secret. Only
/// the two nodes know the secret, and only members know the cluster key.
pub fn pair_key(cluster_key: &[u8; 32], shared: &[u8; 32], a: NodeId, b: NodeId) -> [u8; 32] {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(cluster_key).expect("any key length");
    mac.update(b"herd pair key v3\0");
    mac.update(&lo.0.to_le_bytes());
    mac.update(&hi.0.to_le_bytes());
    mac.update(shared);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(11)
    }

    #[test]
    fn a_key_names_its_node_and_signs_its_state() {
        let mut rng = rng();
        let a = NodeKey::generate(&mut rng);
        let b = NodeKey::generate(&mut rng);
        assert_ne!(a.id(), b.id());
        assert_eq!(NodeKey::from_seed(a.seed()).id(), a.id(), "stable");
        let public = PublicKey::for_node(a.id(), a.public().bytes()).unwrap();
        let sig = a.sign_kv(7, 3, "services", 5, Some("[\"web\"]"));
        let message = |g, k, v, val| kv_message(7, a.id(), g, k, v, val);
        assert!(public.verify(&message(3, "services", 5, Some("[\"web\"]")), &sig));
        // Any other generation, key, version, value, node or cluster: refused.
        for other in [
            message(4, "services", 5, Some("[\"web\"]")),
            message(3, "service", 5, Some("[\"web\"]")),
            message(3, "services", 6, Some("[\"web\"]")),
            message(3, "services", 5, Some("[\"db\"]")),
            message(3, "services", 5, None),
            kv_message(7, b.id(), 3, "services", 5, Some("[\"web\"]")),
            kv_message(8, a.id(), 3, "services", 5, Some("[\"web\"]")),
        ] {
            assert!(!public.verify(&other, &sig));
        }
        // Another node's key for this id, or this key for another id: refused.
        assert!(PublicKey::for_node(a.id(), b.public().bytes()).is_err());
        assert!(PublicKey::for_node(b.id(), a.public().bytes()).is_err());
        // The identity point (of small order) never names a node, whatever id it hashes to.
        let mut identity = *a.public().bytes();
        identity[..32].copy_from_slice(&[0; 32]);
        identity[0] = 1;
        assert!(PublicKey::for_node(id_of(&identity), &identity).is_err());
        assert!(!format!("{a:?}").contains(&format!("{:?}", a.seed())));
    }

    #[test]
    fn two_nodes_agree_on_their_pair_key_and_no_third_does() {
        let mut rng = rng();
        let (a, b, c) = (
            NodeKey::generate(&mut rng),
            NodeKey::generate(&mut rng),
            NodeKey::generate(&mut rng),
        );
        let ab = a.shared_with(b.public()).unwrap();
        assert_eq!(ab, b.shared_with(a.public()).unwrap());
        assert_ne!(ab, c.shared_with(b.public()).unwrap());
        // An X25519 key of small order (here zero) agrees on nothing.
        let mut zero = *b.public().bytes();
        zero[32..].copy_from_slice(&[0; 32]);
        let weak = PublicKey::for_node(id_of(&zero), &zero).unwrap();
        assert_eq!(a.shared_with(&weak), None);
        let cluster = [5u8; 32];
        assert_eq!(
            pair_key(&cluster, &ab, a.id(), b.id()),
            pair_key(&cluster, &ab, b.id(), a.id())
        );
        assert_ne!(
            pair_key(&cluster, &ab, a.id(), b.id()),
            pair_key(&[6u8; 32], &ab, a.id(), b.id()),
            "another cluster key, another pair key"
        );
    }
}
