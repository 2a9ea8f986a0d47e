//! Operating the cluster with the real `herd` binary and the real Ansible: the dynamic inventory read by
//! `ansible-inventory`, `herd hosts`, `herd launch` (least-busy choice, templates, `ansible-playbook` with a
//! local connection, meta-data, `--dry-run`, `--reconcile`), failure handlers and `herd watch`.
//! Needs `ansible` (installed by `cargo xtask ci`).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{wait, Cluster, TOKEN};
use herd::model::published::{Sample, SAMPLE_KEY};
use serde_json::Value;

fn herd(cluster: &Cluster, args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herd"));
    cmd.args(args)
        .env("HERD_NODE", cluster.url(0))
        .env("HERD_TOKEN", TOKEN);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Node name of agent `i` (the test config names nodes after their IP).
fn name(cluster: &Cluster, i: usize) -> String {
    format!("node-{}", cluster.agents[i].local_addr().ip())
}

fn services_seen_by(cluster: &Cluster, observer: usize, i: usize) -> Vec<String> {
    let id = cluster.agents[i].id().to_string();
    cluster
        .client(observer)
        .nodes()
        .unwrap()
        .into_iter()
        .find(|n| n.id == id)
        .map(|n| n.services)
        .unwrap_or_default()
}

/// Replaces each agent's published monitoring with a sample of the given 1-minute load (the real sampler
/// runs once an hour in these clusters), and waits until agent 0 sees them all.
fn set_loads(cluster: &Cluster, loads: &[f64]) {
    for (i, load) in loads.iter().enumerate() {
        let a = &cluster.agents[i];
        wait(Duration::from_secs(10), "first sample", || {
            a.members()
                .iter()
                .any(|m| m.is_self && m.kvs.contains_key(SAMPLE_KEY))
        });
        let s = Sample {
            cpu: (load * 25.0) as f32,
            mem_used: 1 << 30,
            mem_total: 4 << 30,
            load: [*load, *load, *load],
            temp: Some(50.0),
            disk_used: 1 << 30,
            disk_total: 16 << 30,
        };
        a.handle().set(SAMPLE_KEY, &s.to_gossip()).unwrap();
    }
    wait(Duration::from_secs(10), "loads gossiped", || {
        let nodes = cluster.client(0).nodes().unwrap();
        loads.iter().enumerate().all(|(i, l)| {
            let id = cluster.agents[i].id().to_string();
            nodes
                .iter()
                .any(|n| n.id == id && n.monitoring.as_ref().is_some_and(|m| m.load[0] == *l))
        })
    });
}

const SLOW_SAMPLER: &str = "interval = \"1h\"\n";

/// A playbooks directory: `nginx_webserver` records each host it ran on; `nginx_lb` renders its upstreams
/// and copies the result out; `flaky` fails on the host named in $HERD_TEST_FAIL.
fn playbooks(dir: &Path) {
    let web = dir.join("nginx_webserver");
    std::fs::create_dir_all(&web).unwrap();
    std::fs::write(
        web.join("playbook.yml"),
        r#"- hosts: nginx_webserver
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: /usr/bin/python3
  tasks:
    - name: record that the play ran on this host
      copy:
        content: "{{ inventory_hostname }} {{ ansible_host }} {{ herd_service }}\n"
        dest: "{{ lookup('env', 'HERD_TEST_OUT') }}/ran-{{ inventory_hostname }}"
"#,
    )
    .unwrap();
    let lb = dir.join("nginx_lb");
    std::fs::create_dir_all(&lb).unwrap();
    std::fs::write(
        lb.join("upstreams.conf.tera"),
        "upstream web {\n{% for n in services.nginx_webserver %}    server {{ n.address }}:80;\n{% endfor %}}\n",
    )
    .unwrap();
    std::fs::write(
        lb.join("playbook.yml"),
        r#"- hosts: nginx_lb
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: /usr/bin/python3
  tasks:
    - copy:
        src: "{{ herd_rendered }}/upstreams.conf"
        dest: "{{ lookup('env', 'HERD_TEST_OUT') }}/lb-{{ inventory_hostname }}.conf"
"#,
    )
    .unwrap();
    let flaky = dir.join("flaky");
    std::fs::create_dir_all(&flaky).unwrap();
    std::fs::write(
        flaky.join("playbook.yml"),
        r#"- hosts: flaky
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: /usr/bin/python3
  tasks:
    - fail:
        msg: "broken on purpose"
      when: inventory_hostname == lookup('env', 'HERD_TEST_FAIL')
"#,
    )
    .unwrap();
}

#[test]
fn ansible_inventory_reads_the_cluster_through_herd_inventory() {
    let cluster = Cluster::start(20);
    cluster.client(1).change_service("web", true).unwrap();
    wait(Duration::from_secs(10), "service gossiped", || {
        services_seen_by(&cluster, 0, 1) == ["web"]
    });
    // `herd-inventory` is a link to herd: called so, it is the inventory command.
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("herd-inventory");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_herd"), &link).unwrap();
    let out = Command::new("ansible-inventory")
        .arg("--list")
        .arg("-i")
        .arg(&link)
        .env("HERD_NODE", cluster.url(0))
        .env("ANSIBLE_INVENTORY_UNPARSED_FAILED", "true")
        .output()
        .expect("ansible-inventory (apt-get install ansible)");
    assert!(out.status.success(), "{}", text(&out));
    let inv: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hosts = |g: &str| -> Vec<String> {
        let mut v: Vec<String> = inv[g]["hosts"]
            .as_array()
            .map(|a| a.iter().map(|h| h.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let mut all: Vec<String> = (0..3).map(|i| name(&cluster, i)).collect();
    all.sort();
    assert_eq!(hosts("alive"), all, "{inv}");
    assert_eq!(hosts("web"), [name(&cluster, 1)]);
    assert_eq!(
        hosts(&format!("arch_{}", std::env::consts::ARCH)),
        all,
        "{inv}"
    );
    let vars = &inv["_meta"]["hostvars"][name(&cluster, 1)];
    assert_eq!(
        vars["ansible_host"],
        cluster.agents[1].local_addr().ip().to_string()
    );
    assert_eq!(
        vars["herd_http_port"],
        cluster.agents[1].api_addr().unwrap().port()
    );
    assert_eq!(vars["herd_id"], cluster.agents[1].id().to_string());
    assert_eq!(vars["herd_services"][0], "web");
    assert!(
        vars["herd_monitoring"]["mem_total"].as_u64().unwrap() > 0,
        "{vars}"
    );

    // `--host` answers for one host, `{}` for an unknown one.
    let one = herd(&cluster, &["inventory", "--host", &name(&cluster, 2)], &[]);
    assert!(one.status.success(), "{}", text(&one));
    let v: Value = serde_json::from_slice(&one.stdout).unwrap();
    assert_eq!(v["herd_id"], cluster.agents[2].id().to_string());
    let none = herd(&cluster, &["inventory", "--host", "nope"], &[]);
    assert_eq!(String::from_utf8_lossy(&none.stdout).trim(), "{}");

    // `herd hosts --playbook`: an INI file with the playbook's groups, which Ansible parses back.
    let play = dir.path().join("site.yml");
    std::fs::write(
        &play,
        "- hosts: web\n  tasks: []\n- hosts: alive:!web\n  tasks: []\n",
    )
    .unwrap();
    let ini = dir.path().join("hosts.ini");
    let o = herd(
        &cluster,
        &[
            "hosts",
            "--playbook",
            play.to_str().unwrap(),
            "--out",
            ini.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let parsed = Command::new("ansible-inventory")
        .arg("--list")
        .arg("-i")
        .arg(&ini)
        .env("ANSIBLE_INVENTORY_UNPARSED_FAILED", "true")
        .output()
        .unwrap();
    assert!(parsed.status.success(), "{}", text(&parsed));
    let p: Value = serde_json::from_slice(&parsed.stdout).unwrap();
    assert_eq!(p["web"]["hosts"][0], name(&cluster, 1));
    assert_eq!(p["alive"]["hosts"].as_array().unwrap().len(), 3);
    assert_eq!(
        p["_meta"]["hostvars"][name(&cluster, 1)]["ansible_host"],
        cluster.agents[1].local_addr().ip().to_string()
    );
}

#[test]
fn launch_puts_a_service_on_the_least_busy_nodes_and_templates_follow() {
    let cluster = Cluster::start_with(21, 4, SLOW_SAMPLER);
    // Loads: node 1 and node 3 are the least busy.
    set_loads(&cluster, &[0.9, 0.1, 0.6, 0.2]);
    let dir = tempfile::tempdir().unwrap();
    let books = dir.path().join("playbooks");
    playbooks(&books);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let envs = [
        ("HERD_PLAYBOOKS", books.as_path()),
        ("HERD_TEST_OUT", out.as_path()),
    ];
    let chosen = [name(&cluster, 1), name(&cluster, 3)];

    // --dry-run: the choice and why, the rendered files; nothing run, nothing recorded.
    let dry = herd(
        &cluster,
        &["launch", "2", "nginx_webserver", "--dry-run"],
        &envs,
    );
    assert!(dry.status.success(), "{}", text(&dry));
    let said = String::from_utf8_lossy(&dry.stdout);
    for c in &chosen {
        assert!(said.contains(c.as_str()), "{}", text(&dry));
    }
    assert!(!said.contains(&name(&cluster, 0)) && !said.contains(&name(&cluster, 2)));
    assert!(
        said.contains("busy 0.") && said.contains("load 0.10"),
        "{said}"
    );
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "dry run ran nothing"
    );
    assert!(
        !books.join(".herd/wanted.json").exists(),
        "dry run recorded nothing"
    );
    for i in 0..4 {
        assert!(services_seen_by(&cluster, i, i).is_empty());
    }

    // The real thing.
    let run = herd(&cluster, &["launch", "2", "nginx_webserver"], &envs);
    assert!(run.status.success(), "{}", text(&run));
    assert!(String::from_utf8_lossy(&run.stdout).contains("PLAY RECAP"));
    let mut ran: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    ran.sort();
    assert_eq!(
        ran,
        chosen
            .iter()
            .map(|c| format!("ran-{c}"))
            .collect::<Vec<_>>()
    );
    let line = std::fs::read_to_string(out.join(format!("ran-{}", chosen[0]))).unwrap();
    assert_eq!(
        line.trim(),
        format!(
            "{} {} nginx_webserver",
            chosen[0],
            cluster.agents[1].local_addr().ip()
        )
    );
    for (i, want) in [(0, false), (1, true), (2, false), (3, true)] {
        assert_eq!(
            services_seen_by(&cluster, i, i) == ["nginx_webserver"],
            want,
            "node {i}"
        );
    }
    let wanted: Value =
        serde_json::from_str(&std::fs::read_to_string(books.join(".herd/wanted.json")).unwrap())
            .unwrap();
    assert_eq!(wanted["nginx_webserver"], 2);

    // The load balancer's template gets exactly the web servers' addresses.
    wait(Duration::from_secs(10), "web servers gossiped", || {
        services_seen_by(&cluster, 0, 1) == ["nginx_webserver"]
            && services_seen_by(&cluster, 0, 3) == ["nginx_webserver"]
    });
    let lb = herd(&cluster, &["launch", "1", "nginx_lb"], &envs);
    assert!(lb.status.success(), "{}", text(&lb));
    // The least busy node without nginx_lb is node 1 (0.1): it ran the play.
    let conf = std::fs::read_to_string(out.join(format!("lb-{}.conf", chosen[0]))).unwrap();
    let mut servers: Vec<&str> = conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .collect();
    servers.sort();
    let mut expected = vec![
        format!("{}:80;", cluster.agents[1].local_addr().ip()),
        format!("{}:80;", cluster.agents[3].local_addr().ip()),
    ];
    expected.sort();
    assert_eq!(servers, expected, "{conf}");

    // A play that fails on one node: reported for that node, recorded only where it succeeded.
    let fail_on = name(&cluster, 1);
    let flaky = herd(
        &cluster,
        &["launch", "2", "flaky"],
        &[
            ("HERD_PLAYBOOKS", books.as_path()),
            ("HERD_TEST_FAIL", Path::new(&fail_on)),
        ],
    );
    assert!(!flaky.status.success(), "{}", text(&flaky));
    let err = String::from_utf8_lossy(&flaky.stderr);
    assert!(
        err.contains(&format!("{fail_on}: the play failed; nothing recorded")),
        "{}",
        text(&flaky)
    );
    assert!(!services_seen_by(&cluster, 1, 1).contains(&"flaky".to_string()));
    assert!(services_seen_by(&cluster, 3, 3).contains(&"flaky".to_string()));

    // Asking for more nodes than can take the service: refused before anything runs.
    let too_many = herd(&cluster, &["launch", "3", "nginx_webserver"], &envs);
    assert!(!too_many.status.success());
    assert!(
        String::from_utf8_lossy(&too_many.stderr).contains("2 of the 4 alive nodes do not run it"),
        "{}",
        text(&too_many)
    );
}

#[test]
fn a_failure_runs_the_handler_once_and_reconcile_replaces_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    // Each agent appends what it saw to its own file; a low φ threshold for the service makes the
    // verdict quick.
    let extra = format!(
        "{SLOW_SAMPLER}[service.nginx_webserver]\nphi_threshold = 3.0\n[[handlers]]\non = [\"failure\"]\ncommand = 'env | grep ^HERD_ | sort > \"{0}/$HERD_SELF_NAME-$HERD_MEMBER_NAME.$$\"'\ntimeout = \"10s\"\n",
        hooks.display()
    );
    let mut cluster = Cluster::start_with(22, 4, &extra);
    set_loads(&cluster, &[0.9, 0.1, 0.6, 0.2]);
    let books = dir.path().join("playbooks");
    playbooks(&books);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let envs = [
        ("HERD_PLAYBOOKS", books.as_path()),
        ("HERD_TEST_OUT", out.as_path()),
    ];
    let run = herd(&cluster, &["launch", "2", "nginx_webserver"], &envs);
    assert!(run.status.success(), "{}", text(&run));

    // Node 3 runs nginx_webserver; it dies without a word.
    let victim = name(&cluster, 3);
    let victim_ip = cluster.agents[3].local_addr().ip().to_string();
    wait(Duration::from_secs(10), "service gossiped", || {
        (0..3).all(|i| services_seen_by(&cluster, i, 3) == ["nginx_webserver"])
    });
    cluster.agents.remove(3).kill();
    wait(
        Duration::from_secs(30),
        "every survivor's handler ran",
        || std::fs::read_dir(&hooks).unwrap().count() >= 3,
    );
    std::thread::sleep(Duration::from_secs(2));
    let mut files: Vec<String> = std::fs::read_dir(&hooks)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "once per survivor: {files:?}");
    for i in 0..3 {
        let observer = name(&cluster, i);
        let f = files
            .iter()
            .find(|f| f.starts_with(&format!("{observer}-{victim}.")))
            .unwrap_or_else(|| panic!("{observer} ran no handler for {victim}: {files:?}"));
        let env = std::fs::read_to_string(hooks.join(f)).unwrap();
        for line in [
            "HERD_EVENT=failure".to_string(),
            format!("HERD_MEMBER_NAME={victim}"),
            format!("HERD_MEMBER_ADDRESS={victim_ip}"),
            "HERD_MEMBER_SERVICES=nginx_webserver".to_string(),
            "HERD_MEMBER_STATE=dead".to_string(),
            format!("HERD_SELF_NAME={observer}"),
        ] {
            assert!(
                env.lines().any(|l| l == line),
                "{line} missing from:\n{env}"
            );
        }
    }

    // Reconcile: one of nginx_webserver's two is gone; the least busy node without it takes over.
    let rec = herd(&cluster, &["launch", "--reconcile"], &envs);
    assert!(rec.status.success(), "{}", text(&rec));
    assert!(
        String::from_utf8_lossy(&rec.stdout)
            .contains("nginx_webserver: 1 of 2 running; launching 1"),
        "{}",
        text(&rec)
    );
    // Node 2 (load 0.6) beats node 0 (0.9).
    assert_eq!(services_seen_by(&cluster, 2, 2), ["nginx_webserver"]);
    assert!(services_seen_by(&cluster, 0, 0).is_empty());
    let again = herd(&cluster, &["launch", "--reconcile"], &envs);
    assert!(again.status.success(), "{}", text(&again));
    wait(Duration::from_secs(10), "reconciled", || {
        let o = herd(&cluster, &["launch", "--reconcile", "--dry-run"], &envs);
        String::from_utf8_lossy(&o.stdout).contains("nginx_webserver: 2 of 2 running")
    });
}

#[test]
fn watch_shows_join_failure_and_leave() {
    let mut cluster = Cluster::start(23);
    let mut child = Command::new(env!("CARGO_BIN_EXE_herd"))
        .arg("watch")
        .env("HERD_NODE", cluster.url(0))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { return };
                lines.lock().unwrap().push(l);
            }
        })
    };
    let seen = |kind: &str, who: &str| {
        lines.lock().unwrap().iter().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&kind) && f.get(2) == Some(&who)
        })
    };
    // Give the stream a moment to attach before the first event.
    std::thread::sleep(Duration::from_millis(500));
    let new = cluster.add(23, 4, "");
    let joined = name(&cluster, new);
    wait(Duration::from_secs(15), "join shown", || {
        seen("joined", &joined)
    });
    cluster.wait_alive(4);
    let crashed = name(&cluster, 3);
    cluster.agents.remove(3).kill();
    wait(Duration::from_secs(30), "failure shown", || {
        seen("dead", &crashed)
    });
    let leaving = name(&cluster, 2);
    let a = cluster.agents.remove(2);
    cluster.runtime.block_on(a.shutdown()).unwrap();
    wait(Duration::from_secs(15), "leave shown", || {
        seen("left", &leaving)
    });
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let all = lines.lock().unwrap().clone();
    // Each line: time, event, name, address, id.
    let line = all.iter().find(|l| l.contains(" dead ")).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3], crashed.trim_start_matches("node-"), "{all:?}");
}

