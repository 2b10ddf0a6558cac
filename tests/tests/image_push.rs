//! `drover image push` / `drover image ls` end to end: the real controller, real agents
//! (each with its own state dir) and the real Docker engine; images are `docker save`
//! archives made by hand from the local busybox rootfs plus layers of random bytes (no
//! registry), each run tagging its own `drover-test-imagepush/*` names, removed at the end.
//!
//! Both agents share this machine's one Docker engine, so what one loads the other sees.
//! What each test proves with that in mind:
//! - two agents: the image is loaded (`docker image inspect` shows the id the archive's
//!   config gives), both deliveries end `delivered` with the engine's id, each agent's disk
//!   ledger records it as delivered; a job with `pull_policy = "never"` runs on it; a second
//!   image differing in one layer, pushed to one agent (alone, so no other agent's load
//!   races it), makes the controller send exactly that layer and the config; the
//!   controller's `/metrics` counts the pushes, the bytes sent and the deliveries;
//! - kill -9 of the agent mid-transfer (rate-limited so it is mid-transfer) and a restart:
//!   the agent resumes from its partial file (the controller sends less than the image plus
//!   what was received before the kill, and the agent logs the resume);
//! - hostile archives (a path leaving the archive, a layer that is not its digest, a huge
//!   manifest) are refused with an error naming the entry or file, and nothing is stored
//!   (no delivery, no spooled file left).

use std::path::Path;
use std::time::Duration;

use drover_tests::fake_gitlab::FakeGitLab;
use drover_tests::fleet_support::{
    agents_connected, apply, init_crypto, job_ok, registration_spec, rollout_complete, wait_until,
};
use drover_tests::harness::{Agent, Controller, stderr, stdout};
use drover_tests::image_archive::{SaveArchive, file_layer, random_bytes, write_entries};
use drover_tests::images::{busybox_rootfs_tar, docker_and_busybox};

const WAIT: Duration = Duration::from_secs(40);

/// Removes the test's image tags from the engine when dropped.
struct Tags(Vec<String>);

impl Drop for Tags {
    fn drop(&mut self) {
        for t in &self.0 {
            let _ = std::process::Command::new("docker")
                .args(["image", "rm", "--force", t])
                .output();
        }
    }
}

fn unique_tag(name: &str) -> String {
    format!(
        "drover-test-imagepush/{name}-{:08x}:1",
        rand::random::<u32>()
    )
}

/// `drover image ls -o json`.
fn deliveries(c: &Controller) -> Vec<serde_json::Value> {
    let out = c.drover(&["image", "ls", "-o", "json"]);
    assert!(out.status.success(), "image ls: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

/// The delivery of `image` to `agent`.
fn delivery(c: &Controller, agent: &str, image: &str) -> Option<serde_json::Value> {
    deliveries(c)
        .into_iter()
        .find(|d| d["agent_id"] == agent && d["image_id"] == image)
}

/// `drover image push ARGS...` off the async runtime (it follows the deliveries).
async fn push(c: &Controller, args: &[&str]) -> std::process::Output {
    let mut full: Vec<String> = vec!["image".into(), "push".into()];
    full.extend(args.iter().map(|a| a.to_string()));
    let data = c.data_dir();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(drover_tests::harness::drover_bin())
            .arg("--data-dir")
            .arg(data)
            .args(&full)
            .output()
            .expect("run drover image push")
    })
    .await
    .expect("push task")
}

fn logs(c: &Controller, agents: &[&Agent]) -> String {
    let mut s = format!("----- controller -----\n{}", c.proc.log_text());
    for a in agents {
        if let Some(p) = &a.proc {
            s.push_str(&format!("\n----- agent -----\n{}", p.log_text()));
        }
    }
    s
}

fn image_id_in_engine(tag: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", tag])
        .output()
        .expect("docker image inspect");
    assert!(
        out.status.success(),
        "{tag} not in the engine: {}",
        stderr(&out)
    );
    stdout(&out).trim().to_string()
}

