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
    wait(Duration::from_secs(10), "the services gossiped", || {
        let nodes = c.client(2).nodes().unwrap();
        nodes.iter().map(|n| n.services.len()).sum::<usize>() == 3
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
