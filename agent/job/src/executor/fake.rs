//! An in-memory [`ContainerApi`] for unit tests: containers "run" a programmed behaviour per
//! kind (output, exit code, or hanging until killed) and every call is recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use super::ExecutorError;
use super::api::{
    ArchiveStream, Attached, ContainerApi, ContainerInfo, DiskUsage, ImageUsage, NetworkInfo,
    RegistryAnswer, VolumeInfo, VolumeUsage,
};
use super::names::LABEL_KIND;
use super::spec::{ContainerSpec, RegistryAuth};

/// What a container of some kind does when started.
#[derive(Debug, Clone)]
pub struct Behavior {
    pub output: String,
    pub exit: i64,
    /// Runs until killed.
    pub hang: bool,
}

impl Behavior {
    pub fn exits(output: &str, exit: i64) -> Self {
        Behavior {
            output: output.to_string(),
            exit,
            hang: false,
        }
    }
    pub fn hangs(output: &str) -> Self {
        Behavior {
            output: output.to_string(),
            exit: 0,
            hang: true,
        }
    }
}

/// One fake container.
pub struct FakeContainer {
    pub id: String,
    pub name: String,
    pub body: ContainerSpec,
    pub stdin: Arc<Mutex<Vec<u8>>>,
    pub archives: Vec<(String, Vec<u8>)>,
    pub started: bool,
    pub killed: bool,
    pub removed: bool,
    exit_tx: watch::Sender<Option<i64>>,
    out_tx: Option<mpsc::UnboundedSender<Bytes>>,
    out_rx: Option<mpsc::UnboundedReceiver<Bytes>>,
}

#[derive(Default)]
struct State {
    images: HashMap<String, String>,
    /// What the registry says of an image (absent: it cannot be reached).
    registry: HashMap<String, RegistryAnswer>,
    pulls: Vec<String>,
    fail_pulls: bool,
    behaviors: HashMap<String, Behavior>,
    containers: Vec<FakeContainer>,
    volumes: HashMap<String, HashMap<String, String>>,
    removed_volumes: Vec<String>,
    fail_create: Option<String>,
    /// Image → exposed TCP ports.
    ports: HashMap<String, Vec<u16>>,
    /// `Config.User` per image (absent = root).
    users: HashMap<String, String>,
    networks: Vec<NetworkInfo>,
    removed_networks: Vec<String>,
    /// The engine went away: inspections fail and waits end with an error.
    down: bool,
    /// Bytes per volume name and per image id (absent: 0).
    volume_sizes: HashMap<String, u64>,
    image_sizes: HashMap<String, u64>,
    removed_images: Vec<String>,
    /// `RootFS.Layers` per image id.
    layers: HashMap<String, Vec<String>>,
    /// The entry names of every archive loaded, in order.
    loads: Vec<Vec<String>>,
}

/// The fake engine.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().expect("fake state lock")
}

/// An error as the engine client words a refusal.
fn server_error(code: u16, message: &str) -> std::io::Error {
    std::io::Error::other(format!(
        "Docker responded with status code {code}: {message}"
    ))
}

