//! Running a fleet, through the real `herd` binary on loopback (issue 28, 2 and 3). Logs: `GET
//! /api/v1/logs` and `herd logs` read journal files written by the real systemd-journal-remote with the
//! real journalctl; the token is always required; lines, line length, bytes, rate and readers at once
//! are bounded; readers that never read cannot make the agent hold more than the stated memory.
//! Actions: `herd reboot|shutdown|identify|restart` reach the agent, which checks and hands them to its
//! root unit; what that unit does to a real card is shown in the e2e VMs (`ci/src/e2e`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use common::wait;

const TOKEN: &str = "logs-test-token-0123456789";

/// A `herd agent` process; killed on drop.
struct Agent {
    child: Child,
    api: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent on `ip` serving the journal files in `journal`, with the API token unless `token` is false.
fn start(ip: &str, journal: &Path, token: bool) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herd.toml");
    let token = if token {
        format!("token = \"{TOKEN}\"")
    } else {
        String::new()
    };
    std::fs::write(
        &config,
        format!(
            "cluster = \"logs\"\nnode_name = \"card-1\"\nstate_dir = \"{}\"\n\
             [gossip]\nbind = \"{ip}:7946\"\ninsecure = true\n[discovery]\nmdns = false\n\
             [api]\nbind = \"{ip}:8080\"\n{token}\n[logs]\njournal_directory = \"{}\"\n",
            dir.path().join("state").display(),
            journal.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["agent", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let agent = Agent {
        child,
        api: format!("{ip}:8080").parse().unwrap(),
        dir,
    };
    wait(Duration::from_secs(20), "the API answers", || {
        get(agent.api, "/healthz", None).0 == 200
    });
    agent
}

/// `GET path`, read whole (the connection closed after); (status, body).
fn get(api: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String) {
    request(api, "GET", path, auth)
}

/// `method path` without a body, read whole; (status, body).
fn request(api: SocketAddr, method: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    let (status, _, body) = common::http(api, method, path, auth, Duration::from_secs(20));
    (status, body)
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Writes `entries` (unit, message, microseconds since 1970) to journal file `file` in `dir` (made, or
/// appended to), with the real systemd-journal-remote from the journal export format (systemd's JOURNAL_EXPORT_FORMATS).
fn journal(dir: &Path, file: &str, entries: &[(&str, String, u64)]) {
    let mut export = String::new();
    for (i, (unit, message, at)) in entries.iter().enumerate() {
        export += &format!(
            "__REALTIME_TIMESTAMP={at}\n__MONOTONIC_TIMESTAMP={}\n\
             _BOOT_ID=0123456789abcdef0123456789abcdef\n_SYSTEMD_UNIT={unit}\n\
             SYSLOG_IDENTIFIER={}\n_PID=42\nMESSAGE={message}\n\n",
            i + 1,
            unit.trim_end_matches(".service")
        );
    }
    let input = dir.join(format!("{file}.export"));
    std::fs::write(&input, export).unwrap();
    let out = Command::new(remote())
        .arg(format!(
            "--output={}",
            dir.join(format!("{file}.journal")).display()
        ))
        .arg(&input)
        .output()
        .expect("systemd-journal-remote (apt-get install systemd-journal-remote)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(input).unwrap();
}

fn remote() -> PathBuf {
    [
        "/usr/lib/systemd/systemd-journal-remote",
        "/lib/systemd/systemd-journal-remote",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("systemd-journal-remote (apt-get install systemd-journal-remote)")
}

fn herd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(args)
        .env_remove("HERD_TOKEN")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap()
}

#[test]
fn logs_are_the_tokens_only_filtered_as_asked_cut_where_long_and_followed() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_us();
    let hour_ago = now - 3_600_000_000;
    let mut entries: Vec<(&str, String, u64)> = (0..6)
        .map(|i| ("herd.service", format!("old line {i}"), hour_ago + i))
        .collect();
    entries.push((
        "ssh.service",
        "Accepted publickey for pi".into(),
        now - 2_000_000,
    ));
    entries.push((
        "herd.service",
        format!("long {}", "x".repeat(10_000)),
        now - 1_000_000,
    ));
    entries.push(("herd.service", "newest line".into(), now - 500_000));
    journal(dir.path(), "a", &entries);
    let a = start("127.0.81.1", dir.path(), true);

    // The token, always: this node does not protect reads, and the journal is still refused without it.
    let (status, body) = get(a.api, "/api/v1/logs", None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("API token"), "{body}");
    let (status, _) = get(a.api, "/api/v1/logs", Some("Bearer wrong"));
    assert_eq!(status, 401);
    assert_eq!(get(a.api, "/api/v1/nodes", None).0, 200);

    let (status, body) = get(a.api, "/api/v1/logs", Some(&bearer()));
    assert_eq!(status, 200, "{body}");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 9, "{body}");
    assert!(lines[0].ends_with("herd[42]: old line 0"), "{body}");
    assert!(lines[8].ends_with("herd[42]: newest line"), "{body}");
    // A 10,000-byte line is cut to 4,096 bytes of it, and says so.
    let long = lines[7];
    let (kept, cut) = long
        .split_once(" [herd: ")
        .unwrap_or_else(|| panic!("{long:.200}"));
    let cut: usize = cut.trim_end_matches(" more bytes cut]").parse().unwrap();
    assert_eq!(kept.len(), 4096);
    assert_eq!(kept.len() + cut, kept.find("long ").unwrap() + 5 + 10_000);

    let (_, body) = get(a.api, "/api/v1/logs?n=2", Some(&bearer()));
    assert_eq!(body.lines().count(), 2, "{body}");
    assert!(body.ends_with("newest line\n"), "{body}");
    let (_, body) = get(a.api, "/api/v1/logs?unit=ssh.service", Some(&bearer()));
    assert_eq!(body.lines().count(), 1, "{body}");
    assert!(body.contains("Accepted publickey"), "{body}");
    let since = (now - 600_000_000) / 1_000_000;
    let (_, body) = get(
        a.api,
        &format!("/api/v1/logs?since={since}"),
        Some(&bearer()),
    );
    assert_eq!(body.lines().count(), 3, "{body}");
    assert!(!body.contains("old line"), "{body}");

    // Bad input: each field named.
    for (query, says) in [
        ("n=100000", "n=100000"),
        ("unit=--all", "cannot start with '-'"),
        ("since=yesterday", "since=yesterday"),
        ("grep=secret", "unknown parameter"),
    ] {
        let (status, body) = get(a.api, &format!("/api/v1/logs?{query}"), Some(&bearer()));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(says), "{query}: {body}");
    }

    // The CLI: the node by name, its last lines; without the token, an error saying so.
    let node = format!("http://{}", a.api);
    let out = herd(&[
        "logs", "card-1", "-n", "2", "--node", &node, "--token", TOKEN,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.ends_with("newest line\n"), "{text}");
    let out = herd(&[
        "logs", "card-1", "-u", "ssh", "--since", "10m", "--node", &node, "--token", TOKEN,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Accepted publickey") && text.lines().count() == 1,
        "{text}"
    );
    let out = herd(&["logs", "card-1", "--node", &node]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("API token"), "{err}");
    let out = herd(&[
        "logs",
        "card-1",
        "--since",
        "last tuesday",
        "--node",
        &node,
        "--token",
        TOKEN,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--since \"last tuesday\""),
        "{err}"
    );

    // Following: `herd logs -f` prints what is written after it started.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_herd"))
        .args([
            "logs", "card-1", "-f", "-n", "0", "--node", &node, "--token", TOKEN,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    // Appended to the file read (journalctl --follow of a --directory does not look for new files).
    journal(
        dir.path(),
        "a",
        &[("herd.service", "written while followed".into(), now_us())],
    );
    let line = rx.recv_timeout(Duration::from_secs(20));
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(
        line.as_deref()
            .is_ok_and(|l| l.ends_with("written while followed")),
        "{line:?}"
    );
}

/// Holds a follow reader open, unread; `None` when the agent refused it (its status line says which).
fn hold(api: SocketAddr, query: &str) -> Result<std::net::TcpStream, String> {
    let mut s = std::net::TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /api/v1/logs?{query} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        bearer()
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head).to_string();
    if head.ends_with("200") {
        Ok(s)
    } else {
        let mut rest = String::new();
        let _ = s.read_to_string(&mut rest);
        Err(head + &rest)
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// What `docs/API.md` states: 4 readers at once, 4 MiB a reply that does not follow, 1,000 lines a
/// second after the first ones, and under 100 KiB held per reader.
#[test]
fn readers_are_bounded_in_number_bytes_rate_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let start_at = now_us() - 60_000_000;
    // 12,000 lines of 1,000 bytes: 12 MB of journal, three times what a reply may carry.
    let entries: Vec<(&str, String, u64)> = (0..12_000)
        .map(|i| {
            (
                "big.service",
                format!("{i:06} {}", "y".repeat(993)),
                start_at + i,
            )
        })
        .collect();
    journal(dir.path(), "big", &entries);
    let a = start("127.0.81.2", dir.path(), true);

    // Bytes: the last 10,000 lines would be 10 MB; the reply stops at 4 MiB and says why.
    let (status, body) = get(a.api, "/api/v1/logs?n=10000", Some(&bearer()));
    assert_eq!(status, 200);
    assert!(body.len() <= (4 << 20) + 200, "{}", body.len());
    assert!(body.len() > (4 << 20) - 2000, "{}", body.len());
    assert!(body
        .ends_with("[herd: reply cut at 4 MiB; ask for fewer lines, a unit or a later --since]\n"));

    // Memory: four readers of 10,000 lines that never read, three times over (a reader is dropped by
    // the write-stall timeout or replaced); the agent grows by less than what four readers may hold
    // plus the sockets' buffers (1 MiB each way), not by the 40 MB they asked for.
    let pid = a.child.id();
    let before = rss_kib(pid);
    let mut most = before;
    for _ in 0..3 {
        let held: Vec<_> = (0..4).map(|_| hold(a.api, "n=10000").unwrap()).collect();
        // Readers at once: a fifth is refused, and says how many there may be.
        let fifth = hold(a.api, "n=1").unwrap_err();
        assert!(
            fifth.contains("503") && fifth.contains("4 log readers"),
            "{fifth}"
        );
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(200));
            most = most.max(rss_kib(pid));
        }
        drop(held);
        wait(Duration::from_secs(10), "readers let go", || {
            hold(a.api, "n=1").is_ok()
        });
    }
    let grown = most.saturating_sub(before);
    eprintln!("RSS {before} KiB before, at most {most} KiB with 4 unread readers (+{grown} KiB)");
    let held = 4 * herd::daemon::logs::HELD_PER_READER as u64 / 1024;
    assert!(
        grown < held + 4 * 1024,
        "grew {grown} KiB (stated: {held} KiB + sockets)"
    );

    // Rate: 3,000 new lines written at once reach a follower over about 2 s (1,000 at once, then 1,000
    // a second; some may come before the clock starts, so 1.5 s at least). Unpaced: 0.05 s.
    let mut s = hold(a.api, "n=0&follow=1").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let burst: Vec<(&str, String, u64)> = (0..3_000)
        .map(|i| ("burst.service", format!("burst {i}"), now_us() + i))
        .collect();
    journal(dir.path(), "big", &burst);
    let started = Instant::now();
    let mut seen = 0;
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while seen < 3_000 && started.elapsed() < Duration::from_secs(30) {
        let Ok(n) = s.read(&mut buf) else { break };
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        seen = String::from_utf8_lossy(&got).matches("burst ").count();
    }
    let took = started.elapsed();
    assert_eq!(seen, 3_000, "{took:?}");
    assert!(
        took >= Duration::from_millis(1500),
        "3,000 lines in {took:?}"
    );
    eprintln!("3,000 lines followed in {took:?}");
}

#[test]
fn a_node_without_a_token_serves_no_logs() {
    let dir = tempfile::tempdir().unwrap();
    journal(
        dir.path(),
        "a",
        &[("herd.service", "password=hunter2".into(), now_us())],
    );
    let a = start("127.0.81.3", dir.path(), false);
    let (status, body) = get(a.api, "/api/v1/logs", None);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("no api.token"), "{body}");
    assert!(!body.contains("hunter2"));
}

/// Issue 28, 3: an action is the token's only, checked on the node (a board without an LED says so at
/// once), logged with who asked, and handed to the root unit as `action/request.json`, one at a time.
#[test]
fn actions_are_the_tokens_checked_and_handed_to_the_root_unit() {
    let journal = tempfile::tempdir().unwrap();
    let a = start("127.0.81.4", journal.path(), true);
    let handed_to = a.dir.path().join("state/action/request.json");
    let (status, body) = request_post(&a, "restart", None);
    assert_eq!(status, 401, "{body}");
    assert!(!handed_to.exists());
    let (status, body) = request_post(&a, "format-the-card", Some(&bearer()));
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("reboot, shutdown, identify and restart"),
        "{body}"
    );
    assert_eq!(
        request(a.api, "GET", "/api/v1/actions/reboot", Some(&bearer())).0,
        405
    );
    // This machine has no /sys/class/leds: identify answers so at once, and hands nothing over.
    assert!(!std::path::Path::new("/sys/class/leds/ACT").exists());
    let (status, body) = request_post(&a, "identify", Some(&bearer()));
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("no activity LED"), "{body}");
    assert!(!handed_to.exists());

    // The CLI, by name: handed over, with who asked; a second action waits for the first.
    let node = format!("http://{}", a.api);
    let out = herd(&["restart", "card-1", "--node", &node, "--token", TOKEN]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.starts_with("card-1: restarting its agent"), "{said}");
    let handed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&handed_to).unwrap()).unwrap();
    assert_eq!(handed["action"], "restart");
    // The CLI connects from 127.0.0.1 (loopback's source for any 127/8 address).
    assert_eq!(handed["from"], "127.0.0.1");
    let mode = std::fs::metadata(&handed_to).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let out = herd(&["reboot", "card-1", "--node", &node, "--token", TOKEN]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("restart (asked by 127.0.0.1) is still waiting"),
        "{err}"
    );
    // A node name that matches nothing stops before anything is asked.
    std::fs::remove_file(&handed_to).unwrap();
    let out = herd(&[
        "shutdown",
        "card-1",
        "no-such-card",
        "--node",
        &node,
        "--token",
        TOKEN,
    ]);
    assert!(!out.status.success());
    assert!(
        !handed_to.exists(),
        "nothing asked when a name matches no node"
    );

