//! A small blocking client for a node's HTTP API: the one HTTP client of the crate, used by the
//! operator's CLI, by the root installer (`installer.rs`, which proves an upgrade through the node's
//! own API), and by tests and benches. Errors name the node and carry the API's own message; the token
//! itself is never sent: a request that needs it carries a proof made for that request on that node
//! ([`crate::model::proof`]), and only where it is needed or asked for; redirects are never followed.

use std::time::Duration;

use anyhow::{bail, Context};

use crate::model::proof::{self, NonceView};
use crate::model::upgrade::{InstallRequest, StoredView, UpgradeView};
use crate::model::views::{NodeView, ServicesView};

/// A node's API: `http://host:port` and, for writes, its token.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    /// The node id gossip lists at this address; `None` for the node the operator named.
    expect: Option<String>,
    /// Whether a node found through gossip that has no nonce (an agent older than proofs) is sent the
    /// token itself, as the operator asked with `--token-to-older-agents`.
    older_get_token: bool,
    http: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("expect", &self.expect)
            .field("older_get_token", &self.older_get_token)
            .finish()
    }
}

/// A response as it came: status and body.
#[derive(Debug, Clone)]
pub struct Raw {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Client {
    /// `node` is a URL (`http://pi.local:8080`) or `host[:port]` (port 8080 by default).
    pub fn new(node: &str, token: Option<String>) -> anyhow::Result<Client> {
        Client::with_timeout(node, token, Duration::from_secs(10))
    }

    /// As [`Client::new`], each request given at most `timeout`.
    pub fn with_timeout(
        node: &str,
        token: Option<String>,
        timeout: Duration,
    ) -> anyhow::Result<Client> {
        let base = normalize(node)?;
        let http = agent(Some(timeout));
        Ok(Client {
            base,
            token,
            expect: None,
            older_get_token: false,
            http,
        })
    }

    /// The same client for a node found through gossip, listed with `id`: a proof is made only if the
    /// node at the address answers as `id`, and a node without proofs (an older agent) is not sent the
    /// token at all, as the node the operator named would be.
    pub fn expecting(mut self, id: &str) -> Client {
        self.expect = Some(id.to_string());
        self
    }

    /// Lets an older agent found through gossip (one without a nonce endpoint) be sent the token
    /// itself; a key holder who invents a member at an address of its own then reads it there.
    pub fn older_get_token(mut self, yes: bool) -> Client {
        self.older_get_token = yes;
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `method path` with the token when `auth`, and returns whatever came back.
    pub fn raw(&self, method: &str, path: &str, auth: bool) -> anyhow::Result<Raw> {
        self.send(method, path, auth, None, &self.http)
    }

    /// Sends `method path` with `body` (content type, bytes) through `http`, and reads the answer.
    fn send(
        &self,
        method: &str,
        path: &str,
        auth: bool,
        body: Option<(&str, &[u8])>,
        http: &ureq::Agent,
    ) -> anyhow::Result<Raw> {
        let mut resp = self.call(method, path, auth, body, None, http)?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .with_context(|| format!("reading the answer of {}{path}", self.base))?;
        Ok(Raw {
            status,
            content_type,
            body,
        })
    }

    /// Sends `method path` through `http` and returns the response, its body unread. The token's
    /// proof goes along when `auth`; a `GET` refused for want of it (a node with `api.protect_reads`) is
    /// sent once more with it, if there is one: a proof is made only where it is asked for.
    fn call(
        &self,
        method: &str,
        path: &str,
        auth: bool,
        body: Option<(&str, &[u8])>,
        accept: Option<&str>,
        http: &ureq::Agent,
    ) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        let url = format!("{}{path}", self.base);
        let mut auth = auth;
        loop {
            let mut req = ureq::http::Request::builder().method(method).uri(&url);
            if let (true, Some(t)) = (auth, &self.token) {
                let bytes = body.map_or(&[][..], |b| b.1);
                req = req.header(
                    "authorization",
                    self.authorization(t, method, path, bytes, http)?,
                );
            }
            if let Some(accept) = accept {
                req = req.header("accept", accept);
            }
            let sent = match body {
                Some((content_type, bytes)) => {
                    let req = req
                        .header("content-type", content_type)
                        .body(bytes.to_vec())
                        .with_context(|| format!("bad request {method} {url}"))?;
                    http.run(req)
                }
                None => {
                    let req = req
                        .body(())
                        .with_context(|| format!("bad request {method} {url}"))?;
                    http.run(req)
                }
            };
            let resp = sent.with_context(|| format!("cannot reach {url}"))?;
            if resp.status() == 401 && method == "GET" && !auth && self.token.is_some() {
                auth = true;
                continue;
            }
            return Ok(resp);
        }
    }

