//! Cache round trip benchmark: one archive saved and restored through the distributed cache
//! (`drover_job::cache::S3Remote`, the agent's own client, against a local moto server,
//! see `drover_tests::s3_server`) against the agent's local cache (a copy into the store
//! and back); prints a Markdown table.
//!
//! ```text
//! cargo run -p drover-tests --bin bench-s3cache            # 50 MB, 3 rounds
//! BENCH_MB=200 BENCH_ROUNDS=5 cargo run -p drover-tests --bin bench-s3cache
//! ```

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use drover_job::cache::{RemoteCache, S3Remote};
use drover_proto::spec::CacheS3Config;
use drover_tests::s3_server::S3Server;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let mb = env_num("BENCH_MB", 50);
    let rounds = env_num("BENCH_ROUNDS", 3).max(1);
    let s3 = S3Server::start("bench-s3cache")
        .await
        .context("moto server not installed (pip install 'moto[server]')")?;
    s3.create_bucket("bench-cache").await;
    let cfg = CacheS3Config {
        server_address: s3.addr.to_string(),
        access_key: Some("AKIABENCH".to_string().into()),
        secret_key: Some("bench".to_string().into()),
        bucket_name: "bench-cache".into(),
        insecure: true,
        ..CacheS3Config::default()
    };
    let remote = S3Remote::new(&cfg, None)?;
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("cache.zip");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src)?);
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..mb {
            rand::Rng::fill(&mut rand::rng(), &mut block[..]);
            f.write_all(&block)?;
        }
        f.flush()?;
    }
    let (mut up, mut down, mut local) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let object = format!("runner/bench/project/1/key-{round}");
        let t = Instant::now();
        remote.upload(&object, &src).await?;
        up.push(t.elapsed());
        let dest = dir.path().join(format!("restored-{round}.zip"));
        let t = Instant::now();
        anyhow::ensure!(
            remote.download(&object, &dest, u64::MAX).await?,
            "object missing"
        );
        down.push(t.elapsed());
        anyhow::ensure!(std::fs::metadata(&dest)?.len() == mb << 20, "size differs");
        std::fs::remove_file(&dest)?;
        // The local cache: the archive written into the store, then read back out.
        let t = Instant::now();
        let stored = dir.path().join(format!("store-{round}.zip"));
        std::fs::copy(&src, &stored)?;
        std::fs::File::open(&stored)?.sync_all()?;
        std::io::copy(&mut std::fs::File::open(&stored)?, &mut std::io::sink())?;
        local.push(t.elapsed());
        std::fs::remove_file(&stored)?;
    }
    let (up, down, local) = (median(up), median(down), median(local));
    let rate = |d: Duration| mb as f64 / d.as_secs_f64();
    println!("| {mb} MB archive, median of {rounds} | time | MB/s |");
    println!("|---|---|---|");
    println!(
        "| S3 upload (moto, localhost, plain HTTP) | {:.2} s | {:.0} |",
        up.as_secs_f64(),
        rate(up)
    );
    println!(
        "| S3 download | {:.2} s | {:.0} |",
        down.as_secs_f64(),
        rate(down)
    );
    println!(
        "| S3 round trip | {:.2} s | {:.0} |",
        (up + down).as_secs_f64(),
        rate(up + down)
    );
    println!(
        "| local cache round trip (write + read back) | {:.2} s | {:.0} |",
        local.as_secs_f64(),
        rate(local)
    );
    println!(
        "| ratio S3 / local | {:.1}x | |",
        (up + down).as_secs_f64() / local.as_secs_f64()
    );
    Ok(())
}
