//! [`ContainerApi`] on the real engine, through bollard: each call converts its arguments
//! ([`super::convert`]), makes the call bounded ([`super::bounds`]) and converts the answer.

use std::collections::HashMap;
use std::future::Future;

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions,
    DownloadFromContainerOptions, ImportImageOptions, KillContainerOptions, ListContainersOptions,
    ListImagesOptions, ListNetworksOptions, ListVolumesOptions, LogsOptions,
    RemoveContainerOptions, RemoveImageOptions, RemoveVolumeOptions, UploadToContainerOptions,
    WaitContainerOptions,
};
use futures::StreamExt;

use super::bounds::{
    CALL_TIMEOUT, PING_TIMEOUT, REMOVE_TIMEOUT, STALL_LIMIT, bounded, engine_call, stalled,
};
use super::convert::{create_body, docker_credentials};
use crate::executor::ExecutorError;
use crate::executor::api::{
    ArchiveStream, Attached, ContainerApi, ContainerInfo, DiskUsage, NetworkInfo, RegistryAnswer,
    VolumeInfo,
};
use crate::executor::ping::DockerInfo;
use crate::executor::spec::{ContainerSpec, RegistryAuth};

/// The Docker engine, reached through bollard.
#[derive(Clone)]
pub struct BollardApi {
    docker: Docker,
    /// The engine address (`unix:///var/run/docker.sock`), for the calls made by hand.
    host: String,
}

impl BollardApi {
    /// Connects to `host` (`unix://...`, `tcp://...`), else to `DOCKER_HOST`, else to the
    /// local unix socket; then negotiates the API version with the engine.
    pub async fn connect(host: Option<&str>) -> Result<Self, ExecutorError> {
        let env_host = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty());
        let (shown, docker) = match host.filter(|h| !h.is_empty()) {
            Some(h) => (h.to_string(), Docker::connect_with_host(h)),
            None => match env_host {
                Some(h) => (h.clone(), Docker::connect_with_host(&h)),
                None => (
                    "unix:///var/run/docker.sock".to_string(),
                    Docker::connect_with_local_defaults(),
                ),
            },
        };
        let docker = docker.map_err(|e| ExecutorError::Connect {
            host: shown.clone(),
            source: e.into(),
        })?;
        let op = format!("connect to docker engine at {shown}");
        let docker = bounded(op, PING_TIMEOUT, async {
            docker
                .negotiate_version()
                .await
                .map_err(|e| ExecutorError::Connect {
                    host: shown.clone(),
                    source: e.into(),
                })
        })
        .await?;
        Ok(BollardApi {
            docker,
            host: shown,
        })
    }

    /// `call`, which lasts as long as its work, ended when the engine stops answering
    /// (see the module doc).
    async fn while_answering<T>(
        &self,
        op: impl Into<String>,
        call: impl Future<Output = Result<T, ExecutorError>>,
    ) -> Result<T, ExecutorError> {
        tokio::select! {
            r = call => r,
            after = stalled(&self.docker) => Err(ExecutorError::NoAnswer { op: op.into(), after }),
        }
    }

    /// On `docker` as it is (tests: an engine that never answers).
    #[cfg(test)]
    pub(crate) fn from_docker(docker: Docker) -> Self {
        BollardApi {
            docker,
            host: "unix:///var/run/docker.sock".to_string(),
        }
    }
}

fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