    /// The `Authorization` for `method path` with `body`: a proof of `token` made with a nonce of the
    /// node. An agent older than proofs (no nonce endpoint) is sent the token itself only if it is the
    /// node the operator named.
    fn authorization(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: &[u8],
        http: &ureq::Agent,
    ) -> anyhow::Result<String> {
        let url = format!("{}{}", self.base, proof::NONCE_PATH);
        let mut resp = http
            .get(&url)
            .call()
            .with_context(|| format!("cannot reach {url}"))?;
        let status = resp.status().as_u16();
        if status == 404 && (self.expect.is_none() || self.older_get_token) {
            return Ok(format!("Bearer {token}"));
        }
        let text = resp
            .body_mut()
            .with_config()
            .limit(4096)
            .read_to_string()
            .with_context(|| format!("reading the answer of {url}"))?;
        if status != 200 {
            bail!(
                "{url}: HTTP {status}: no nonce to prove the token with{}",
                if status == 404 && self.expect.is_some() {
                    " (an agent older than this CLI, or not a herd node: the token itself is sent \
                     only to the node named with --node, or to every node listed with \
                     --token-to-older-agents)"
                } else {
                    ""
                }
            );
        }
        let n: NonceView =
            serde_json::from_str(&text).with_context(|| format!("{url}: unexpected answer"))?;
        if let Some(id) = self.expect.as_deref().filter(|id| *id != n.node) {
            bail!(
                "{} answers as node {}, but the cluster lists node {id} there: no proof of the \
                 token sent",
                self.base,
                n.node
            );
        }
        Ok(proof::header(
            token.as_bytes(),
            &n.node,
            &n.nonce,
            method,
            path,
            body,
        ))
    }

    fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        auth: bool,
    ) -> anyhow::Result<T> {
        let r = self.raw(method, path, auth)?;
        self.parse(path, r)
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, path: &str, r: Raw) -> anyhow::Result<T> {
        if !(200..300).contains(&r.status) {
            return Err(self.refusal(path, r.status, r.body));
        }
        serde_json::from_str(&r.body)
            .with_context(|| format!("{}{path}: unexpected answer", self.base))
    }

    /// An answer other than 2xx, with the API's own message (its JSON `error`) when it gave one.
    fn refusal(&self, path: &str, status: u16, body: String) -> anyhow::Error {
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(body);
        anyhow::anyhow!("{}{path}: HTTP {status}: {message}", self.base)
    }

    /// `GET path` as a stream of lines that may never end (server-sent events): no overall timeout.
    pub fn stream(&self, path: &str) -> anyhow::Result<impl std::io::BufRead> {
        let url = format!("{}{path}", self.base);
        let resp = self.call(
            "GET",
            path,
            false,
            None,
            Some("text/event-stream"),
            &agent(None),
        )?;
        if resp.status() != 200 {
            bail!("{url}: HTTP {}", resp.status().as_u16());
        }
        Ok(std::io::BufReader::new(resp.into_body().into_reader()))
    }

    /// `GET /api/v1/logs?…`: the node's journal lines as they come (never ending while following), always
    /// with a proof of the token.
    pub fn logs(&self, q: &crate::model::logs::LogQuery) -> anyhow::Result<impl std::io::BufRead> {
        let path = format!("/api/v1/logs?{}", q.to_query());
        if self.token.is_none() {
            bail!(
                "{}{path}: a node's logs are served only with the API token (--token, HERD_TOKEN or \
                 the cluster's secrets file)",
                self.base
            );
        }
        let mut resp = self.call("GET", &path, true, None, Some("text/plain"), &agent(None))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp
                .body_mut()
                .with_config()
                .limit(64 * 1024)
                .read_to_string()
                .unwrap_or_default();
            return Err(self.refusal(&path, status, body));
        }
        Ok(std::io::BufReader::new(resp.into_body().into_reader()))
    }

    /// `POST /api/v1/actions/:action`: the node hands it to its root unit.
    pub fn action(
        &self,
        action: crate::model::actions::Action,
    ) -> anyhow::Result<crate::model::actions::ActionView> {
        self.json(
            "POST",
            &format!("/api/v1/actions/{}", action.as_str()),
            true,
        )
    }

    /// `GET /api/v1/nodes`.
    pub fn nodes(&self) -> anyhow::Result<Vec<NodeView>> {
        self.json("GET", "/api/v1/nodes", false)
    }

    /// `GET /api/v1/upgrade`.
    pub fn upgrade_view(&self) -> anyhow::Result<UpgradeView> {
        self.json("GET", "/api/v1/upgrade", true)
    }

    /// `PUT /api/v1/upgrade/artifact`: the node checks the artifact whole and keeps it. Up to 5 minutes.
    pub fn upload(&self, artifact: &[u8]) -> anyhow::Result<StoredView> {
        let http = agent(Some(Duration::from_secs(300)));
        let path = "/api/v1/upgrade/artifact";
        let body = Some(("application/octet-stream", artifact));
        match self.send("PUT", path, true, body, &http) {
            Ok(r) => self.parse(path, r),
            Err(e) => {
                // A node that refuses the request (a wrong token) answers before it reads the body and
                // closes the connection under a large one: ask again without a body to learn why.
                let empty = Some(("application/octet-stream", &[][..]));
                match self.send("PUT", path, true, empty, &http) {
                    Ok(r) if matches!(r.status, 401 | 403 | 404 | 503) => self.parse(path, r),
                    _ => Err(e),
                }
            }
        }
    }

    /// `POST /api/v1/upgrade/install`: the node fetches the artifact if it must, checks it and hands it
    /// to its installer. Up to 5 minutes (the fetch).
    pub fn install(&self, req: &InstallRequest) -> anyhow::Result<serde_json::Value> {
        let http = agent(Some(Duration::from_secs(330)));
        let path = "/api/v1/upgrade/install";
        let body = serde_json::to_vec(req)?;
        let r = self.send("POST", path, true, Some(("application/json", &body)), &http)?;
        self.parse(path, r)
    }

    /// `PUT /meta-data/add-service/:service` or `remove-service`.
    pub fn change_service(&self, service: &str, add: bool) -> anyhow::Result<ServicesView> {
        let verb = if add { "add-service" } else { "remove-service" };
        self.json("PUT", &format!("/meta-data/{verb}/{service}"), true)
    }
}

