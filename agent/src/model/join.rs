//! How a swarm's worker join token reaches a member with nobody typing it: the leader's root side seals
//! it to each member that must join, under a key only the two of them can make (their X25519 secret with
//! the cluster key, [`crate::gossip::wire::pair_key`], then a label and the swarm's id), and its agent
//! gossips the sealed offers under [`JOIN_KEY`]. The member's agent keeps the offer addressed to it for
//! its root side ([`OFFER_FILE`] in its state directory), which opens it and joins. No agent ever holds
//! the token in clear; the API shows neither offers nor tokens; another member cannot open an offer that
//! is not its own.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::gossip::wire::{pair_key, ClusterKey, NodeKey, PublicKey, PUBLIC_KEY_LEN};
use crate::gossip::NodeId;

/// The gossip key of a leader's offers.
pub const JOIN_KEY: &str = "engine-join";
/// Where the leader's root side leaves its offers for its agent to gossip (in `engine.run_dir`).
pub const OFFERS_FILE: &str = "join.json";
/// Where a member's agent leaves the offer addressed to it (in its state directory, root and the agent
/// only) for its root side.
pub const OFFER_FILE: &str = "engine-offer.json";
/// Offers in one gossiped value (a value holds at most 1,024 bytes; one offer takes about 210). More
/// members waiting get theirs in the next rounds.
pub const MAX_OFFERS: usize = 4;

/// A leader's offers, as gossiped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offers {
    pub swarm: String,
    pub offers: Vec<Offer>,
}

/// One member's sealed token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    /// The member it is sealed to.
    pub to: NodeId,
    /// Base64 of the nonce, then the token sealed with its tag.
    pub sealed: String,
}

/// The offer a member's agent found for it, with who made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForMe {
    pub from: NodeId,
    pub swarm: String,
    pub sealed: String,
}

impl Offers {
    pub fn to_gossip(&self) -> String {
        serde_json::to_string(self).expect("offers serialize")
    }

    /// Checks a gossiped value (on receipt, like every published key): the shape, the swarm's id, at
    /// most [`MAX_OFFERS`], each one member's and of a sealed token's size.
    pub fn check(value: &str) -> Result<Offers, String> {
        let o: Offers = serde_json::from_str(value).map_err(|e| format!("{JOIN_KEY}: {e}"))?;
        if !swarm_id_ok(&o.swarm) {
            return Err(format!("{JOIN_KEY}: the swarm is not an id"));
        }
        if o.offers.len() > MAX_OFFERS {
            return Err(format!("{JOIN_KEY}: more than {MAX_OFFERS} offers"));
        }
        for offer in &o.offers {
            let len = base64::engine::general_purpose::STANDARD
                .decode(&offer.sealed)
                .map_err(|_| format!("{JOIN_KEY}: an offer is not base64"))?
                .len();
            if !(NONCE + TAG + 1..=NONCE + TAG + MAX_TOKEN).contains(&len) {
                return Err(format!("{JOIN_KEY}: an offer of {len} bytes"));
            }
        }
        Ok(o)
    }

    /// The offer addressed to `me`, if any.
    pub fn for_me(&self, me: NodeId, from: NodeId) -> Option<ForMe> {
        self.offers.iter().find(|o| o.to == me).map(|o| ForMe {
            from,
            swarm: self.swarm.clone(),
            sealed: o.sealed.clone(),
        })
    }
}

const NONCE: usize = 24;
const TAG: usize = 16;
/// A worker token is `SWMTKN-1-` and two base-36 parts, 85 characters today.
const MAX_TOKEN: usize = 200;

