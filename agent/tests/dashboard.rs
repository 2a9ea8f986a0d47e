//! The dashboard in a real browser: headless Chromium (Debian's `chromium`) opens a 4-node cluster's page
//! (services on two nodes, one node gone with a goodbye), lets its JavaScript fetch `/api/v1/nodes` and
//! redraw, and the test reads the resulting DOM: every node's name, state, φ / threshold, services,
//! link, health, and the last hour's CPU line against `/api/v1/history`. Screenshots (desktop and phone widths) land in `target/tmp/`; with
//! `HERD_SCREENSHOT_DIR` set (`cargo xtask screenshot` sets it to `docs/`), the desktop one is copied
//! there too, for the README.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{wait, Cluster};

fn chromium() -> &'static str {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c;
        }
    }
    panic!(
        "no Chromium here: `cargo xtask ci` installs it, or run: sudo apt-get install -y chromium"
    );
}

/// Runs headless Chromium with `args` on `url`; returns stdout.
fn headless(args: &[&str], url: &str) -> String {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox", // root in CI
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            // Virtual time runs the page's timers; it waits for the page's fetches to finish.
            "--virtual-time-budget=5000",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Texts of every element whose opening tag contains `marker`.
fn texts_after(dom: &str, marker: &str) -> Vec<String> {
    dom.match_indices(marker)
        .filter_map(|(i, _)| {
            let rest = &dom[i..];
            let start = rest.find('>')? + 1;
            let end = rest[start..].find('<')?;
            Some(rest[start..start + end].to_string())
        })
        .collect()
}

/// The sparklines' size, as the page draws them.
const SPARK_W: f64 = 120.0;
const SPARK_H: f64 = 24.0;

/// Node 1's `/api/v1/history`.
fn history_json(c: &Cluster) -> serde_json::Value {
    let r = c.client(1).raw("GET", "/api/v1/history", false).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

/// Node 1's `/api/v1/history/:id`.
fn node_history(c: &Cluster, id: &str) -> serde_json::Value {
    let r = c
        .client(1)
        .raw("GET", &format!("/api/v1/history/{id}"), false)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

/// A line as drawn: its points' x and y in the drawing's units.
type Line = Vec<(f64, f64)>;

/// The node page's charts: each one's key, top and line.
fn charts(dom: &str) -> Vec<(String, f64, Line)> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let i = tag.find(&format!("{name}=\""))? + name.len() + 2;
        Some(tag[i..i + tag[i..].find('"')?].to_string())
    };
    dom.match_indices("<svg class=\"chart\"")
        .map(|(i, _)| {
            let tag = &dom[i..i + dom[i..].find('>').unwrap()];
            let key = dom[..i]
                .rfind("data-key=\"")
                .map(|k| attr(&dom[k..], "data-key").unwrap())
                .unwrap();
            let top = attr(tag, "data-top").unwrap().parse().unwrap();
            let line = polylines(&dom[i..]).into_iter().next().unwrap();
            (key, top, line)
        })
        .collect()
}

/// The line the node page draws for `key` from a `/api/v1/history/:id` answer.
fn chart_line(h: &serde_json::Value, key: &str, top: f64) -> Vec<(f64, f64)> {
    let points = h["points"].as_array().unwrap();
    let Some(end) = points.last().map(|p| p["t"].as_f64().unwrap()) else {
        return Vec::new();
    };
    let scale = if key == "writes" { 1e-6 } else { 1.0 };
    points
        .iter()
        .filter_map(|p| {
            let v = p[key].as_f64()? * scale;
            assert!(v <= top, "{key} {v} above the chart's top {top}");
            let x = 600.0 - (end - p["t"].as_f64().unwrap()) / 3600.0 * 600.0;
            Some((x, 100.0 - v.clamp(0.0, top) / top * 100.0))
        })
        .collect()
}

/// Whether two drawn lines are the same, to the page's one decimal.
fn same_line(a: &[(f64, f64)], b: &[(f64, f64)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(a, b)| (a.0 - b.0).abs() <= 0.051 && (a.1 - b.1).abs() <= 0.051)
}

/// Screenshots of `url` at each (file, size), in `target/tmp/`.
fn shots(url: &str, what: &str, sizes: &[(&str, &str)]) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    for (file, size) in sizes {
        let path = dir.join(format!("{file}.png"));
        let _ = std::fs::remove_file(&path);
        headless(
            &[
                &format!("--screenshot={}", path.display()),
                &format!("--window-size={size}"),
            ],
            url,
        );
        let png = std::fs::read(&path).expect("a screenshot");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{what}: {file}"
        );
        println!("screenshot: {}", path.display());
    }
}

