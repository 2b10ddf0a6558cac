//! Job services (`services:`): a per-job bridge network, one container per service reachable
//! by its alias and by the names gitlab-runner derives from its image, and the wait until
//! their exposed TCP ports answer.
//!
//! Choices:
//! - The network is created only when the job has services and `network_mode` is unset; the
//!   build containers join it. With `network_mode` set, services join that network (aliases
//!   work only on a user-defined network).
//! - Port wait: gitlab-runner probes from a helper container. Drover has no helper image, so
//!   the agent connects from the host to the service's address on the bridge network, which
//!   Linux routes from the host when the engine is local. Limits: a remote engine
//!   (`tcp://` host) or an agent running in a container without access to the bridge cannot
//!   reach that address; the wait then ends at `wait_for_services_timeout` with a warning
//!   and the job continues, as gitlab-runner does when a service does not come up.

use std::collections::HashMap;
use std::time::Duration;

use drover_proto::spec::DockerConfig;
use secrecy::ExposeSecret;
use tokio::time::Instant;

use super::ExecutorError;
use super::api::ContainerApi;
use super::image::{
    check_allowed, credentials_for, ensure_image_pulled, glob_match, pull_policies,
};
use super::names::JobNames;
use super::spec::{ContainerSpec, HostSpec};
use super::variables::JobEnv;
use crate::trace::TraceSink;
use drover_gitlab::types::{JobResponse, Service};

/// `wait_for_services_timeout` when the runner sets none (gitlab-runner: 30 s).
pub const DEFAULT_WAIT_FOR_SERVICES: Duration = Duration::from_secs(30);
/// Label on service containers: the service's image as the job wrote it.
pub const LABEL_SERVICE: &str = "com.drover.service";

/// gitlab-runner's `splitServiceAndVersion` link names: the image without tag/digest and
/// without a registry port, `/` replaced by `__`, plus the RFC 1123 variant with `-` when it
/// differs. `docker:dind` → `docker`; `registry.example.com:5000/group/postgres:15` →
/// `registry.example.com__group__postgres`, `registry.example.com-group-postgres`.
pub fn derived_names(image: &str) -> Vec<String> {
    let image = image.trim();
    let no_digest = image.split('@').next().unwrap_or(image);
    // The tag follows the last ':' after the last '/'.
    let last_slash = no_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let repo = match no_digest[last_slash..].rfind(':') {
        Some(i) => &no_digest[..last_slash + i],
        None => no_digest,
    };
    // A registry port: `host:port/...` in the first segment.
    let service = match repo.split_once('/') {
        Some((first, rest)) if first.contains(':') => {
            let host = first.split(':').next().unwrap_or(first);
            format!("{host}/{rest}")
        }
        _ => repo.to_string(),
    };
    if service.is_empty() {
        return Vec::new();
    }
    let link = service.replace('/', "__");
    let alt = service.replace('/', "-");
    let mut names = vec![link.clone()];
    if alt != link {
        names.push(alt);
    }
    names
}

