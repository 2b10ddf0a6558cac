//! End-to-end fleet health: the real `drover serve` and `drover-agent` binaries.
//!
//! Checks: an agent killed with SIGKILL is `lost` once the lease grace period passed (and
//! not before); an agent whose Docker endpoint does not answer is `degraded` with reason
//! `docker unreachable`; `drover status`, `drover describe agent` and `drover events -o json`
//! show both; `/metrics` is scraped and parsed (the lost agent counted); the status page is
//! loaded in headless Chromium (agents table checked, screenshot saved in the test output
//! dir); beyond loopback the HTTP listener refuses to start unprotected and checks its token.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drover_tests::chromium;
use drover_tests::harness::{
    Agent, Controller, drover_bin, serve_command, stderr, stdout, wait_for,
};

/// Heartbeats every second; lost after 5 s without one.
const GRACE: &str = "5s";

fn http_get(addr: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = addr.replace("0.0.0.0", "127.0.0.1");
    let mut s = std::net::TcpStream::connect(&addr).expect("connect to the http listener");
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (code, body.to_string())
}

/// Parses Prometheus/OpenMetrics text into (series with labels, value).
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("metric line has a value");
            (
                series.to_string(),
                value
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("bad value in {l:?}")),
            )
        })
        .collect()
}

fn metric(m: &[(String, f64)], series: &str) -> f64 {
    m.iter()
        .find(|(s, _)| s == series)
        .unwrap_or_else(|| panic!("no series {series} in {m:?}"))
        .1
}

fn drover_ok(c: &Controller, args: &[&str]) -> String {
    let out = c.drover(args);
    assert!(
        out.status.success(),
        "drover {args:?} failed: {}",
        stderr(&out)
    );
    stdout(&out)
}

fn json(c: &Controller, args: &[&str]) -> serde_json::Value {
    let text = drover_ok(c, args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("drover {args:?}: {e}: {text}"))
}

fn output_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fleet_health");
    std::fs::create_dir_all(&dir).expect("create test output dir");
    dir
}

