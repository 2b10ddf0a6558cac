//! Fleet simulator: N lightweight agents speaking the real gRPC protocol over real mTLS
//! against one real release `drover serve`; prints a Markdown table.
//!
//! ```text
//! cargo run --release -p drover-tests --bin fleet-sim -- 1000 5000
//! ```
//!
//! For each N (a fresh controller each time): one `drover token create --uses N`; N ECDSA
//! P-256 keys and CSRs generated here (timed alone); N `Enrollment.Enroll` calls
//! (throughput); N mTLS connections, each opening `AgentControl.Session` with `Hello` and
//! waiting for `Welcome` (time to connect all); then every agent heartbeats at the interval
//! the controller asks for (10 s) while the controller's CPU share and RSS are measured.
//! Then `drover runner apply` of a spec selecting every agent: each simulated agent acks the
//! `DesiredState` it is pushed (as a real agent does once its units are up), and the time from
//! starting the CLI to each agent's ack gives the rollout latency (p50/p99/last), once with
//! the default rolling strategy and once with `--strategy all`.
//! `FLEET_WINDOW_SECS` sets the measuring window (default 60).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use drover_agent::identity::{certs, tls, token};
use drover_proto::v1;
use drover_proto::v1::agent_message::Kind as AgentKind;
use drover_proto::v1::controller_message::Kind as ControllerKind;
use drover_tests::harness::Controller;
use drover_tests::procstat::{self, mib, ms, percentile};
use secrecy::SecretString;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// What one simulated agent holds after enrollment.
struct Enrolled {
    key_pem: SecretString,
    cert_pem: String,
}

/// Heartbeats sent and stream errors seen by all simulated agents.
#[derive(Default)]
struct Counters {
    heartbeats: AtomicU64,
    errors: AtomicU64,
    /// When each `DesiredState` was acked, with its generation.
    acks: std::sync::Mutex<Vec<(u64, Instant)>>,
}

fn facts(i: usize) -> v1::AgentFacts {
    v1::AgentFacts {
        hostname: format!("sim-{i:05}"),
        arch: std::env::consts::ARCH.to_string(),
        os: "linux".to_string(),
        kernel: "sim".to_string(),
        agent_version: "sim".to_string(),
        ips: vec![format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255)],
        docker_version: String::new(),
        system_id: format!("s_{i:012x}"),
    }
}

/// Generates `n` keys and CSRs on the blocking pool; returns them and the time taken.
async fn keys(n: usize) -> Result<(Vec<certs::KeyAndCsr>, Duration)> {
    let start = Instant::now();
    let workers = 2;
    let mut handles = Vec::new();
    for w in 0..workers {
        let count = n / workers + usize::from(w < n % workers);
        handles.push(tokio::task::spawn_blocking(move || {
            (0..count)
                .map(|_| certs::new_key_and_csr())
                .collect::<Result<Vec<_>, _>>()
        }));
    }
    let mut all = Vec::with_capacity(n);
    for h in handles {
        all.extend(h.await?.context("generate key and csr")?);
    }
    Ok((all, start.elapsed()))
}

/// Enrolls every key with `token` over a few shared pinned channels.
async fn enroll(
    url: &str,
    token_text: &str,
    keys: Vec<certs::KeyAndCsr>,
) -> Result<(Vec<Enrolled>, String, Duration)> {
    let pin = token::parse(token_text).map_err(anyhow::Error::msg)?;
    let mut channels = Vec::new();
    for _ in 0..4 {
        let verifier = Arc::new(tls::PinnedCa::new(&pin.ca_fingerprint));
        let config = tls::pinned_config(verifier)?;
        channels.push(tls::connect(url, config).await?);
    }
    let limit = Arc::new(Semaphore::new(64));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, key) in keys.into_iter().enumerate() {
        let channel = channels[i % channels.len()].clone();
        let permit = limit.clone().acquire_owned().await?;
        let token_text = token_text.to_string();
        tasks.spawn(async move {
            let _permit = permit;
            let resp = v1::enrollment_client::EnrollmentClient::new(channel)
                .enroll(v1::EnrollRequest {
                    token: token_text,
                    csr_der: key.csr_der,
                    facts: Some(facts(i)),
                })
                .await
                .map_err(|s| anyhow::anyhow!("enroll agent {i}: {} ({:?})", s.message(), s.code()))?
                .into_inner();
            Ok::<_, anyhow::Error>((
                i,
                resp.ca_pem,
                Enrolled {
                    key_pem: key.key_pem,
                    cert_pem: resp.certificate_pem,
                },
            ))
        });
    }
    let mut out: Vec<Option<Enrolled>> = Vec::new();
    let mut ca = String::new();
    while let Some(r) = tasks.join_next().await {
        let (i, ca_pem, e) = r??;
        if out.len() <= i {
            out.resize_with(i + 1, || None);
        }
        out[i] = Some(e);
        ca = ca_pem;
    }
    let took = start.elapsed();
    Ok((out.into_iter().flatten().collect(), ca, took))
}

