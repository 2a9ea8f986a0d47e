//! The HTTP API over real HTTP: a 3-agent cluster on loopback, every endpoint with its error cases, the
//! Prometheus text, server-sent events, and the CLI (the real `herd` binary) against it.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::process::Command;
use std::time::{Duration, Instant};

use herd::client::{Client, Raw};

mod common;

use common::{wait, Cluster, TOKEN};

fn json(r: &Raw) -> serde_json::Value {
    assert!(
        r.content_type.starts_with("application/json"),
        "{}: {}",
        r.content_type,
        r.body
    );
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

fn error_of(r: &Raw, status: u16) -> String {
    assert_eq!(r.status, status, "{}", r.body);
    json(r)["error"]
        .as_str()
        .expect("an error message")
        .to_string()
}

#[test]
fn every_endpoint_answers_with_the_right_status_and_body() {
    let c = Cluster::start(5);
    let api = c.client(0);
    let other = c.client(1);

    // Health.
    let r = api.raw("GET", "/healthz", false).unwrap();
    assert_eq!((r.status, json(&r)["status"].as_str()), (200, Some("ok")));

    // The original endpoints.
    let r = api.raw("GET", "/nodes/alive", false).unwrap();
    assert_eq!(r.status, 200);
    let ips: BTreeSet<String> = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        ips,
        ["127.0.5.1", "127.0.5.2", "127.0.5.3"]
            .map(String::from)
            .into()
    );

    wait(Duration::from_secs(10), "monitoring of every node", || {
        let v = json(&api.raw("GET", "/nodes/monitoring", false).unwrap());
        v.as_array().unwrap().len() == 3
            && v.as_array().unwrap().iter().all(|n| {
                n["monitoring"]["mem_total"].as_u64().unwrap_or(0) > 0
                    && n["facts"]["arch"].as_str() == Some(std::env::consts::ARCH)
            })
    });
    // Every node's health, read from this machine's kernel and gossiped: what Linux always has (the
    // root mount) is known, the clock exactly when systemd-timesyncd runs here; the checks come with
    // words.
    let timesyncd = std::path::Path::new("/run/systemd/timesync").is_dir();
    wait(Duration::from_secs(10), "health of every node", || {
        let v = json(&api.raw("GET", "/api/v1/nodes", false).unwrap());
        v.as_array().unwrap().iter().all(|n| {
            let checks = n["health"]["checks"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let state = |name: &str| {
                checks
                    .iter()
                    .find(|c| c["name"] == name)
                    .and_then(|c| c["state"].as_str().map(str::to_string))
            };
            checks.len() == 8
                && state("filesystem").is_some_and(|s| s != "unknown")
                && state("clock").is_some_and(|s| (s != "unknown") == timesyncd)
                && checks
                    .iter()
                    .all(|c| c["detail"].as_str().is_some_and(|d| !d.is_empty()))
        })
    });

    // The last hour of every node, kept in memory: this node's own points (one each 5 s at most) first,
    // then each other member's gossiped sample (one a minute), every figure in range.
    let nodes = json(&api.raw("GET", "/api/v1/nodes", false).unwrap());
    let own = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["is_self"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut history = serde_json::Value::Null;
    wait(Duration::from_secs(10), "every node's history", || {
        history = json(&api.raw("GET", "/api/v1/history", false).unwrap());
        history.as_array().unwrap().len() == 3
    });
    let series = history.as_array().unwrap();
    assert_eq!(series[0]["id"], own.as_str());
    assert_eq!(series[0]["step_s"], 5);
    assert!(series[1..]
        .iter()
        .all(|s| s["step_s"] == 60 && s["id"] != own.as_str()));
    for s in series {
        let points = s["points"].as_array().unwrap();
        assert!(!points.is_empty(), "{s}");
        assert!(points
            .windows(2)
            .all(|w| w[0]["t"].as_u64() < w[1]["t"].as_u64()));
        for p in points {
            let pct = |k: &str| p[k].as_f64().unwrap_or(-1.0);
            assert!((0.0..=100.0).contains(&pct("cpu")), "{p}");
            assert!(pct("mem") > 0.0 && pct("mem") <= 100.0, "{p}");
            assert!(pct("load") >= 0.0, "{p}");
        }
    }
    let peer = series[1]["id"].as_str().unwrap();
    let one = json(
        &api.raw("GET", &format!("/api/v1/history/{peer}"), false)
            .unwrap(),
    );
    assert_eq!(one["id"], peer);
    assert!(!one["points"].as_array().unwrap().is_empty());
    let e = error_of(
        &api.raw("GET", "/api/v1/history/abcdef", false).unwrap(),
        404,
    );
    assert!(
        e.contains("\"abcdef\"") && e.contains("not a member"),
        "{e}"
    );

    // Writes need the token.
    let path = "/meta-data/add-service/nginx_webserver";
    assert!(error_of(&api.raw("PUT", path, false).unwrap(), 401).contains("Authorization"));
    let wrong = Client::new(&c.url(0), Some("not-the-token-at-all".into())).unwrap();
    assert!(error_of(&wrong.raw("PUT", path, true).unwrap(), 401).contains("wrong API token"));
    // Bad names are refused before anything is written.
    for bad in ["-x", "a%20b", "%C3%BC", &"a".repeat(64)] {
        let r = api
            .raw("PUT", &format!("/meta-data/add-service/{bad}"), true)
            .unwrap();
        assert!(error_of(&r, 400).contains("invalid service name"), "{bad}");
    }
    let r = api.raw("PUT", path, true).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let v = json(&r);
    assert_eq!(v["services"], serde_json::json!(["nginx_webserver"]));
    assert_eq!(v["changed"], true);
    assert_eq!(v["name"], "node-127.0.5.1");
    let v = json(&api.raw("PUT", path, true).unwrap());
    assert_eq!(v["changed"], false, "adding twice changes nothing");

    // Other nodes learn it through gossip.
    wait(
        Duration::from_secs(10),
        "node 1 sees node 0 run nginx",
        || {
            let r = other
                .raw("GET", "/nodes/workingService/nginx_webserver", false)
                .unwrap();
            let v = json(&r);
            v.as_array().unwrap().len() == 1 && v[0]["address"] == "127.0.5.1"
        },
    );
    let v = json(
        &other
            .raw("GET", "/nodes/workingService/postgres", false)
            .unwrap(),
    );
    assert_eq!(v, serde_json::json!([]));
    assert!(error_of(
        &other
            .raw("GET", "/nodes/workingService/a%2Fb", false)
            .unwrap(),
        400
    )
    .contains("invalid service name"));

    let r = api
        .raw("PUT", "/meta-data/remove-service/nginx_webserver", true)
        .unwrap();
    assert_eq!((r.status, json(&r)["changed"].as_bool()), (200, Some(true)));
    wait(Duration::from_secs(10), "the removal spreads", || {
        json(
            &other
                .raw("GET", "/nodes/workingService/nginx_webserver", false)
                .unwrap(),
        ) == serde_json::json!([])
    });
    let r = api
        .raw("PUT", "/meta-data/remove-service/x%20y", true)
        .unwrap();
    assert!(error_of(&r, 400).contains("invalid service name"));

    // The full view.
    let nodes = json(&api.raw("GET", "/api/v1/nodes", false).unwrap());
    let nodes = nodes.as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes[0]["is_self"], true, "the serving node comes first");
    for n in nodes {
        for field in [
            "id",
            "name",
            "address",
            "gossip_port",
            "http_port",
            "state",
            "phi",
            "threshold",
            "generation",
            "last_heard_ms",
            "services",
            "monitoring",
        ] {
            assert!(n.get(field).is_some(), "{field} missing in {n}");
        }
        assert_eq!(n["state"], "alive");
        assert_eq!(n["threshold"], 8.0);
    }

    // Errors: unknown route, wrong method, too large a body.
    assert_eq!(
        error_of(&api.raw("GET", "/no/such/thing", false).unwrap(), 404),
        "no such endpoint"
    );
    assert!(error_of(&api.raw("POST", "/nodes/alive", false).unwrap(), 405).contains("method"));
    assert!(error_of(&api.raw("DELETE", "/api/v1/nodes", false).unwrap(), 405).contains("method"));
    let big = ureq::put(format!("{}/meta-data/add-service/web", c.url(0)))
        .header("authorization", format!("Bearer {TOKEN}"))
        .config()
        .http_status_as_error(false)
        .build()
        .send(&vec![b'x'; 4096][..])
        .unwrap();
    assert_eq!(big.status().as_u16(), 413);

    // The auth scheme's name is case-insensitive (RFC 7235 §2.1); the token is not.
    let put = |authorization: String| {
        ureq::put(format!("{}/meta-data/add-service/scheme-case", c.url(0)))
            .header("authorization", authorization)
            .config()
            .http_status_as_error(false)
            .build()
            .send_empty()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(put(format!("bearer {TOKEN}")), 200);
    assert_eq!(put(format!("BEARER {TOKEN}")), 200);
    assert_eq!(put(format!("Bearer {}", TOKEN.to_uppercase())), 401);
    assert_eq!(put(format!("Basic {TOKEN}")), 401);

    // The dashboard is server-rendered HTML naming every node.
    let r = api.raw("GET", "/", false).unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.content_type.starts_with("text/html"),
        "{}",
        r.content_type
    );
    for ip in ["127.0.5.1", "127.0.5.2", "127.0.5.3"] {
        assert!(r.body.contains(&format!("node-{ip}")), "{ip} missing");
    }
    drop(c.runtime);
}

#[test]
fn too_many_services_are_refused_with_413() {
    let c = Cluster::start(7);
    let api = c.client(0);
    let mut added = 0;
    let last = loop {
        let r = api
            .raw(
                "PUT",
                &format!("/meta-data/add-service/a-rather-long-service-name-{added:03}"),
                true,
            )
            .unwrap();
        if r.status != 200 {
            break r;
        }
        added += 1;
        assert!(added < 100, "no limit");
    };
    assert!(error_of(&last, 413).contains("too many services"));
    assert!(added > 10);
}

#[test]
fn metrics_parse_as_prometheus_text() {
    let c = Cluster::start(8);
    let r = c.client(0).raw("GET", "/metrics", false).unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.content_type.starts_with("text/plain"),
        "{}",
        r.content_type
    );
    let lines = r.body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition format");
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("{name} {label:?} missing:\n{}", r.body));
        match s.value {
            prometheus_parse::Value::Gauge(x)
            | prometheus_parse::Value::Counter(x)
            | prometheus_parse::Value::Untyped(x) => x,
            _ => panic!("{name}: unexpected type"),
        }
    };
    assert_eq!(value("herd_members", Some(("state", "alive"))), 3.0);
    assert_eq!(value("herd_members", Some(("state", "dead"))), 0.0);
    assert!(value("herd_gossip_packets_total", Some(("direction", "in"))) > 0.0);
    assert!(value("herd_gossip_bytes_total", Some(("direction", "out"))) > 0.0);
    assert_eq!(
        value(
            "herd_gossip_rejected_packets_total",
            Some(("reason", "auth"))
        ),
        0.0
    );
    assert_eq!(value("herd_phi_threshold", None), 8.0);
    let peers = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "herd_phi")
        .count();
    assert_eq!(peers, 2, "one phi per peer");
    let health: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "herd_health")
        .collect();
    assert_eq!(
        health.len(),
        3 * 8,
        "8 checks of each alive node:\n{}",
        r.body
    );
    for s in &health {
        let prometheus_parse::Value::Gauge(x) = s.value else {
            panic!("{s:?}")
        };
        assert!([-1.0, 0.0, 1.0, 2.0].contains(&x), "{s:?}");
    }
    assert!(scrape.docs.contains_key("herd_phi"), "HELP lines are there");
}

