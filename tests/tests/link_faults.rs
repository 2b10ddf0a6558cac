//! Links cut or flapping (issue 20, `RELIABILITY.md` "Links cut or flapping"): a real
//! controller, a real fleet agent started under `ip netns exec` in its own network namespace,
//! the fake GitLab and real Docker. The agent reaches GitLab and the controller only through
//! the veth pair (both are dialed at the host end's address), while its Docker socket is a
//! unix socket on the host: taking the host end of the pair down cuts GitLab and the
//! controller, never the job. Root only; skipped with the reason outside CI, a failure in CI.
//!
//! - a link cut mid-job and restored: the job succeeds, its trace holds every byte the job
//!   printed exactly once and in order, and the agent is back on the controller within its
//!   backoff limit (60 s plus a connect);
//! - a link that goes down and up every few seconds while jobs run: every job succeeds with
//!   a complete trace.
//!
//! - without root: a standalone agent whose GitLab sits behind [`FlakyProxy`], which resets
//!   every open connection, stalls them and refuses new ones mid-job: the job succeeds with
//!   its exact trace.
//!
//! The CI variants cut for 25 s and flap for 45 s; the long ones (`#[ignore]`) cut for 2
//! minutes and flap for 5, with their commands in `RELIABILITY.md`.

use std::time::{Duration, Instant};

use drover_tests::fake_gitlab::{Endpoint, FakeGitLab, JobSpec, JobState};
use drover_tests::flaky_proxy::FlakyProxy;
use drover_tests::fleet_support::{
    agents_connected, apply, docker_image, init_crypto, registration_spec, rollout_complete,
    wait_until,
};
use drover_tests::harness::{Agent, Controller};
use drover_tests::netns::Netns;
use drover_tests::standalone_agent::{AgentOptions, StandaloneAgent};

const WAIT: Duration = Duration::from_secs(40);
/// The agent's controller backoff cap (`agent/src/control/mod.rs`), plus a dial (connect
/// timeout 10 s) and a heartbeat: the bound "back on the controller" is held to.
const RECONNECT_LIMIT: Duration = Duration::from_secs(60 + 10 + 5);

/// A namespace, the fake GitLab and a controller on the host end of its link, and one
/// enrolled agent inside it whose runner is registered and running.
struct LinkedAgent {
    ns: Netns,
    gitlab: FakeGitLab,
    c: Controller,
    a: Agent,
    id: String,
    image: String,
    _dir: tempfile::TempDir,
}

impl LinkedAgent {
    /// `None` (after saying why) when namespaces or Docker are unavailable outside CI.
    async fn start(site: &str) -> Option<LinkedAgent> {
        init_crypto();
        let ns = match Netns::create() {
            Ok(ns) => ns,
            Err(e) => {
                let msg = format!("network namespaces unavailable (root and iproute2 needed): {e}");
                if drover_tests::images::in_ci() {
                    panic!("{msg}");
                }
                eprintln!("skipping: {msg}");
                return None;
            }
        };
        let image = docker_image().await?;
        let host_ip = ns.host_ip();
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let gitlab = FakeGitLab::start_on_url(listener, format!("http://{host_ip}:{port}"));
        gitlab.set_trace_update_interval(1);
        let reg = format!("GR1348941-{site}");
        gitlab.add_registration_token(&reg);
        let c = Controller::start_listening("0.0.0.0:0", &["--heartbeat-interval", "1s"]);
        let grpc_port = c.grpc_addr.rsplit(':').next().unwrap().to_string();
        let token = c.create_token(&["--label", &format!("site={site}")]);
        let mut a = Agent::new();
        let id = a.enroll_ok(&format!("https://{host_ip}:{grpc_port}"), &token);
        a.run_with(&["ip", "netns", "exec", &ns.name], &[], &[]);
        let dir = tempfile::tempdir().unwrap();
        let f = LinkedAgent {
            ns,
            gitlab,
            c,
            a,
            id,
            image,
            _dir: dir,
        };
        let spec = registration_spec(site, f.gitlab.url(), &reg, site, &f.image);
        agents_connected(&f.c, &[&f.id], || f.logs()).await;
        apply(&f.c, f._dir.path(), &spec);
        rollout_complete(&f.c, 1, || f.logs()).await;
        wait_until(
            WAIT,
            "the runner running on the controller",
            || {
                f.c.agent(&f.id)
                    .filter(|a| a["runners"][0]["state"] == "running")
            },
            || f.logs(),
        )
        .await;
        Some(f)
    }