/// Connects one agent, says hello, waits for welcome, then heartbeats until `stop`.
/// Sends `()` on `connected` once the welcome arrived.
async fn agent(
    i: usize,
    url: String,
    config: rustls::ClientConfig,
    connected: mpsc::Sender<Duration>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> Result<()> {
    let start = Instant::now();
    // Real agents retry a failed dial with backoff; so does the simulator (3 attempts).
    let mut attempt = 0;
    let channel = loop {
        attempt += 1;
        match tls::connect(&url, config.clone()).await {
            Ok(c) => break c,
            Err(e) if attempt >= 3 => return Err(e.into()),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500 + rand::random::<u64>() % 1500)).await
            }
        }
    };
    let mut client = v1::agent_control_client::AgentControlClient::new(channel);
    let (tx, rx) = mpsc::channel::<v1::AgentMessage>(4);
    tx.send(v1::AgentMessage {
        kind: Some(AgentKind::Hello(v1::Hello {
            facts: Some(facts(i)),
            applied_generation: 0,
            instance: format!("sim-{i}"),
        })),
    })
    .await?;
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow::anyhow!("session of agent {i}: {}", s.message()))?
        .into_inner();
    let welcome = match inbound.message().await {
        Ok(Some(v1::ControllerMessage {
            kind: Some(ControllerKind::Welcome(w)),
        })) => w,
        other => bail!("agent {i}: no welcome: {other:?}"),
    };
    let _ = connected.send(start.elapsed()).await;
    drop(connected);
    let interval = Duration::from_secs(u64::from(welcome.heartbeat_interval_seconds.max(1)));
    // Spread the heartbeats over the interval, as real agents started at different times do.
    let phase = interval.mul_f64(rand::random::<f64>());
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, interval);
    let mut applied = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = ticker.tick() => {
                let hb = v1::AgentMessage {
                    kind: Some(AgentKind::Heartbeat(v1::Heartbeat {
                        sent_at: Some(prost_types::Timestamp {
                            seconds: time::OffsetDateTime::now_utc().unix_timestamp(),
                            nanos: 0,
                        }),
                        applied_generation: applied,
                        host: None,
                        runners: Vec::new(),
                        ips: facts(i).ips,
                        agent_version: env!("CARGO_PKG_VERSION").to_string(),
                    })),
                };
                if tx.send(hb).await.is_err() {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    bail!("agent {i}: session closed");
                }
                counters.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            msg = inbound.message() => match msg {
                Ok(Some(v1::ControllerMessage {
                    kind: Some(ControllerKind::DesiredState(d)),
                })) => {
                    applied = d.generation;
                    let ack = v1::AgentMessage {
                        kind: Some(AgentKind::Ack(v1::Ack {
                            generation: d.generation,
                            applied: true,
                            error: String::new(),
                        })),
                    };
                    if tx.send(ack).await.is_err() {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        bail!("agent {i}: session closed");
                    }
                    if let Ok(mut acks) = counters.acks.lock() {
                        acks.push((d.generation, Instant::now()));
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    bail!("agent {i}: controller closed the session");
                }
                Err(s) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    bail!("agent {i}: {}", s.message());
                }
            },
        }
    }
}

