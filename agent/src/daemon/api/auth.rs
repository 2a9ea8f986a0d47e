//! Who may call what: the API token, as `Bearer <token>`, as the password of HTTP Basic (what a browser
//! sends after asking) or proven without being sent (`Herd-MAC`, what herd's CLI sends: see
//! [`crate::model::proof`]), for writes always and for reads under `api.protect_reads`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use warp::http::StatusCode;
use warp::{Filter, Rejection};

use super::{reject, ApiState};
use crate::config::Secret;
use crate::model::proof::{self, Proof};

/// How long a nonce is good for.
const NONCE_LIFE: Duration = Duration::from_secs(60);
/// Nonces taken and not yet expired, at most: beyond, proofs are refused until some expire (only a
/// token holder can take one).
const MAX_TAKEN: usize = 100_000;

/// The nonces this node hands out: made from a secret of this process (no table of what was handed
/// out, so asking costs no memory), each taken once, within [`NONCE_LIFE`].
pub struct Nonces {
    secret: [u8; 32],
    start: Instant,
    taken: Mutex<HashMap<String, u64>>,
}

impl Default for Nonces {
    fn default() -> Nonces {
        Nonces::new()
    }
}

impl Nonces {
    pub fn new() -> Nonces {
        Nonces {
            secret: rand::random(),
            start: Instant::now(),
            taken: Mutex::default(),
        }
    }

    fn seal(&self, made: u64, salt: &[u8; 8]) -> String {
        let stamp = proof::hex(&[&made.to_be_bytes()[..], &salt[..]].concat());
        proof::mac(&self.secret, "nonce", &stamp, "", "", "")[..32].to_string() + &stamp
    }

    /// A new nonce: its seal (32 hex), then when it was made and a salt (32 hex).
    pub fn issue(&self) -> String {
        self.seal(self.start.elapsed().as_secs(), &rand::random())
    }

    /// Takes `nonce`: one this process made, less than a minute ago, never taken before.
    fn take(&self, nonce: &str) -> Result<(), &'static str> {
        let stamp = nonce
            .get(32..)
            .filter(|s| s.len() == 32)
            .ok_or("malformed nonce")?;
        let bytes: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&stamp[2 * i..2 * i + 2], 16))
            .collect::<Result<_, _>>()
            .map_err(|_| "malformed nonce")?;
        let made = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
        let salt: [u8; 8] = bytes[8..].try_into().expect("8 bytes");
        if !constant_time_eq(self.seal(made, &salt).as_bytes(), nonce.as_bytes()) {
            return Err("a nonce this node did not make (it may have restarted): ask for another");
        }
        let now = self.start.elapsed().as_secs();
        if now.saturating_sub(made) >= NONCE_LIFE.as_secs() {
            return Err("an expired nonce: ask for another");
        }
        let mut taken = self.taken.lock().expect("nonces lock");
        taken.retain(|_, t| now.saturating_sub(*t) < NONCE_LIFE.as_secs());
        if taken.len() >= MAX_TAKEN {
            return Err("too many proofs in the last minute: try again later");
        }
        if taken.insert(nonce.to_string(), made).is_some() {
            return Err("a nonce already used: a request is proven once");
        }
        Ok(())
    }
}

/// The request a proof must be about: its method, path and query.
#[derive(Debug, Clone)]
pub(super) struct Target {
    method: String,
    target: String,
}

fn target() -> impl Filter<Extract = (Target,), Error = Infallible> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .map(
            |m: warp::http::Method, p: warp::path::FullPath, q: String| Target {
                method: m.as_str().to_string(),
                target: if q.is_empty() {
                    p.as_str().to_string()
                } else {
                    format!("{}?{q}", p.as_str())
                },
            },
        )
}

/// The body hash a `Herd-MAC` proof vouches for (none for another scheme): an endpoint that reads a
/// body checks it with [`check_body`], so a listener cannot swap the body under a proof.
pub(super) fn proven_body() -> impl Filter<Extract = (Option<String>,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .map(|h: Option<String>| h.as_deref().and_then(proof::parse).map(|p| p.body))
}

