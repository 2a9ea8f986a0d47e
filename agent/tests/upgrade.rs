//! `herd upgrade` between real agents on loopback (real sockets, real HTTP): an artifact uploaded to one
//! node spreads to the others by fetching from each other and is handed to each one's installer; every
//! hostile upload or install request is refused with a clear status and leaves nothing behind.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use base64::Engine;
use common::{Cluster, TOKEN};
use herd::client::Client;
use herd::model::upgrade::InstallRequest;
use herd::release::{self, Arch, SigningKey};

fn key(seed: u8) -> SigningKey {
    SigningKey::from_base64(&base64::engine::general_purpose::STANDARD.encode([seed; 32])).unwrap()
}

fn cluster(net: u8) -> Cluster {
    Cluster::start_with(
        net,
        3,
        &format!(
            "[upgrade]\npublic_key = \"{}\"\n",
            key(7).public().to_base64()
        ),
    )
}

fn artifact(signer: &SigningKey, version: &str) -> Vec<u8> {
    let agent = vec![0x7f; 300_000];
    release::pack(
        signer,
        "api-test",
        version,
        &[
            (Arch::this_machine().unwrap(), agent.as_slice()),
            (Arch::Armhf, b"32-bit agent".as_slice()),
        ],
    )
    .unwrap()
}

fn install(c: &Client, sha: &str, sources: Vec<String>) -> anyhow::Result<serde_json::Value> {
    install_permitted(c, sha, sources, None)
}

fn install_permitted(
    c: &Client,
    sha: &str,
    sources: Vec<String>,
    downgrade_permit: Option<String>,
) -> anyhow::Result<serde_json::Value> {
    c.install(&InstallRequest {
        sha256: sha.into(),
        rollout: "0a1b".into(),
        sources,
        allow_downgrade: downgrade_permit.is_some(),
        downgrade_permit,
        timeout_s: 60,
    })
}

#[test]
fn an_artifact_uploaded_once_spreads_from_node_to_node_to_each_installer() {
    let c = cluster(61);
    let a = artifact(&key(7), "99.0.0");
    let sha = release::sha256_hex(&a);
    let kept = c.client(0).upload(&a).unwrap();
    assert_eq!(
        (kept.sha256.as_str(), kept.version.as_str()),
        (sha.as_str(), "99.0.0")
    );
    // Node 1 fetches it from node 0, node 2 from node 1: the operator uploaded once.
    assert_eq!(c.client(1).upgrade_view().unwrap().artifact, None);
    let r = install(&c.client(1), &sha, vec![c.url(0)]).unwrap();
    assert_eq!(r["installing"], "99.0.0");
    let r = install(&c.client(2), &sha, vec![c.url(1)]).unwrap();
    assert_eq!(r["installing"], "99.0.0");
    for i in 1..3 {
        let v = c.client(i).upgrade_view().unwrap();
        assert_eq!(
            v.artifact.as_ref().map(|a| a.sha256.as_str()),
            Some(sha.as_str())
        );
        assert!(v.busy, "node {i} handed it to its installer");
        assert_eq!(v.version, herd::VERSION);
        // Handed over once: a second request waits for the installer.
        let e = install(&c.client(i), &sha, vec![]).unwrap_err().to_string();
        assert!(e.contains("409") && e.contains("under way"), "{e}");
    }
    // The node that only served it was asked for nothing.
    assert!(!c.client(0).upgrade_view().unwrap().busy);
}