/// The points of every `<polyline>` in `dom`.
fn polylines(dom: &str) -> Vec<Vec<(f64, f64)>> {
    dom.match_indices("<polyline points=\"")
        .map(|(i, m)| {
            let rest = &dom[i + m.len()..];
            rest[..rest.find('"').expect("a closing quote")]
                .split(' ')
                .map(|xy| {
                    let (x, y) = xy.split_once(',').expect("x,y");
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect()
        })
        .collect()
}

#[test]
fn chromium_renders_every_node_with_its_phi_after_the_script_ran() {
    // Four agents, two with services, and one that then says goodbye: the page shows each state.
    let mut c = Cluster::start_with(12, 4, "");
    for (i, service) in [(0, "nginx"), (0, "grafana"), (1, "postgres")] {
        c.client(i).change_service(service, true).unwrap();
    }
    let leaving = c.agents.pop().unwrap();
    c.runtime.block_on(leaving.shutdown()).unwrap();
    wait(Duration::from_secs(10), "node 4 seen left", || {
        c.agents[1]
            .members()
            .iter()
            .any(|m| m.liveness == herd::gossip::Liveness::Left)
    });
    // Node 1's root side says its engine leads the swarm; node 2's that it is a worker.
    for (i, report) in [
        (
            0,
            r#"{"swarm":"qz2ssj0yrm1nbrnpe5rgvt8yx","node":"a1","role":"manager","leader":true}"#,
        ),
        (
            1,
            r#"{"swarm":"qz2ssj0yrm1nbrnpe5rgvt8yx","node":"b2","role":"worker"}"#,
        ),
    ] {
        let run = c.state_dir(i).join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join(herd::model::engine::REPORT_FILE), report).unwrap();
    }
    wait(Duration::from_secs(10), "the services gossiped", || {
        let nodes = c.client(2).nodes().unwrap();
        nodes.iter().map(|n| n.services.len()).sum::<usize>() == 3
    });
    wait(Duration::from_secs(15), "the engines gossiped", || {
        let nodes = c.client(1).nodes().unwrap();
        nodes.iter().filter(|n| n.engine.is_some()).count() == 2
    });
    wait(
        Duration::from_secs(10),
        "every alive node's history",
        || history_json(&c).as_array().unwrap().len() >= 3,
    );
    let history_before = history_json(&c);
    let url = format!("{}/", c.url(1));
    let dom = headless(&["--dump-dom"], &url);

    // The script replaced the server-rendered rows with ones built from the JSON API.
    assert!(
        dom.contains(r#"<body data-live="ok">"#),
        "the page's JavaScript did not refresh it:\n{dom}"
    );
    assert!(dom.contains("updated "), "no update time shown");
    for i in 1..=4 {
        let name = format!("node-127.0.12.{i}");
        assert!(dom.contains(&format!(">{name}</")), "{name} missing");
    }
    for i in 0..3 {
        // Each node links to its own dashboard.
        let api = c.agents[i].api_addr().unwrap();
        assert!(
            dom.contains(&format!(r#"href="http://{api}/""#)),
            "no link to {api}"
        );
    }
    let mut services = texts_after(&dom, r#"class="svc""#);
    services.sort();
    assert_eq!(services, ["grafana", "nginx", "postgres"]);
    let phis = texts_after(&dom, r#"class="num phi-value""#);
    assert_eq!(phis.len(), 4, "one φ per node: {phis:?}");
    let live = phis.iter().filter(|p| {
        let (phi, threshold) = p.split_once(" / ").unwrap_or_else(|| panic!("{p:?}"));
        assert_eq!(threshold, "8");
        phi.parse::<f64>()
            .is_ok_and(|phi| (0.0..4.0).contains(&phi))
    });
    assert!(live.count() >= 3, "the live nodes' φ: {phis:?}");
    let states = texts_after(&dom, r#"class="state alive""#);
    assert_eq!(states, ["alive"; 3]);
    assert_eq!(texts_after(&dom, r#"class="state left""#), ["left"]);
    // Every row the script built has a cell under each heading, in the headings' order.
    let headings = dom.matches("<th>").count();
    let labelled = dom.matches("data-label=").count();
    assert_eq!(
        labelled,
        4 * headings,
        "{headings} headings, {labelled} labelled cells"
    );
    // Each node's health as the API words it: the worst state and the checks that have it.
    let mut shown = texts_after(&dom, r#"class="health "#);
    shown.sort();
    let mut expected: Vec<String> = c
        .client(1)
        .nodes()
        .unwrap()
        .iter()
        .map(|n| {
            let worst = n.health.state;
            let names: Vec<&str> = n
                .health
                .checks
                .iter()
                .filter(|c| c.state == worst && worst > herd::model::health::State::Ok)
                .map(|c| c.name.as_str())
                .collect();
            match names.is_empty() {
                true => worst.as_str().to_string(),
                false => format!("{}: {}", worst.as_str(), names.join(", ")),
            }
        })
        .collect();
    expected.sort();
    assert_eq!(shown, expected);
    // Each node's engine, as it reports it (none reported: a dash).
    let mut engines = texts_after(&dom, r#"class="engine""#);
    engines.sort();
    assert_eq!(engines, ["manager, leads", "worker", "–", "–"]);
    let versions = texts_after(&dom, r#"data-label="Version""#);
    let ours = versions.iter().filter(|v| *v == env!("CARGO_PKG_VERSION"));
    assert!(versions.len() == 4 && ours.count() >= 3, "{versions:?}");

    // Each node's last hour of CPU, drawn by the page as an SVG line from `/api/v1/history`: every line
    // is one the API's series gives (as read before or after the page read it: the serving node adds a
    // point each 5 s), x by time over the hour, y by CPU over 100 %.
    let lines = polylines(&dom);
    let series = |h: &serde_json::Value| -> Vec<Vec<(f64, f64)>> {
        h.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let points = s["points"].as_array().unwrap();
                let end = points.last().unwrap()["t"].as_f64().unwrap();
                points
                    .iter()
                    .map(|p| {
                        let x = SPARK_W - (end - p["t"].as_f64().unwrap()) / 3600.0 * SPARK_W;
                        let y = SPARK_H
                            - p["cpu"].as_f64().unwrap().clamp(0.0, 100.0) / 100.0 * SPARK_H;
                        (x, y)
                    })
                    .collect()
            })
            .collect()
    };
    let mut expected = series(&history_before);
    expected.extend(series(&history_json(&c)));
    assert!(
        lines.len() >= 3,
        "a line for each alive node at least: {lines:?}"
    );
    for line in &lines {
        let same = |e: &Vec<(f64, f64)>| {
            e.len() == line.len()
                && e.iter()
                    .zip(line)
                    .all(|(a, b)| (a.0 - b.0).abs() <= 0.051 && (a.1 - b.1).abs() <= 0.051)
        };
        assert!(
            expected.iter().any(same),
            "a line the API does not give: {line:?}\nexpected one of {expected:?}"
        );
    }

    // Each node's page: its hour in five charts, its health with the advice, the events seen here. A
    // peer (joined) and the node that left.
    let views = c.client(1).nodes().unwrap();
    let peer = views
        .iter()
        .find(|n| !n.is_self && n.state == herd::gossip::Liveness::Alive)
        .unwrap();
    let gone = views
        .iter()
        .find(|n| n.state == herd::gossip::Liveness::Left)
        .unwrap();
    for n in &views {
        // Every row links to the node's page on this node.
        assert!(
            dom.contains(&format!(r#"href="/node/{}""#, n.id)),
            "no link to {}'s page",
            n.name
        );
    }
    for (node, event) in [(peer, "joined"), (gone, "left")] {
        let before = node_history(&c, &node.id);
        let page = format!("{}/node/{}", c.url(1), node.id);
        let dom = headless(&["--dump-dom"], &page);
        assert!(
            dom.contains(r#"data-live="ok""#),
            "the node page's script did not run:\n{dom}"
        );
        assert!(dom.contains(&format!("<h1>{}</h1>", node.name)), "{dom}");
        let charts = charts(&dom);
        let after = node_history(&c, &node.id);
        let drawn: Vec<&str> = charts.iter().map(|c| c.0.as_str()).collect();
        if node.state == herd::gossip::Liveness::Alive {
            // Temperature and writes are unknown on this machine's kernel or too new to say.
            for key in ["cpu", "mem", "load"] {
                assert!(drawn.contains(&key), "no {key} chart: {drawn:?}");
            }
        }
        for (key, top, line) in &charts {
            let expected: Vec<Vec<(f64, f64)>> = [&before, &after]
                .iter()
                .map(|h| chart_line(h, key, *top))
                .collect();
            assert!(
                expected.iter().any(|e| same_line(e, line)),
                "{key}: a line the API does not give: {line:?}\nexpected one of {expected:?}"
            );
        }
        // Health: a row per check, each with the API's words and advice.
        let details = texts_after(&dom, r#"class="detail""#);
        let advice = texts_after(&dom, r#"class="advice""#);
        let api = &node.health.checks;
        assert_eq!(
            details,
            api.iter().map(|c| c.detail.clone()).collect::<Vec<_>>()
        );
        assert_eq!(
            advice,
            api.iter()
                .filter_map(|c| c.advice.clone())
                .collect::<Vec<_>>()
        );
        let events = texts_after(&dom, r#"class="event""#);
        assert!(events.iter().any(|e| e == event), "{event}: {events:?}");
        let (desktop, phone) = (format!("node-{event}"), format!("node-{event}-phone"));
        shots(
            &page,
            "node",
            &[(&desktop, "1440,900"), (&phone, "390,844")],
        );
    }
    // Last log lines: a node serves its own journal, to the token only, so its own page offers them
    // behind a button (a click makes the browser ask for the token: headless Chromium cannot answer
    // that dialog, so the fetch itself is tested against the API in fleet.rs); a peer's page points to
    // that peer's own page, at the address it gossips.
    let me = views.iter().find(|n| n.is_self).unwrap();
    let dom = headless(&["--dump-dom"], &format!("{}/node/{}", c.url(1), me.id));
    assert!(
        dom.contains(r#"id="show-logs""#) && dom.contains(r#"id="log-lines""#),
        "{dom}"
    );
    let dom = headless(&["--dump-dom"], &format!("{}/node/{}", c.url(1), peer.id));
    let own = format!(
        "http://{}:{}/node/{}",
        peer.address.unwrap(),
        peer.http_port.unwrap(),
        peer.id
    );
    assert!(
        dom.contains(&format!(r#"<a href="{own}">"#)) && !dom.contains(r#"id="show-logs""#),
        "{dom}"
    );
    let e = c
        .client(1)
        .raw("GET", "/node/0000000000000000", false)
        .unwrap();
    assert_eq!(e.status, 404, "{}", e.body);
    assert!(e.body.contains("no member"), "{}", e.body);

    // Screenshots, for people (and readable on a phone: the table scrolls inside its box).
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    for (file, size) in [
        ("dashboard.png", "1440,400"),
        ("dashboard-phone.png", "390,844"),
    ] {
        let path = dir.join(file);
        let _ = std::fs::remove_file(&path);
        headless(
            &[
                &format!("--screenshot={}", path.display()),
                &format!("--window-size={size}"),
            ],
            &url,
        );
        let png = std::fs::read(&path).expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{file}");
        println!("screenshot: {}", path.display());
        if let Some(dir) =
            std::env::var_os("HERD_SCREENSHOT_DIR").filter(|_| file == "dashboard.png")
        {
            let to = std::path::Path::new(&dir).join(file);
            std::fs::write(&to, &png).expect("the screenshot copied");
            println!("screenshot: {}", to.display());
        }
    }
}