#[test]
fn the_shipped_examples_render_and_pass_ansible_syntax_check() {
    let cluster = Cluster::start(24);
    for i in [1, 2] {
        cluster
            .client(i)
            .change_service("nginx_webserver", true)
            .unwrap();
    }
    wait(Duration::from_secs(10), "web servers gossiped", || {
        services_seen_by(&cluster, 0, 1) == ["nginx_webserver"]
            && services_seen_by(&cluster, 0, 2) == ["nginx_webserver"]
    });
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ansible");
    // A copy: the dry run must not write into the repository, and it does not (checked below).
    let dir = tempfile::tempdir().unwrap();
    let books = dir.path().join("examples");
    let cp = Command::new("cp")
        .arg("-r")
        .arg(&examples)
        .arg(&books)
        .status()
        .unwrap();
    assert!(cp.success());
    let dry = herd(
        &cluster,
        &["launch", "1", "nginx_lb", "--dry-run"],
        &[("HERD_PLAYBOOKS", books.as_path())],
    );
    assert!(dry.status.success(), "{}", text(&dry));
    let said = String::from_utf8_lossy(&dry.stdout);
    let mut servers: Vec<String> = said
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .filter(|s| s.contains(';'))
        .map(|s| s.split(';').next().unwrap().to_string())
        .collect();
    servers.sort();
    let mut expected: Vec<String> = [1, 2]
        .iter()
        .map(|i| format!("{}:80", cluster.agents[*i].local_addr().ip()))
        .collect();
    expected.sort();
    assert_eq!(servers, expected, "{said}");
    assert!(!books.join(".herd").exists(), "a dry run writes nothing");
    for service in ["nginx_webserver", "nginx_lb"] {
        let check = Command::new("ansible-playbook")
            .arg("--syntax-check")
            .arg("-i")
            .arg("localhost,")
            .arg(books.join(service).join("playbook.yml"))
            .output()
            .unwrap();
        assert!(check.status.success(), "{service}: {}", text(&check));
    }
}

