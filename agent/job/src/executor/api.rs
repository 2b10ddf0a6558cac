//! The Docker seam: the few engine calls the executor makes, as a trait, so the job flow
//! (steps, timeouts, cancel, cleanup) is unit-tested against a fake without an engine.
//!
//! The trait speaks the executor's own types ([`ContainerSpec`], [`RegistryAuth`], the
//! infos and streams below): no engine client type crosses it.
//!
//! Invariant: implementations hold no job logic; they translate one call to the engine.

use std::collections::HashMap;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use tokio::io::AsyncWrite;

use super::ExecutorError;
use super::spec::{ContainerSpec, RegistryAuth};

/// Output and input of an attached container.
pub struct Attached {
    /// stdout and stderr bytes as they come, in order.
    pub output: BoxStream<'static, Result<Bytes, ExecutorError>>,
    /// The container's stdin; shutting it down closes the container's stdin (`StdinOnce`).
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
}

/// A container as listed by label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub labels: HashMap<String, String>,
}

/// A volume as listed by label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    pub labels: HashMap<String, String>,
}

/// A network as listed by label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInfo {
    pub id: String,
    pub name: String,
    pub labels: HashMap<String, String>,
}

/// A volume with the space it takes, from the engine's disk usage (`GET /system/df`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeUsage {
    pub name: String,
    pub labels: HashMap<String, String>,
    /// Bytes on disk; `None` when the engine did not compute it.
    pub size_bytes: Option<u64>,
    /// Containers (running or not) that mount it; `None` when unknown.
    pub containers: Option<u64>,
}

/// An image with the space it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUsage {
    /// `sha256:...`.
    pub id: String,
    /// `name:tag` references (empty for a dangling image).
    pub tags: Vec<String>,
    /// Bytes, layers shared with other images included (Docker's `Size`).
    pub size_bytes: u64,
    /// Containers (running or not) made from it; `None` when unknown.
    pub containers: Option<u64>,
}

/// What the engine stores, with sizes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskUsage {
    pub volumes: Vec<VolumeUsage>,
    pub images: Vec<ImageUsage>,
}

/// A tar archive body streamed into a container.
pub type ArchiveStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// What an image's registry says of it, asked through the engine without pulling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryAnswer {
    /// The registry has it: a pull would find it.
    Found,
    /// The registry answered that it does not have it, or refused access (the text says
    /// which).
    Missing(String),
    /// No answer within the bound, or the registry could not be reached: cannot tell.
    Unknown(String),
}

/// The Docker Engine calls the executor needs.
#[async_trait]
pub trait ContainerApi: Send + Sync {
    /// Asks `image`'s registry, through the engine (`GET /distribution/{name}/json`), whether
    /// it holds the image, waiting at most `timeout`; never pulls.
    async fn registry_answer(&self, image: &str, timeout: std::time::Duration) -> RegistryAnswer;
    /// The image's id (`sha256:...`) when the image is present locally, `None` when not.
    async fn image_id(&self, image: &str) -> Result<Option<String>, ExecutorError>;
    /// Pulls `image`; each progress line (`Pulling fs layer`...) goes to `progress`.
    async fn pull(
        &self,
        image: &str,
        credentials: Option<RegistryAuth>,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(), ExecutorError>;
    /// Creates a container named `name`; returns its id.
    async fn create(&self, name: &str, spec: ContainerSpec) -> Result<String, ExecutorError>;
    /// Attaches to stdin, stdout and stderr (call before `start` so no output is lost).
    async fn attach(&self, id: &str) -> Result<Attached, ExecutorError>;
    async fn start(&self, id: &str) -> Result<(), ExecutorError>;
    /// Waits until the container stops; returns its exit code.
    async fn wait(&self, id: &str) -> Result<i64, ExecutorError>;
    /// Sends SIGKILL. A container that already stopped is not an error.
    async fn kill(&self, id: &str) -> Result<(), ExecutorError>;
    /// Removes the container by force, with its anonymous volumes. A missing container is
    /// not an error.
    async fn remove(&self, id: &str) -> Result<(), ExecutorError>;
    /// Extracts the tar archive `tar` at `path` in the container (created or running).
    async fn put_archive(
        &self,
        id: &str,
        path: &str,
        tar: ArchiveStream,
    ) -> Result<(), ExecutorError>;
    /// All containers (running or not) carrying the label `key=value`.
    async fn list_containers(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<ContainerInfo>, ExecutorError>;
    /// All volumes carrying the label `key=value`.
    async fn list_volumes(&self, key: &str, value: &str) -> Result<Vec<VolumeInfo>, ExecutorError>;
    /// Removes a volume. A missing volume is not an error.
    async fn remove_volume(&self, name: &str) -> Result<(), ExecutorError>;
    /// Every volume and image with its size (`docker system df -v`).
    async fn disk_usage(&self) -> Result<DiskUsage, ExecutorError>;
    /// Removes the image reference `reference` (a `name:tag` or an id), without force: the
    /// engine refuses an image a container (running or not) uses. A missing image is not
    /// an error.
    async fn remove_image(&self, reference: &str) -> Result<(), ExecutorError>;
    /// The layers of every image in the engine (`RootFS.Layers`: diff ids, base first).
    async fn image_layers(&self) -> Result<Vec<Vec<String>>, ExecutorError>;
    /// Loads a `docker save` archive (`POST /images/load`); returns the engine's output
    /// (`Loaded image: ...`).
    async fn load_image(&self, tar: ArchiveStream) -> Result<String, ExecutorError>;
    /// The user the image runs as (`Config.User`; empty means root).
    async fn image_user(&self, image: &str) -> Result<String, ExecutorError>;
    /// The TCP ports the image declares (`ExposedPorts` `"5432/tcp"`), sorted.
    async fn image_tcp_ports(&self, image: &str) -> Result<Vec<u16>, ExecutorError>;
    /// A tar archive of `path` in the container (created, running or stopped).
    async fn download_archive(&self, id: &str, path: &str) -> Result<ArchiveStream, ExecutorError>;
    /// Creates a bridge network named `name` with `labels`; returns its id.
    async fn create_network(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<String, ExecutorError>;
    /// Removes a network. A missing network is not an error.
    async fn remove_network(&self, id: &str) -> Result<(), ExecutorError>;
    /// All networks carrying the label `key=value`.
    async fn list_networks(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<NetworkInfo>, ExecutorError>;
    /// The container's IPv4 address on `network` (`None` when it is not attached or not
    /// running).
    async fn container_ip(&self, id: &str, network: &str) -> Result<Option<String>, ExecutorError>;
    /// Whether the container is running.
    async fn is_running(&self, id: &str) -> Result<bool, ExecutorError>;
    /// The container's stdout and stderr so far.
    async fn logs(&self, id: &str) -> Result<Vec<u8>, ExecutorError>;
    /// Engine version and root dir (`docker version` + `docker info`), for health reports.
    async fn engine_info(&self) -> Result<super::ping::DockerInfo, ExecutorError>;
}