/// One fleet size; appends its rows.
async fn run(n: usize, window: Duration, rows: &mut Vec<String>) -> Result<()> {
    eprintln!("fleet-sim: N={n}: starting controller");
    let controller =
        tokio::task::spawn_blocking(|| Controller::start_with(&["--heartbeat-interval", "10s"]))
            .await?;
    let pid = controller.proc.id();
    let url = controller.url();
    let uses = n.to_string();
    let token_text = controller.create_token(&["--uses", &uses, "--ttl", "3h"]);
    let base = procstat::memory(pid).context("controller gone")?;

    eprintln!("fleet-sim: N={n}: generating {n} keys");
    let (keys, keygen) = keys(n).await?;
    eprintln!("fleet-sim: N={n}: enrolling");
    let cpu0 = procstat::cpu_time(pid).context("controller gone")?;
    let (enrolled, ca_pem, enroll_took) = enroll(&url, &token_text, keys).await?;
    let enroll_cpu = procstat::cpu_time(pid).context("controller gone")? - cpu0;
    if enrolled.len() != n {
        bail!("only {} of {n} agents enrolled", enrolled.len());
    }
    let after_enroll = procstat::memory(pid).context("controller gone")?;

    eprintln!("fleet-sim: N={n}: connecting");
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let (conn_tx, mut conn_rx) = mpsc::channel::<Duration>(n.max(1));
    let dial_limit = Arc::new(Semaphore::new(64));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, e) in enrolled.into_iter().enumerate() {
        let config = tls::agent_config(&ca_pem, &e.cert_pem, &e.key_pem)?;
        let permit = dial_limit.clone().acquire_owned().await?;
        let (url, conn_tx, counters, stop) =
            (url.clone(), conn_tx.clone(), counters.clone(), stop.clone());
        let (one_tx, mut one_rx) = mpsc::channel::<Duration>(1);
        tasks.spawn(agent(i, url, config, one_tx, counters, stop));
        // The permit is held until this agent is welcomed (or failed).
        tokio::spawn(async move {
            if let Some(d) = one_rx.recv().await {
                let _ = conn_tx.send(d).await;
            }
            drop(permit);
        });
    }
    drop(conn_tx);
    let mut connect_times = Vec::with_capacity(n);
    while let Some(d) = conn_rx.recv().await {
        connect_times.push(d);
        if connect_times.len() == n {
            break;
        }
    }
    let all_connected = start.elapsed();
    if connect_times.len() != n {
        let mut errs = Vec::new();
        while let Ok(Some(r)) =
            tokio::time::timeout(Duration::from_millis(100), tasks.join_next()).await
        {
            if let Ok(Err(e)) = r {
                errs.push(format!("{e:#}"));
            }
            if errs.len() >= 5 {
                break;
            }
        }
        bail!(
            "only {} of {n} agents connected; first errors: {errs:?}",
            connect_times.len()
        );
    }
    let connected = procstat::memory(pid).context("controller gone")?;

    eprintln!("fleet-sim: N={n}: all connected in {all_connected:?}; measuring {window:?}");
    // Let the first round of heartbeats (spread over 10 s) pass before measuring.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let hb0 = counters.heartbeats.load(Ordering::Relaxed);
    let cpu = tokio::task::spawn_blocking(move || procstat::cpu_share(pid, window))
        .await?
        .context("controller gone")?;
    let hbs = counters.heartbeats.load(Ordering::Relaxed) - hb0;
    let steady = procstat::memory(pid).context("controller gone")?;
    let sim = procstat::memory(std::process::id()).unwrap_or_default();
    let errors = counters.errors.load(Ordering::Relaxed);

    let mut rollouts = Vec::new();
    for (generation, strategy) in [(1u64, None), (2, Some("all"))] {
        eprintln!("fleet-sim: N={n}: rollout of generation {generation} ({strategy:?})");
        rollouts.push((
            strategy.unwrap_or("rolling (default, max-unavailable 25%)"),
            rollout(&controller, &counters, n, generation, strategy).await,
        ));
    }
    stop.cancel();
    while tasks.join_next().await.is_some() {}

    let per_agent_kib = (steady.rss_kib.saturating_sub(after_enroll.rss_kib)) as f64 / n as f64;
    let rate = n as f64 / enroll_took.as_secs_f64();
    let keygen_rate = n as f64 / keygen.as_secs_f64();
    rows.push(format!(
        "| {n} | key+CSR generation (simulator, 2 threads) | {keygen_rate:.0}/s ({:.1} s) | — | info |",
        keygen.as_secs_f64()
    ));
    rows.push(format!(
        "| {n} | enrollment RPC throughput (64 in flight) | {rate:.0}/s ({:.1} s; controller CPU {:.1} s) | — | info |",
        enroll_took.as_secs_f64(),
        enroll_cpu.as_secs_f64()
    ));
    rows.push(format!(
        "| {n} | time to connect all (mTLS + Session + Welcome, 64 dials in flight) | {:.1} s (per agent p50 {} / p99 {}) | — | info |",
        all_connected.as_secs_f64(),
        ms(percentile(&connect_times, 50.0)),
        ms(percentile(&connect_times, 99.0)),
    ));
    rows.push(format!(
        "| {n} | controller CPU, all heartbeating every 10 s ({} s window, {hbs} heartbeats, {errors} stream errors) | {:.2}% of one core | < 25% of one core at 10,000 | {} |",
        window.as_secs(),
        cpu * 100.0,
        match (n >= 10_000, cpu < 0.25) {
            (false, _) => "info (the target is for 10,000)",
            (true, true) => "met",
            (true, false) => "MISSED",
        }
    ));
    rows.push(format!(
        "| {n} | controller RSS idle / after enrollment / all connected / steady (VmHWM) | {} / {} / {} / {} ({}) | — | info |",
        mib(base.rss_kib),
        mib(after_enroll.rss_kib),
        mib(connected.rss_kib),
        mib(steady.rss_kib),
        mib(steady.hwm_kib)
    ));
    rows.push(format!(
        "| {n} | controller memory per connected agent ((steady − after enrollment) / N) | {per_agent_kib:.1} KiB | ≤ 100 KiB | {} |",
        if per_agent_kib <= 100.0 { "met" } else { "MISSED" }
    ));
    rows.push(format!(
        "| {n} | simulator RSS (all {n} clients) | {} | — | info |",
        mib(sim.rss_kib)
    ));
    for (strategy, lat) in rollouts {
        let lat = match lat {
            Ok(lat) => lat,
            Err(e) => {
                rows.push(format!(
                    "| {n} | rollout latency, strategy {strategy} | {e:#} | p99 ≤ 2 s | MISSED |"
                ));
                continue;
            }
        };
        let p99 = percentile(&lat, 99.0);
        rows.push(format!(
            "| {n} | rollout latency, `drover runner apply` → each agent's ack, strategy {strategy} | p50 {} / p99 {} / last {} | p99 ≤ 2 s | {} |",
            ms(percentile(&lat, 50.0)),
            ms(p99),
            ms(lat.iter().max().copied().unwrap_or_default()),
            if p99 <= Duration::from_secs(2) { "met" } else { "MISSED" }
        ));
    }
    drop(controller);
    Ok(())
}