impl FakeApi {
    pub fn add_image(&self, name: &str, id: &str) {
        lock(&self.state)
            .images
            .insert(name.to_string(), id.to_string());
    }
    /// Sets what the registry says of `image` (by default it cannot be reached).
    pub fn set_registry(&self, image: &str, answer: RegistryAnswer) {
        lock(&self.state).registry.insert(image.to_string(), answer);
    }
    pub fn fail_pulls(&self, fail: bool) {
        lock(&self.state).fail_pulls = fail;
    }
    pub fn pulls(&self) -> Vec<String> {
        lock(&self.state).pulls.clone()
    }
    /// Containers labelled `com.drover.kind=<kind>` behave like `b` (default: exit 0).
    pub fn behave(&self, kind: &str, b: Behavior) {
        lock(&self.state).behaviors.insert(kind.to_string(), b);
    }
    /// Makes `create` fail for containers of `kind`.
    pub fn fail_create(&self, kind: &str) {
        lock(&self.state).fail_create = Some(kind.to_string());
    }
    pub fn set_volume_size(&self, name: &str, bytes: u64) {
        lock(&self.state)
            .volume_sizes
            .insert(name.to_string(), bytes);
    }
    /// Image `id` has layers `diff_ids`.
    pub fn set_image_layers(&self, id: &str, diff_ids: &[&str]) {
        lock(&self.state).layers.insert(
            id.to_string(),
            diff_ids.iter().map(|d| d.to_string()).collect(),
        );
    }
    /// The entry names of each archive loaded.
    pub fn loads(&self) -> Vec<Vec<String>> {
        lock(&self.state).loads.clone()
    }
    pub fn set_image_size(&self, id: &str, bytes: u64) {
        lock(&self.state).image_sizes.insert(id.to_string(), bytes);
    }
    /// The references `remove_image` removed, in order.
    pub fn removed_images(&self) -> Vec<String> {
        lock(&self.state).removed_images.clone()
    }
    /// Image names present now, sorted.
    pub fn image_names(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.state).images.keys().cloned().collect();
        v.sort();
        v
    }
    pub fn volume_names(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.state).volumes.keys().cloned().collect();
        v.sort();
        v
    }
    pub fn add_volume(&self, name: &str, labels: HashMap<String, String>) {
        lock(&self.state).volumes.insert(name.to_string(), labels);
    }
    pub fn add_stopped_container(&self, name: &str, labels: HashMap<String, String>) {
        let (exit_tx, _) = watch::channel(Some(0));
        let mut st = lock(&self.state);
        let id = format!("id-{}", st.containers.len());
        st.containers.push(FakeContainer {
            id,
            name: name.to_string(),
            body: ContainerSpec {
                labels,
                ..Default::default()
            },
            stdin: Arc::default(),
            archives: Vec::new(),
            started: true,
            killed: false,
            removed: false,
            exit_tx,
            out_tx: None,
            out_rx: None,
        });
    }
    /// Simulates the daemon stopping: running waits fail, image inspections fail.
    pub fn stop_daemon(&self) {
        let mut st = lock(&self.state);
        st.down = true;
        for c in st.containers.iter_mut() {
            // Dropping the sender ends every wait with an error.
            c.exit_tx = watch::channel(None).0;
        }
    }
    /// Simulates a graceful daemon shutdown: the engine stops answering, then stops every
    /// running container with SIGTERM, so their waits end with exit code 143.
    pub fn shutdown_daemon(&self) {
        let mut st = lock(&self.state);
        st.down = true;
        for c in st.containers.iter_mut() {
            let _ = c.exit_tx.send(Some(143));
        }
    }
    /// `image` runs as `user` (`Config.User`).
    pub fn set_image_user(&self, image: &str, user: &str) {
        lock(&self.state)
            .users
            .insert(image.to_string(), user.to_string());
    }
    /// `image` declares these TCP ports.
    pub fn set_ports(&self, image: &str, ports: &[u16]) {
        lock(&self.state)
            .ports
            .insert(image.to_string(), ports.to_vec());
    }
    pub fn add_network(&self, name: &str, labels: HashMap<String, String>) {
        lock(&self.state).networks.push(NetworkInfo {
            id: format!("net-{name}"),
            name: name.to_string(),
            labels,
        });
    }
    /// Networks that exist now.
    pub fn networks(&self) -> Vec<NetworkInfo> {
        lock(&self.state).networks.clone()
    }
    pub fn removed_networks(&self) -> Vec<String> {
        lock(&self.state).removed_networks.clone()
    }
    pub fn removed_volumes(&self) -> Vec<String> {
        lock(&self.state).removed_volumes.clone()
    }
    /// Inspects the containers created so far.
    pub fn with_containers<T>(&self, f: impl FnOnce(&[FakeContainer]) -> T) -> T {
        f(&lock(&self.state).containers)
    }

    fn kind_of(body: &ContainerSpec) -> String {
        body.labels.get(LABEL_KIND).cloned().unwrap_or_default()
    }
}

