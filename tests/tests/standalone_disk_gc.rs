//! Disk hygiene with the real agent and real Docker: builds volumes of many jobs across
//! projects and slots stay within a small `[runners.drover_gc]` budget; a running job's
//! volume survives any collection; a dry run of `drover-agent gc` removes nothing and the
//! real one removes what it said; an image the agent pulled (per its ledger) and left idle is
//! collected while the image the runner spec requires survives; the budgets appear in
//! `drover-agent status` and in the metrics.

mod standalone_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use drover_tests::fake_gitlab::{JobSpec, JobState};
use drover_tests::scrape::{http_get, metrics_addr_in};
use drover_tests::standalone_agent::AgentOptions;
use futures::StreamExt;
use serde_json::Value;
use standalone_support::{DEFAULT_LOG, E2e, start_with};

const JOB_WAIT: Duration = Duration::from_secs(60);
/// The volume budget: two of the 1 MiB volumes the jobs leave, not three.
const BUDGET: &str = "2500KiB";
const BUDGET_BYTES: u64 = 2500 * 1024;

/// A job in project `project` that leaves 1 MiB in its builds volume.
fn blob_job(e: &E2e, name: &str, project: i64) -> JobSpec {
    let mut j = e.job(name).script([
        "dd if=/dev/zero of=\"$CI_PROJECT_DIR/blob\" bs=1024 count=1024 2>/dev/null; echo wrote",
    ]);
    j.project_id = project;
    j
}

/// A tiny image of its own (one file), so its id is no other image's.
async fn tiny_image(docker: &bollard::Docker, name: &str) -> String {
    let mut tar = tar::Builder::new(Vec::new());
    let body = name.as_bytes();
    let mut h = tar::Header::new_gnu();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "marker", body).expect("tar");
    let bytes = tar.into_inner().expect("tar");
    let (repo, tag) = name.split_once(':').expect("repo:tag");
    let opts = bollard::query_parameters::CreateImageOptions {
        from_src: Some("-".to_string()),
        repo: Some(repo.to_string()),
        tag: Some(tag.to_string()),
        ..Default::default()
    };
    let mut s = docker.create_image(Some(opts), Some(bollard::body_full(bytes.into())), None);
    while let Some(item) = s.next().await {
        item.expect("import tiny image");
    }
    docker
        .inspect_image(name)
        .await
        .expect("inspect tiny image")
        .id
        .expect("image id")
}

/// `drover-agent ARGS...`; (success, stdout, stderr).
fn agent_cmd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(drover_tests::harness::agent_bin())
        .args(args)
        .output()
        .expect("run drover-agent");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `drover-agent status -o json` of the agent's state dir.
fn status_json(state_dir: &Path) -> Value {
    let dir = state_dir.to_string_lossy();
    let (ok, out, err) = agent_cmd(&["status", "--state-dir", &dir, "-o", "json"]);
    assert!(ok, "status failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status json: {e}\n{out}"))
}

/// The agent's builds volumes now.
async fn builds_volumes(e: &E2e) -> Vec<String> {
    let agent = e.agent_id().await;
    let mut filters = std::collections::HashMap::new();
    filters.insert(
        "label".to_string(),
        vec![
            format!("com.drover.agent={agent}"),
            "com.drover.kind=builds".to_string(),
        ],
    );
    let mut v: Vec<String> = e
        .docker
        .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
            filters: Some(filters),
        }))
        .await
        .expect("list volumes")
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.name)
        .collect();
    v.sort();
    v
}

