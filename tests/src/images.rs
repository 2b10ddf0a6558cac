//! Local test images: no registry is reachable, so images are built from host files.
//!
//! `busybox_image()` imports a busybox image (`drover-test/busybox:1`) made of the host's
//! static `/bin/busybox` and its applet links. Idempotent: an existing image is reused; two
//! test processes importing at once both succeed (the tag ends on one identical image).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use bollard::Docker;
use bollard::query_parameters::CreateImageOptions;
use futures::StreamExt;
use tokio::sync::OnceCell;

/// The tag of the busybox test image.
pub const BUSYBOX_IMAGE: &str = "drover-test/busybox:1";
const BUSYBOX_BIN: &str = "/bin/busybox";

static BUSYBOX: OnceCell<String> = OnceCell::const_new();

/// Why the busybox image cannot be built here (`None` = it can): no static busybox.
pub fn busybox_unavailable() -> Option<String> {
    match std::fs::read(BUSYBOX_BIN) {
        Err(e) => Some(format!(
            "{BUSYBOX_BIN} is missing ({e}); install busybox-static"
        )),
        Ok(bytes) if has_interpreter(&bytes) => Some(format!(
            "{BUSYBOX_BIN} is dynamically linked; install busybox-static"
        )),
        Ok(_) => None,
    }
}

/// The Docker engine and the busybox test image, for tests that need both. Without them
/// (no engine, no static busybox) a test is skipped with the reason printed, except under
/// CI (`CI` set and not `false`), where it fails: CI never passes by skipping.
pub async fn docker_and_busybox(test: &str) -> Option<(Docker, String)> {
    let found = async {
        let docker = Docker::connect_with_local_defaults().context("docker unreachable")?;
        docker.ping().await.context("docker unreachable")?;
        let image = busybox_image().await?;
        Ok::<_, anyhow::Error>((docker, image))
    }
    .await;
    match found {
        Ok(found) => Some(found),
        Err(e) if in_ci() => panic!("{test}: {e:#} (CI is set: the test must not skip)"),
        Err(e) => {
            eprintln!("skipping {test}: {e:#}");
            None
        }
    }
}

/// Whether this runs under CI (`CI` set, not empty, not `false`/`0`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Builds (once) and returns the busybox test image's tag.
pub async fn busybox_image() -> Result<String> {
    BUSYBOX
        .get_or_try_init(|| async {
            let docker = Docker::connect_with_local_defaults().context("connect to docker")?;
            if docker.inspect_image(BUSYBOX_IMAGE).await.is_ok() {
                return Ok(BUSYBOX_IMAGE.to_string());
            }
            if let Some(why) = busybox_unavailable() {
                bail!("cannot build {BUSYBOX_IMAGE}: {why}");
            }
            let tar = busybox_tar(Path::new(BUSYBOX_BIN)).context("build busybox rootfs tar")?;
            import_rootfs(&docker, BUSYBOX_IMAGE, tar, &["CMD [\"sh\"]"]).await
        })
        .await
        .cloned()
}

/// The tag of the busybox service image: the busybox rootfs declaring `EXPOSE 8080`, so the
/// executor waits for that port.
pub const BUSYBOX_WEB_IMAGE: &str = "drover-test/busybox-web:1";

static BUSYBOX_WEB: OnceCell<String> = OnceCell::const_new();

/// Builds (once) and returns the busybox service image's tag (see [`BUSYBOX_WEB_IMAGE`]).
pub async fn busybox_web_image() -> Result<String> {
    BUSYBOX_WEB
        .get_or_try_init(|| async {
            let docker = Docker::connect_with_local_defaults().context("connect to docker")?;
            if docker.inspect_image(BUSYBOX_WEB_IMAGE).await.is_ok() {
                return Ok(BUSYBOX_WEB_IMAGE.to_string());
            }
            if let Some(why) = busybox_unavailable() {
                bail!("cannot build {BUSYBOX_WEB_IMAGE}: {why}");
            }
            let tar = busybox_tar(Path::new(BUSYBOX_BIN)).context("build busybox rootfs tar")?;
            import_rootfs(
                &docker,
                BUSYBOX_WEB_IMAGE,
                tar,
                &[
                    "EXPOSE 8080",
                    "CMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/etc\"]",
                ],
            )
            .await
        })
        .await
        .cloned()
}

/// Imports a rootfs tar as image `image` (`repo:tag`) with Dockerfile-style `changes`, and
/// checks that the engine then has it.
async fn import_rootfs(
    docker: &Docker,
    image: &str,
    tar: Vec<u8>,
    changes: &[&str],
) -> Result<String> {
    let (repo, tag) = image.split_once(':').unwrap_or((image, "latest"));
    let opts = CreateImageOptions {
        from_src: Some("-".to_string()),
        repo: Some(repo.to_string()),
        tag: Some(tag.to_string()),
        changes: changes.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    };
    let mut stream = docker.create_image(Some(opts), Some(bollard::body_full(tar.into())), None);
    while let Some(item) = stream.next().await {
        item.with_context(|| format!("import {image}"))?;
    }
    docker
        .inspect_image(image)
        .await
        .with_context(|| format!("inspect {image} after import"))?;
    Ok(image.to_string())
}