    let bare = tempfile::tempdir().unwrap();
    let open = start("127.0.81.5", bare.path(), false);
    let (status, body) = request_post(&open, "reboot", None);
    assert_eq!(status, 403, "{body}");
    assert!(!open.dir.path().join("state/action/request.json").exists());
}

fn request_post(a: &Agent, action: &str, auth: Option<&str>) -> (u16, String) {
    request(a.api, "POST", &format!("/api/v1/actions/{action}"), auth)
}

/// Issue 28's done-when: readers of the history cannot make the agent hold more than stated. Its JSON
/// is encoded once per new point and shared (docs/API.md, History), so 96 readers from 8 addresses
/// that ask and never read add sockets' buffers, not copies: the agent grows by under 4 MiB, and
/// answers a reader that does read.
#[test]
fn history_readers_that_never_read_add_no_copies() {
    let journal = tempfile::tempdir().unwrap();
    let a = start("127.0.81.6", journal.path(), true);
    let (status, body) = get(a.api, "/api/v1/history", None);
    assert_eq!(status, 200, "{body}");
    let pid = a.child.id();
    let before = rss_kib(pid);
    // 12 from each of 8 addresses: within the API's 16 per address and 128 per subnet.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut held: Vec<std::net::TcpStream> = rt.block_on(async {
        let mut out = Vec::new();
        for host in 1..=8u8 {
            for _ in 0..12 {
                let s = tokio::net::TcpSocket::new_v4().unwrap();
                s.bind(format!("127.0.91.{host}:0").parse().unwrap())
                    .unwrap();
                let c = s.connect(a.api).await.unwrap().into_std().unwrap();
                c.set_nonblocking(false).unwrap();
                out.push(c);
            }
        }
        out
    });
    for s in held.iter_mut() {
        // Two requests each, pipelined, and never a byte read.
        write!(
            s,
            "GET /api/v1/history HTTP/1.1\r\nHost: x\r\n\r\nGET /api/v1/history HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    let grown = rss_kib(pid).saturating_sub(before);
    eprintln!("RSS {before} KiB; 96 unread history readers: +{grown} KiB");
    assert!(grown < 4 * 1024, "grew {grown} KiB");
    assert_eq!(get(a.api, "/api/v1/history", None).0, 200);
}
