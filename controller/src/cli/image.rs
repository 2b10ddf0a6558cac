//! `drover image push (IMAGE[:TAG] | --file ARCHIVE.tar) [--selector k=v]... [--rate-limit
//! RATE] [-o json]` and `drover image ls [-o json]`: images for air-gapped boxes.
//!
//! For `IMAGE[:TAG]` the CLI runs `docker save IMAGE` on its own host (the `docker` command
//! on `PATH`, talking to the engine of wherever the CLI runs; the controller never talks to
//! Docker) into a temporary file, removed afterwards, and uploads it as `--file` does.
//! `push` then follows the deliveries until every selected agent loaded the image or gave
//! up (`--no-wait` returns after the upload): a progress bar on a terminal, a line per
//! change otherwise.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use drover_proto::v1;
use tokio::io::AsyncReadExt;

use super::output::{self, Format};
use crate::timefmt;
use crate::tokens::{parse_duration, parse_label};

/// Bytes per upload message.
const UPLOAD_CHUNK: usize = 1024 * 1024;

/// `drover image ...`
#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Send an image to the selected agents, which load it into their engine (only the
    /// layers a box lacks travel; resumable; no registry needed).
    Push(PushArgs),
    /// Images Drover delivered, per agent: reference, id, state.
    Ls(LsArgs),
}

/// Arguments of `drover image push`.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The image to push, saved from this host's Docker engine with `docker save`.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub image: Option<String>,
    /// A `docker save` archive or an OCI image layout archive to push instead.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Only agents with this label (repeatable; all must match). None: every agent.
    #[arg(long = "selector", value_parser = parse_label)]
    pub selector: Vec<(String, String)>,
    /// Bandwidth cap per agent on the controller's send side (`10MiB/s`, `500KiB`,
    /// bytes per second). None: unlimited.
    #[arg(long, value_parser = rate)]
    pub rate_limit: Option<u64>,
    /// The `name:tag` to load it as when the archive names none.
    #[arg(long)]
    pub tag: Option<String>,
    /// Return after the upload instead of following the deliveries.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to follow the deliveries.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub timeout: time::Duration,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Arguments of `drover image ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// A rate flag: a size (`drover_proto::spec::parse_size`) per second, `/s` optional.
fn rate(s: &str) -> Result<u64, String> {
    let size = s.strip_suffix("/s").unwrap_or(s);
    let v = drover_proto::spec::parse_size(size).map_err(|e| e.to_string())?;
    if v == 0 {
        return Err("a rate limit must be more than 0 bytes per second".into());
    }
    Ok(v)
}

/// Runs an image subcommand.
pub async fn run(cli: &super::Cli, cmd: &ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Push(a) => push(cli, a).await,
        ImageCommand::Ls(a) => ls(cli, a).await,
    }
}

/// A temporary archive, removed when dropped.
struct TempArchive(PathBuf);