/// Applies a spec selecting every agent (a new generation) and returns, per agent, the time
/// from starting `drover runner apply` to its ack of `generation`.
async fn rollout(
    controller: &Controller,
    counters: &Counters,
    n: usize,
    generation: u64,
    strategy: Option<&str>,
) -> Result<Vec<Duration>> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let spec = dir.path().join("runners.toml");
    std::fs::write(
        &spec,
        format!(
            "[[runners]]\nname = \"sim-{generation}\"\nurl = \"https://gitlab.example.com\"\ntoken = \"glrt-sim{generation}\"\nexecutor = \"docker\"\n[runners.docker]\nimage = \"busybox\"\n"
        ),
    )
    .context("write spec")?;
    let mut args = vec![
        "runner".to_string(),
        "apply".into(),
        "-f".into(),
        spec.display().to_string(),
    ];
    if let Some(s) = strategy {
        args.extend(["--strategy".into(), s.into()]);
    }
    let start = Instant::now();
    let out = {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        controller.drover(&args)
    };
    if !out.status.success() {
        bail!(
            "drover runner apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let acked: Vec<Duration> = counters
            .acks
            .lock()
            .map_err(|_| anyhow::anyhow!("ack list poisoned"))?
            .iter()
            .filter(|(g, _)| *g == generation)
            .map(|(_, at)| at.saturating_duration_since(start))
            .collect();
        if acked.len() >= n {
            return Ok(acked);
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} agents acked generation {generation} within 120 s",
                acked.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .with_context(|| format!("fleet size {a:?} is not a number"))
        })
        .collect::<Result<_>>()?;
    let sizes = if sizes.is_empty() {
        vec![1000, 5000]
    } else {
        sizes
    };
    let window = Duration::from_secs(
        std::env::var("FLEET_WINDOW_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let mut rows = Vec::new();
    for n in sizes {
        run(n, window, &mut rows).await?;
    }
    println!("| agents | figure | value | target | verdict |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
