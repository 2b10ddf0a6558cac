//! `drover image push` benchmark: a ~200 MB image (the busybox rootfs and four 50 MB layers
//! of random bytes, so nothing compresses or is shared) delivered to two agents, against
//! `docker save | docker load` by hand; then a second image differing in one 1 MB layer
//! (bytes the controller sent). Prints a Markdown table.
//!
//! ```text
//! cargo run -p drover-tests --bin bench-image-push
//! ```
//!
//! Both agents share this machine's one Docker engine, so each box's load is measured on
//! its own: the image is removed from the engine before each box's push (and before each
//! `docker load` by hand). The archive is saved once with `docker save` (timed, counted in
//! both columns); copying it to the boxes by hand is not counted.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use drover_tests::harness::{Agent, Controller, stderr, stdout};
use drover_tests::image_archive::{SaveArchive, file_layer, random_bytes};
use drover_tests::images::busybox_rootfs_tar;

fn docker(args: &[&str]) -> Result<()> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .context("run docker")?;
    if !out.status.success() {
        bail!("docker {}: {}", args.join(" "), stderr(&out));
    }
    Ok(())
}

fn timed(f: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed())
}

fn push(c: &Controller, file: &Path, selector: &str) -> Result<serde_json::Value> {
    let out = c.drover(&[
        "image",
        "push",
        "--file",
        file.to_str().context("utf-8 path")?,
        "--selector",
        selector,
        "-o",
        "json",
    ]);
    if !out.status.success() {
        bail!("image push: {}", stderr(&out));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let base = busybox_rootfs_tar()?;
    let mut x = SaveArchive {
        tag: format!("drover-bench-imagepush/app-{:08x}:1", rand::random::<u32>()),
        layers: vec![base],
    };
    for i in 0..4 {
        x.layers.push(file_layer(
            &format!("data/{i}"),
            &random_bytes(50 * 1024 * 1024),
        ));
    }
    let mut y = x.clone();
    y.tag = x.tag.replace(":1", ":2");
    y.layers
        .push(file_layer("data/next", &random_bytes(1024 * 1024)));
    let made = dir.path().join("made.tar");
    x.write(&made);
    docker(&["load", "-i", made.to_str().context("utf-8 path")?])?;
    let size_mb = std::fs::metadata(&made)?.len() as f64 / 1e6;

    // docker save once, then a load per box.
    let saved = dir.path().join("saved.tar");
    let saved_s = saved.to_str().context("utf-8 path")?.to_string();
    let save = timed(|| docker(&["save", "-o", &saved_s, &x.tag]))?;
    let mut by_hand = save;
    for _ in 0..2 {
        docker(&["image", "rm", "--force", &x.tag])?;
        by_hand += timed(|| docker(&["load", "-i", &saved_s]))?;
    }

    let c = Controller::start();
    let (mut a, mut b) = (Agent::new(), Agent::new());
    a.enroll_ok(&c.url(), &c.create_token(&["--label", "box=a"]));
    b.enroll_ok(&c.url(), &c.create_token(&["--label", "box=b"]));
    a.run();
    b.run();
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.agents().iter().filter(|v| v["connected"] == true).count() < 2 {
        if Instant::now() > deadline {
            bail!("agents did not connect: {}", c.proc.log_text());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut pushed = save;
    let mut sent = Vec::new();
    for selector in ["box=a", "box=b"] {
        docker(&["image", "rm", "--force", &x.tag])?;
        let mut answer = serde_json::Value::Null;
        pushed += timed(|| {
            answer = push(&c, &saved, selector)?;
            Ok(())
        })?;
        let d = &answer["deliveries"][0];
        if d["state"] != "delivered" {
            bail!("push to {selector}: {answer}");
        }
        sent.push(d["bytes_sent"].as_u64().unwrap_or(0));
    }
    // The next version, one layer more, to box a (which holds the first).
    let yfile = dir.path().join("y.tar");
    y.write(&yfile);
    let t = Instant::now();
    let answer = push(&c, &yfile, "box=a")?;
    let second = t.elapsed();
    let second_sent = answer["deliveries"][0]["bytes_sent"].as_u64().unwrap_or(0);
    let y_mb = std::fs::metadata(&yfile)?.len() as f64 / 1e6;
    let _ = docker(&["image", "rm", "--force", &x.tag, &y.tag]);
    drop((a, b));
    let _ = stdout;

    println!("| figure | value |");
    println!("|---|---|");
    println!("| image size (archive) | {size_mb:.1} MB, 5 layers |");
    println!("| `docker save` once | {:.2} s |", save.as_secs_f64());
    println!(
        "| by hand: save + `docker load` on each of 2 boxes | {:.2} s |",
        by_hand.as_secs_f64()
    );
    println!(
        "| drover: save + `drover image push --file` to each of 2 boxes (upload, store, fetch, load) | {:.2} s |",
        pushed.as_secs_f64()
    );
    println!(
        "| ratio drover / by hand | {:.2} |",
        pushed.as_secs_f64() / by_hand.as_secs_f64()
    );
    println!(
        "| bytes sent per box (first push) | {} |",
        sent.iter()
            .map(|s| format!("{:.1} MB", *s as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| second push (one 1 MB layer more, archive {y_mb:.1} MB): bytes sent | {second_sent} B ({:.2} s) |",
        second.as_secs_f64()
    );
    Ok(())
}