#[async_trait]
impl ContainerApi for BollardApi {
    async fn registry_answer(&self, image: &str, timeout: std::time::Duration) -> RegistryAnswer {
        match tokio::time::timeout(timeout, self.docker.inspect_registry_image(image, None)).await {
            Ok(Ok(_)) => RegistryAnswer::Found,
            Ok(Err(BollardError::DockerResponseServerError {
                status_code: 404,
                message,
            })) => RegistryAnswer::Missing(format!("the registry has no such image: {message}")),
            Ok(Err(BollardError::DockerResponseServerError {
                status_code: 401 | 403,
                message,
            })) => RegistryAnswer::Missing(format!("the registry refused access: {message}")),
            Ok(Err(e)) => RegistryAnswer::Unknown(format!("registry not reached: {e}")),
            Err(_) => RegistryAnswer::Unknown(format!(
                "the registry did not answer within {}s",
                timeout.as_secs()
            )),
        }
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, ExecutorError> {
        let op = format!("inspect image {image}");
        bounded(&op, CALL_TIMEOUT, async {
            match self.docker.inspect_image(image).await {
                Ok(i) => Ok(Some(i.id.unwrap_or_default())),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(ExecutorError::docker(&op, e)),
            }
        })
        .await
    }

    async fn pull(
        &self,
        image: &str,
        credentials: Option<RegistryAuth>,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(), ExecutorError> {
        let op = format!("pull image {image}");
        let opts = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        let mut stream =
            self.docker
                .create_image(Some(opts), None, credentials.map(docker_credentials));
        self.while_answering(&op, async {
            while let Some(item) = stream.next().await {
                let info = item.map_err(|e| ExecutorError::docker(&op, e))?;
                if let Some(status) = info.status {
                    match info.id {
                        Some(id) => progress(format!("{id}: {status}")),
                        None => progress(status),
                    }
                }
            }
            Ok(())
        })
        .await
    }

    async fn create(&self, name: &str, spec: ContainerSpec) -> Result<String, ExecutorError> {
        let op = format!("create container {name}");
        let opts = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        engine_call(
            &op,
            CALL_TIMEOUT,
            self.docker.create_container(Some(opts), create_body(spec)),
        )
        .await
        .map(|r| r.id)
    }

    async fn attach(&self, id: &str) -> Result<Attached, ExecutorError> {
        let opts = AttachContainerOptions {
            stream: true,
            stdin: true,
            stdout: true,
            stderr: true,
            // Attached before start, so the stream sees every byte. Replaying logs would
            // also fail for containers whose log driver is `none` (build containers), and
            // the engine then closes the attach connection without a word.
            logs: false,
            ..Default::default()
        };
        // Only the handshake is bounded: the stream lasts as long as the container, and
        // the job's wait ends it when the engine stalls.
        let op = format!("attach container {id}");
        let res = engine_call(
            &op,
            CALL_TIMEOUT,
            self.docker.attach_container(id, Some(opts)),
        )
        .await?;
        let cid = id.to_string();
        let output = res
            .output
            .map(move |item| match item {
                Ok(LogOutput::StdOut { message })
                | Ok(LogOutput::StdErr { message })
                | Ok(LogOutput::Console { message })
                | Ok(LogOutput::StdIn { message }) => Ok(message),
                Err(e) => Err(ExecutorError::docker(
                    format!("read output of container {cid}"),
                    e,
                )),
            })
            .boxed();
        Ok(Attached {
            output,
            input: res.input,
        })
    }

    async fn start(&self, id: &str) -> Result<(), ExecutorError> {
        let op = format!("start container {id}");
        engine_call(&op, CALL_TIMEOUT, self.docker.start_container(id, None)).await
    }

    async fn wait(&self, id: &str) -> Result<i64, ExecutorError> {
        let op = format!("wait container {id}");
        let opts = WaitContainerOptions {
            condition: "not-running".to_string(),
        };
        let mut stream = self.docker.wait_container(id, Some(opts));
        self.while_answering(&op, async {
            match stream.next().await {
                Some(Ok(r)) => Ok(r.status_code),
                // bollard turns a non-zero exit into an error; it is an exit code to us.
                Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
                Some(Err(e)) => Err(ExecutorError::docker(&op, e)),
                None => Err(ExecutorError::docker(
                    &op,
                    BollardError::DockerStreamError {
                        error: "wait stream ended without a status".to_string(),
                    },
                )),
            }
        })
        .await
    }

    async fn kill(&self, id: &str) -> Result<(), ExecutorError> {
        let op = format!("kill container {id}");
        let opts = KillContainerOptions {
            signal: "SIGKILL".to_string(),
        };
        bounded(&op, CALL_TIMEOUT, async {
            match self.docker.kill_container(id, Some(opts)).await {
                Ok(()) => Ok(()),
                // 409: not running; 404: gone. Either way it is not running any more.
                Err(BollardError::DockerResponseServerError {
                    status_code: 404 | 409,
                    ..
                }) => Ok(()),
                Err(e) => Err(ExecutorError::docker(&op, e)),
            }
        })
        .await
    }

    async fn remove(&self, id: &str) -> Result<(), ExecutorError> {
        let op = format!("remove container {id}");
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        bounded(&op, REMOVE_TIMEOUT, async {
            match self.docker.remove_container(id, Some(opts)).await {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                // 409: removal already in progress.
                Err(BollardError::DockerResponseServerError {
                    status_code: 409, ..
                }) => Ok(()),
                Err(e) => Err(ExecutorError::docker(&op, e)),
            }
        })
        .await
    }

    async fn put_archive(
        &self,
        id: &str,
        path: &str,
        tar: ArchiveStream,
    ) -> Result<(), ExecutorError> {
        let op = format!("copy archive to {path} in container {id}");
        let opts = UploadToContainerOptions {
            path: path.to_string(),
            ..Default::default()
        };
        self.while_answering(&op, async {
            self.docker
                .upload_to_container(id, Some(opts), bollard::body_try_stream(tar))
                .await
                .map_err(|e| ExecutorError::docker(&op, e))
        })
        .await
    }

    async fn list_containers(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<ContainerInfo>, ExecutorError> {
        let op = format!("list containers with label {key}={value}");
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![format!("{key}={value}")]);
        let opts = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let list = engine_call(&op, CALL_TIMEOUT, self.docker.list_containers(Some(opts))).await?;
        Ok(list
            .into_iter()
            .map(|c| ContainerInfo {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                labels: c.labels.unwrap_or_default(),
            })
            .collect())
    }

    async fn list_volumes(&self, key: &str, value: &str) -> Result<Vec<VolumeInfo>, ExecutorError> {
        let op = format!("list volumes with label {key}={value}");
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![format!("{key}={value}")]);
        let opts = ListVolumesOptions {
            filters: Some(filters),
        };
        let list = engine_call(&op, CALL_TIMEOUT, self.docker.list_volumes(Some(opts))).await?;
        Ok(list
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| VolumeInfo {
                name: v.name,
                labels: v.labels,
            })
            .collect())
    }