/// Sends a request by hand (what a well-behaved client cannot send) and returns the status line.
fn raw(addr: &str, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn hostile_artifacts_and_requests_are_refused_and_nothing_is_kept() {
    let c = cluster(62);
    let node = c.client(0);
    let fails = |r: anyhow::Result<herd::model::upgrade::StoredView>, want: &[&str]| {
        let e = format!("{:#}", r.unwrap_err());
        for w in want {
            assert!(e.contains(w), "{w:?} not in {e}");
        }
    };
    // Signed with another key.
    fails(
        node.upload(&artifact(&key(8), "99.0.0")),
        &["422", "signing key"],
    );
    // Right signature, one byte of a binary changed.
    let mut bad = artifact(&key(7), "99.0.0");
    let at = bad.len() - 20;
    bad[at] ^= 0x20;
    fails(node.upload(&bad), &["422", "SHA-256"]);
    // Cut short, or not an artifact at all.
    let good = artifact(&key(7), "99.0.0");
    fails(node.upload(&good[..good.len() - 1]), &["422"]);
    fails(
        node.upload(b"#!/bin/sh\nrm -rf /\n"),
        &["422", "not a herd release"],
    );
    // Without the token.
    let anonymous = Client::new(&c.url(0), None).unwrap();
    fails(anonymous.upload(&good), &["401"]);
    // Larger than any artifact, or without a length: refused before a byte is read.
    let addr = c.url(0);
    let head = |extra: &str| {
        format!(
            "PUT /api/v1/upgrade/artifact HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n{extra}\r\n"
        )
    };
    assert!(raw(&addr, &head("content-length: 999999999\r\n")).contains("413"));
    assert!(raw(&addr, &head("transfer-encoding: chunked\r\n")).contains("411"));
    assert_eq!(node.upgrade_view().unwrap().artifact, None, "nothing kept");

    // Install requests: every field checked, sources that do not have it, older versions.
    let sha = release::sha256_hex(&good);
    for (sources, want) in [
        (vec!["file:///etc/shadow".to_string()], "400"),
        (vec![format!("{}/../x", c.url(1))], "400"),
        (vec![], "404"),
        (vec![c.url(1)], "502"),
    ] {
        let e = format!("{:#}", install(&node, &sha, sources).unwrap_err());
        assert!(e.contains(want), "{want} not in {e}");
    }
    let e = format!(
        "{:#}",
        node.install(&InstallRequest {
            sha256: sha.clone(),
            rollout: String::new(),
            sources: vec![],
            allow_downgrade: false,
            downgrade_permit: None,
            timeout_s: 1,
        })
        .unwrap_err()
    );
    assert!(e.contains("timeout_s"), "{e}");
    // An install request over its 16 KiB: 413, as every other body too large (it was 400).
    let big = format!(
        "POST /api/v1/upgrade/install HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        17 * 1024
    );
    let status = raw(&addr, &big);
    assert!(status.contains("413"), "{status}");
    let old = artifact(&key(7), "0.0.1");
    node.upload(&old).unwrap();
    let e = format!(
        "{:#}",
        install(&node, &release::sha256_hex(&old), vec![]).unwrap_err()
    );
    assert!(e.contains("409") && e.contains("older"), "{e}");
    assert!(!node.upgrade_view().unwrap().busy, "nothing handed over");
    // A token holder may ask for a downgrade, but only the signing key's permit for this artifact and
    // the running version makes one (issue 31, 3): a permit of another key, or for another version,
    // is refused; the operator's is taken.
    let old_sha = release::sha256_hex(&old);
    let running = node.upgrade_view().unwrap().version;
    for permit in [
        key(8).permit_downgrade("api-test", &old_sha, &running),
        key(7).permit_downgrade("api-test", &old_sha, "99.0.0"),
    ] {
        let e = install_permitted(&node, &old_sha, vec![], Some(permit)).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("422") && e.contains("downgrade permit"), "{e}");
        assert!(!node.upgrade_view().unwrap().busy, "nothing handed over");
    }
    let permit = key(7).permit_downgrade("api-test", &old_sha, &running);
    install_permitted(&node, &old_sha, vec![], Some(permit)).unwrap();
    assert!(node.upgrade_view().unwrap().busy, "handed over");
}

/// A node configured without a signing key takes no artifact, and no key over the network either
/// (root's installer trusts only the configuration's, issue 31, 3): `herd upgrade` names it and says
/// what to add before anything is changed.
#[test]
fn a_node_configured_without_a_signing_key_is_named_and_nothing_is_changed() {
    let c = Cluster::start_with(63, 1, "");
    let node = c.client(0);
    let a = artifact(&key(7), "99.0.0");
    assert!(!node.upgrade_view().unwrap().has_key);
    let e = format!("{:#}", node.upload(&a).unwrap_err());
    assert!(e.contains("no signing key"), "{e}");
    let put = format!(
        "PUT /api/v1/upgrade/key HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\
         content-length: 44\r\n\r\n{}",
        key(7).public().to_base64()
    );
    assert!(raw(&c.url(0), &put).contains("404"), "no key is taken");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.herd");
    std::fs::write(&path, &a).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["upgrade", "--node", &c.url(0), "--to"])
        .arg(&path)
        .env("HERD_TOKEN", TOKEN)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("nothing was changed") && err.contains("public_key"),
        "{err}"
    );
    assert_eq!(node.upgrade_view().unwrap().artifact, None, "nothing kept");
}

/// `herd upgrade` (the real binary): a first Ctrl-C lets the batch under way finish (the node is
/// handed its upgrade and must prove it or roll back on its own), a second one leaves at once.
#[test]
fn ctrl_c_stops_after_the_batch_under_way_and_twice_at_once() {
    use std::process::{Command, Stdio};
    let c = cluster(64);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.herd");
    std::fs::write(&path, artifact(&key(7), "99.0.0")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["upgrade", "--timeout", "10s", "--node", &c.url(0), "--to"])
        .arg(&path)
        .env("HERD_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    // Wait until the first node was handed its upgrade (no installer runs here: it never reports).
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("installing") {
            break;
        }
    }
    assert!(seen.iter().any(|l| l.contains("uploading")), "{seen:?}");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let interrupt = || nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    interrupt();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the batch under way is waited for"
    );
    interrupt();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a second Ctrl-C leaves at once"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
    // The node that was handed the upgrade keeps it for its installer; the others were not touched.
    assert!(c.client(0).upgrade_view().unwrap().busy);
    assert!(!c.client(1).upgrade_view().unwrap().busy);
    assert!(!c.client(2).upgrade_view().unwrap().busy);
}