impl Drop for TempArchive {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `docker save IMAGE` into a temporary file.
async fn docker_save(image: &str) -> anyhow::Result<TempArchive> {
    let path = std::env::temp_dir().join(format!(
        "drover-image-push-{:016x}.tar",
        rand::random::<u64>()
    ));
    let temp = TempArchive(path.clone());
    eprintln!("saving {image} with docker save");
    let out = tokio::process::Command::new("docker")
        .arg("save")
        .arg("-o")
        .arg(&path)
        .arg(image)
        .output()
        .await
        .context("run docker save (is the docker command installed on this host?)")?;
    if !out.status.success() {
        anyhow::bail!(
            "docker save {image}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(temp)
}

async fn push(cli: &super::Cli, a: &PushArgs) -> anyhow::Result<()> {
    let (_temp, path) = match (&a.file, &a.image) {
        (Some(f), _) => (None, f.clone()),
        (None, Some(image)) => {
            let t = docker_save(image).await?;
            let p = t.0.clone();
            (Some(t), p)
        }
        (None, None) => anyhow::bail!("give an IMAGE or --file ARCHIVE"),
    };
    let tag = a
        .tag
        .clone()
        .or_else(|| a.image.clone())
        .unwrap_or_default();
    let mut client = super::admin_client(cli).await?;
    let answer = upload(&mut client, &path, a, &tag).await?;
    eprintln!(
        "image {} ({}) stored, {} new bytes; {} agent(s) told to fetch it",
        answer.reference,
        answer.image_id,
        answer.stored_bytes,
        answer.agent_ids.len()
    );
    if a.no_wait {
        if a.output == Format::Json {
            let v = serde_json::json!({
                "image_id": answer.image_id,
                "reference": answer.reference,
                "agents": answer.agent_ids,
            });
            drover_proto::stdout::line(&serde_json::to_string_pretty(&v)?)?;
        }
        return Ok(());
    }
    let finished = follow(&mut client, &answer, a.timeout).await?;
    let failed = finished
        .iter()
        .filter(|d| d.state == v1::ImageDeliveryState::Failed as i32)
        .count();
    match a.output {
        Format::Json => {
            let v = serde_json::json!({
                "image_id": answer.image_id,
                "reference": answer.reference,
                "deliveries": finished.iter().map(delivery_json).collect::<Vec<_>>(),
            });
            drover_proto::stdout::line(&serde_json::to_string_pretty(&v)?)?;
        }
        Format::Table => {
            let colour = output::colour();
            output::print(&deliveries_table(&finished, colour), colour)?;
        }
    }
    if failed > 0 {
        anyhow::bail!(
            "image {}: {failed} agent(s) failed to load it",
            answer.reference
        );
    }
    Ok(())
}

/// Streams the archive at `path` to the controller.
async fn upload(
    client: &mut v1::admin_client::AdminClient<tonic::transport::Channel>,
    path: &Path,
    a: &PushArgs,
    tag: &str,
) -> anyhow::Result<v1::PushImageResponse> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("open archive {}", path.display()))?;
    let size = file
        .metadata()
        .await
        .with_context(|| format!("read archive {}", path.display()))?
        .len();
    // Only a plain `name:tag` goes to the controller as the fallback reference.
    let reference = if tag.contains('@') || tag.is_empty() {
        String::new()
    } else if tag
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'))
    {
        tag.to_string()
    } else {
        format!("{tag}:latest")
    };
    let header = v1::PushImageHeader {
        selector: a.selector.iter().cloned().collect(),
        rate_limit_bytes_per_second: a.rate_limit.unwrap_or(0),
        archive_size: size,
        reference,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<v1::PushImageChunk>(4);
    let name = path.display().to_string();
    let reader = async move {
        let mut first = Some(header);
        let mut buf = vec![0u8; UPLOAD_CHUNK];
        let mut sent = 0u64;
        let mut shown = Progress::new("upload");
        loop {
            let n = file
                .read(&mut buf)
                .await
                .with_context(|| format!("read archive {name}"))?;
            if n == 0 && first.is_none() {
                break;
            }
            let msg = v1::PushImageChunk {
                header: first.take(),
                data: buf[..n].to_vec(),
            };
            if tx.send(msg).await.is_err() {
                break;
            }
            sent += n as u64;
            shown.show(sent, size, "");
            if n == 0 {
                break;
            }
        }
        shown.done();
        anyhow::Ok(())
    };
    let call = client.push_image(tokio_stream::wrappers::ReceiverStream::new(rx));
    let (read, answer) = tokio::join!(reader, call);
    let answer = answer.map_err(|s| {
        super::change_error(&format!("push {}", path.display()), s, "`drover image ls`")
    })?;
    read?;
    Ok(answer.into_inner())
}

/// Polls the deliveries of the push until none is open or `timeout` passed.
async fn follow(
    client: &mut v1::admin_client::AdminClient<tonic::transport::Channel>,
    answer: &v1::PushImageResponse,
    timeout: time::Duration,
) -> anyhow::Result<Vec<v1::ImageDelivery>> {
    let deadline = tokio::time::Instant::now()
        + Duration::try_from(timeout).unwrap_or(Duration::from_secs(1800));
    let mut shown = Progress::new("fetch");
    loop {
        let mine: Vec<v1::ImageDelivery> = client
            .list_images(v1::ListImagesRequest {})
            .await
            .map_err(|s| super::status_error("list images", s))?
            .into_inner()
            .deliveries
            .into_iter()
            .filter(|d| d.image_id == answer.image_id && answer.agent_ids.contains(&d.agent_id))
            .collect();
        let open = mine.iter().filter(|d| is_open(d.state)).count();
        let (done, total) = mine.iter().fold((0u64, 0u64), |(d, t), x| {
            (d + x.bytes_done, t + x.bytes_total)
        });
        let loaded = mine.len() - open;
        shown.show(done, total, &format!("{loaded}/{} agents", mine.len()));
        if open == 0 {
            shown.done();
            return Ok(mine);
        }
        if tokio::time::Instant::now() >= deadline {
            shown.done();
            anyhow::bail!(
                "image {}: {open} agent(s) still fetching after {timeout}; follow with `drover image ls`",
                answer.reference
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn is_open(state: i32) -> bool {
    state == v1::ImageDeliveryState::Pending as i32
        || state == v1::ImageDeliveryState::Fetching as i32
}

/// A progress bar on a terminal (stderr), else a line when the percentage moves by 10.
struct Progress {
    what: &'static str,
    tty: bool,
    last: Option<u64>,
}

impl Progress {
    fn new(what: &'static str) -> Progress {
        Progress {
            what,
            tty: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    fn show(&mut self, done: u64, total: u64, extra: &str) {
        let pct = (done.saturating_mul(100))
            .checked_div(total)
            .unwrap_or(0)
            .min(100);
        if self.tty {
            let filled = (pct / 4) as usize;
            eprint!(
                "\r{} [{}{}] {pct:>3}% {} / {} {extra}   ",
                self.what,
                "#".repeat(filled),
                " ".repeat(25 - filled),
                bytes(done),
                bytes(total)
            );
        } else if self
            .last
            .is_none_or(|l| pct >= l + 10 || (pct == 100 && l != 100))
        {
            eprintln!(
                "{} {pct}% ({} of {}) {extra}",
                self.what,
                bytes(done),
                bytes(total)
            );
            self.last = Some(pct);
        }
    }

    fn done(&mut self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// Bytes for people.
fn bytes(v: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut f = v as f64;
    let mut i = 0;
    while f >= 1024.0 && i < UNITS.len() - 1 {
        f /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v} B")
    } else {
        format!("{f:.1} {}", UNITS[i])
    }
}

fn state_name(state: i32) -> &'static str {
    match v1::ImageDeliveryState::try_from(state) {
        Ok(v1::ImageDeliveryState::Pending) => "pending",
        Ok(v1::ImageDeliveryState::Fetching) => "fetching",
        Ok(v1::ImageDeliveryState::Delivered) => "delivered",
        Ok(v1::ImageDeliveryState::Failed) => "failed",
        _ => "unknown",
    }
}

/// The state as `drover image ls` shows it: `delivered`, `fetching 42%`, `failed: why`.
fn state_text(d: &v1::ImageDelivery) -> String {
    match state_name(d.state) {
        "fetching" => {
            let pct = d
                .bytes_done
                .saturating_mul(100)
                .checked_div(d.bytes_total)
                .unwrap_or(0);
            format!("fetching {pct}%")
        }
        "failed" => format!("failed: {}", d.error),
        s => s.to_string(),
    }
}

/// One delivery as `-o json` prints it.
pub fn delivery_json(d: &v1::ImageDelivery) -> serde_json::Value {
    serde_json::json!({
        "agent_id": d.agent_id,
        "image_id": d.image_id,
        "reference": d.reference,
        "state": state_name(d.state),
        "bytes_total": d.bytes_total,
        "bytes_done": d.bytes_done,
        "bytes_sent": d.bytes_sent,
        "layers_present": d.layers_present,
        "error": d.error,
        "updated_at": d.updated_at.as_ref().and_then(timefmt::from_proto).map(timefmt::rfc3339),
    })
}

fn deliveries_table(ds: &[v1::ImageDelivery], colour: bool) -> String {
    let rows: Vec<Vec<String>> = ds
        .iter()
        .map(|d| {
            vec![
                output::clip(&d.agent_id, 20),
                output::clip(&d.reference, 30),
                output::clip(d.image_id.trim_start_matches("sha256:"), 12),
                output::clip(&state_text(d), 40),
                bytes(d.bytes_sent),
            ]
        })
        .collect();
    output::table_coloured(&["AGENT", "IMAGE", "ID", "STATE", "SENT"], &rows, 3, colour)
}

async fn ls(cli: &super::Cli, a: &LsArgs) -> anyhow::Result<()> {
    let mut client = super::admin_client(cli).await?;
    let ds = client
        .list_images(v1::ListImagesRequest {})
        .await
        .map_err(|s| super::status_error("list images", s))?
        .into_inner()
        .deliveries;
    match a.output {
        Format::Json => {
            let arr: Vec<serde_json::Value> = ds.iter().map(delivery_json).collect();
            drover_proto::stdout::line(&serde_json::to_string_pretty(&arr)?)?;
        }
        Format::Table if ds.is_empty() => eprintln!("no images delivered"),
        Format::Table => {
            let colour = output::colour();
            output::print(&deliveries_table(&ds, colour), colour)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_take_a_size_per_second() {
        assert_eq!(rate("10MiB/s"), Ok(10 * 1024 * 1024));
        assert_eq!(rate("500KiB"), Ok(500 * 1024));
        assert!(rate("0/s").is_err());
        assert!(rate("fast").is_err());
    }

    #[test]
    fn states_read_as_people_expect() {
        let d = v1::ImageDelivery {
            state: v1::ImageDeliveryState::Fetching as i32,
            bytes_total: 200,
            bytes_done: 50,
            ..Default::default()
        };
        assert_eq!(state_text(&d), "fetching 25%");
        let d = v1::ImageDelivery {
            state: v1::ImageDeliveryState::Failed as i32,
            error: "disk full".into(),
            ..Default::default()
        };
        assert_eq!(state_text(&d), "failed: disk full");
        assert_eq!(delivery_json(&d)["state"], "failed");
        assert_eq!(bytes(1536), "1.5 KiB");
    }
}