/// Every name a service answers to on the network: its aliases (the `alias` field may hold
/// several, separated by commas or spaces) then the derived names, without repeats.
pub fn service_aliases(service: &Service) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let explicit = service
        .alias
        .as_deref()
        .unwrap_or("")
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|a| !a.is_empty())
        .map(str::to_string);
    for name in explicit.chain(derived_names(&service.name)) {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// A started service container.
#[derive(Debug, Clone)]
pub struct StartedService {
    pub image: String,
    pub container_id: String,
    pub container_name: String,
    pub image_id: String,
}

/// Refuses services that `allowed_services` does not list (an empty list allows all).
pub fn check_allowed_service(image: &str, allowed: &[String]) -> Result<(), ExecutorError> {
    if allowed.is_empty() || allowed.iter().any(|p| glob_match(p, image)) {
        return Ok(());
    }
    Err(ExecutorError::Image(format!(
        "the \"{image}\" service is not present on list of allowed services: {}",
        allowed.join(", ")
    )))
}

/// Whether the runner mounts the host's Docker socket into jobs.
pub fn mounts_docker_socket(docker: &DockerConfig) -> bool {
    docker.volumes.iter().any(|v| {
        v.split(':')
            .next()
            .is_some_and(|s| s.ends_with("docker.sock"))
    })
}

/// Pulls (as the pull policy says) and starts every service of the job on `network`. A
/// container is reported to `created` as soon as it exists, for cleanup.
#[allow(clippy::too_many_arguments)]
pub async fn start_services(
    api: &dyn ContainerApi,
    job: &JobResponse,
    docker: &DockerConfig,
    env: &JobEnv,
    names: &JobNames,
    network: &str,
    trace: &TraceSink,
    created: &(dyn Fn(String) + Send + Sync),
    image_used: &(dyn Fn(&str, &str, bool) + Send + Sync),
) -> Result<Vec<StartedService>, ExecutorError> {
    let mut out = Vec::new();
    if mounts_docker_socket(docker) && job.services.iter().any(|s| s.name.contains("dind")) {
        trace.write_line(
            "\x1b[0;33mWARNING: the runner mounts the host's Docker socket and the job starts a docker:dind service: these must not be combined; `docker` commands reach whichever DOCKER_HOST points to\x1b[0;m",
        );
    }
    for (i, service) in job.services.iter().enumerate() {
        let image = service.name.trim().to_string();
        if image.is_empty() {
            return Err(ExecutorError::Image(format!(
                "services[{i}] has no image name"
            )));
        }
        check_allowed_service(&image, &docker.allowed_services)?;
        check_allowed(&image, &docker.allowed_images)?;
        trace.write_line(&format!("Starting service {image} ..."));
        let policies = pull_policies(docker, &service.pull_policy)?;
        let creds = credentials_for(&image, &job.credentials);
        let (image_id, pulled) = ensure_image_pulled(api, &image, &policies, creds, trace).await?;
        image_used(&image, &image_id, pulled);
        let aliases = service_aliases(service);
        let kind = format!(
            "svc-{i}-{}",
            aliases.first().map(String::as_str).unwrap_or("service")
        );
        let name = names.container(&kind);
        let mut labels = names.labels("service", true);
        labels.insert(LABEL_SERVICE.to_string(), image.clone());
        let mut vars = env.vars.clone();
        for v in &service.variables {
            vars.retain(|(k, _)| *k != v.key);
            vars.push((v.key.clone(), v.value.expose_secret().to_string()));
        }
        let privileged = docker.services_privileged.or(docker.privileged);
        let tmpfs: HashMap<String, String> = docker
            .services_tmpfs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let user_defined = !matches!(network, "host" | "bridge" | "none" | "default")
            && !network.starts_with("container:");
        if !user_defined && i == 0 {
            trace.write_line(&format!(
                "\x1b[0;33mWARNING: network_mode {network:?} is not a user-defined network: services cannot be reached by name\x1b[0;m"
            ));
        }
        let body = ContainerSpec {
            image: image_id.clone(),
            env: vars.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            entrypoint: (!service.entrypoint.is_empty()).then(|| service.entrypoint.clone()),
            cmd: (!service.command.is_empty()).then(|| service.command.clone()),
            labels,
            host: HostSpec {
                network_mode: Some(network.to_string()),
                privileged,
                tmpfs,
                ..Default::default()
            },
            network_aliases: user_defined.then(|| (network.to_string(), aliases.clone())),
            ..Default::default()
        };
        let id = api.create(&name, body).await?;
        created(id.clone());
        api.start(&id).await?;
        trace.write_line(&format!(
            "Service {image} is reachable as {}",
            aliases.join(", ")
        ));
        out.push(StartedService {
            image,
            container_id: id,
            container_name: name,
            image_id,
        });
    }
    Ok(out)
}

/// Waits until every exposed TCP port of every service accepts a connection, up to
/// `timeout` in all; for each service that did not come up, writes gitlab-runner's warning
/// block with the service's logs. Never fails the job.
pub async fn wait_for_services(
    api: &dyn ContainerApi,
    services: &[StartedService],
    network: &str,
    timeout: Duration,
    trace: &TraceSink,
) {
    if services.is_empty() {
        return;
    }
    let deadline = Instant::now() + timeout;
    trace.write_line(&format!(
        "Waiting for services to be up and running (timeout {} seconds)...",
        timeout.as_secs()
    ));
    for s in services {
        let problem = match wait_one(api, s, network, deadline).await {
            Ok(()) => continue,
            Err(p) => p,
        };
        let logs = api
            .logs(&s.container_id)
            .await
            .unwrap_or_else(|e| format!("(could not read the service's logs: {e})\n").into_bytes());
        trace.write_line("");
        trace.write_line(&format!(
            "\x1b[0;33m*** WARNING:\x1b[0;m Service {} probably didn't start properly.",
            s.container_name
        ));
        trace.write_line("");
        trace.write_line("Health check error:");
        trace.write_line(&problem);
        trace.write_line("");
        trace.write_line("Service container logs:");
        trace.write(&logs);
        if !logs.ends_with(b"\n") && !logs.is_empty() {
            trace.write(b"\n");
        }
        trace.write_line("");
        trace.write_line("\x1b[0;33m*********\x1b[0;m");
        trace.write_line("");
    }
}

async fn wait_one(
    api: &dyn ContainerApi,
    s: &StartedService,
    network: &str,
    deadline: Instant,
) -> Result<(), String> {
    let ports = api
        .image_tcp_ports(&s.image_id)
        .await
        .map_err(|e| e.to_string())?;
    if ports.is_empty() {
        return Ok(());
    }
    loop {
        if !api.is_running(&s.container_id).await.unwrap_or(true) {
            return Err(format!("service {:?} exited", s.image));
        }
        if let Ok(Some(ip)) = api.container_ip(&s.container_id, network).await {
            let mut all = true;
            for port in &ports {
                let left = deadline.saturating_duration_since(Instant::now());
                let connect = tokio::net::TcpStream::connect((ip.as_str(), *port));
                let ok = matches!(
                    tokio::time::timeout(left.min(Duration::from_secs(1)), connect).await,
                    Ok(Ok(_))
                );
                if !ok {
                    all = false;
                    break;
                }
            }
            if all {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "service {:?} timeout: port(s) {} did not accept connections",
                s.image,
                ports
                    .iter()
                    .map(|p| format!("{p}/tcp"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        tokio::time::sleep(
            Duration::from_millis(250).min(deadline.saturating_duration_since(Instant::now())),
        )
        .await;
    }
}

/// `wait_for_services_timeout`: unset or 0 → 30 s; negative → no wait.
pub fn wait_timeout(docker: &DockerConfig) -> Option<Duration> {
    match docker.wait_for_services_timeout {
        None | Some(0) => Some(DEFAULT_WAIT_FOR_SERVICES),
        Some(s) if s < 0 => None,
        Some(s) => Some(Duration::from_secs(s as u64)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, alias: Option<&str>) -> Service {
        serde_json::from_value(serde_json::json!({"name": name, "alias": alias})).expect("service")
    }

    #[test]
    fn derived_names_follow_gitlab_runner() {
        assert_eq!(derived_names("docker:dind"), vec!["docker"]);
        assert_eq!(derived_names("postgres"), vec!["postgres"]);
        assert_eq!(
            derived_names("registry.example.com/group/postgres:15"),
            vec![
                "registry.example.com__group__postgres",
                "registry.example.com-group-postgres"
            ]
        );
        assert_eq!(
            derived_names("registry.example.com:5000/group/postgres:15"),
            vec![
                "registry.example.com__group__postgres",
                "registry.example.com-group-postgres"
            ]
        );
        assert_eq!(
            derived_names("tutum/wordpress@sha256:abc"),
            vec!["tutum__wordpress", "tutum-wordpress"]
        );
    }

    #[test]
    fn aliases_come_first_without_repeats() {
        assert_eq!(
            service_aliases(&svc("docker:dind", Some("docker, dind"))),
            vec!["docker", "dind"]
        );
        assert_eq!(
            service_aliases(&svc("postgres:15", Some("db"))),
            vec!["db", "postgres"]
        );
    }

    #[test]
    fn allowed_services_refuse_with_the_list() {
        assert!(check_allowed_service("postgres:15", &[]).is_ok());
        assert!(check_allowed_service("postgres:15", &["postgres:*".into()]).is_ok());
        let e = check_allowed_service("redis:7", &["postgres:*".into()])
            .expect_err("refused")
            .to_string();
        assert!(e.contains("allowed services"), "{e}");
    }

    #[test]
    fn wait_timeout_defaults_and_disables() {
        let mut d = DockerConfig::default();
        assert_eq!(wait_timeout(&d), Some(DEFAULT_WAIT_FOR_SERVICES));
        d.wait_for_services_timeout = Some(-1);
        assert_eq!(wait_timeout(&d), None);
        d.wait_for_services_timeout = Some(5);
        assert_eq!(wait_timeout(&d), Some(Duration::from_secs(5)));
    }
}