    fn logs(&self) -> String {
        let mut s = format!("----- controller -----\n{}", self.c.proc.log_text());
        if let Some(p) = &self.a.proc {
            s.push_str(&format!("\n----- agent -----\n{}", p.log_text()));
        }
        s
    }

    fn link(&self, up: bool) {
        self.ns
            .set_link(up)
            .unwrap_or_else(|e| panic!("set the link {}: {e}", if up { "up" } else { "down" }));
    }

    fn agent_log_count(&self, needle: &str) -> usize {
        self.a
            .proc
            .as_ref()
            .map_or(0, |p| p.log_text().matches(needle).count())
    }

    /// Waits until the controller sees the agent connected with a heartbeat it had not seen
    /// when called; returns how long that took.
    async fn back_on_controller(&self) -> Duration {
        let started = Instant::now();
        let before = self
            .c
            .agent(&self.id)
            .map(|a| a["last_heartbeat"].clone())
            .unwrap_or_default();
        wait_until(
            RECONNECT_LIMIT,
            "the agent back on the controller",
            || {
                self.c
                    .agent(&self.id)
                    .filter(|a| a["connected"] == true && a["last_heartbeat"] != before)
            },
            || self.logs(),
        )
        .await;
        started.elapsed()
    }
}

/// A job printing `lines` lines `J<tag>-L<NNNN>-<36 chars>`, one every 0.1 s.
fn pattern_job(image: &str, tag: &str, lines: u32) -> JobSpec {
    JobSpec::new(&format!("pattern-{tag}"))
        .image(image)
        .variable("GIT_STRATEGY", "none")
        .script([format!(
            "i=1; while [ $i -le {lines} ]; do \
             printf 'J{tag}-L%04d-0123456789abcdefghijklmnopqrstuvwxyz\\n' $i; \
             i=$((i+1)); sleep 0.1; done"
        )])
}

/// What [`pattern_job`] prints.
fn pattern_output(tag: &str, lines: u32) -> String {
    (1..=lines)
        .map(|i| format!("J{tag}-L{i:04}-0123456789abcdefghijklmnopqrstuvwxyz\n"))
        .collect()
}

/// Asserts the trace holds the job's output byte for byte, once: the numbers of every
/// `J<tag>-L<NNNN>-` in the trace are exactly 1..=lines in order (nothing lost, nothing
/// repeated), and the output is one contiguous run of the trace.
fn assert_trace_exact(trace: &[u8], tag: &str, lines: u32) {
    let text = String::from_utf8_lossy(trace);
    let marker = format!("J{tag}-L");
    let seen: Vec<u32> = text
        .match_indices(&marker)
        .filter_map(|(at, _)| {
            let rest = &text[at + marker.len()..];
            rest.get(..4)
                .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse().ok())
        })
        .collect();
    let want: Vec<u32> = (1..=lines).collect();
    assert_eq!(
        seen, want,
        "trace lines lost or repeated (job {tag}):\n{text}"
    );
    assert_eq!(
        text.matches(&pattern_output(tag, lines)).count(),
        1,
        "the output is not one exact run of the trace (job {tag}):\n{text}"
    );
}