/// The rootfs: busybox, one symlink per applet (`busybox --list-full`), `/tmp`, `/etc`.
/// The busybox rootfs as a layer tar (`drover image push` tests build archives from it).
pub fn busybox_rootfs_tar() -> Result<Vec<u8>> {
    if let Some(why) = busybox_unavailable() {
        bail!("cannot build the busybox rootfs: {why}");
    }
    busybox_tar(Path::new(BUSYBOX_BIN))
}

fn busybox_tar(bin: &Path) -> Result<Vec<u8>> {
    busybox_tar_with(bin, &[])
}

/// The busybox rootfs plus host files: `(host path, path in the image)`.
fn busybox_tar_with(bin: &Path, extra: &[(std::path::PathBuf, String)]) -> Result<Vec<u8>> {
    let out = std::process::Command::new(bin)
        .arg("--list-full")
        .output()
        .with_context(|| format!("run {} --list-full", bin.display()))?;
    let applets = String::from_utf8(out.stdout).context("busybox applet list is not utf-8")?;
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs: HashMap<String, ()> = HashMap::new();
    let mut dir = |b: &mut tar::Builder<Vec<u8>>, d: &str, mode: u32| -> Result<()> {
        if dirs.insert(d.to_string(), ()).is_none() {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(mode);
            h.set_size(0);
            b.append_data(&mut h, format!("{d}/"), std::io::empty())?;
        }
        Ok(())
    };
    for d in ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root"] {
        dir(&mut b, d, 0o755)?;
    }
    dir(&mut b, "tmp", 0o1777)?;
    let data = std::fs::read(bin).with_context(|| format!("read {}", bin.display()))?;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, "bin/busybox", data.as_slice())?;
    for applet in applets.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if applet == "bin/busybox" {
            continue;
        }
        if let Some((parent, _)) = applet.rsplit_once('/') {
            dir(&mut b, parent, 0o755)?;
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, applet, "/bin/busybox")?;
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
    let group = b"root:x:0:\nnogroup:x:65534:\n";
    for (path, content) in [("etc/passwd", &passwd[..]), ("etc/group", &group[..])] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(content.len() as u64);
        b.append_data(&mut h, path, content)?;
    }
    for (host, inside) in extra {
        let inside = inside.trim_start_matches('/');
        let mut acc = String::new();
        if let Some((parents, _)) = inside.rsplit_once('/') {
            for seg in parents.split('/') {
                if !acc.is_empty() {
                    acc.push('/');
                }
                acc.push_str(seg);
                dir(&mut b, &acc, 0o755)?;
            }
        }
        let data = std::fs::read(host).with_context(|| format!("read {}", host.display()))?;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, inside, data.as_slice())?;
    }
    Ok(b.into_inner()?)
}

/// The tag of the Docker CLI test image: busybox plus the host's `docker` client and the
/// shared libraries `ldd` lists for it. Jobs on it talk to whatever `DOCKER_HOST` or a
/// mounted `/var/run/docker.sock` points at.
pub const DOCKER_CLI_IMAGE: &str = "drover-test/docker-cli:1";

static DOCKER_CLI: OnceCell<String> = OnceCell::const_new();

/// Why the Docker CLI image cannot be built here (`None` = it can).
pub fn docker_cli_unavailable() -> Option<String> {
    if let Some(why) = busybox_unavailable() {
        return Some(why);
    }
    let ok = std::process::Command::new("sh")
        .args(["-c", "command -v docker && command -v ldd"])
        .output()
        .is_ok_and(|o| o.status.success());
    (!ok).then(|| "the host has no docker client or no ldd".to_string())
}

/// Builds (once) and returns the Docker CLI image's tag (see [`DOCKER_CLI_IMAGE`]).
pub async fn docker_cli_image() -> Result<String> {
    DOCKER_CLI
        .get_or_try_init(|| async {
            let docker = Docker::connect_with_local_defaults().context("connect to docker")?;
            if docker.inspect_image(DOCKER_CLI_IMAGE).await.is_ok() {
                return Ok(DOCKER_CLI_IMAGE.to_string());
            }
            if let Some(why) = docker_cli_unavailable() {
                bail!("cannot build {DOCKER_CLI_IMAGE}: {why}");
            }
            let which = std::process::Command::new("sh")
                .args(["-c", "command -v docker"])
                .output()
                .context("find the docker client")?;
            let cli = String::from_utf8_lossy(&which.stdout).trim().to_string();
            let ldd = std::process::Command::new("ldd")
                .arg(&cli)
                .output()
                .with_context(|| format!("ldd {cli}"))?;
            let mut extra = vec![(std::path::PathBuf::from(&cli), "usr/bin/docker".to_string())];
            for line in String::from_utf8_lossy(&ldd.stdout).lines() {
                let path = match line.split_once("=>") {
                    Some((_, right)) => right.split_whitespace().next(),
                    None => line.split_whitespace().next(),
                };
                if let Some(p) = path.filter(|p| p.starts_with('/')) {
                    extra.push((std::path::PathBuf::from(p), p.to_string()));
                }
            }
            let tar = busybox_tar_with(Path::new(BUSYBOX_BIN), &extra)
                .context("build docker cli rootfs tar")?;
            import_rootfs(&docker, DOCKER_CLI_IMAGE, tar, &["CMD [\"sh\"]"]).await
        })
        .await
        .cloned()
}

/// Whether an ELF64 little-endian file has a `PT_INTERP` program header (is dynamic).
fn has_interpreter(elf: &[u8]) -> bool {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap_or([0; 8])) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        elf.get(o..o + 4) == Some(&3u32.to_le_bytes()[..])
    })
}