/// A swarm id as Docker makes them (25 lower-case letters and digits).
pub fn swarm_id_ok(s: &str) -> bool {
    (10..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Whether `token` looks like a Swarm join token (so what an offer opens to is nothing else).
pub fn token_ok(token: &str) -> bool {
    token.starts_with("SWMTKN-1-")
        && token.len() <= MAX_TOKEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A member's public keys as the API shows them (base64), checked against its id.
pub fn public_key(id: NodeId, base64: &str) -> Result<PublicKey, String> {
    let bytes: [u8; PUBLIC_KEY_LEN] = base64::engine::general_purpose::STANDARD
        .decode(base64)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("node {id}: its public keys are not {PUBLIC_KEY_LEN} bytes"))?;
    PublicKey::for_node(id, &bytes).map_err(|e| format!("node {id}: {e}"))
}

/// The key of offers between `a` and `b` for `swarm`: their pair key (X25519 secret and cluster key),
/// then a label of its own, so it seals nothing else.
fn offer_key(
    me: &NodeKey,
    peer: &PublicKey,
    cluster: &[u8; 32],
    swarm: &str,
) -> Option<XChaCha20Poly1305> {
    let shared = me.shared_with(peer)?;
    let pair = pair_key(cluster, &shared, me.id(), peer.id());
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&pair).expect("any key length");
    mac.update(b"herd engine join v1\0");
    mac.update(swarm.as_bytes());
    let key: [u8; 32] = mac.finalize().into_bytes().into();
    Some(XChaCha20Poly1305::new(&key.into()))
}

/// What an offer is bound to: the swarm, the sender and the receiver (so it cannot be replayed to
/// another member, or as another swarm's).
fn bound(swarm: &str, from: NodeId, to: NodeId) -> Vec<u8> {
    let mut aad = swarm.as_bytes().to_vec();
    aad.extend_from_slice(&from.0.to_le_bytes());
    aad.extend_from_slice(&to.0.to_le_bytes());
    aad
}

/// Seals `token` for `to`; `None` when its key is of small order or the token is not one.
pub fn seal(
    token: &str,
    swarm: &str,
    me: &NodeKey,
    to: &PublicKey,
    cluster: Option<&ClusterKey>,
    rng: &mut impl RngCore,
) -> Option<Offer> {
    if !token_ok(token) {
        return None;
    }
    let zero = [0u8; 32];
    let aead = offer_key(me, to, cluster.map_or(&zero, |k| k.bytes()), swarm)?;
    let mut nonce = [0u8; NONCE];
    rng.fill_bytes(&mut nonce);
    let aad = bound(swarm, me.id(), to.id());
    let sealed = aead
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: token.as_bytes(),
                aad: &aad,
            },
        )
        .ok()?;
    let mut bytes = nonce.to_vec();
    bytes.extend_from_slice(&sealed);
    Some(Offer {
        to: to.id(),
        sealed: base64::engine::general_purpose::STANDARD.encode(bytes),
    })
}