/// `herd upgrade --dry-run` prints the plan and changes nothing; `--status` shows every node.
#[test]
fn dry_run_and_status_change_nothing() {
    use std::process::Command;
    let c = cluster(65);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.herd");
    std::fs::write(&path, artifact(&key(7), "99.0.0")).unwrap();
    let herd = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_herd"))
            .args(args)
            .args(["--node", &c.url(0)])
            .env("HERD_TOKEN", TOKEN)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let plan = herd(&[
        "upgrade",
        "--dry-run",
        "--batch",
        "2",
        "--to",
        path.to_str().unwrap(),
    ]);
    assert!(plan.contains("dry run: nothing changed"), "{plan}");
    assert_eq!(
        plan.matches(&format!("{} → 99.0.0", herd::VERSION)).count(),
        3,
        "{plan}"
    );
    assert!(plan.contains("2 at a time"), "{plan}");
    for i in 0..3 {
        let v = c.client(i).upgrade_view().unwrap();
        assert!(v.artifact.is_none() && !v.busy, "node {i}: {v:?}");
    }
    let status: serde_json::Value =
        serde_json::from_str(&herd(&["upgrade", "--status", "--json"])).unwrap();
    let rows = status.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for r in rows {
        assert_eq!(r["version"], herd::VERSION);
        assert_eq!(r["upgrade"], "idle");
    }
    // An older artifact is refused before anything changes.
    std::fs::write(&path, artifact(&key(7), "0.0.1")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_herd"))
        .args([
            "upgrade",
            "--node",
            &c.url(0),
            "--to",
            path.to_str().unwrap(),
        ])
        .env("HERD_TOKEN", TOKEN)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--allow-downgrade"),
        "{err}"
    );
    assert!(c.client(0).upgrade_view().unwrap().artifact.is_none());
    // --allow-downgrade signs permits with the secrets file's signing key: none there, a clear error.
    let secrets = dir.path().join("api-test.toml");
    let public = key(7).public().to_base64();
    let write = |text: String| {
        std::fs::write(&secrets, text).unwrap();
        std::fs::set_permissions(
            &secrets,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    };
    let downgrade = || {
        Command::new(env!("CARGO_BIN_EXE_herd"))
            .args([
                "upgrade",
                "--dry-run",
                "--allow-downgrade",
                "--node",
                &c.url(0),
            ])
            .args(["--to", path.to_str().unwrap()])
            .args(["--secrets", secrets.to_str().unwrap()])
            .env("HERD_TOKEN", TOKEN)
            .output()
            .unwrap()
    };
    write(format!(
        "cluster = \"api-test\"\nsigning_public_key = \"{public}\"\n"
    ));
    let o = downgrade();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no signing_key"),
        "{err}"
    );
    write(format!(
        "cluster = \"api-test\"\nsigning_key = \"{}\"\nsigning_public_key = \"{public}\"\n",
        key(7).to_base64()
    ));
    let o = downgrade();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(out.matches("→ 0.0.1").count(), 3, "{out}");
    assert!(!out.contains(&key(7).to_base64()), "{out}");
}

/// An agent from before per-node keys (gossip protocol 2, no `public_key` in its member list) cannot
/// talk to an agent of this version, so swapping them one node at a time would leave each new agent
/// alone until its proof failed: `herd upgrade` names such a node and changes nothing.
#[test]
fn agents_from_before_per_node_keys_are_named_and_nothing_is_changed() {
    let c = cluster(66);
    let mut nodes: Vec<serde_json::Value> = c
        .client(0)
        .nodes()
        .unwrap()
        .iter()
        .map(|n| serde_json::to_value(n).unwrap())
        .collect();
    let older = nodes.iter_mut().find(|n| n["is_self"] != true).unwrap();
    older.as_object_mut().unwrap().remove("public_key");
    let older_name = older["name"].as_str().unwrap().to_string();
    // The entry node's API as an older cluster would answer it.
    let body = serde_json::to_string(&nodes).unwrap();
    let listener = std::net::TcpListener::bind("127.0.66.9:0").unwrap();
    let fake = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in listener.incoming().take(4) {
            let Ok(mut s) = s else { return };
            let mut head = [0u8; 4096];
            let _ = s.read(&mut head);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.herd");
    std::fs::write(&path, artifact(&key(7), "99.0.0")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["upgrade", "--dry-run", "--node", &fake, "--to"])
        .arg(&path)
        .env("HERD_TOKEN", TOKEN)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("nothing was changed")
            && err.contains(&older_name)
            && err.contains("before per-node keys")
            && err.contains("re-flash"),
        "{err}"
    );
    // Against the real agents the same plan goes through.
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["upgrade", "--dry-run", "--node", &c.url(0), "--to"])
        .arg(&path)
        .env("HERD_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}