/// An HTTP agent that never follows a redirect (the token must not go where a node points), gives a
/// connection 10 s, and a whole request `total` (`None`: a stream, which may never end).
fn agent(total: Option<Duration>) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_global(total)
        .build()
        .into()
}

fn normalize(node: &str) -> anyhow::Result<String> {
    let node = node.trim().trim_end_matches('/');
    if node.is_empty() {
        bail!("no node given: pass --node http://HOST:8080 (or HOST)");
    }
    if let Some(rest) = node.strip_prefix("https://") {
        bail!("https://{rest}: the agent serves plain HTTP; use http://");
    }
    let hostport = node.strip_prefix("http://").unwrap_or(node);
    if hostport.contains('/') || hostport.contains(char::is_whitespace) {
        bail!("{node:?} is not a node address: use http://HOST:PORT or HOST[:PORT]");
    }
    // A bare IPv6 address or a name without a port gets the default port.
    let has_port = match hostport.rsplit_once(':') {
        Some((h, p)) => {
            !h.is_empty() && p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']'))
        }
        None => false,
    };
    Ok(if has_port {
        format!("http://{hostport}")
    } else {
        format!("http://{hostport}:8080")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_are_normalized() {
        assert_eq!(normalize("pi.local").unwrap(), "http://pi.local:8080");
        assert_eq!(
            normalize("http://pi.local:9000/").unwrap(),
            "http://pi.local:9000"
        );
        assert_eq!(normalize("10.0.0.5:8080").unwrap(), "http://10.0.0.5:8080");
        assert_eq!(
            normalize("[fe80::1]:8080").unwrap(),
            "http://[fe80::1]:8080"
        );
        assert!(normalize("").is_err());
        assert!(normalize("https://pi").is_err());
        assert!(normalize("pi/x").is_err());
    }

    /// An HTTP server on loopback answering 404 to all (an agent older than proofs): the heads it got.
    fn older_agent() -> (String, std::sync::mpsc::Receiver<String>) {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for s in listener.incoming().take(16) {
                let Ok(mut s) = s else { return };
                let mut head = String::new();
                let mut lines = std::io::BufReader::new(&mut s);
                while lines.read_line(&mut head).is_ok_and(|n| n > 2) {}
                // Passed on before the answer: once the client has it, the head is there to read.
                let _ = tx.send(head.to_lowercase());
                let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
            }
        });
        (addr.to_string(), rx)
    }

    #[test]
    fn an_older_agent_gets_the_token_only_if_named_or_allowed() {
        let token = "supersecrettoken1";
        let sent = |c: Client, rx: &std::sync::mpsc::Receiver<String>| {
            let r = c.change_service("web", true);
            let heads: Vec<String> = rx.try_iter().collect();
            (r, heads.iter().any(|h| h.contains(token)))
        };
        let (addr, rx) = older_agent();
        let named = Client::new(&addr, Some(token.into())).unwrap();
        assert!(sent(named.clone(), &rx).1, "the named node is sent it");
        let (r, leaked) = sent(named.clone().expecting("00000000000000aa"), &rx);
        assert!(!leaked, "a gossiped node was sent the token");
        let e = format!("{:#}", r.unwrap_err());
        assert!(e.contains("--token-to-older-agents"), "{e}");
        let allowed = named.expecting("00000000000000aa").older_get_token(true);
        assert!(sent(allowed, &rx).1, "the operator allowed it");
    }

    #[test]
    fn the_token_never_prints() {
        let c = Client::new("pi", Some("supersecrettoken1".into())).unwrap();
        assert!(!format!("{c:?}").contains("supersecret"));
    }
}