#[async_trait]
impl ContainerApi for FakeApi {
    async fn registry_answer(&self, image: &str, _timeout: std::time::Duration) -> RegistryAnswer {
        lock(&self.state)
            .registry
            .get(image)
            .cloned()
            .unwrap_or_else(|| RegistryAnswer::Unknown("no registry (fake)".into()))
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, ExecutorError> {
        let st = lock(&self.state);
        if st.down {
            return Err(ExecutorError::docker(
                format!("inspect image {image}"),
                server_error(503, "daemon down"),
            ));
        }
        Ok(st.images.get(image).cloned())
    }

    async fn pull(
        &self,
        image: &str,
        _credentials: Option<RegistryAuth>,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(), ExecutorError> {
        let mut st = lock(&self.state);
        st.pulls.push(image.to_string());
        if st.fail_pulls {
            return Err(ExecutorError::docker(
                format!("pull image {image}"),
                server_error(500, "no registry"),
            ));
        }
        progress("Pull complete".to_string());
        st.images
            .insert(image.to_string(), format!("sha256:pulled-{image}"));
        Ok(())
    }

    async fn create(&self, name: &str, body: ContainerSpec) -> Result<String, ExecutorError> {
        let mut st = lock(&self.state);
        if st.fail_create.as_deref() == Some(Self::kind_of(&body).as_str()) {
            return Err(ExecutorError::docker(
                format!("create container {name}"),
                server_error(500, "boom"),
            ));
        }
        if st.containers.iter().any(|c| c.name == name && !c.removed) {
            return Err(ExecutorError::docker(
                format!("create container {name}"),
                server_error(409, "name in use"),
            ));
        }
        // The engine creates a named volume a mount names, with the mount's labels.
        for m in &body.host.mounts {
            if let Some(v) = &m.volume {
                st.volumes
                    .entry(v.clone())
                    .or_insert_with(|| m.labels.clone());
            }
        }
        let id = format!("id-{}", st.containers.len());
        let (exit_tx, _) = watch::channel(None);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        st.containers.push(FakeContainer {
            id: id.clone(),
            name: name.to_string(),
            body,
            stdin: Arc::default(),
            archives: Vec::new(),
            started: false,
            killed: false,
            removed: false,
            exit_tx,
            out_tx: Some(out_tx),
            out_rx: Some(out_rx),
        });
        Ok(id)
    }

    async fn attach(&self, id: &str) -> Result<Attached, ExecutorError> {
        let mut st = lock(&self.state);
        let c = st
            .containers
            .iter_mut()
            .find(|c| c.id == id)
            .ok_or_else(|| {
                ExecutorError::docker(
                    format!("attach container {id}"),
                    server_error(404, "no such container"),
                )
            })?;
        let rx = c.out_rx.take().expect("attach once");
        let output =
            futures::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|b| (Ok(b), rx)) },
            )
            .boxed();
        let (theirs, mut ours) = tokio::io::duplex(1 << 16);
        let sink = c.stdin.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = ours.read_to_end(&mut buf).await;
            if let Ok(mut s) = sink.lock() {
                s.extend_from_slice(&buf);
            }
        });
        Ok(Attached {
            output,
            input: Box::pin(theirs),
        })
    }

    async fn start(&self, id: &str) -> Result<(), ExecutorError> {
        let mut st = lock(&self.state);
        let behaviors = st.behaviors.clone();
        let c = st
            .containers
            .iter_mut()
            .find(|c| c.id == id)
            .expect("container");
        c.started = true;
        let b = behaviors
            .get(&Self::kind_of(&c.body))
            .cloned()
            .unwrap_or_else(|| Behavior::exits("", 0));
        let out = if b.hang {
            c.out_tx.clone()
        } else {
            c.out_tx.take()
        };
        if let Some(tx) = &out {
            let _ = tx.send(Bytes::from(b.output.clone()));
        }
        if !b.hang {
            drop(out);
            let exit = c.exit_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let _ = exit.send(Some(b.exit));
            });
        }
        Ok(())
    }

    async fn wait(&self, id: &str) -> Result<i64, ExecutorError> {
        let mut rx = {
            let st = lock(&self.state);
            st.containers
                .iter()
                .find(|c| c.id == id)
                .expect("container")
                .exit_tx
                .subscribe()
        };
        loop {
            if let Some(code) = *rx.borrow_and_update() {
                return Ok(code);
            }
            if rx.changed().await.is_err() {
                return Err(ExecutorError::docker(
                    format!("wait container {id}"),
                    server_error(500, "gone"),
                ));
            }
        }
    }

    async fn kill(&self, id: &str) -> Result<(), ExecutorError> {
        let mut st = lock(&self.state);
        let c = st
            .containers
            .iter_mut()
            .find(|c| c.id == id)
            .expect("container");
        c.killed = true;
        c.out_tx = None;
        let _ = c.exit_tx.send(Some(137));
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), ExecutorError> {
        let mut st = lock(&self.state);
        if let Some(c) = st.containers.iter_mut().find(|c| c.id == id) {
            c.removed = true;
            c.out_tx = None;
            let _ = c.exit_tx.send(Some(137));
        }
        Ok(())
    }

    async fn put_archive(
        &self,
        id: &str,
        path: &str,
        mut tar: ArchiveStream,
    ) -> Result<(), ExecutorError> {
        let mut data = Vec::new();
        while let Some(chunk) = tar.next().await {
            data.extend_from_slice(&chunk.map_err(|source| ExecutorError::Archive {
                what: path.to_string(),
                source,
            })?);
        }
        let mut st = lock(&self.state);
        let c = st
            .containers
            .iter_mut()
            .find(|c| c.id == id)
            .expect("container");
        c.archives.push((path.to_string(), data));
        Ok(())
    }

    async fn list_containers(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<ContainerInfo>, ExecutorError> {
        let st = lock(&self.state);
        Ok(st
            .containers
            .iter()
            .filter(|c| !c.removed)
            .filter(|c| c.body.labels.get(key).map(String::as_str) == Some(value))
            .map(|c| ContainerInfo {
                id: c.id.clone(),
                name: c.name.clone(),
                labels: c.body.labels.clone(),
            })
            .collect())
    }

    async fn list_volumes(&self, key: &str, value: &str) -> Result<Vec<VolumeInfo>, ExecutorError> {
        let st = lock(&self.state);
        Ok(st
            .volumes
            .iter()
            .filter(|(_, l)| l.get(key).map(String::as_str) == Some(value))
            .map(|(n, l)| VolumeInfo {
                name: n.clone(),
                labels: l.clone(),
            })
            .collect())
    }

    async fn remove_volume(&self, name: &str) -> Result<(), ExecutorError> {
        let mut st = lock(&self.state);
        st.volumes.remove(name);
        st.removed_volumes.push(name.to_string());
        Ok(())
    }

    async fn disk_usage(&self) -> Result<DiskUsage, ExecutorError> {
        let st = lock(&self.state);
        let live = || st.containers.iter().filter(|c| !c.removed);
        let volumes = st
            .volumes
            .iter()
            .map(|(n, l)| VolumeUsage {
                name: n.clone(),
                labels: l.clone(),
                size_bytes: Some(st.volume_sizes.get(n).copied().unwrap_or(0)),
                containers: Some(
                    live()
                        .filter(|c| {
                            c.body
                                .host
                                .mounts
                                .iter()
                                .any(|m| m.volume.as_deref() == Some(n.as_str()))
                        })
                        .count() as u64,
                ),
            })
            .collect();
        let mut by_id: HashMap<String, Vec<String>> = HashMap::new();
        for (name, id) in &st.images {
            by_id.entry(id.clone()).or_default().push(name.clone());
        }
        let images = by_id
            .into_iter()
            .map(|(id, mut tags)| {
                tags.sort();
                let used = live()
                    .filter(|c| c.body.image == id || tags.contains(&c.body.image))
                    .count() as u64;
                ImageUsage {
                    size_bytes: st.image_sizes.get(&id).copied().unwrap_or(0),
                    containers: Some(used),
                    id,
                    tags,
                }
            })
            .collect();
        Ok(DiskUsage { volumes, images })
    }

    async fn remove_image(&self, reference: &str) -> Result<(), ExecutorError> {
        let mut st = lock(&self.state);
        let id = match st.images.get(reference) {
            Some(id) => id.clone(),
            None if st.images.values().any(|i| i == reference) => reference.to_string(),
            None => return Ok(()),
        };
        let in_use = st
            .containers
            .iter()
            .any(|c| !c.removed && (c.body.image == id || c.body.image == reference));
        if in_use {
            return Err(ExecutorError::docker(
                format!("remove image {reference}"),
                server_error(409, "image is being used by a container"),
            ));
        }
        if reference == id {
            st.images.retain(|_, i| *i != id);
        } else {
            st.images.remove(reference);
        }
        st.removed_images.push(reference.to_string());
        Ok(())
    }

    async fn image_layers(&self) -> Result<Vec<Vec<String>>, ExecutorError> {
        Ok(lock(&self.state).layers.values().cloned().collect())
    }

    /// Reads the archive as the engine does: `manifest.json`'s first image is tagged with
    /// its `RepoTags` and gets the id `sha256:<config file stem>`.
    async fn load_image(&self, mut tar: ArchiveStream) -> Result<String, ExecutorError> {
        let mut bytes = Vec::new();
        while let Some(chunk) = tar.next().await {
            let chunk = chunk.map_err(|e| ExecutorError::docker("load image archive", e))?;
            bytes.extend_from_slice(&chunk);
        }
        let mut names = Vec::new();
        let mut manifest = None;
        let mut archive = tar::Archive::new(&bytes[..]);
        let entries = archive
            .entries()
            .map_err(|e| ExecutorError::docker("load image archive", e))?;
        for e in entries {
            let mut e = e.map_err(|e| ExecutorError::docker("load image archive", e))?;
            let name = e
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            if name == "manifest.json" {
                let mut m = String::new();
                std::io::Read::read_to_string(&mut e, &mut m)
                    .map_err(|e| ExecutorError::docker("load image archive", e))?;
                manifest = Some(m);
            }
            names.push(name);
        }
        let m: serde_json::Value = manifest
            .and_then(|m| serde_json::from_str(&m).ok())
            .ok_or_else(|| {
                ExecutorError::docker("load image archive", server_error(500, "no manifest.json"))
            })?;
        let config = m[0]["Config"].as_str().unwrap_or_default();
        let id = format!("sha256:{}", config.trim_end_matches(".json"));
        let mut st = lock(&self.state);
        for t in m[0]["RepoTags"].as_array().into_iter().flatten() {
            st.images
                .insert(t.as_str().unwrap_or_default().to_string(), id.clone());
        }
        st.loads.push(names);
        Ok(format!("Loaded image ID: {id}\n"))
    }

    async fn image_user(&self, image: &str) -> Result<String, ExecutorError> {
        Ok(lock(&self.state)
            .users
            .get(image)
            .cloned()
            .unwrap_or_default())
    }

    async fn image_tcp_ports(&self, image: &str) -> Result<Vec<u16>, ExecutorError> {
        Ok(lock(&self.state)
            .ports
            .get(image)
            .cloned()
            .unwrap_or_default())
    }

    async fn download_archive(
        &self,
        _id: &str,
        _path: &str,
    ) -> Result<ArchiveStream, ExecutorError> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, "project/", std::io::empty())
            .map_err(|source| ExecutorError::Archive {
                what: "fake project".to_string(),
                source,
            })?;
        let data = b.into_inner().map_err(|source| ExecutorError::Archive {
            what: "fake project".to_string(),
            source,
        })?;
        Ok(futures::stream::once(async move { Ok(Bytes::from(data)) }).boxed())
    }

    async fn create_network(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<String, ExecutorError> {
        let id = format!("net-{name}");
        lock(&self.state).networks.push(NetworkInfo {
            id: id.clone(),
            name: name.to_string(),
            labels,
        });
        Ok(id)
    }

    async fn remove_network(&self, id: &str) -> Result<(), ExecutorError> {
        let mut st = lock(&self.state);
        st.networks.retain(|n| n.id != id && n.name != id);
        st.removed_networks.push(id.to_string());
        Ok(())
    }

    async fn list_networks(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<NetworkInfo>, ExecutorError> {
        Ok(lock(&self.state)
            .networks
            .iter()
            .filter(|n| n.labels.get(key).map(String::as_str) == Some(value))
            .cloned()
            .collect())
    }

    async fn container_ip(
        &self,
        _id: &str,
        _network: &str,
    ) -> Result<Option<String>, ExecutorError> {
        // Nothing listens on this address (TEST-NET-1), so port waits time out.
        Ok(Some("192.0.2.1".to_string()))
    }

    async fn is_running(&self, id: &str) -> Result<bool, ExecutorError> {
        let st = lock(&self.state);
        Ok(st
            .containers
            .iter()
            .any(|c| c.id == id && c.started && !c.killed && !c.removed))
    }

    async fn logs(&self, id: &str) -> Result<Vec<u8>, ExecutorError> {
        let st = lock(&self.state);
        let kind = st
            .containers
            .iter()
            .find(|c| c.id == id)
            .map(|c| Self::kind_of(&c.body))
            .unwrap_or_default();
        Ok(st
            .behaviors
            .get(&kind)
            .map(|b| b.output.clone().into_bytes())
            .unwrap_or_default())
    }

    async fn engine_info(&self) -> Result<super::ping::DockerInfo, ExecutorError> {
        if lock(&self.state).down {
            return Err(ExecutorError::docker(
                "version",
                server_error(503, "daemon is down"),
            ));
        }
        Ok(super::ping::DockerInfo {
            version: "0.0.0-fake".into(),
            api_version: "1.41".into(),
            root_dir: "/var/lib/docker".into(),
        })
    }
}