    async fn remove_volume(&self, name: &str) -> Result<(), ExecutorError> {
        let op = format!("remove volume {name}");
        bounded(&op, REMOVE_TIMEOUT, async {
            match self
                .docker
                .remove_volume(name, Some(RemoveVolumeOptions { force: true }))
                .await
            {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(ExecutorError::docker(&op, e)),
            }
        })
        .await
    }

    async fn disk_usage(&self) -> Result<DiskUsage, ExecutorError> {
        let v = self.docker.client_version();
        let version = format!("{}.{}", v.major_version, v.minor_version);
        super::system_df::system_df(&self.host, &version).await
    }

    async fn remove_image(&self, reference: &str) -> Result<(), ExecutorError> {
        let op = format!("remove image {reference}");
        bounded(&op, REMOVE_TIMEOUT, async {
            let opts = RemoveImageOptions {
                force: false,
                noprune: false,
                ..Default::default()
            };
            match self.docker.remove_image(reference, Some(opts), None).await {
                Ok(_) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(ExecutorError::docker(&op, e)),
            }
        })
        .await
    }

    async fn image_layers(&self) -> Result<Vec<Vec<String>>, ExecutorError> {
        let op = "list images";
        let images = engine_call(
            op,
            CALL_TIMEOUT,
            self.docker.list_images(Some(ListImagesOptions::default())),
        )
        .await?;
        let mut out = Vec::with_capacity(images.len());
        for i in images {
            let op = format!("inspect image {}", i.id);
            match bounded(&op, CALL_TIMEOUT, async {
                match self.docker.inspect_image(&i.id).await {
                    Ok(info) => Ok(Some(info)),
                    Err(e) if is_not_found(&e) => Ok(None),
                    Err(e) => Err(ExecutorError::docker(&op, e)),
                }
            })
            .await?
            {
                Some(info) => out.push(info.root_fs.and_then(|r| r.layers).unwrap_or_default()),
                // Removed since the list: nothing to count.
                None => continue,
            }
        }
        Ok(out)
    }

