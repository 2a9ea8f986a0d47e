//! Power cuts: the real `herd` binary is killed with SIGKILL at random points while it writes its service
//! meta-data, 200 times over; the file must always hold either the old or the new set, and every restart
//! must come up with it. A garbage file at start-up is moved aside and the agent runs.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herd::client::Client;
use rand::{Rng, SeedableRng};

const TOKEN: &str = "durability-token-0123";

fn start_agent(state: &Path, api: &str) -> Child {
    let config = state.join("herd.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            cluster = "durability"
            node_name = "pi"
            state_dir = "{}"
            [gossip]
            bind = "127.0.11.1:0"
            insecure = true
            [discovery]
            mdns = false
            [api]
            bind = "{api}"
            token = "{TOKEN}"
            "#,
            state.display()
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["agent", "--config"])
        .arg(&config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for the API to answer; returns the services the agent started with.
fn services_at_start(client: &Client) -> BTreeSet<String> {
    let start = Instant::now();
    loop {
        if let Ok(nodes) = client.nodes() {
            return nodes[0].services.iter().cloned().collect();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "agent did not start"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The set in `meta-data.json`; `None` when there is no file (nothing was ever written).
fn file_set(state: &Path) -> Option<BTreeSet<String>> {
    let text = match std::fs::read_to_string(state.join("meta-data.json")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("meta-data.json unreadable after a kill: {e}"),
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("corrupt after a kill: {e}\n{text}"));
    Some(
        v["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect(),
    )
}

#[derive(Default)]
struct Progress {
    /// The set after the last acknowledged write.
    acked: BTreeSet<String>,
    /// The set the write in flight would produce.
    pending: Option<BTreeSet<String>>,
    writes: u64,
}

#[test]
fn meta_data_survives_sigkill_at_any_point_of_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let api = "127.0.11.1:18311";
    let client = Client::new(api, Some(TOKEN.into())).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut expected: BTreeSet<String> = BTreeSet::new();
    let (mut killed_mid_write, mut total_writes) = (0, 0);
    const ROUNDS: usize = 200;
    for round in 0..ROUNDS {
        let mut agent = start_agent(state, api);
        let started_with = services_at_start(&client);
        assert_eq!(
            started_with, expected,
            "round {round}: the agent must start with what the file held"
        );
        let progress = Arc::new(Mutex::new(Progress {
            acked: expected.clone(),
            ..Progress::default()
        }));
        let writer = {
            let progress = Arc::clone(&progress);
            let client = client.clone();
            let seed: u64 = rng.gen();
            std::thread::spawn(move || {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                loop {
                    let name = format!("svc{}", rng.gen_range(0..12));
                    let add = rng.gen_bool(0.6);
                    {
                        let mut p = progress.lock().unwrap();
                        let mut next = p.acked.clone();
                        if add {
                            next.insert(name.clone());
                        } else {
                            next.remove(&name);
                        }
                        p.pending = Some(next);
                    }
                    match client.change_service(&name, add) {
                        Ok(v) => {
                            let mut p = progress.lock().unwrap();
                            p.acked = v.services.into_iter().collect();
                            p.pending = None;
                            p.writes += 1;
                        }
                        Err(_) => return, // killed
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..30_000)));
        agent.kill().unwrap(); // SIGKILL
        agent.wait().unwrap();
        writer.join().unwrap();

        let p = progress.lock().unwrap();
        let on_disk = match file_set(state) {
            Some(set) => set,
            None => {
                assert!(
                    total_writes == 0 && p.writes == 0,
                    "round {round}: the file vanished"
                );
                BTreeSet::new()
            }
        };
        let ok = on_disk == p.acked || p.pending.as_ref() == Some(&on_disk);
        assert!(
            ok,
            "round {round}: file holds {on_disk:?}; acknowledged {:?}, in flight {:?}",
            p.acked, p.pending
        );
        if p.pending.is_some() {
            killed_mid_write += 1;
        }
        total_writes += p.writes;
        expected = on_disk;
    }
    println!(
        "{ROUNDS} SIGKILLs, {killed_mid_write} with a write in flight, {total_writes} acknowledged writes"
    );
    assert!(
        killed_mid_write > ROUNDS / 2,
        "most kills must land during a write"
    );
}

#[test]
fn a_garbage_file_is_moved_aside_and_the_agent_runs() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    std::fs::write(state.join("meta-data.json"), b"\x00\x01{not json").unwrap();
    let api = "127.0.11.2:18312";
    let mut agent = start_agent(state, api);
    let client = Client::new(api, Some(TOKEN.into())).unwrap();
    assert!(services_at_start(&client).is_empty());
    let aside: Vec<String> = std::fs::read_dir(state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("meta-data.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the bad file is kept for inspection");
    assert_eq!(
        std::fs::read(state.join(&aside[0])).unwrap(),
        b"\x00\x01{not json"
    );
    // And the agent keeps working: a write lands in a fresh file.
    client.change_service("web", true).unwrap();
    assert_eq!(file_set(state), Some(["web".to_string()].into()));
    agent.kill().unwrap();
    let _ = agent.wait();
    let mut err = String::new();
    use std::io::Read;
    agent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("corrupt meta-data file moved aside"), "{err}");
}