#[test]
fn events_stream_membership_changes() {
    let mut c = Cluster::start(9);
    let url = format!("{}/api/v1/events", c.url(0));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let resp = ureq::get(&url).call().unwrap();
        let ct = resp
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let _ = tx.send(ct);
        let reader = std::io::BufReader::new(resp.into_body().into_reader());
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        "text/event-stream"
    );
    let leaving = c.agents.pop().unwrap();
    let id = leaving.id().to_string();
    c.runtime.block_on(leaving.shutdown()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let left = Instant::now().saturating_duration_since(deadline);
        assert!(left.is_zero(), "no left event: {seen:?}");
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        seen.push(line.clone());
        if let Some(data) = line.strip_prefix("data:") {
            let v: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
            if v["kind"] == "left" && v["node"] == id.as_str() {
                assert!(seen.iter().any(|l| l == "event:left" || l == "event: left"));
                break;
            }
        }
    }
}

#[test]
fn the_cli_lists_members_and_changes_meta_data() {
    let c = Cluster::start(10);
    let herd = env!("CARGO_BIN_EXE_herd");
    let run = |args: &[&str], token: Option<&str>| {
        let mut cmd = Command::new(herd);
        cmd.args(args)
            .env_remove("HERD_TOKEN")
            .env("HOME", "/nonexistent");
        if let Some(t) = token {
            cmd.env("HERD_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let node = c.url(0);
    let (ok, table, err) = run(&["members", "--node", &node], None);
    assert!(ok, "{err}");
    assert!(table.starts_with("NAME"), "{table}");
    // The table, then a line per health problem (this machine's, the same on every node).
    let rows = table.split("\n\n").next().unwrap();
    assert_eq!(rows.lines().count(), 4, "{table}");
    assert!(rows.lines().next().unwrap().contains("HEALTH"), "{table}");
    for i in 1..=3 {
        assert!(table.contains(&format!("node-127.0.10.{i}")), "{table}");
    }
    let (ok, text, err) = run(&["members", "--node", &node, "--json"], None);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
    // No card here runs a container engine: herd engine says so, about every node.
    let (ok, text, err) = run(&["engine", "--node", &node], None);
    assert!(ok, "{err}");
    assert!(text.starts_with("NAME"), "{text}");
    assert_eq!(text.matches("reports no engine").count(), 3, "{text}");
    assert!(text.contains("No node reports an engine."), "{text}");

    // Change node 2's meta-data through node 0's view of the cluster.
    let (ok, text, err) = run(
        &[
            "meta-data",
            "add-service",
            "node-127.0.10.3",
            "redis",
            "--node",
            &node,
        ],
        Some(TOKEN),
    );
    assert!(ok, "{err}");
    assert!(text.contains("redis added to node-127.0.10.3"), "{text}");
    let on_3 = c.client(2).nodes().unwrap();
    assert_eq!(on_3[0].services, ["redis"]);

    // Errors are clear and fail the command.
    let (ok, _, err) = run(
        &[
            "meta-data",
            "add-service",
            "node-127.0.10.3",
            "x",
            "--node",
            &node,
        ],
        Some("wrong-token-0123456789"),
    );
    assert!(
        !ok && err.contains("HTTP 401") && err.contains("wrong API token"),
        "{err}"
    );
    let (ok, _, err) = run(
        &[
            "meta-data",
            "add-service",
            "nosuchnode",
            "x",
            "--node",
            &node,
        ],
        Some(TOKEN),
    );
    assert!(!ok && err.contains("no node \"nosuchnode\""), "{err}");
    let (ok, _, err) = run(
        &[
            "meta-data",
            "add-service",
            "node-127.0.10.3",
            "bad name",
            "--node",
            &node,
        ],
        Some(TOKEN),
    );
    assert!(!ok && err.contains("invalid service name"), "{err}");
    let (ok, _, err) = run(&["members", "--node", "http://127.0.10.9:1"], None);
    assert!(!ok && err.contains("cannot reach"), "{err}");
}

#[test]
fn a_health_handler_runs_when_a_members_problem_comes_and_goes() {
    use herd::model::health::{Flag, Health, HEALTH_KEY};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("health.log");
    let handler = format!(
        "[[handlers]]\non = [\"health\"]\ncommand = 'echo \"$HERD_SELF_NAME $HERD_MEMBER_NAME \
         $HERD_MEMBER_HEALTH $HERD_MEMBER_PROBLEMS\" >> {}'\n",
        log.display()
    );
    let c = Cluster::start_with(13, 3, &handler);
    // Node 3 reads as a healthy Pi (its real reading is this machine's), then sags, then recovers.
    let good = Health {
        undervoltage: Some(Flag::default()),
        throttled: Some(Flag::default()),
        read_only: Some(false),
        fs_errors: Some(0),
        clock_synced: Some(true),
        clock_error_ms: Some(4),
        ..Health::default()
    };
    let lines_of_1_about_3 = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("node-127.0.13.1 node-127.0.13.3 "))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    c.agents[2].set(HEALTH_KEY, &good.to_gossip()).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let before = lines_of_1_about_3().len();
    let sagging = Health {
        undervoltage: Some(Flag {
            now: true,
            since_boot: true,
        }),
        ..good.clone()
    };
    c.agents[2].set(HEALTH_KEY, &sagging.to_gossip()).unwrap();
    wait(
        Duration::from_secs(10),
        "the health handler on node 1",
        || lines_of_1_about_3().len() > before,
    );
    let line = lines_of_1_about_3()[before].clone();
    assert!(
        line.contains(" critical ") && line.contains("power:critical"),
        "{line}"
    );
    c.agents[2].set(HEALTH_KEY, &good.to_gossip()).unwrap();
    wait(Duration::from_secs(10), "the health handler again", || {
        lines_of_1_about_3().len() > before + 1
    });
    let line = lines_of_1_about_3()[before + 1].clone();
    assert!(!line.contains("power"), "{line}");
    // A change of anything else (monitoring, a service) is no health event.
    c.client(2).change_service("web", true).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        lines_of_1_about_3().len(),
        before + 2,
        "{:?}",
        lines_of_1_about_3()
    );
}

/// A swarm's join token on its way, through real agents gossiping over loopback: the leader's root side
/// seals it to one member and leaves the offers in its run directory; its agent gossips them; the member's
/// agent hands the offer addressed to it to its own root side, where it opens to the token; the third
/// member gets nothing it could open. Neither the token nor the sealed offer is ever shown by the API,
/// the metrics or the dashboard; the leader's report, which is not secret, is.
#[test]
fn a_join_offer_reaches_its_member_only_and_is_never_shown() {
    use herd::gossip::NodeKey;
    use herd::model::join::{self, ForMe, Offers};
    use rand::SeedableRng;
    const SWARM: &str = "qz2ssj0yrm1nbrnpe5rgvt8yx";
    const SECRET: &str =
        "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdbx";
    let c = Cluster::start(41);
    let key = |i: usize| {
        let text = std::fs::read_to_string(c.state_dir(i).join("node.key")).unwrap();
        NodeKey::from_base64(&text).unwrap()
    };
    let (leader, member, other) = (key(0), key(1), key(2));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    // The cluster runs insecure: no cluster key, so the pair key is made with none.
    let offer = join::seal(SECRET, SWARM, &leader, member.public(), None, &mut rng).unwrap();
    let sealed = offer.sealed.clone();
    let run = c.state_dir(0).join("run");
    std::fs::create_dir_all(&run).unwrap();
    let offers = Offers {
        swarm: SWARM.into(),
        offers: vec![offer],
    };
    std::fs::write(run.join(join::OFFERS_FILE), offers.to_gossip()).unwrap();
    std::fs::write(
        run.join(herd::model::engine::REPORT_FILE),
        format!(r#"{{"swarm":"{SWARM}","node":"24ifsmvkjbyhk","role":"manager","leader":true}}"#),
    )
    .unwrap();
    let handed = c.state_dir(1).join(join::OFFER_FILE);
    wait(Duration::from_secs(20), "the offer handed over", || {
        std::fs::read_to_string(&handed).is_ok_and(|t| t.contains(&sealed))
    });
    let mine: Vec<ForMe> =
        serde_json::from_str(&std::fs::read_to_string(&handed).unwrap()).unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].from, leader.id());
    assert_eq!(
        join::open(&mine[0], &member, leader.public(), &[None]).unwrap(),
        SECRET
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&handed).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode, 0o600,
            "the offer file is the agent's (and root's) only"
        );
    }
    // The third member sees the same gossip, and no offer is its own.
    wait(Duration::from_secs(10), "the report gossiped", || {
        c.client(2).nodes().unwrap().iter().any(|n| {
            n.engine
                .as_ref()
                .is_some_and(|e| e.swarm.as_deref() == Some(SWARM))
        })
    });
    assert!(!c.state_dir(2).join(join::OFFER_FILE).exists());
    assert!(join::open(&mine[0], &other, leader.public(), &[None]).is_err());
    // Shown nowhere: the member list (with the token and without), the metrics, the dashboard.
    for i in 0..3 {
        for (path, auth) in [
            ("/api/v1/nodes", false),
            ("/api/v1/nodes", true),
            ("/nodes/alive", false),
            ("/metrics", false),
            ("/", false),
        ] {
            let r = c.client(i).raw("GET", path, auth).unwrap();
            assert_eq!(r.status, 200, "{path}: {}", r.body);
            assert!(
                !r.body.contains("SWMTKN") && !r.body.contains(&sealed[..40]),
                "node {i} {path} shows the offer: {}",
                r.body
            );
        }
    }
    // A laptop's docker is pointed at the leader, by the real binary.
    let out = Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["engine", "env", "-l", "pi", "--node", &c.url(2)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let leader_ip = c.agents[0].local_addr().ip();
    assert!(
        text.contains(&format!("export DOCKER_HOST=ssh://pi@{leader_ip}\n")),
        "{text}"
    );
    // The leader withdraws its offers: the member's hand-over empties.
    std::fs::remove_file(run.join(join::OFFERS_FILE)).unwrap();
    wait(Duration::from_secs(20), "the offer withdrawn", || {
        std::fs::read_to_string(&handed).is_ok_and(|t| t.trim() == "[]")
    });
}