/// Opens the offer `from` made to `me`, trying each cluster key (the current first, then those kept
/// during a rotation).
pub fn open(
    offer: &ForMe,
    me: &NodeKey,
    from: &PublicKey,
    clusters: &[Option<&ClusterKey>],
) -> Result<String, String> {
    if from.id() != offer.from {
        return Err(format!(
            "the offer is {}'s, not {}'s",
            offer.from,
            from.id()
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&offer.sealed)
        .map_err(|_| "the offer is not base64".to_string())?;
    if bytes.len() < NONCE + TAG {
        return Err("the offer is too short".into());
    }
    let (nonce, sealed) = bytes.split_at(NONCE);
    let aad = bound(&offer.swarm, offer.from, me.id());
    let zero = [0u8; 32];
    for cluster in clusters {
        let Some(aead) = offer_key(me, from, cluster.map_or(&zero, |k| k.bytes()), &offer.swarm)
        else {
            return Err(format!("node {}'s key agrees on nothing", from.id()));
        };
        if let Ok(clear) = aead.decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: &aad,
            },
        ) {
            let token = String::from_utf8(clear).map_err(|_| "not a join token".to_string())?;
            return if token_ok(&token) {
                Ok(token)
            } else {
                Err("the offer opens to something that is not a join token".into())
            };
        }
    }
    Err(format!(
        "the offer from {} does not open with this node's keys",
        offer.from
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const TOKEN: &str =
        "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdbx";

    fn keys() -> (
        NodeKey,
        NodeKey,
        NodeKey,
        ClusterKey,
        rand_chacha::ChaCha8Rng,
    ) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let a = NodeKey::generate(&mut rng);
        let b = NodeKey::generate(&mut rng);
        let c = NodeKey::generate(&mut rng);
        let k = ClusterKey::generate(&mut rng);
        (a, b, c, k, rng)
    }

    #[test]
    fn only_the_member_an_offer_is_for_opens_it() {
        let (leader, member, other, key, mut rng) = keys();
        let swarm = "qz2ssj0yrm1nbrnpe5rgvt8yx";
        let offer = seal(TOKEN, swarm, &leader, member.public(), Some(&key), &mut rng).unwrap();
        assert!(!offer.sealed.contains("SWMTKN"));
        let offers = Offers {
            swarm: swarm.into(),
            offers: vec![offer],
        };
        let value = offers.to_gossip();
        assert!(value.len() < 300, "{} bytes", value.len());
        let back = Offers::check(&value).unwrap();
        let mine = back.for_me(member.id(), leader.id()).unwrap();
        assert_eq!(
            open(&mine, &member, leader.public(), &[Some(&key)]).unwrap(),
            TOKEN
        );
        // Another member (who holds the cluster key too) finds no offer, and cannot open this one.
        assert!(back.for_me(other.id(), leader.id()).is_none());
        assert!(open(&mine, &other, leader.public(), &[Some(&key)]).is_err());
        // Without the cluster key, or under an older one only, it does not open.
        let stranger = ClusterKey::generate(&mut rng);
        assert!(open(&mine, &member, leader.public(), &[Some(&stranger)]).is_err());
        assert!(open(&mine, &member, leader.public(), &[None]).is_err());
        assert_eq!(
            open(
                &mine,
                &member,
                leader.public(),
                &[Some(&stranger), Some(&key)]
            )
            .unwrap(),
            TOKEN
        );
        // Said to come from someone else, or bound to another swarm: refused.
        assert!(open(&mine, &member, other.public(), &[Some(&key)]).is_err());
        let moved = ForMe {
            swarm: "aaaaaaaaaaaaaaaaaaaaaaaaa".into(),
            ..mine.clone()
        };
        assert!(open(&moved, &member, leader.public(), &[Some(&key)]).is_err());
        // What the member sealed for itself is not a token: nothing else is sealed.
        assert!(seal(
            "docker swarm join",
            swarm,
            &leader,
            member.public(),
            None,
            &mut rng
        )
        .is_none());
    }

    #[test]
    fn gossiped_offers_are_checked_on_receipt() {
        let (leader, member, _, key, mut rng) = keys();
        let swarm = "qz2ssj0yrm1nbrnpe5rgvt8yx";
        let one = seal(TOKEN, swarm, &leader, member.public(), Some(&key), &mut rng).unwrap();
        let full = Offers {
            swarm: swarm.into(),
            offers: vec![one.clone(); MAX_OFFERS],
        };
        assert!(full.to_gossip().len() <= 1024, "{}", full.to_gossip().len());
        assert!(Offers::check(&full.to_gossip()).is_ok());
        let more = Offers {
            offers: vec![one.clone(); MAX_OFFERS + 1],
            ..full.clone()
        };
        assert!(Offers::check(&more.to_gossip())
            .unwrap_err()
            .contains("more than 4"));
        let bad_swarm = Offers {
            swarm: "../x".into(),
            ..full.clone()
        };
        assert!(Offers::check(&bad_swarm.to_gossip()).is_err());
        let long = Offers {
            offers: vec![Offer {
                to: member.id(),
                sealed: base64::engine::general_purpose::STANDARD.encode([0u8; 400]),
            }],
            ..full.clone()
        };
        assert!(Offers::check(&long.to_gossip())
            .unwrap_err()
            .contains("400 bytes"));
        assert!(
            Offers::check(r#"{"swarm":"qz2ssj0yrm1nbrnpe5rgvt8yx","offers":[],"x":1}"#).is_err()
        );
    }

    #[test]
    fn tokens_and_ids_are_swarms() {
        assert!(token_ok(TOKEN));
        assert!(!token_ok("SWMTKN-1-a b"));
        assert!(!token_ok("hello"));
        assert!(swarm_id_ok("qz2ssj0yrm1nbrnpe5rgvt8yx"));
        assert!(!swarm_id_ok("QZ2SSJ0YRM1NBRNPE5RGVT8YX"));
    }
}