/// Cuts the link for `cut` once the job's first lines reached GitLab, restores it, and
/// checks the job, its trace and the reconnect.
async fn cut_mid_job(site: &str, cut: Duration) {
    let Some(f) = LinkedAgent::start(site).await else {
        return;
    };
    let ctx = || f.logs();
    // 45 s of output: the cut starts a few seconds in; a long cut outlives the job.
    let lines = 450;
    let id = f.gitlab.enqueue_job(pattern_job(&f.image, "cut", lines)).id;
    wait_until(
        WAIT,
        "the job's first lines in GitLab",
        || {
            String::from_utf8_lossy(&f.gitlab.trace(id))
                .contains("Jcut-L0020-")
                .then_some(())
        },
        ctx,
    )
    .await;
    let failed_before = f.agent_log_count("controller connection failed");
    f.link(false);
    let cut_at = Instant::now();
    tokio::time::sleep(cut).await;
    let during = String::from_utf8_lossy(&f.gitlab.trace(id)).into_owned();
    f.link(true);
    let cut_for = cut_at.elapsed();
    let restored = Instant::now();
    let failed_at_restore = f.agent_log_count("controller connection failed");
    let finished = async {
        let done = f
            .gitlab
            .wait_for_job_finished(id, Duration::from_secs(120))
            .await;
        (done, restored.elapsed())
    };
    let (reconnect, (done, finished_after)) = tokio::join!(f.back_on_controller(), finished);
    let Some(done) = done else {
        panic!("job did not finish after the link came back\n{}", ctx());
    };
    let session_broke = failed_at_restore > failed_before;
    assert_eq!(
        done.state,
        JobState::Success,
        "{}\n{}",
        done.trace_text(),
        ctx()
    );
    assert_trace_exact(&done.trace, "cut", lines);
    let resent = f.gitlab.request_count(Endpoint::PatchTrace, 416);
    eprintln!(
        "link cut for {:.1} s mid-job (trace held {} bytes in GitLab during the cut): \
         back on the controller {:.1} s after restore (session broke: {session_broke}), \
         job finished {:.1} s after restore, trace {} bytes, 0 lost, 0 duplicated, \
         {resent} patches answered 416",
        cut_for.as_secs_f64(),
        during.len(),
        reconnect.as_secs_f64(),
        finished_after.as_secs_f64(),
        done.trace.len(),
    );
    // The runner takes jobs again.
    let next = f.gitlab.enqueue_job(pattern_job(&f.image, "after", 3)).id;
    let Some(after) = f.gitlab.wait_for_job_finished(next, WAIT).await else {
        panic!("no job taken after the cut\n{}", ctx());
    };
    assert_eq!(after.state, JobState::Success, "{}", after.trace_text());
    assert_trace_exact(&after.trace, "after", 3);
}

/// Takes the link down for `down` and up for `up`, over and over for `total`, while jobs of
/// 15 s run back to back; then checks every job.
async fn flapping(site: &str, total: Duration, down: Duration, up: Duration) {
    let Some(f) = LinkedAgent::start(site).await else {
        return;
    };
    let ctx = || f.logs();
    let lines = 150;
    let jobs = (total.as_secs() / 15).max(1) as usize;
    let ids: Vec<(i64, String)> = (0..jobs)
        .map(|n| {
            let tag = format!("flap{n}");
            (
                f.gitlab.enqueue_job(pattern_job(&f.image, &tag, lines)).id,
                tag,
            )
        })
        .collect();
    let started = Instant::now();
    let mut cuts = 0;
    while started.elapsed() < total {
        f.link(false);
        cuts += 1;
        tokio::time::sleep(down).await;
        f.link(true);
        tokio::time::sleep(up).await;
    }
    let reconnect = f.back_on_controller().await;
    for (id, tag) in &ids {
        let Some(done) = f
            .gitlab
            .wait_for_job_finished(*id, Duration::from_secs(120))
            .await
        else {
            panic!("job {tag} did not finish\n{}", ctx());
        };
        assert_eq!(
            done.state,
            JobState::Success,
            "{}\n{}",
            done.trace_text(),
            ctx()
        );
        assert_trace_exact(&done.trace, tag, lines);
    }
    eprintln!(
        "link flapped {cuts} times ({:.0} s down / {:.0} s up) over {:.0} s: {jobs} jobs of \
         {lines} lines, all succeeded, 0 bytes lost, 0 duplicated, {} patches answered 416; \
         back on the controller {:.1} s after the last restore; {:.0} s in all",
        down.as_secs_f64(),
        up.as_secs_f64(),
        total.as_secs_f64(),
        f.gitlab.request_count(Endpoint::PatchTrace, 416),
        reconnect.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
}

/// CI: the link cut for 25 s mid-job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_cut_mid_job_is_survived() {
    cut_mid_job("link-cut", Duration::from_secs(25)).await;
}

/// The 2-minute cut of issue 20 (longer than the job and the controller keep-alive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "2-minute cut; run by hand, see RELIABILITY.md"]
async fn link_cut_two_minutes_mid_job_is_survived() {
    cut_mid_job("link-cut-long", Duration::from_secs(120)).await;
}

/// CI: the link down 3 s, up 3 s, for 45 s while jobs run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_flapping_loses_no_trace_and_fails_no_job() {
    flapping(
        "link-flap",
        Duration::from_secs(45),
        Duration::from_secs(3),
        Duration::from_secs(3),
    )
    .await;
}

