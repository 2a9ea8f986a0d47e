//! The real daemon over real UDP: ten agents on loopback addresses, each with the cluster key, form a
//! cluster; a killed one is declared dead, a stopped one is seen to leave, and one with the wrong key never
//! gets in. Every check reads the agents' own membership state.

use std::time::{Duration, Instant};

use herd::config::Config;
use herd::daemon::Agent;
use herd::gossip::wire::ClusterKey;
use herd::gossip::{EventKind, Liveness, NodeId};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn config(ip: &str, key: &str, seed: Option<String>, state: &std::path::Path) -> Config {
    let seeds = seed.map(|s| format!("\"{s}\"")).unwrap_or_default();
    Config::parse(&format!(
        r#"
        cluster = "udp-test"
        node_name = "{ip}"
        state_dir = "{}"
        [gossip]
        bind = "{ip}:0"
        seeds = [{seeds}]
        interval = "100ms"
        key = "{key}"
        # Loopback only: the network rule keeps multicast off the machine's real interfaces.
        [discovery]
        mdns = false
        [api]
        bind = "{ip}:0"
        "#,
        state.display()
    ))
    .unwrap()
}

/// Polls `check` every 50 ms for up to `limit`; panics with `what` when it never holds.
async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {limit:?}");
}

fn sees(agent: &Agent, id: NodeId, liveness: Liveness) -> bool {
    agent
        .members()
        .iter()
        .any(|m| m.id == id && m.liveness == liveness)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_agents_converge_detect_a_crash_and_a_leave_and_keep_out_a_wrong_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut agents = Vec::new();
    let mut seed = None;
    for i in 1..=10 {
        let ip = format!("127.0.3.{i}");
        let state = dir.path().join(&ip);
        let agent = Agent::start(config(&ip, KEY, seed.clone(), &state))
            .await
            .unwrap();
        seed.get_or_insert_with(|| agent.local_addr().to_string());
        agents.push(agent);
    }
    let ids: Vec<NodeId> = agents.iter().map(Agent::id).collect();

    let took = eventually(Duration::from_secs(30), "10 agents converge", || {
        agents
            .iter()
            .all(|a| ids.iter().all(|id| sees(a, *id, Liveness::Alive)))
    })
    .await;
    println!("10 agents converged in {took:?}");
    // Let the failure detectors learn the heartbeat rhythm, as they would in any running cluster.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Names travel with the state.
    let names: Vec<String> = agents[0]
        .members()
        .iter()
        .map(|m| m.kvs["name"].clone())
        .collect();
    assert_eq!(names.len(), 10);
    assert!(names.contains(&"127.0.3.7".to_string()));

    // An intruder with the wrong key, seeded with a member.
    let wrong = ClusterKey::from_bytes([7; 32]).to_base64();
    let intruder = Agent::start(config(
        "127.0.3.50",
        &wrong,
        seed.clone(),
        &dir.path().join("intruder"),
    ))
    .await
    .unwrap();
    let intruder_id = intruder.id();

    // Later layers learn of membership changes through the event stream.
    let mut events = agents[0].subscribe();

    // Kill one (no goodbye), stop another gracefully.
    let killed = agents.remove(9);
    let killed_id = killed.id();
    killed.kill();
    let leaver = agents.remove(8);
    let leaver_id = leaver.id();
    leaver.shutdown().await.unwrap();

    let took = eventually(Duration::from_secs(5), "the leave is seen by all", || {
        agents.iter().all(|a| sees(a, leaver_id, Liveness::Left))
    })
    .await;
    println!("leave seen by all in {took:?}");
    let took = eventually(Duration::from_secs(30), "the crash is seen by all", || {
        agents.iter().all(|a| sees(a, killed_id, Liveness::Dead))
    })
    .await;
    println!("crash declared dead by all in {took:?}");

    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push((e.kind, e.node));
    }
    assert!(seen.contains(&(EventKind::Left, leaver_id)), "{seen:?}");
    // No Suspect is asserted: suspicion is a monitor's own, and this agent is one of the killed node's 5
    // monitors (of its 9 peers) only by chance; every agent sees the verdict.
    assert!(seen.contains(&(EventKind::Dead, killed_id)), "{seen:?}");
    assert!(!seen.contains(&(EventKind::Dead, leaver_id)), "{seen:?}");

    // The intruder had all that time: nobody knows it, it knows nobody, and its packets were rejected.
    for a in &agents {
        assert!(a.members().iter().all(|m| m.id != intruder_id));
        assert!(
            !sees(a, leaver_id, Liveness::Dead),
            "a leave was taken for a crash"
        );
    }
    assert_eq!(intruder.members().len(), 1);
    let rejected: u64 = agents.iter().map(|a| a.stats().rejected_auth).sum();
    assert!(rejected > 0, "the intruder's packets were never rejected");
    println!("intruder's datagrams rejected by members: {rejected}");

    intruder.shutdown().await.unwrap();
    for a in agents {
        a.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn an_agent_without_a_key_or_insecure_refuses_to_start() {
    let e = Config::parse("[gossip]\nbind = \"127.0.0.1:0\"").unwrap_err();
    assert!(format!("{e:#}").contains("gossip.key"));
}

#[tokio::test]
async fn a_taken_port_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let first = Agent::start(config("127.0.4.1", KEY, None, dir.path()))
        .await
        .unwrap();
    let mut c = config("127.0.4.1", KEY, None, dir.path());
    c.gossip.bind = first.local_addr();
    let e = Agent::start(c).await.err().expect("second bind must fail");
    assert!(format!("{e:#}").contains("gossip.bind"), "{e:#}");
    first.shutdown().await.unwrap();
}