async fn finish(e: &E2e, id: i64) {
    let end = e.gitlab.wait_for_job_finished(id, JOB_WAIT).await;
    assert!(
        matches!(end.as_ref().map(|f| &f.state), Some(JobState::Success)),
        "job {id} ended {end:?}; trace:\n{}\nagent:\n{}",
        String::from_utf8_lossy(&e.gitlab.trace(id)),
        e.agent.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn volumes_stay_in_budget_running_jobs_and_required_images_survive() {
    let test = "standalone_disk_gc";
    let state = tempfile::tempdir().expect("state dir");
    // An image "the agent pulled" long ago, per its ledger: collected at start.
    let Some((docker, _)) = drover_tests::images::docker_and_busybox(test).await else {
        return;
    };
    let pulled = format!("drover-disk-gc-e2e/pulled:{:08x}", rand::random::<u32>());
    let pulled_id = tiny_image(&docker, &pulled).await;
    let ledger = serde_json::json!({
        "images": { pulled_id.clone(): { "refs": [pulled.clone()], "last_used": 1000, "origin": "pulled" } }
    });
    std::fs::write(
        state.path().join("disk-ledger.json"),
        serde_json::to_vec(&ledger).unwrap(),
    )
    .unwrap();

    let options = AgentOptions {
        log_filter: DEFAULT_LOG.to_string(),
        args: vec!["--metrics-listen".to_string(), "127.0.0.1:0".to_string()],
        state_dir: Some(state.path().to_path_buf()),
    };
    let gc = format!(
        "\n  [runners.drover_gc]\n    volumes_max_size = \"{BUDGET}\"\n    images_max_size = \"1GiB\"\n"
    );
    let Some(e) = start_with(test, 2, &gc, options).await else {
        return;
    };
    let state_dir = e.agent.state_dir();
    let state_arg = state_dir.to_string_lossy().into_owned();
    let config_arg = e.agent.config.to_string_lossy().into_owned();

    // The idle pulled image goes at start; the required one (the runner's image) stays.
    let end = Instant::now() + Duration::from_secs(30);
    while docker.inspect_image(&pulled).await.is_ok() {
        assert!(
            Instant::now() < end,
            "the idle pulled image was not collected; agent:\n{}",
            e.agent.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Many jobs across three projects and two slots.
    let mut ids = Vec::new();
    for round in 0..3 {
        for project in [101, 102, 103] {
            ids.push(
                e.gitlab
                    .enqueue_job(blob_job(&e, &format!("blob-{round}-{project}"), project))
                    .id,
            );
        }
    }
    for id in &ids {
        finish(&e, *id).await;
    }
    let vols_after_jobs = builds_volumes(&e).await;
    // After the last job the collector brings the volumes back within the budget: the
    // report says so and at most two 1 MiB volumes are left. (Both are awaited: a report
    // written by a collection before the last job's volume was filled is within the budget
    // too, and the collection after that job is the one that must remove a volume.)
    let end = Instant::now() + Duration::from_secs(30);
    let (disk, kept) = loop {
        let s = status_json(&state_dir);
        let d = s["disk"].clone();
        let kept = builds_volumes(&e).await;
        if d["volumes"]["bytes"]
            .as_u64()
            .is_some_and(|b| b > 0 && b <= BUDGET_BYTES)
            && d["trigger"] != "start"
            && (1..=2).contains(&kept.len())
        {
            break (d, kept);
        }
        assert!(
            Instant::now() < end,
            "volumes never within the budget (at most two 1 MiB volumes fit): {s:#}\n\
             volumes after the jobs {vols_after_jobs:?}, now {kept:?}\nagent:\n{}",
            e.agent.stderr()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(disk["volumes"]["max_bytes"], BUDGET_BYTES, "{disk:#}");
    assert_eq!(disk["images"]["max_bytes"], 1u64 << 30, "{disk:#}");
    assert!(disk["removed_total"].as_u64().unwrap() >= 2, "{disk:#}");
    let (ok, text, err) = agent_cmd(&["status", "--state-dir", &state_arg]);
    assert!(
        ok && text.contains("disk budgets:") && text.contains("volumes"),
        "{text}{err}"
    );

    // A job that starts on a collected volume says so.
    let collected_project = [101, 102, 103]
        .into_iter()
        .find(|p| !kept.iter().any(|v| v.contains(&format!("-project-{p}-"))))
        .expect("a project whose volume was collected");
    let again = e
        .gitlab
        .enqueue_job(blob_job(&e, "again", collected_project))
        .id;
    finish(&e, again).await;
    let trace = String::from_utf8_lossy(&e.gitlab.trace(again)).into_owned();
    assert!(
        trace.contains("was removed by Drover's disk collector"),
        "{trace}"
    );

    // The metrics carry the budgets.
    let addr = metrics_addr_in(&e.agent.stderr()).expect("metrics address in the log");
    let m = http_get(&addr, "/metrics").await;
    assert!(
        m.contains(&format!(
            "drover_agent_disk_budget_bytes{{kind=\"volumes\"}} {BUDGET_BYTES}"
        )),
        "{m}"
    );
    assert!(
        m.contains("drover_agent_disk_kept_bytes{kind=\"images\"}"),
        "{m}"
    );
    assert!(
        m.contains("drover_agent_disk_gc_removed_total{kind=\"volume\"}"),
        "{m}"
    );

    // A running job holds its volume through any collection, even a zero budget's.
    let mut long = e.long_job("holder");
    long.project_id = 104;
    let long = e.gitlab.enqueue_job(long).id;
    e.wait_for_tick(long, "tick-2").await;
    let held: Vec<String> = builds_volumes(&e)
        .await
        .into_iter()
        .filter(|v| v.contains("-project-104-"))
        .collect();
    assert_eq!(held.len(), 1, "{held:?}");
    // `gc` reads the budget from the config file (the running agent keeps the one it
    // loaded until a SIGHUP): a zero volume budget there.
    let tight = std::fs::read_to_string(&e.agent.config).unwrap().replace(
        &format!("volumes_max_size = \"{BUDGET}\""),
        "volumes_max_size = \"0\"",
    );
    std::fs::write(&e.agent.config, tight).unwrap();
    let before = builds_volumes(&e).await;
    let (ok, dry, err) = agent_cmd(&[
        "gc",
        "--dry-run",
        "--config",
        &config_arg,
        "--state-dir",
        &state_arg,
    ]);
    assert!(ok, "gc --dry-run: {err}");
    assert!(
        dry.contains("dry run:") && dry.contains("would remove volume"),
        "{dry}"
    );
    assert!(
        !dry.contains(&held[0]),
        "the held volume is not planned: {dry}"
    );
    assert_eq!(
        builds_volumes(&e).await,
        before,
        "a dry run removes nothing"
    );
    let (ok, out, err) = agent_cmd(&[
        "gc",
        "--config",
        &config_arg,
        "--state-dir",
        &state_arg,
        "-o",
        "json",
    ]);
    assert!(ok, "gc: {err}");
    let r: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(r["dry_run"], false);
    let now = builds_volumes(&e).await;
    assert_eq!(
        now,
        vec![held[0].clone()],
        "only the running job's volume stays\n{out}"
    );
    assert_eq!(
        r["removed"].as_array().map(Vec::len),
        Some(dry.matches("would remove").count()),
        "the real run removed what the dry run said: {dry}\n{out}"
    );
    assert!(
        r["volumes"]["protected"].as_u64().unwrap() >= 1,
        "the held volume counts as protected: {out}"
    );
    assert!(e.gitlab.cancel_job(long));
    let _ = e.gitlab.wait_for_job_finished(long, JOB_WAIT).await;

    // The required image (the runner's) was never touched.
    assert!(
        docker.inspect_image(&e.image).await.is_ok(),
        "required image kept"
    );
}
