//! A 3-agent cluster on loopback with the API on, shared by the API and dashboard tests.

#![allow(dead_code)] // each test binary uses its own part

use std::time::{Duration, Instant};

use herd::client::Client;
use herd::config::Config;
use herd::daemon::Agent;

pub const TOKEN: &str = "test-token-0123456789";

fn config(ip: &str, seed: Option<&str>, state: &std::path::Path, extra: &str) -> Config {
    let seeds = seed.map(|s| format!("\"{s}\"")).unwrap_or_default();
    // `extra` may set the sampling interval itself.
    let interval = if extra.trim_start().starts_with("interval") {
        ""
    } else {
        "interval = \"1s\""
    };
    Config::parse(&format!(
        r#"
        cluster = "api-test"
        node_name = "node-{ip}"
        state_dir = "{}"
        [gossip]
        bind = "{ip}:0"
        seeds = [{seeds}]
        interval = "100ms"
        insecure = true
        [discovery]
        mdns = false
        [api]
        bind = "{ip}:0"
        token = "{TOKEN}"
        [engine]
        run_dir = "{}/run"
        [monitoring]
        {interval}
        {extra}
        "#,
        state.display(),
        state.display()
    ))
    .unwrap()
}

pub struct Cluster {
    pub runtime: tokio::runtime::Runtime,
    pub agents: Vec<Agent>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Three agents on 127.0.`net`.{1,2,3}, converged.
    pub fn start(net: u8) -> Cluster {
        Cluster::start_with(net, 3, "")
    }

    /// `n` agents on 127.0.`net`.{1..n}, converged; `extra` is appended to each one's config (the
    /// `[monitoring]` table is open, so `interval = …` may come first).
    pub fn start_with(net: u8, n: usize, extra: &str) -> Cluster {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut dirs = Vec::new();
        let mut agents: Vec<Agent> = Vec::new();
        for i in 1..=n {
            let dir = tempfile::tempdir().unwrap();
            let ip = format!("127.0.{net}.{i}");
            let seed = agents.first().map(|a| a.local_addr().to_string());
            let c = config(&ip, seed.as_deref(), dir.path(), extra);
            agents.push(runtime.block_on(Agent::start(c)).unwrap());
            dirs.push(dir);
        }
        let cluster = Cluster {
            runtime,
            agents,
            _dirs: dirs,
        };
        cluster.wait_alive(n);
        cluster
    }

    /// Waits until every agent sees `n` alive members.
    pub fn wait_alive(&self, n: usize) {
        wait(
            Duration::from_secs(15),
            &format!("{n} alive everywhere"),
            || {
                self.agents.iter().all(|a| {
                    a.members()
                        .iter()
                        .filter(|m| m.liveness == herd::gossip::Liveness::Alive)
                        .count()
                        == n
                })
            },
        );
    }

    /// Starts one more agent on 127.0.`net`.`host`, seeded with the first agent; returns its index.
    pub fn add(&mut self, net: u8, host: u8, extra: &str) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let ip = format!("127.0.{net}.{host}");
        let seed = self.agents.first().map(|a| a.local_addr().to_string());
        let c = config(&ip, seed.as_deref(), dir.path(), extra);
        self.agents
            .push(self.runtime.block_on(Agent::start(c)).unwrap());
        self._dirs.push(dir);
        self.agents.len() - 1
    }

    /// Agent `i`'s state directory (its `engine.run_dir` is `run` in it).
    pub fn state_dir(&self, i: usize) -> &std::path::Path {
        self._dirs[i].path()
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.agents[i].api_addr().unwrap())
    }

    pub fn client(&self, i: usize) -> Client {
        Client::new(&self.url(i), Some(TOKEN.into())).unwrap()
    }
}

/// One HTTP/1.1 request without a body, on a connection of its own that the server closes after,
/// read whole within `timeout`: (status, head, body), a chunked body undone. Status 0 when the connection
/// failed or closed without an answer.
pub fn http(
    api: std::net::SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    timeout: Duration,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&api, Duration::from_secs(3)) else {
        return (0, String::new(), String::new());
    };
    s.set_read_timeout(Some(timeout)).unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let _ = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n{auth}Connection: close\r\n\r\n"
    );
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, head.to_string(), body)
}

/// The body of a chunked reply.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn wait(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ok() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within {limit:?}");
}

/// A member a key holder invents: keys of its own (it can make as many as it likes, each naming its
/// own id), whose id `wanted` accepts (found by trying keys: an id in a range of a 1/n of the ring
/// takes about n tries).
pub fn invented_key(
    rng: &mut impl rand::RngCore,
    wanted: impl Fn(herd::gossip::NodeId) -> bool,
) -> herd::gossip::NodeKey {
    loop {
        let key = herd::gossip::NodeKey::generate(rng);
        if wanted(key.id()) {
            return key;
        }
    }
}

/// The state of a member a key holder invents, signed with its own keys for the cluster whose wire id
/// is `cluster`: generation 1, heartbeat 1, and only its address (or, without one, an address deleted),
/// the least that makes a member.
pub fn invented_member(
    key: &herd::gossip::NodeKey,
    cluster: u64,
    addr: Option<&str>,
) -> herd::gossip::wire::NodeDelta {
    let value = addr.map(str::to_string);
    herd::gossip::wire::NodeDelta {
        node: key.id(),
        generation: 1,
        heartbeat: 1,
        from_version: 0,
        keys: Some(*key.public().bytes()),
        kvs: vec![herd::gossip::wire::KeyValue {
            key: "_addr".into(),
            version: 1,
            signature: key.sign_kv(cluster, 1, "_addr", 1, value.as_deref()),
            value,
        }],
    }
}