#[test]
fn lost_degraded_status_events_metrics_and_web_page() {
    let c = Controller::start_with(&["--heartbeat-interval", "1s", "--lease-grace", GRACE]);
    let token = c.create_token(&["--label", "site=lab", "--uses", "2"]);
    let mut fine = Agent::new();
    let fine_id = fine.enroll_ok(&c.url(), &token);
    let mut nodocker = Agent::new();
    let nodocker_id = nodocker.enroll_ok(&c.url(), &token);
    fine.run();
    nodocker.run_with(&[], &[], &[("DOCKER_HOST", "unix:///nonexistent.sock")]);

    wait_for(Duration::from_secs(30), "agent healthy", || {
        c.agent(&fine_id).filter(|a| a["state"] == "healthy")
    });
    let a = wait_for(Duration::from_secs(30), "agent degraded", || {
        c.agent(&nodocker_id).filter(|a| a["state"] == "degraded")
    });
    assert!(
        a["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "docker unreachable"),
        "{a}"
    );
    // DESIGN.md's fields of `drover agents -o json`.
    for key in [
        "id",
        "hostname",
        "labels",
        "state",
        "reasons",
        "applied_generation",
        "ips",
        "arch",
        "version",
        "last_seen",
        "runners",
    ] {
        assert!(a.get(key).is_some(), "missing {key} in {a}");
    }
    assert!(
        time::OffsetDateTime::parse(
            a["last_seen"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339
        )
        .is_ok()
    );

    // SIGKILL: the stream drops at once, the lease holds for the grace period.
    fine.proc().kill();
    let a = wait_for(Duration::from_secs(10), "agent disconnected", || {
        c.agent(&fine_id).filter(|a| a["connected"] == false)
    });
    assert_ne!(a["state"], "lost", "lost before the grace period: {a}");
    let a = wait_for(Duration::from_secs(30), "agent lost", || {
        c.agent(&fine_id).filter(|a| a["state"] == "lost")
    });
    assert!(
        a["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("no heartbeat"),
        "{a}"
    );

    // drover status
    let s = json(&c, &["status", "-o", "json"]);
    assert_eq!(s["agents"]["lost"], 1, "{s}");
    assert_eq!(s["agents"]["degraded"], 1, "{s}");
    assert_eq!(s["agents"]["healthy"], 0, "{s}");
    assert_eq!(s["total"], 2);
    let problems = s["problems"].as_array().unwrap();
    assert_eq!(problems[0]["id"], fine_id.as_str(), "lost first: {s}");
    assert_eq!(problems[1]["id"], nodocker_id.as_str());
    let text = drover_ok(&c, &["status"]);
    assert!(
        text.contains("1 lost") && text.contains("docker unreachable"),
        "{text}"
    );
    for line in text.lines() {
        assert!(line.chars().count() <= 80, "wider than 80: {line:?}");
    }
    assert!(!text.contains('\x1b'), "no colours when not a terminal");
    let table = drover_ok(&c, &["agents"]);
    assert!(
        table.contains(&nodocker_id) && table.contains("docker unreachable"),
        "{table}"
    );
    for line in table.lines() {
        assert!(line.chars().count() <= 80, "wider than 80: {line:?}");
    }

    // drover describe agent
    let d = json(&c, &["describe", "agent", &nodocker_id, "-o", "json"]);
    assert_eq!(d["state"], "degraded");
    assert_eq!(d["host"]["docker_reachable"], false, "{d}");
    assert!(
        d["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "agent-connected"),
        "{d}"
    );
    let text = drover_ok(&c, &["describe", "agent", &nodocker_id]);
    assert!(
        text.contains("Docker:") && text.contains("unreachable"),
        "{text}"
    );
    assert!(text.contains("Recent events:"), "{text}");
    let out = c.drover(&["describe", "agent", "nope"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no agent"), "{}", stderr(&out));

    // drover events
    let ev = json(&c, &["events", "-o", "json"]);
    let ev = ev.as_array().unwrap();
    let has = |agent: &str, kind: &str, text: &str| {
        ev.iter().any(|e| {
            e["agent_id"] == agent
                && e["kind"] == kind
                && e["message"].as_str().unwrap_or("").contains(text)
        })
    };
    assert!(has(&fine_id, "agent-enrolled", "site=lab"), "{ev:?}");
    assert!(has(&fine_id, "agent-connected", ""), "{ev:?}");
    assert!(has(&fine_id, "agent-disconnected", ""), "{ev:?}");
    assert!(has(&fine_id, "agent-state", "-> lost"), "{ev:?}");
    assert!(has(&nodocker_id, "agent-connected", ""), "{ev:?}");
    assert!(ev.iter().all(|e| e["at"].as_str().is_some()));
    assert!(
        ev.windows(2)
            .all(|w| w[0]["id"].as_u64() < w[1]["id"].as_u64())
    );
    let mine = json(&c, &["events", "--agent", &nodocker_id, "-o", "json"]);
    assert!(
        mine.as_array()
            .unwrap()
            .iter()
            .all(|e| e["agent_id"] == nodocker_id.as_str()),
        "{mine}"
    );
    let none = json(&c, &["events", "--since", "1s", "-o", "json"]);
    assert!(none.as_array().unwrap().len() < ev.len());

    // /metrics
    let (code, text) = http_get(&c.http_addr, "/metrics", None);
    assert_eq!(code, 200, "{text}");
    let m = parse_metrics(&text);
    assert_eq!(metric(&m, "drover_agents{state=\"lost\"}"), 1.0, "{text}");
    assert_eq!(metric(&m, "drover_agents{state=\"degraded\"}"), 1.0);
    assert_eq!(metric(&m, "drover_agents{state=\"healthy\"}"), 0.0);
    assert_eq!(metric(&m, "drover_agents{state=\"revoked\"}"), 0.0);
    assert_eq!(metric(&m, "drover_sessions_connected"), 1.0);
    assert_eq!(metric(&m, "drover_enrollments_total"), 2.0);
    assert!(metric(&m, "drover_heartbeat_lag_seconds_count") > 0.0);
    assert_eq!(metric(&m, "drover_rollout_generation"), 0.0);
    assert!(
        m.iter()
            .any(|(s, v)| s.starts_with("drover_build_info{") && *v == 1.0)
    );

    status_page_in_chromium(&c, &fine_id, &nodocker_id);

    // `drover events --follow` prints what happens next: a deletion.
    let mut follow = Command::new(drover_bin())
        .arg("--data-dir")
        .arg(c.data_dir())
        .args(["events", "--follow", "--agent", &fine_id, "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The backlog first (one JSON object per line), then the new event.
    let first = rx.recv_timeout(Duration::from_secs(20)).expect("backlog");
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["kind"], "agent-enrolled");
    drover_ok(&c, &["agent", "delete", &fine_id]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("agent-deleted event while following");
        let e: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(e["agent_id"], fine_id.as_str());
        if e["kind"] == "agent-deleted" {
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(c.agent(&fine_id).unwrap()["state"], "revoked");
}

/// The status page, without JavaScript, in headless Chromium (skipped with a message when
/// Chromium is missing and CI is unset).
fn status_page_in_chromium(c: &Controller, fine_id: &str, nodocker_id: &str) {
    // The status page, without JavaScript, in headless Chromium.
    let (code, html) = http_get(&c.http_addr, "/?state=lost", None);
    assert_eq!(code, 200);
    // The agents table follows the filter; the jobs panel after it is fleet-wide (its
    // idle agents list every agent).
    let agents_table = html
        .split("<section id=\"fleet-jobs\">")
        .next()
        .unwrap_or("");
    assert!(
        agents_table.contains(fine_id) && !agents_table.contains(&format!("/agents/{nodocker_id}"))
    );
    let Some(bin) = chromium::find_or_skip("the headless Chromium part") else {
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", c.http_addr);
    let dom = chromium::run(&bin, profile.path(), &["--dump-dom".into(), url.clone()]);
    let table_start = dom
        .find("<table id=\"agents\"")
        .expect("agents table in the DOM");
    let table = &dom[table_start..];
    let table = &table[..table.find("</table>").expect("end of the agents table")];
    let rows: Vec<&str> = table.split("<tr>").skip(2).collect();
    assert_eq!(rows.len(), 2, "two agent rows: {table}");
    let row = |id: &str| {
        *rows
            .iter()
            .find(|r| r.contains(id))
            .unwrap_or_else(|| panic!("no row for {id}"))
    };
    assert!(row(fine_id).contains(">lost<"), "{table}");
    assert!(row(nodocker_id).contains(">degraded<"), "{table}");
    assert!(row(nodocker_id).contains("docker unreachable"), "{table}");
    let detail = chromium::run(
        &bin,
        profile.path(),
        &["--dump-dom".into(), format!("{url}agents/{nodocker_id}")],
    );
    assert!(detail.contains("id=\"units\"") && detail.contains("id=\"events\""));
    assert!(
        detail.contains("agent-connected"),
        "events on the agent page"
    );
    let png = output_dir().join("status-page.png");
    let _ = std::fs::remove_file(&png);
    chromium::run(
        &bin,
        profile.path(),
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,800".into(),
            url,
        ],
    );
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
    eprintln!("status page screenshot: {}", png.display());
}

/// `drover serve` on `data` with its HTTP listener on every address.
fn serve_beyond_loopback(data: &Path) -> Command {
    serve_command(data, "0.0.0.0:0")
}

/// Beyond loopback: no start without protection; with a token, nothing but /healthz
/// without it.
#[test]
fn http_listener_beyond_loopback_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = serve_beyond_loopback(&data)
        .env_remove("DROVER_HTTP_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("not a loopback address") && err.contains("--http-token"),
        "{err}"
    );

    let mut child = serve_beyond_loopback(&data)
        .env("DROVER_HTTP_TOKEN", "t0ken")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = wait_for(Duration::from_secs(30), "http.addr", || {
        std::fs::read_to_string(data.join("http.addr"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    });
    let port = addr.rsplit(':').next().unwrap();
    let addr = format!("127.0.0.1:{port}");
    assert_eq!(http_get(&addr, "/healthz", None).0, 200);
    assert_eq!(http_get(&addr, "/", None).0, 401);
    assert_eq!(http_get(&addr, "/metrics", None).0, 401);
    assert_eq!(http_get(&addr, "/", Some("Bearer wrong")).0, 401);
    assert_eq!(http_get(&addr, "/metrics", Some("Bearer t0ken")).0, 200);
    let (code, page) = http_get(&addr, "/?token=t0ken", None);
    assert_eq!(code, 200);
    assert!(page.contains("Fleet status"));
    let _ = child.kill();
    let _ = child.wait();
}

/// Copies the files of state dir `from` into a new state dir `to` (0700, modes kept).
fn copy_state_dir(from: &Path, to: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(to)
        .expect("create the copy");
    for entry in std::fs::read_dir(from).expect("read the state dir") {
        let entry = entry.expect("state dir entry");
        if entry.file_type().expect("file type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy a state file");
        }
    }
}

/// `agent-connected` events of `id` so far.
fn connects(c: &Controller, id: &str) -> usize {
    json(
        c,
        &["events", "--agent", id, "--limit", "1000", "-o", "json"],
    )
    .as_array()
    .expect("events array")
    .iter()
    .filter(|e| e["kind"] == "agent-connected")
    .count()
}

/// Issue 15 (Low): a second process runs with a copy of an agent's state dir. Before, the
/// two replaced each other's session every half second forever. Now the second is refused
/// while the first heartbeats, the agent shows `duplicate identity` in `drover agents`, a
/// `duplicate-identity` event says so, and the first keeps its session.
#[test]
fn a_copied_state_dir_is_refused_and_reported_as_duplicate_identity() {
    let c = Controller::start();
    let token = c.create_token(&["--label", "site=lab"]);
    let mut first = Agent::new();
    let id = first.enroll_ok(&c.url(), &token);
    first.run();
    wait_for(Duration::from_secs(30), "the first agent connected", || {
        c.agent(&id).filter(|a| a["connected"] == true)
    });
    let mut second = Agent::new();
    copy_state_dir(&first.state_dir(), &second.state_dir());
    second.run();
    let agent = wait_for(
        Duration::from_secs(30),
        "duplicate identity reported",
        || {
            c.agent(&id).filter(|a| {
                a["reasons"].as_array().is_some_and(|r| {
                    r.iter().any(|r| {
                        r.as_str()
                            .is_some_and(|r| r.starts_with("duplicate identity"))
                    })
                })
            })
        },
    );
    assert_eq!(agent["state"], "degraded", "{agent:#}");
    wait_for(
        Duration::from_secs(30),
        "the refusal in the second's log",
        || {
            second
                .proc
                .as_ref()?
                .log_text()
                .contains("duplicate identity")
                .then_some(())
        },
    );
    let events = json(&c, &["events", "--agent", &id, "-o", "json"]);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "duplicate-identity"),
        "{events:#}"
    );
    // No more session churn: the first keeps its session.
    let before = connects(&c, &id);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(connects(&c, &id), before, "sessions replaced meanwhile");
    assert!(c.agent(&id).is_some_and(|a| a["connected"] == true));
    let table = drover_ok(&c, &["agents"]);
    assert!(table.contains("duplicate identity"), "{table}");
}