/// Refuses `body` when the request's proof vouched for another.
pub(super) fn check_body(proven: &Option<String>, body: &[u8]) -> Result<(), Rejection> {
    match proven {
        Some(sha) if !constant_time_eq(sha.as_bytes(), proof::body_sha(body).as_bytes()) => {
            Err(reject(
                StatusCode::UNAUTHORIZED,
                "the body is not the one the request's proof was made for",
            ))
        }
        _ => Ok(()),
    }
}

/// Passes the state on when `needs` says the request needs no token, or it carries the right one (or a
/// proof of it); `needs` may also refuse the request outright.
fn gate(
    st: impl Filter<Extract = (ApiState,), Error = Infallible> + Clone + Send + Sync,
    needs: fn(&ApiState) -> Result<bool, Rejection>,
) -> impl Filter<Extract = (ApiState,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(target())
        .and(st)
        .and_then(
            move |header: Option<String>, t: Target, s: ApiState| async move {
                if needs(&s)? {
                    check(header.as_deref(), &t, &s)?;
                }
                Ok::<_, Rejection>(s)
            },
        )
}

/// Passes the state on when the request carries the right token (or no token is configured).
pub(super) fn authorized(
    st: impl Filter<Extract = (ApiState,), Error = Infallible> + Clone + Send + Sync,
) -> impl Filter<Extract = (ApiState,), Error = Rejection> + Clone {
    gate(st, |_| Ok(true))
}

/// Passes the state on when the request carries the right token, and refuses every request on a node
/// without one: for what may hold secrets whatever `api.protect_reads` says (the journal).
pub(super) fn token_required(
    st: impl Filter<Extract = (ApiState,), Error = Infallible> + Clone + Send + Sync,
) -> impl Filter<Extract = (ApiState,), Error = Rejection> + Clone {
    gate(st, |s| match s.token {
        Some(_) => Ok(true),
        None => Err(reject(
            StatusCode::FORBIDDEN,
            "this node has no api.token, and this endpoint is served only with one \
             (what it shows may hold secrets)",
        )),
    })
}

/// Passes the state on for a read: always, or with the token under `api.protect_reads`.
pub(super) fn readable(
    st: impl Filter<Extract = (ApiState,), Error = Infallible> + Clone + Send + Sync,
) -> impl Filter<Extract = (ApiState,), Error = Rejection> + Clone {
    gate(st, |s| Ok(s.protect_reads))
}

/// The token, or a proof of it made for this request on this node.
fn check(header: Option<&str>, t: &Target, s: &ApiState) -> Result<(), Rejection> {
    let (Some(token), Some(p)) = (s.token.as_ref(), header.and_then(proof::parse)) else {
        return check_token(header, s.token.as_ref());
    };
    check_proof(&p, t, token, &s.handle.id().to_string(), &s.nonces).map_err(|why| {
        reject(
            StatusCode::UNAUTHORIZED,
            format!("token's proof refused: {why}"),
        )
    })
}

/// A proof is good when it names this node, its MAC is the token's over this request, and its nonce
/// is taken now (checked last, so a wrong proof cannot use up a nonce).
fn check_proof(
    p: &Proof,
    t: &Target,
    token: &Secret,
    node: &str,
    nonces: &Nonces,
) -> Result<(), &'static str> {
    if p.node != node {
        return Err("made for another node");
    }
    let want = proof::mac(
        token.0.as_bytes(),
        node,
        &p.nonce,
        &t.method,
        &t.target,
        &p.body,
    );
    if !constant_time_eq(want.as_bytes(), p.mac.as_bytes()) {
        return Err("wrong API token, or made for another request");
    }
    nonces.take(&p.nonce)
}

