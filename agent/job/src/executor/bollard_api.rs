//! [`ContainerApi`] on the real engine, through bollard.

use std::collections::HashMap;

use async_trait::async_trait;
use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, NetworkCreateRequest};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions,
    DownloadFromContainerOptions, KillContainerOptions, ListContainersOptions, ListNetworksOptions,
    ListVolumesOptions, LogsOptions, RemoveContainerOptions, RemoveVolumeOptions,
    UploadToContainerOptions, WaitContainerOptions,
};
use futures::StreamExt;

use super::ExecutorError;
use super::api::{ArchiveStream, Attached, ContainerApi, ContainerInfo, NetworkInfo, VolumeInfo};

/// The Docker engine, reached through bollard.
#[derive(Clone)]
pub struct BollardApi {
    docker: Docker,
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
        let docker = docker.map_err(|source| ExecutorError::Connect {
            host: shown.clone(),
            source,
        })?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|source| ExecutorError::Connect {
                host: shown,
                source,
            })?;
        Ok(BollardApi { docker })
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
    async fn image_id(&self, image: &str) -> Result<Option<String>, ExecutorError> {
        match self.docker.inspect_image(image).await {
            Ok(i) => Ok(Some(i.id.unwrap_or_default())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(ExecutorError::docker(format!("inspect image {image}"), e)),
        }
    }

    async fn pull(
        &self,
        image: &str,
        credentials: Option<DockerCredentials>,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(), ExecutorError> {
        let opts = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(opts), None, credentials);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| ExecutorError::docker(format!("pull image {image}"), e))?;
            if let Some(status) = info.status {
                match info.id {
                    Some(id) => progress(format!("{id}: {status}")),
                    None => progress(status),
                }
            }
        }
        Ok(())
    }

    async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<String, ExecutorError> {
        let opts = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        self.docker
            .create_container(Some(opts), body)
            .await
            .map(|r| r.id)
            .map_err(|e| ExecutorError::docker(format!("create container {name}"), e))
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
        let res = self
            .docker
            .attach_container(id, Some(opts))
            .await
            .map_err(|e| ExecutorError::docker(format!("attach container {id}"), e))?;
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
        self.docker
            .start_container(id, None)
            .await
            .map_err(|e| ExecutorError::docker(format!("start container {id}"), e))
    }

    async fn wait(&self, id: &str) -> Result<i64, ExecutorError> {
        let opts = WaitContainerOptions {
            condition: "not-running".to_string(),
        };
        let mut stream = self.docker.wait_container(id, Some(opts));
        match stream.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // bollard turns a non-zero exit into an error; it is an exit code to us.
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(ExecutorError::docker(format!("wait container {id}"), e)),
            None => Err(ExecutorError::docker(
                format!("wait container {id}"),
                BollardError::DockerStreamError {
                    error: "wait stream ended without a status".to_string(),
                },
            )),
        }
    }

    async fn kill(&self, id: &str) -> Result<(), ExecutorError> {
        let opts = KillContainerOptions {
            signal: "SIGKILL".to_string(),
        };
        match self.docker.kill_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            // 409: not running; 404: gone. Either way it is not running any more.
            Err(BollardError::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => Ok(()),
            Err(e) => Err(ExecutorError::docker(format!("kill container {id}"), e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), ExecutorError> {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // 409: removal already in progress.
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(ExecutorError::docker(format!("remove container {id}"), e)),
        }
    }

    async fn put_archive(
        &self,
        id: &str,
        path: &str,
        tar: ArchiveStream,
    ) -> Result<(), ExecutorError> {
        let opts = UploadToContainerOptions {
            path: path.to_string(),
            ..Default::default()
        };
        self.docker
            .upload_to_container(id, Some(opts), bollard::body_try_stream(tar))
            .await
            .map_err(|e| {
                ExecutorError::docker(format!("copy archive to {path} in container {id}"), e)
            })
    }

    async fn list_containers(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<ContainerInfo>, ExecutorError> {
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![format!("{key}={value}")]);
        let opts = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let list = self.docker.list_containers(Some(opts)).await.map_err(|e| {
            ExecutorError::docker(format!("list containers with label {key}={value}"), e)
        })?;
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
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![format!("{key}={value}")]);
        let opts = ListVolumesOptions {
            filters: Some(filters),
        };
        let list = self.docker.list_volumes(Some(opts)).await.map_err(|e| {
            ExecutorError::docker(format!("list volumes with label {key}={value}"), e)
        })?;
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
        match self
            .docker
            .remove_volume(name, Some(RemoveVolumeOptions { force: true }))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(ExecutorError::docker(format!("remove volume {name}"), e)),
        }
    }

    async fn image_user(&self, image: &str) -> Result<String, ExecutorError> {
        let info = self
            .docker
            .inspect_image(image)
            .await
            .map_err(|e| ExecutorError::docker(format!("inspect image {image}"), e))?;
        Ok(info.config.and_then(|c| c.user).unwrap_or_default())
    }

    async fn image_tcp_ports(&self, image: &str) -> Result<Vec<u16>, ExecutorError> {
        let info = self
            .docker
            .inspect_image(image)
            .await
            .map_err(|e| ExecutorError::docker(format!("inspect image {image}"), e))?;
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
        let stream = self
            .docker
            .download_from_container(id, Some(opts))
            .map(|r| r.map_err(std::io::Error::other));
        Ok(stream.boxed())
    }

    async fn create_network(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<String, ExecutorError> {
        let req = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".to_string()),
            labels: Some(labels),
            ..Default::default()
        };
        self.docker
            .create_network(req)
            .await
            .map(|r| r.id)
            .map_err(|e| ExecutorError::docker(format!("create network {name}"), e))
    }

    async fn remove_network(&self, id: &str) -> Result<(), ExecutorError> {
        match self.docker.remove_network(id).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(ExecutorError::docker(format!("remove network {id}"), e)),
        }
    }

    async fn list_networks(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<NetworkInfo>, ExecutorError> {
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![format!("{key}={value}")]);
        let opts = ListNetworksOptions {
            filters: Some(filters),
        };
        let list = self.docker.list_networks(Some(opts)).await.map_err(|e| {
            ExecutorError::docker(format!("list networks with label {key}={value}"), e)
        })?;
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
        let info = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(|e| ExecutorError::docker(format!("inspect container {id}"), e))?;
        Ok(info
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(network))
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty()))
    }

    async fn is_running(&self, id: &str) -> Result<bool, ExecutorError> {
        let info = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(|e| ExecutorError::docker(format!("inspect container {id}"), e))?;
        Ok(info.state.and_then(|s| s.running).unwrap_or(false))
    }

    async fn logs(&self, id: &str) -> Result<Vec<u8>, ExecutorError> {
        let opts = LogsOptions {
            stdout: true,
            stderr: true,
            follow: false,
            tail: "all".to_string(),
            ..Default::default()
        };
        let mut out = Vec::new();
        let mut stream = self.docker.logs(id, Some(opts));
        while let Some(item) = stream.next().await {
            let item =
                item.map_err(|e| ExecutorError::docker(format!("logs of container {id}"), e))?;
            out.extend_from_slice(&item.into_bytes());
        }
        Ok(out)
    }

    async fn engine_info(&self) -> Result<super::ping::DockerInfo, ExecutorError> {
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
        Ok(super::ping::DockerInfo {
            version: v.version.unwrap_or_default(),
            api_version: v.api_version.unwrap_or_default(),
            root_dir: i.docker_root_dir.unwrap_or_default().into(),
        })
    }
}