fn ledger_origin(state_dir: &Path, id: &str) -> String {
    let text = std::fs::read_to_string(state_dir.join("disk-ledger.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["images"][id]["origin"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_loads_on_two_agents_runs_a_job_and_sends_only_a_new_layer() {
    init_crypto();
    let Some((_, _busybox)) = docker_and_busybox("image push").await else {
        return;
    };
    let base = busybox_rootfs_tar().expect("busybox rootfs");
    let x = SaveArchive {
        tag: unique_tag("app"),
        layers: vec![
            base.clone(),
            file_layer("data/one", &random_bytes(256 * 1024)),
        ],
    };
    let mut y = x.clone();
    y.tag = unique_tag("app-next");
    y.layers
        .push(file_layer("data/two", &random_bytes(128 * 1024)));
    let _tags = Tags(vec![x.tag.clone(), y.tag.clone()]);

    let gitlab = FakeGitLab::start().await;
    gitlab.set_trace_update_interval(1);
    gitlab.add_registration_token("GR1348941-imagepush");
    let c = Controller::start();
    let (mut a, mut b) = (Agent::new(), Agent::new());
    let ida = a.enroll_ok(
        &c.url(),
        &c.create_token(&["--label", "site=lab", "--label", "box=a"]),
    );
    let idb = b.enroll_ok(
        &c.url(),
        &c.create_token(&["--label", "site=lab", "--label", "box=b"]),
    );
    a.run();
    b.run();
    let ctx = || logs(&c, &[&a, &b]);
    agents_connected(&c, &[&ida, &idb], ctx).await;

    let dir = tempfile::tempdir().unwrap();
    let xfile = dir.path().join("x.tar");
    x.write(&xfile);
    let out = push(
        &c,
        &[
            "--file",
            xfile.to_str().unwrap(),
            "--selector",
            "site=lab",
            "-o",
            "json",
        ],
    )
    .await;
    assert!(out.status.success(), "push: {}\n{}", stderr(&out), ctx());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["image_id"], x.id().as_str());
    assert_eq!(v["reference"], x.tag.as_str());
    let ds = v["deliveries"].as_array().unwrap();
    assert_eq!(ds.len(), 2, "{v}");
    assert!(ds.iter().all(|d| d["state"] == "delivered"), "{v}");
    // The engine holds it under the archive's tag, with the config's digest as id.
    assert_eq!(image_id_in_engine(&x.tag), x.id());
    for agent in [&a, &b] {
        assert_eq!(ledger_origin(&agent.state_dir(), &x.id()), "delivered");
    }
    let ls = c.drover(&["image", "ls"]);
    assert!(stdout(&ls).contains("delivered"), "{}", stdout(&ls));

    // A job on an air-gapped runner (pull_policy never) runs on the delivered image.
    apply(
        &c,
        dir.path(),
        &registration_spec("lab", gitlab.url(), "GR1348941-imagepush", "lab", &x.tag),
    );
    rollout_complete(&c, 1, ctx).await;
    job_ok(&gitlab, &x.tag, "on-delivered-image", &[], ctx).await;

    // The next version differs in one layer: only it and the config travel.
    let yfile = dir.path().join("y.tar");
    y.write(&yfile);
    let out = push(
        &c,
        &[
            "--file",
            yfile.to_str().unwrap(),
            "--selector",
            "box=a",
            "-o",
            "json",
        ],
    )
    .await;
    assert!(out.status.success(), "push: {}\n{}", stderr(&out), ctx());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &v["deliveries"][0];
    assert_eq!(d["agent_id"], ida.as_str(), "{v}");
    assert_eq!(d["state"], "delivered", "{v}");
    assert_eq!(d["layers_present"], 2, "{v}");
    let new_bytes = (y.config().len() + y.layers[2].len()) as u64;
    assert_eq!(d["bytes_sent"].as_u64(), Some(new_bytes), "{v}");
    assert_eq!(image_id_in_engine(&y.tag), y.id());

    // The controller's metrics agree with the deliveries: what was sent in all, and three
    // delivered (x to both boxes, y to box a).
    let sent: u64 = deliveries(&c)
        .iter()
        .map(|d| d["bytes_sent"].as_u64().unwrap_or(0))
        .sum();
    let text = drover_tests::scrape::http_get(&c.http_addr, "/metrics").await;
    for line in [
        "drover_image_pushes_total 2".to_string(),
        format!("drover_image_push_bytes_sent_total {sent}"),
        "drover_image_deliveries{state=\"delivered\"} 3".to_string(),
        "drover_image_deliveries_finished_total{state=\"delivered\"} 3".to_string(),
    ] {
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_cut_by_kill_9_resumes_from_the_partial_file() {
    init_crypto();
    if docker_and_busybox("image push resume").await.is_none() {
        return;
    }
    let z = SaveArchive {
        tag: unique_tag("big"),
        layers: vec![
            busybox_rootfs_tar().expect("busybox rootfs"),
            file_layer("data/big", &random_bytes(4 * 1024 * 1024)),
        ],
    };
    let _tags = Tags(vec![z.tag.clone()]);
    let c = Controller::start();
    let mut a = Agent::new();
    let id = a.enroll_ok(&c.url(), &c.create_token(&["--label", "site=edge"]));
    a.run();
    agents_connected(&c, &[&id], || logs(&c, &[&a])).await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("z.tar");
    z.write(&file);
    let out = push(
        &c,
        &[
            "--file",
            file.to_str().unwrap(),
            "--rate-limit",
            "512KiB/s",
            "--no-wait",
        ],
    )
    .await;
    assert!(out.status.success(), "push: {}", stderr(&out));
    // Kill the agent half way.
    let before = wait_until(
        WAIT,
        "2 MiB fetched",
        || {
            delivery(&c, &id, &z.id())
                .and_then(|d| d["bytes_done"].as_u64())
                .filter(|n| *n >= 2 * 1024 * 1024)
        },
        || logs(&c, &[&a]),
    )
    .await;
    a.proc().kill();
    let partial = a.state_dir().join("images/partial");
    let held: u64 = std::fs::read_dir(&partial)
        .expect("a partial blob after the kill")
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(held >= 1024 * 1024, "partial bytes {held}");
    a.run();
    let d = wait_until(
        WAIT,
        "the image delivered after the restart",
        || delivery(&c, &id, &z.id()).filter(|d| d["state"] == "delivered"),
        || logs(&c, &[&a]),
    )
    .await;
    assert_eq!(image_id_in_engine(&z.tag), z.id());
    let total = d["bytes_total"].as_u64().unwrap();
    let sent = d["bytes_sent"].as_u64().unwrap();
    // From zero again it would be the whole image plus what came before the kill.
    assert!(
        sent < total + before / 2,
        "sent {sent}, image {total}, before kill {before}"
    );
    let log = a.proc.as_ref().unwrap().log_text();
    assert!(log.contains("resuming blob download"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_archives_are_refused_and_nothing_is_stored() {
    init_crypto();
    let c = Controller::start();
    let a = Agent::new();
    a.enroll_ok(&c.url(), &c.create_token(&["--label", "site=lab"]));
    let dir = tempfile::tempdir().unwrap();
    let good = SaveArchive {
        tag: "drover-test-imagepush/hostile:1".into(),
        layers: vec![file_layer("data/x", b"payload")],
    };
    let mut traversal = good.entries();
    traversal.push(("../evil".into(), b"x".to_vec()));
    let mut tampered = good.entries();
    let last = tampered.len() - 1;
    tampered[last].1 = file_layer("data/x", b"tampered");
    let mut huge = good.entries();
    huge[0].1 = vec![b' '; 2 * 1024 * 1024];
    for (name, entries, want) in [
        (
            "traversal",
            traversal,
            "entry \"../evil\" leaves the archive",
        ),
        ("tampered", tampered, "(uncompressed): digest is"),
        (
            "huge",
            huge,
            "manifest.json is 2097152 bytes, more than the 1048576 bytes allowed",
        ),
    ] {
        let file = dir.path().join(format!("{name}.tar"));
        write_entries(&file, &entries);
        let out = push(&c, &["--file", file.to_str().unwrap()]).await;
        let err = stderr(&out);
        assert!(!out.status.success(), "{name} accepted");
        assert!(
            err.contains("archive refused, nothing stored") && err.contains(want),
            "{name}: {err}"
        );
        assert_eq!(deliveries(&c), Vec::<serde_json::Value>::new(), "{name}");
        let spooled = std::fs::read_dir(c.data_dir().join("spool"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(spooled, 0, "{name}: spool left behind");
    }
    // Not an archive at all.
    let file = dir.path().join("junk.tar");
    std::fs::write(&file, random_bytes(3000)).unwrap();
    let out = push(&c, &["--file", file.to_str().unwrap()]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("archive refused"), "{}", stderr(&out));
}
