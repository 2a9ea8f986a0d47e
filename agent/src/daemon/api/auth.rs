//! Who may call what: the API token, as `Bearer <token>` or as the password of HTTP Basic (what a browser
//! sends after asking), for writes always and for reads under `api.protect_reads`.

use std::convert::Infallible;

use base64::Engine;
use warp::http::StatusCode;
use warp::{Filter, Rejection};

use super::{reject, ApiState};
use crate::config::Secret;

/// Passes the state on when the request carries the right token (or no token is configured).
pub(super) fn authorized(
    st: impl Filter<Extract = (ApiState,), Error = Infallible> + Clone + Send + Sync,
) -> impl Filter<Extract = (ApiState,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(st)
        .and_then(|header: Option<String>, s: ApiState| async move {
            check_token(header.as_deref(), s.token.as_ref())?;
            Ok::<_, Rejection>(s)
        })
}

/// Passes the state on for a read: always, or with the token under `api.protect_reads`.
pub(super) fn readable(
    st: impl Filter<Extract = (ApiState,), Error = Infallible> + Clone + Send + Sync,
) -> impl Filter<Extract = (ApiState,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(st)
        .and_then(|header: Option<String>, s: ApiState| async move {
            if s.protect_reads {
                check_token(header.as_deref(), s.token.as_ref())?;
            }
            Ok::<_, Rejection>(s)
        })
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
}