/// A real `herd agent` process on `ip`, its API on a fixed port.
fn agent_process(dir: &Path, ip: &str, seed: Option<&str>) -> std::process::Child {
    let config = dir.join(format!("{ip}.toml"));
    let seeds = seed.map(|s| format!("\"{s}\"")).unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            "cluster = \"watch\"\nnode_name = \"p-{ip}\"\nstate_dir = \"{}/{ip}\"\n[gossip]\nbind = \"{ip}:7946\"\nseeds = [{seeds}]\ninterval = \"100ms\"\ninsecure = true\n[discovery]\nmdns = false\n[api]\nbind = \"{ip}:18500\"\n",
            dir.display()
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["agent", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn watch_reconnects_when_the_node_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = agent_process(dir.path(), "127.0.26.1", None);
    let node = "http://127.0.26.1:18500";
    wait(Duration::from_secs(10), "agent up", || {
        herd::client::Client::new(node, None)
            .unwrap()
            .nodes()
            .is_ok()
    });
    let mut watch = Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["watch", "--node", node])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let collect = |pipe: Box<dyn std::io::Read + Send>| {
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        lines
    };
    let out = collect(Box::new(watch.stdout.take().unwrap()));
    let err = collect(Box::new(watch.stderr.take().unwrap()));
    std::thread::sleep(Duration::from_millis(500));
    // The watched node goes away and comes back.
    first.kill().unwrap();
    first.wait().unwrap();
    wait(Duration::from_secs(10), "break noticed", || {
        err.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("reconnecting"))
    });
    let mut first = agent_process(dir.path(), "127.0.26.1", None);
    wait(Duration::from_secs(20), "reconnected", || {
        err.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("reconnected"))
    });
    // Events flow again: a new node joining shows.
    let mut second = agent_process(dir.path(), "127.0.26.2", Some("127.0.26.1:7946"));
    wait(
        Duration::from_secs(15),
        "join shown after the reconnection",
        || {
            out.lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("joined") && l.contains("p-127.0.26.2"))
        },
    );
    for c in [&mut watch, &mut first, &mut second] {
        let _ = c.kill();
        let _ = c.wait();
    }
}