/// Checks an `Authorization` header against the token: `Bearer <token>`, or `Basic` with the token as
/// the password (any user name), which is what a browser sends after asking. Schemes are
/// case-insensitive (RFC 7235 §2.1).
pub(super) fn check_token(header: Option<&str>, token: Option<&Secret>) -> Result<(), Rejection> {
    let Some(token) = token else {
        return Ok(());
    };
    let given = header.and_then(|h| {
        let (scheme, credentials) = h.trim_start().split_once(' ')?;
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            Some(credentials.as_bytes().to_vec())
        } else if scheme.eq_ignore_ascii_case("basic") {
            let pair = base64::engine::general_purpose::STANDARD
                .decode(credentials)
                .ok()?;
            let colon = pair.iter().position(|b| *b == b':')?;
            Some(pair[colon + 1..].to_vec())
        } else {
            None
        }
    });
    match given {
        None => Err(reject(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs the API token: `Authorization: Bearer <token>` (api.token)",
        )),
        Some(given) if constant_time_eq(&given, token.0.as_bytes()) => Ok(()),
        Some(_) => Err(reject(StatusCode::UNAUTHORIZED, "wrong API token")),
    }
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_taken_as_bearer_or_as_a_basic_password_in_any_case() {
        let token = Secret("s3cret".into());
        let basic = |pair: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        };
        for ok in [
            "Bearer s3cret".to_string(),
            "bearer s3cret".to_string(),
            basic("admin:s3cret"),
            basic(":s3cret"),
            format!("BASIC {}", &basic("x:s3cret")[6..]),
        ] {
            assert!(check_token(Some(&ok), Some(&token)).is_ok(), "{ok}");
        }
        for bad in [
            None,
            Some("Bearer wrong".to_string()),
            Some(basic("s3cret:wrong")),
            Some(basic("no-colon")),
            Some("Digest s3cret".to_string()),
        ] {
            assert!(
                check_token(bad.as_deref(), Some(&token)).is_err(),
                "{bad:?}"
            );
        }
        assert!(check_token(None, None).is_ok(), "no token configured");
    }

    #[test]
    fn a_proof_is_taken_once_on_its_own_node_for_its_own_request() {
        let nonces = Nonces::new();
        let token = Secret("s3cret".into());
        let t = Target {
            method: "POST".into(),
            target: "/api/v1/upgrade/install".into(),
        };
        let make = |nonce: &str, node: &str, token: &str, method: &str| {
            proof::parse(&proof::header(
                token.as_bytes(),
                node,
                nonce,
                method,
                "/api/v1/upgrade/install",
                b"{}",
            ))
            .unwrap()
        };
        let n = nonces.issue();
        assert_eq!(
            check_proof(
                &make(&n, "00ab", "s3cret", "POST"),
                &t,
                &token,
                "00ac",
                &nonces
            ),
            Err("made for another node")
        );
        assert_eq!(
            check_proof(
                &make(&n, "00ab", "wrong", "POST"),
                &t,
                &token,
                "00ab",
                &nonces
            ),
            Err("wrong API token, or made for another request")
        );
        assert_eq!(
            check_proof(
                &make(&n, "00ab", "s3cret", "PUT"),
                &t,
                &token,
                "00ab",
                &nonces
            ),
            Err("wrong API token, or made for another request")
        );
        let good = make(&n, "00ab", "s3cret", "POST");
        assert_eq!(check_proof(&good, &t, &token, "00ab", &nonces), Ok(()));
        assert!(check_proof(&good, &t, &token, "00ab", &nonces)
            .unwrap_err()
            .contains("already used"));
        // A nonce of another process (a restart), or one altered, is not this node's.
        let other = Nonces::new().issue();
        assert!(nonces.take(&other).unwrap_err().contains("did not make"));
        let mut altered = nonces.issue().into_bytes();
        altered[40] = if altered[40] == b'0' { b'1' } else { b'0' };
        assert!(nonces
            .take(std::str::from_utf8(&altered).unwrap())
            .unwrap_err()
            .contains("did not make"));
        assert_eq!(nonces.take("xyz"), Err("malformed nonce"));
        // An old one has expired.
        let old = nonces.seal(0, &[1; 8]);
        let later = Nonces {
            start: Instant::now() - NONCE_LIFE,
            secret: nonces.secret,
            taken: Mutex::default(),
        };
        assert!(later.take(&old).unwrap_err().contains("expired"));
        assert!(check_body(&Some(good.body.clone()), b"{}").is_ok());
        assert!(check_body(&Some(good.body), b"{\"x\":1}").is_err());
        assert!(check_body(&None, b"anything").is_ok());
    }
}
