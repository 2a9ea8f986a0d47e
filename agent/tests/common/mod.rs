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
        [monitoring]
        {interval}
        {extra}
        "#,
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

    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.agents[i].api_addr().unwrap())
    }

    pub fn client(&self, i: usize) -> Client {
        Client::new(&self.url(i), Some(TOKEN.into())).unwrap()
    }
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