/// The 5-minute flap of issue 20.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "5-minute flap; run by hand, see RELIABILITY.md"]
async fn link_flapping_five_minutes_loses_no_trace_and_fails_no_job() {
    flapping(
        "link-flap-long",
        Duration::from_secs(300),
        Duration::from_secs(3),
        Duration::from_secs(3),
    )
    .await;
}

/// Turns a fault on (`set(true)`) for `secs`, off, then waits a second.
async fn fault_for(secs: u64, set: impl Fn(bool)) {
    set(true);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    set(false);
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// No root needed: GitLab behind a proxy that, while a 30 s job runs, resets every open
/// connection, stalls them all for 4 s, refuses new ones for 3 s and loses every answer for
/// 3 s (patches GitLab took whose answer never came), twice over. The job succeeds, its
/// trace is exact (a patch resent after a lost answer is refused with 416 and the upload
/// goes on from GitLab's size), and the runner takes the next job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_reset_stalled_refused_and_answers_lost_mid_job_lose_no_trace() {
    let Some((_, image)) = drover_tests::images::docker_and_busybox("link proxy").await else {
        return;
    };
    let gitlab = FakeGitLab::start().await;
    gitlab.set_trace_update_interval(1);
    let target = gitlab
        .url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("the fake GitLab's address");
    let proxy = FlakyProxy::start(target).await.expect("start the proxy");
    let token = format!("glrt-link-proxy-{:08x}", rand::random::<u32>());
    gitlab.add_runner(&token);
    let config = format!(
        "concurrent = 1\ncheck_interval = 1\n\n[[runners]]\n  name = \"link-proxy\"\n  \
         url = \"http://{}\"\n  token = \"{token}\"\n  executor = \"docker\"\n  \
         [runners.docker]\n    image = \"{image}\"\n    pull_policy = \"never\"\n",
        proxy.addr()
    );
    let agent = StandaloneAgent::start(&config, AgentOptions::default()).expect("start agent");
    let lines = 300;
    let id = gitlab.enqueue_job(pattern_job(&image, "proxy", lines)).id;
    wait_until(
        Duration::from_secs(60),
        "the job's first lines in GitLab",
        || {
            String::from_utf8_lossy(&gitlab.trace(id))
                .contains("Jproxy-L0010-")
                .then_some(())
        },
        || agent.stderr(),
    )
    .await;
    let accepted = proxy.accepted();
    for _ in 0..2 {
        proxy.reset_all();
        tokio::time::sleep(Duration::from_secs(1)).await;
        fault_for(4, |on| proxy.stall(on)).await;
        fault_for(3, |on| {
            proxy.refuse(on);
            if on {
                proxy.reset_all();
            }
        })
        .await;
        fault_for(3, |on| proxy.lose_answers(on)).await;
    }
    let Some(done) = gitlab
        .wait_for_job_finished(id, Duration::from_secs(90))
        .await
    else {
        panic!("job did not finish\n{}", agent.stderr());
    };
    assert_eq!(
        done.state,
        JobState::Success,
        "{}\n{}",
        done.trace_text(),
        agent.stderr()
    );
    assert_trace_exact(&done.trace, "proxy", lines);
    assert!(
        gitlab.request_count(Endpoint::PatchTrace, 416) >= 1,
        "a patch whose answer was lost is resent and refused with 416"
    );
    assert!(
        proxy.accepted() > accepted + 2,
        "the agent reconnected after each reset"
    );
    let next = gitlab.enqueue_job(pattern_job(&image, "next", 3)).id;
    let Some(after) = gitlab.wait_for_job_finished(next, WAIT).await else {
        panic!("no job taken after the faults\n{}", agent.stderr());
    };
    assert_eq!(after.state, JobState::Success, "{}", after.trace_text());
    assert_trace_exact(&after.trace, "next", 3);
    eprintln!(
        "proxy reset, stalled 4 s, refused 3 s and lost answers 3 s, twice, mid-job: job succeeded, trace {} \
         bytes, 0 lost, 0 duplicated, {} patches answered 416, {} connections",
        done.trace.len(),
        gitlab.request_count(Endpoint::PatchTrace, 416),
        proxy.accepted()
    );
}