    async fn load_image(&self, tar: ArchiveStream) -> Result<String, ExecutorError> {
        let op = "load image archive";
        let mut stream = self
            .docker
            .import_image_stream(ImportImageOptions::default(), tar, None);
        self.while_answering(op, async {
            let mut said = String::new();
            while let Some(item) = stream.next().await {
                let info = item.map_err(|e| ExecutorError::docker(op, e))?;
                if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                    return Err(ExecutorError::docker(op, std::io::Error::other(detail)));
                }
                if let Some(s) = info.stream {
                    said.push_str(&s);
                }
            }
            Ok(said)
        })
        .await
    }

    async fn image_user(&self, image: &str) -> Result<String, ExecutorError> {
        let op = format!("inspect image {image}");
        let info = engine_call(&op, CALL_TIMEOUT, self.docker.inspect_image(image)).await?;
        Ok(info.config.and_then(|c| c.user).unwrap_or_default())
    }

    async fn image_tcp_ports(&self, image: &str) -> Result<Vec<u16>, ExecutorError> {
        let op = format!("inspect image {image}");
        let info = engine_call(&op, CALL_TIMEOUT, self.docker.inspect_image(image)).await?;
        let mut ports: Vec<u16> = info
            .config
            .and_then(|c| c.exposed_ports)
            .unwrap_or_default()
            .iter()
            .filter_map(|p| {
                let (port, proto) = p.split_once('/').unwrap_or((p.as_str(), "tcp"));
                (proto == "tcp").then(|| port.parse().ok()).flatten()
            })
            .collect();
        ports.sort_unstable();
        ports.dedup();
        Ok(ports)
    }

    async fn download_archive(&self, id: &str, path: &str) -> Result<ArchiveStream, ExecutorError> {
        let opts = DownloadFromContainerOptions {
            path: path.to_string(),
        };
        let what = format!("download archive {path} from container {id}");
        let inner = self.docker.download_from_container(id, Some(opts)).boxed();
        // A stalled engine sends nothing more: the stream ends with an error naming it.
        let stream = futures::stream::unfold(Some((inner, what)), |state| async move {
            let (mut inner, what) = state?;
            match tokio::time::timeout(STALL_LIMIT, inner.next()).await {
                Ok(Some(item)) => Some((item.map_err(std::io::Error::other), Some((inner, what)))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "{what}: docker engine sent nothing for {}s",
                            STALL_LIMIT.as_secs()
                        ),
                    )),
                    None,
                )),
            }
        });
        Ok(stream.boxed())
    }

    async fn create_network(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<String, ExecutorError> {
        let op = format!("create network {name}");
        let req = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".to_string()),
            labels: Some(labels),
            ..Default::default()
        };
        engine_call(&op, CALL_TIMEOUT, self.docker.create_network(req))
            .await
            .map(|r| r.id)
    }

    async fn remove_network(&self, id: &str) -> Result<(), ExecutorError> {
        let op = format!("remove network {id}");
        bounded(&op, REMOVE_TIMEOUT, async {
            match self.docker.remove_network(id).await {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(ExecutorError::docker(&op, e)),
            }
        })
        .await
    }

    async fn list_networks(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<NetworkInfo>, ExecutorError> {
        let op = format!("list networks with label {key}={value}");
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![format!("{key}={value}")]);
        let opts = ListNetworksOptions {
            filters: Some(filters),
        };
        let list = engine_call(&op, CALL_TIMEOUT, self.docker.list_networks(Some(opts))).await?;
        Ok(list
            .into_iter()
            .map(|n| NetworkInfo {
                id: n.id.unwrap_or_default(),
                name: n.name.unwrap_or_default(),
                labels: n.labels.unwrap_or_default(),
            })
            .collect())
    }

    async fn container_ip(&self, id: &str, network: &str) -> Result<Option<String>, ExecutorError> {
        let info = self.inspect_container(id).await?;
        Ok(info
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(network))
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty()))
    }

    async fn is_running(&self, id: &str) -> Result<bool, ExecutorError> {
        let info = self.inspect_container(id).await?;
        Ok(info.state.and_then(|s| s.running).unwrap_or(false))
    }

    async fn logs(&self, id: &str) -> Result<Vec<u8>, ExecutorError> {
        let op = format!("logs of container {id}");
        let opts = LogsOptions {
            stdout: true,
            stderr: true,
            follow: false,
            tail: "all".to_string(),
            ..Default::default()
        };
        let mut stream = self.docker.logs(id, Some(opts));
        self.while_answering(&op, async {
            let mut out = Vec::new();
            while let Some(item) = stream.next().await {
                let item = item.map_err(|e| ExecutorError::docker(&op, e))?;
                out.extend_from_slice(&item.into_bytes());
            }
            Ok(out)
        })
        .await
    }

    async fn engine_info(&self) -> Result<DockerInfo, ExecutorError> {
        let (v, i) = bounded("docker version and info", PING_TIMEOUT, async {
            let v = self
                .docker
                .version()
                .await
                .map_err(|e| ExecutorError::docker("docker version", e))?;
            let i = self
                .docker
                .info()
                .await
                .map_err(|e| ExecutorError::docker("docker info", e))?;
            Ok((v, i))
        })
        .await?;
        Ok(DockerInfo {
            version: v.version.unwrap_or_default(),
            api_version: v.api_version.unwrap_or_default(),
            root_dir: i.docker_root_dir.unwrap_or_default().into(),
        })
    }
}

impl BollardApi {
    async fn inspect_container(
        &self,
        id: &str,
    ) -> Result<bollard::models::ContainerInspectResponse, ExecutorError> {
        let op = format!("inspect container {id}");
        engine_call(&op, CALL_TIMEOUT, self.docker.inspect_container(id, None)).await
    }
}

