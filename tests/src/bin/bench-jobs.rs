//! Job benchmarks of the real release `drover-agent run --config` against the fake GitLab and
//! the local Docker engine; prints a Markdown table.
//!
//! ```text
//! cargo run --release -p drover-tests --bin bench-jobs
//! ```
//!
//! Figures: release binary sizes; agent idle RSS/CPU with four runners; job cost of `true`
//! (fake's `201` to the final `success` PUT) against bare `docker run --rm IMAGE true`; RSS
//! during jobs; a job printing 100 MB (trace throughput and agent memory) with the default
//! `output_limit` and with 200 MiB; 8 concurrent `sleep 1` and `true` jobs. `BENCH_K`
//! overrides the number of sequential jobs (default 20); `BENCH_ONLY=idle,cost,big,concurrent`
//! runs only the sections named.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use drover_tests::fake_gitlab::{FakeGitLab, JobSpec, JobState};
use drover_tests::procstat::{self, RssSampler, mib, ms, percentile};
use drover_tests::standalone_agent::{AgentOptions, StandaloneAgent};

const JOB_WAIT: Duration = Duration::from_secs(300);

/// One row of the result table.
struct Row {
    figure: String,
    value: String,
    target: String,
    verdict: String,
}

fn row(figure: &str, value: String, target: &str, verdict: &str) -> Row {
    Row {
        figure: figure.to_string(),
        value,
        target: target.to_string(),
        verdict: verdict.to_string(),
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// Starts the agent on `config_toml` (info logs, no extra arguments).
fn start_agent(config_toml: &str) -> Result<StandaloneAgent> {
    StandaloneAgent::start(config_toml, AgentOptions::default()).context("start the agent")
}

/// The agent's process id, while it runs.
fn pid(agent: &StandaloneAgent) -> Result<u32> {
    agent.pid().context("the agent is not running")
}

/// A `config.toml` with `runners` runners (tokens `tokens`), all on the busybox image.
fn config(gitlab: &FakeGitLab, tokens: &[String], concurrent: u32, extra: &str) -> String {
    let mut s = format!("concurrent = {concurrent}\ncheck_interval = 1\nlog_level = \"info\"\n");
    for (i, token) in tokens.iter().enumerate() {
        s.push_str(&format!(
            "\n[[runners]]\n  name = \"bench-{i}\"\n  url = \"{url}\"\n  token = \"{token}\"\n  \
             executor = \"docker\"\n{extra}\n  [runners.docker]\n    image = \"{image}\"\n    \
             pull_policy = \"never\"\n    volumes = [\"/cache\"]\n",
            url = gitlab.url(),
            image = drover_tests::images::BUSYBOX_IMAGE,
        ));
    }
    s
}

/// A fake GitLab with long polling and `n` runners.
async fn gitlab_with_runners(n: usize) -> (FakeGitLab, Vec<String>) {
    let gitlab = FakeGitLab::start().await;
    gitlab.set_long_poll(Duration::from_secs(20));
    let tokens: Vec<String> = (0..n)
        .map(|i| format!("glrt-bench{i}-{:08x}", rand::random::<u32>()))
        .collect();
    for t in &tokens {
        gitlab.add_runner(t);
    }
    (gitlab, tokens)
}

fn job(name: &str, script: &[&str]) -> JobSpec {
    JobSpec::new(name)
        .image(drover_tests::images::BUSYBOX_IMAGE)
        .variable("GIT_STRATEGY", "none")
        .script(script.iter().copied())
}

/// Runs one job and returns its cost (pickup to accepted final update).
async fn run_one(gitlab: &FakeGitLab, agent: &StandaloneAgent, spec: JobSpec) -> Result<Duration> {
    let id = gitlab.enqueue_job(spec).id;
    let f = gitlab
        .wait_for_job_finished(id, JOB_WAIT)
        .await
        .with_context(|| format!("job {id} did not finish; agent log:\n{}", agent.stderr()))?;
    if f.state != JobState::Success {
        bail!("job {id} ended {:?}:\n{}", f.state, f.trace_text());
    }
    let rec = gitlab.job(id).context("job record")?;
    match (rec.picked_at, rec.finished_at) {
        (Some(a), Some(b)) => Ok(b - a),
        _ => bail!("job {id} has no pickup/finish timestamps"),
    }
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

async fn sizes(rows: &mut Vec<Row>) {
    let agent = drover_tests::harness::agent_bin();
    let drover = drover_tests::harness::drover_bin();
    let a = file_size(&agent);
    let target = 15 * 1024 * 1024;
    rows.push(row(
        "drover-agent release binary (stripped, x86_64)",
        format!("{:.2} MiB", a as f64 / 1048576.0),
        "≤ 15 MiB",
        verdict(a <= target),
    ));
    // The cross-built agent, beside the native one: <target>/aarch64-unknown-linux-gnu/release.
    let arm = agent
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("aarch64-unknown-linux-gnu/release/drover-agent"));
    match arm.filter(|p| p.is_file()) {
        Some(p) => {
            let a = file_size(&p);
            rows.push(row(
                "drover-agent release binary (stripped, aarch64)",
                format!("{:.2} MiB", a as f64 / 1048576.0),
                "≤ 15 MiB",
                verdict(a <= target),
            ));
        }
        None => rows.push(row(
            "drover-agent release binary (stripped, aarch64)",
            "not built: cargo build --release -p drover-agent --target aarch64-unknown-linux-gnu"
                .to_string(),
            "≤ 15 MiB",
            "not measured",
        )),
    }
    let d = file_size(&drover);
    rows.push(row(
        "drover release binary (stripped, x86_64)",
        format!("{:.2} MiB", d as f64 / 1048576.0),
        "—",
        "info",
    ));
}

async fn idle(rows: &mut Vec<Row>) -> Result<()> {
    let (gitlab, tokens) = gitlab_with_runners(4).await;
    let agent = start_agent(&config(&gitlab, &tokens, 4, ""))?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let agent_pid = pid(&agent)?;
    let cpu = tokio::task::spawn_blocking(move || {
        procstat::cpu_share(agent_pid, Duration::from_secs(20))
    })
    .await?
    .context("agent exited while idle")?;
    let m = procstat::memory(agent_pid).context("agent exited while idle")?;
    rows.push(row(
        "agent idle RSS, 4 runners (VmRSS after 30 s)",
        mib(m.rss_kib),
        "≤ 10 MiB",
        verdict(m.rss_kib <= 10 * 1024),
    ));
    rows.push(row(
        "agent idle peak RSS, 4 runners (VmHWM)",
        mib(m.hwm_kib),
        "—",
        "info",
    ));
    rows.push(row(
        "agent idle CPU, 4 runners long-polling",
        format!("{:.2}% of one core", cpu * 100.0),
        "—",
        "info",
    ));
    Ok(())
}

async fn job_cost(rows: &mut Vec<Row>, k: usize) -> Result<()> {
    let (gitlab, tokens) = gitlab_with_runners(1).await;
    let agent = start_agent(&config(&gitlab, &tokens[..1], 1, ""))?;
    // Warm-up: the first job creates the builds/cache volumes.
    for i in 0..2 {
        run_one(&gitlab, &agent, job(&format!("warm{i}"), &["true"])).await?;
    }
    let sampler = RssSampler::start(pid(&agent)?, Duration::from_millis(20));
    let mut costs = Vec::new();
    for i in 0..k {
        costs.push(run_one(&gitlab, &agent, job(&format!("true{i}"), &["true"])).await?);
    }
    let peak = sampler.stop();
    let hwm = procstat::memory(pid(&agent)?)
        .map(|m| m.hwm_kib)
        .unwrap_or(0);
    drop(agent);

    let mut bare = Vec::new();
    for _ in 0..k {
        let t = Instant::now();
        let status = Command::new("docker")
            .args(["run", "--rm", drover_tests::images::BUSYBOX_IMAGE, "true"])
            .stdout(Stdio::null())
            .status()
            .context("run docker run --rm")?;
        if !status.success() {
            bail!(
                "docker run --rm {} true failed",
                drover_tests::images::BUSYBOX_IMAGE
            );
        }
        bare.push(t.elapsed());
    }
    let (j50, j90) = (percentile(&costs, 50.0), percentile(&costs, 90.0));
    let (b50, b90) = (percentile(&bare, 50.0), percentile(&bare, 90.0));
    let ratio = j50.as_secs_f64() / b50.as_secs_f64();
    rows.push(row(
        &format!("job cost of `true`, pickup → success (K={k})"),
        format!("p50 {} / p90 {}", ms(j50), ms(j90)),
        "—",
        "info",
    ));
    rows.push(row(
        &format!("bare `docker run --rm IMAGE true` (K={k})"),
        format!("p50 {} / p90 {}", ms(b50), ms(b90)),
        "—",
        "info",
    ));
    rows.push(row(
        "job cost ratio (p50 job / p50 docker run)",
        format!("{ratio:.2}×"),
        "≤ 1.3× (stretch ≤ 1.2×)",
        if ratio <= 1.2 {
            "met (stretch met)"
        } else {
            verdict(ratio <= 1.3)
        },
    ));
    rows.push(row(
        "agent RSS during sequential `true` jobs (max sampled / VmHWM)",
        format!("{} / {}", mib(peak), mib(hwm)),
        "—",
        "info",
    ));
    Ok(())
}

async fn big_output(rows: &mut Vec<Row>, output_limit_kib: Option<u64>) -> Result<()> {
    const BYTES: u64 = 100 * 1000 * 1000;
    let (gitlab, tokens) = gitlab_with_runners(1).await;
    let extra = output_limit_kib
        .map(|k| format!("  output_limit = {k}\n"))
        .unwrap_or_default();
    let agent = start_agent(&config(&gitlab, &tokens[..1], 1, &extra))?;
    run_one(&gitlab, &agent, job("warm", &["true"])).await?;
    let before = procstat::memory(pid(&agent)?).context("agent gone")?;
    let sampler = RssSampler::start(pid(&agent)?, Duration::from_millis(20));
    // 100 bytes a line (99 characters and a newline).
    let line = "x".repeat(99);
    // `yes` ends by SIGPIPE when `head` has enough; the job shell runs with pipefail.
    let script = format!("(yes {line} || true) | head -c {BYTES}");
    let id = gitlab.enqueue_job(job("big", &[script.as_str()])).id;
    let f = gitlab
        .wait_for_job_finished(id, JOB_WAIT)
        .await
        .with_context(|| format!("big job did not finish; agent log:\n{}", agent.stderr()))?;
    let peak = sampler.stop();
    let after = procstat::memory(pid(&agent)?).context("agent gone")?;
    if f.state != JobState::Success {
        bail!(
            "big job ended {:?}; agent log:\n{}",
            f.state,
            agent.stderr()
        );
    }
    let rec = gitlab.job(id).context("job record")?;
    let took = match (rec.picked_at, rec.finished_at) {
        (Some(a), Some(b)) => b - a,
        _ => bail!("big job has no timestamps"),
    };
    let traced = rec.trace.len() as u64;
    let label = match output_limit_kib {
        Some(k) => format!("output_limit = {k} KiB"),
        None => "default output_limit (4 MiB)".to_string(),
    };
    let mb_s = BYTES as f64 / 1e6 / took.as_secs_f64();
    let uploaded_mb_s = traced as f64 / 1e6 / took.as_secs_f64();
    rows.push(row(
        &format!("100 MB job output, {label}: output processed"),
        format!(
            "{mb_s:.1} MB/s ({:.2} s pickup → success)",
            took.as_secs_f64()
        ),
        "≥ 50 MB/s",
        verdict(mb_s >= 50.0),
    ));
    rows.push(row(
        &format!("100 MB job output, {label}: trace received by GitLab"),
        format!("{:.1} MB ({uploaded_mb_s:.1} MB/s)", traced as f64 / 1e6),
        "—",
        "info",
    ));
    rows.push(row(
        &format!("100 MB job output, {label}: agent RSS before / max during / after"),
        format!(
            "{} / {} / {} (VmHWM {})",
            mib(before.rss_kib),
            mib(peak),
            mib(after.rss_kib),
            mib(after.hwm_kib)
        ),
        "bounded",
        "see notes",
    ));
    Ok(())
}

async fn concurrent(rows: &mut Vec<Row>) -> Result<()> {
    let (gitlab, tokens) = gitlab_with_runners(1).await;
    let agent = start_agent(&config(&gitlab, &tokens[..1], 8, "  limit = 8\n"))?;
    run_one(&gitlab, &agent, job("warm", &["true"])).await?;
    for (what, script) in [("sleep 1", "sleep 1"), ("true", "true")] {
        let sampler = RssSampler::start(pid(&agent)?, Duration::from_millis(20));
        let start = Instant::now();
        let ids: Vec<i64> = (0..8)
            .map(|i| gitlab.enqueue_job(job(&format!("c{i}"), &[script])).id)
            .collect();
        for id in &ids {
            let f = gitlab
                .wait_for_job_finished(*id, JOB_WAIT)
                .await
                .with_context(|| format!("job {id} did not finish; log:\n{}", agent.stderr()))?;
            if f.state != JobState::Success {
                bail!("job {id} ended {:?}:\n{}", f.state, f.trace_text());
            }
        }
        let wall = start.elapsed();
        let peak = sampler.stop();
        rows.push(row(
            &format!("8 concurrent `{what}` jobs, wall (enqueue → last success)"),
            format!("{:.2} s (agent RSS max {})", wall.as_secs_f64(), mib(peak)),
            "—",
            "info",
        ));
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let k: usize = std::env::var("BENCH_K")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    drover_tests::images::busybox_image()
        .await
        .context("build the busybox test image")?;
    let mut rows = Vec::new();
    eprintln!("bench-jobs: binary sizes");
    sizes(&mut rows).await;
    let mut failed = Vec::new();
    let sections: [(&str, Option<u64>); 5] = [
        ("idle", None),
        ("cost", None),
        ("big", None),
        ("big", Some(200 * 1024)),
        ("concurrent", None),
    ];
    // `BENCH_ONLY=cost,big` runs only those sections (sizes are always printed).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    for (name, limit) in sections {
        if !only.is_empty() && !only.split(',').any(|o| o.trim() == name) {
            continue;
        }
        eprintln!("bench-jobs: {name} {limit:?}");
        let r = match name {
            "idle" => idle(&mut rows).await,
            "cost" => job_cost(&mut rows, k).await,
            "big" => big_output(&mut rows, limit).await,
            _ => concurrent(&mut rows).await,
        };
        if let Err(e) = r {
            eprintln!("bench-jobs: {name} failed: {e:#}");
            failed.push(name);
        }
    }
    println!("| figure | value | target | verdict |");
    println!("|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} |",
            r.figure, r.value, r.target, r.verdict
        );
    }
    if !failed.is_empty() {
        bail!("sections failed: {failed:?}");
    }
    Ok(())
}
