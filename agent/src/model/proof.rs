//! The token's proof: what herd's CLI sends instead of the API token, so the token never leaves the
//! operator's machine: not to a node gossip points at (where a key holder may be listening), not onto a
//! LAN where anyone can read plain HTTP. The node hands out a nonce (`GET /api/v1/auth/nonce`, with its
//! node id); the request carries
//! `Authorization: Herd-MAC node=ID, nonce=N, body=SHA256, mac=HMAC-SHA256(token, …)` over the node id,
//! the nonce, the method, the path and query, and the body's hash. A node takes a nonce once, for a
//! minute, and only its own id; so what a listener sees is good for nothing but the one request it was
//! made for, on the one node it names. Browsers and curl keep `Bearer` and HTTP Basic.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The `Authorization` scheme.
pub const SCHEME: &str = "Herd-MAC";
/// Where a node hands out nonces.
pub const NONCE_PATH: &str = "/api/v1/auth/nonce";

/// `GET /api/v1/auth/nonce`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NonceView {
    pub node: String,
    pub nonce: String,
}

/// A parsed `Herd-MAC` header; every field hex.
#[derive(Debug, Clone, PartialEq)]
pub struct Proof {
    pub node: String,
    pub nonce: String,
    pub body: String,
    pub mac: String,
}

/// HMAC-SHA256 keyed with the token over what a request is: which node, which nonce, what it asks.
pub fn mac(
    token: &[u8],
    node: &str,
    nonce: &str,
    method: &str,
    target: &str,
    body_sha: &str,
) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(token).expect("HMAC takes any key length");
    for part in ["herd-mac-v1", node, nonce, method, target, body_sha] {
        m.update(part.as_bytes());
        m.update(b"\n");
    }
    hex(&m.finalize().into_bytes())
}

/// The hex SHA-256 of a request body.
pub fn body_sha(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

/// The header for `method target` (path and query) with `body`, to `node` that gave `nonce`.
pub fn header(
    token: &[u8],
    node: &str,
    nonce: &str,
    method: &str,
    target: &str,
    body: &[u8],
) -> String {
    let body = body_sha(body);
    let mac = mac(token, node, nonce, method, target, &body);
    format!("{SCHEME} node={node}, nonce={nonce}, body={body}, mac={mac}")
}

/// Reads a `Herd-MAC` header; `None` for another scheme or a malformed one.
pub fn parse(header: &str) -> Option<Proof> {
    let (scheme, params) = header.trim_start().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let mut fields: [Option<&str>; 4] = [None; 4];
    for param in params.split(',') {
        let (name, value) = param.trim().split_once('=')?;
        let slot = ["node", "nonce", "body", "mac"]
            .iter()
            .position(|n| *n == name)?;
        let ok = value.len() <= 64 && value.bytes().all(|c| c.is_ascii_hexdigit());
        if !ok || fields[slot].replace(value).is_some() {
            return None;
        }
    }
    let [Some(node), Some(nonce), Some(body), Some(mac)] = fields else {
        return None;
    };
    Some(Proof {
        node: node.into(),
        nonce: nonce.into(),
        body: body.into(),
        mac: mac.into(),
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_back_and_its_mac_binds_every_part() {
        let h = header(b"tok", "00ab", "ff01", "POST", "/x?y=1", b"{}");
        let p = parse(&h).unwrap();
        assert_eq!((p.node.as_str(), p.nonce.as_str()), ("00ab", "ff01"));
        assert_eq!(p.body, body_sha(b"{}"));
        assert_eq!(
            p.mac,
            mac(b"tok", "00ab", "ff01", "POST", "/x?y=1", &p.body)
        );
        let others = [
            mac(b"tok2", "00ab", "ff01", "POST", "/x?y=1", &p.body),
            mac(b"tok", "00ac", "ff01", "POST", "/x?y=1", &p.body),
            mac(b"tok", "00ab", "ff02", "POST", "/x?y=1", &p.body),
            mac(b"tok", "00ab", "ff01", "PUT", "/x?y=1", &p.body),
            mac(b"tok", "00ab", "ff01", "POST", "/x?y=2", &p.body),
            mac(b"tok", "00ab", "ff01", "POST", "/x?y=1", &body_sha(b"{ }")),
        ];
        assert!(others.iter().all(|m| *m != p.mac));
    }

    #[test]
    fn malformed_headers_are_none() {
        for bad in [
            "Bearer abc",
            "Herd-MAC node=00, nonce=01, body=02",
            "Herd-MAC node=00, nonce=01, body=02, mac=03, mac=04",
            "Herd-MAC node=0x, nonce=01, body=02, mac=03",
            "Herd-MAC node=00, nonce=01, body=02, mac=03, other=1",
            &format!(
                "Herd-MAC node=00, nonce={}, body=02, mac=03",
                "0".repeat(65)
            ),
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert!(parse("herd-mac node=00, nonce=01, body=02, mac=03").is_some());
    }
}