#[cfg(test)]
mod tests {
    //! Against engines on a unix socket in a temp dir, under paused time: one that accepts
    //! connections and never answers (a `SIGSTOP`ped `dockerd`), one that answers pings
    //! but finishes a wait only after ten minutes (a long job on a healthy engine).

    use std::path::Path;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;

    fn client(socket: &Path) -> BollardApi {
        let path = format!("unix://{}", socket.display());
        let docker =
            Docker::connect_with_unix(&path, 120, bollard::API_DEFAULT_VERSION).expect("client");
        BollardApi::from_docker(docker)
    }

    /// A socket whose connections queue in the backlog and are never read.
    fn stalled_engine(dir: &Path) -> (std::os::unix::net::UnixListener, BollardApi) {
        let socket = dir.join("stalled.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        (listener, client(&socket))
    }

    async fn read_head(conn: &mut tokio::net::UnixStream) -> String {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&head).into_owned()
    }

    /// Answers `/_ping` at once and a container wait (exit 0) after `wait_for`.
    fn slow_engine(dir: &Path, wait_for: Duration) -> BollardApi {
        let socket = dir.join("slow.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let head = read_head(&mut conn).await;
                    let line = head.lines().next().unwrap_or_default().to_string();
                    if line.contains("/_ping") {
                        let _ = conn
                            .write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\
                                  Content-Length: 2\r\nConnection: close\r\n\r\nOK",
                            )
                            .await;
                    } else if line.contains("/wait") {
                        let _ = conn
                            .write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                                  Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                            )
                            .await;
                        tokio::time::sleep(wait_for).await;
                        let body = b"{\"StatusCode\":0}\n";
                        let chunk = format!("{:x}\r\n", body.len());
                        let _ = conn.write_all(chunk.as_bytes()).await;
                        let _ = conn.write_all(body).await;
                        let _ = conn.write_all(b"\r\n0\r\n\r\n").await;
                    }
                    let _ = conn.shutdown().await;
                });
            }
        });
        client(&socket)
    }

    fn no_answer(r: Result<impl std::fmt::Debug, ExecutorError>, op: &str, after: Duration) {
        match r {
            Err(e @ ExecutorError::NoAnswer { .. }) => assert_eq!(
                e.to_string(),
                format!(
                    "{op}: docker engine did not answer for {}s",
                    after.as_secs()
                )
            ),
            other => panic!("{op}: expected no answer, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_short_call_to_a_stalled_engine_ends_with_its_bound_naming_the_call() {
        let dir = tempfile::tempdir().unwrap();
        let (_listener, api) = stalled_engine(dir.path());
        let t = Instant::now();
        no_answer(
            api.engine_info().await,
            "docker version and info",
            PING_TIMEOUT,
        );
        assert_eq!(t.elapsed(), PING_TIMEOUT);
        let body = ContainerSpec::default();
        no_answer(
            api.create("c1", body).await,
            "create container c1",
            CALL_TIMEOUT,
        );
        no_answer(api.start("c1").await, "start container c1", CALL_TIMEOUT);
        no_answer(
            api.is_running("c1").await,
            "inspect container c1",
            CALL_TIMEOUT,
        );
        no_answer(api.kill("c1").await, "kill container c1", CALL_TIMEOUT);
        no_answer(
            api.attach("c1").await.map(|_| ()),
            "attach container c1",
            CALL_TIMEOUT,
        );
        let t = Instant::now();
        no_answer(
            api.remove("c1").await,
            "remove container c1",
            REMOVE_TIMEOUT,
        );
        assert_eq!(t.elapsed(), REMOVE_TIMEOUT);
        no_answer(
            api.remove_volume("v1").await,
            "remove volume v1",
            REMOVE_TIMEOUT,
        );
        no_answer(
            api.list_containers("k", "v").await,
            "list containers with label k=v",
            CALL_TIMEOUT,
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_on_a_stalled_engine_ends_when_it_answered_no_ping_for_the_stall_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (_listener, api) = stalled_engine(dir.path());
        let t = Instant::now();
        no_answer(api.wait("c1").await, "wait container c1", STALL_LIMIT);
        assert_eq!(t.elapsed(), STALL_LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_wait_on_an_engine_that_answers_pings_is_not_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let api = slow_engine(dir.path(), Duration::from_secs(600));
        let t = Instant::now();
        assert_eq!(api.wait("c1").await.unwrap(), 0);
        assert!(t.elapsed() >= Duration::from_secs(600), "{:?}", t.elapsed());
    }
}
