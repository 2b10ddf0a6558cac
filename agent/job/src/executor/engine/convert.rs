//! The executor's requests as bollard's types: a [`ContainerSpec`] as a create body, a
//! [`RegistryAuth`] as pull credentials. Empty lists and maps are left unset, as the engine
//! reads an unset field as "the default".

use std::collections::HashMap;

use bollard::auth::DockerCredentials;
use bollard::models::{
    ContainerCreateBody, DeviceMapping, EndpointSettings, HostConfig, HostConfigLogConfig, Mount,
    MountType, MountVolumeOptions, NetworkingConfig, ResourcesUlimits,
};
use secrecy::ExposeSecret;

use crate::executor::spec::{ContainerSpec, HostSpec, RegistryAuth, VolumeMount};

fn nonempty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

fn nonempty_map(m: HashMap<String, String>) -> Option<HashMap<String, String>> {
    (!m.is_empty()).then_some(m)
}

/// The create body of `spec`.
pub(super) fn create_body(spec: ContainerSpec) -> ContainerCreateBody {
    let yes = spec.stdin.then_some(true);
    ContainerCreateBody {
        image: Some(spec.image),
        cmd: spec.cmd,
        entrypoint: spec.entrypoint,
        env: Some(spec.env),
        working_dir: spec.working_dir,
        user: spec.user,
        attach_stdin: yes,
        attach_stdout: yes,
        attach_stderr: yes,
        open_stdin: yes,
        stdin_once: yes,
        tty: spec.stdin.then_some(false),
        labels: Some(spec.labels),
        host_config: Some(host_config(spec.host)),
        networking_config: spec
            .network_aliases
            .map(|(network, aliases)| NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    network,
                    EndpointSettings {
                        aliases: Some(aliases),
                        ..Default::default()
                    },
                )])),
            }),
        ..Default::default()
    }
}

fn host_config(h: HostSpec) -> HostConfig {
    HostConfig {
        privileged: h.privileged,
        binds: nonempty(h.binds),
        mounts: nonempty(h.mounts.into_iter().map(mount).collect()),
        shm_size: h.shm_size,
        memory: h.memory,
        memory_swap: h.memory_swap,
        memory_reservation: h.memory_reservation,
        nano_cpus: h.nano_cpus,
        cpuset_cpus: h.cpuset_cpus,
        cpu_shares: h.cpu_shares,
        network_mode: h.network_mode,
        extra_hosts: nonempty(h.extra_hosts),
        dns: nonempty(h.dns),
        dns_search: nonempty(h.dns_search),
        cap_add: nonempty(h.cap_add),
        cap_drop: nonempty(h.cap_drop),
        devices: nonempty(
            h.devices
                .into_iter()
                .map(|d| DeviceMapping {
                    path_on_host: Some(d.path_on_host),
                    path_in_container: Some(d.path_in_container),
                    cgroup_permissions: Some(d.permissions),
                })
                .collect(),
        ),
        security_opt: nonempty(h.security_opt),
        sysctls: nonempty_map(h.sysctls),
        oom_kill_disable: h.oom_kill_disable,
        tmpfs: nonempty_map(h.tmpfs),
        ulimits: nonempty(
            h.ulimits
                .into_iter()
                .map(|u| ResourcesUlimits {
                    name: Some(u.name),
                    soft: Some(u.soft),
                    hard: Some(u.hard),
                })
                .collect(),
        ),
        userns_mode: h.userns_mode,
        runtime: h.runtime,
        log_config: h.log_driver.map(|typ| HostConfigLogConfig {
            typ: Some(typ),
            config: None,
        }),
        ..Default::default()
    }
}

fn mount(m: VolumeMount) -> Mount {
    Mount {
        target: Some(m.target),
        source: m.volume,
        typ: Some(MountType::VOLUME),
        volume_options: (!m.labels.is_empty()).then(|| MountVolumeOptions {
            labels: Some(m.labels),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Pull credentials for `auth`.
pub(super) fn docker_credentials(auth: RegistryAuth) -> DockerCredentials {
    DockerCredentials {
        username: Some(auth.username),
        password: Some(auth.password.expose_secret().to_string()),
        serveraddress: Some(auth.server),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::spec::{Device, Ulimit};

    #[test]
    fn an_empty_spec_sets_only_image_env_labels_and_an_empty_host_config() {
        let body = create_body(ContainerSpec {
            image: "sha256:feed".to_string(),
            ..Default::default()
        });
        assert_eq!(
            body,
            ContainerCreateBody {
                image: Some("sha256:feed".to_string()),
                env: Some(Vec::new()),
                labels: Some(HashMap::new()),
                host_config: Some(HostConfig::default()),
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_script_container_opens_stdin_once_without_a_tty() {
        let body = create_body(ContainerSpec {
            stdin: true,
            ..Default::default()
        });
        for f in [
            body.attach_stdin,
            body.attach_stdout,
            body.attach_stderr,
            body.open_stdin,
            body.stdin_once,
        ] {
            assert_eq!(f, Some(true));
        }
        assert_eq!(body.tty, Some(false));
    }

    #[test]
    fn host_settings_mounts_and_aliases_map_to_the_engine_fields() {
        let labels = HashMap::from([("k".to_string(), "v".to_string())]);
        let body = create_body(ContainerSpec {
            host: HostSpec {
                binds: vec!["/a:/b".to_string()],
                mounts: vec![
                    VolumeMount {
                        target: "/data".to_string(),
                        ..Default::default()
                    },
                    VolumeMount {
                        target: "/builds".to_string(),
                        volume: Some("vol".to_string()),
                        labels: labels.clone(),
                    },
                ],
                devices: vec![Device {
                    path_on_host: "/dev/fuse".to_string(),
                    path_in_container: "/dev/f".to_string(),
                    permissions: "rw".to_string(),
                }],
                ulimits: vec![Ulimit {
                    name: "nofile".to_string(),
                    soft: 1,
                    hard: 2,
                }],
                tmpfs: HashMap::from([("/run".to_string(), "rw".to_string())]),
                log_driver: Some("none".to_string()),
                memory: Some(5),
                ..Default::default()
            },
            network_aliases: Some(("net".to_string(), vec!["db".to_string()])),
            ..Default::default()
        });
        let hc = body.host_config.expect("host config");
        assert_eq!(hc.binds, Some(vec!["/a:/b".to_string()]));
        let m = hc.mounts.expect("mounts");
        assert_eq!(m[0].typ, Some(MountType::VOLUME));
        assert_eq!(
            (m[0].source.as_deref(), m[0].volume_options.is_none()),
            (None, true)
        );
        assert_eq!(m[1].source.as_deref(), Some("vol"));
        assert_eq!(
            m[1].volume_options.as_ref().and_then(|o| o.labels.clone()),
            Some(labels)
        );
        let d = &hc.devices.expect("devices")[0];
        assert_eq!(d.cgroup_permissions.as_deref(), Some("rw"));
        let u = &hc.ulimits.expect("ulimits")[0];
        assert_eq!((u.soft, u.hard), (Some(1), Some(2)));
        assert_eq!(hc.tmpfs.expect("tmpfs")["/run"], "rw");
        assert_eq!(hc.log_config.and_then(|l| l.typ).as_deref(), Some("none"));
        assert_eq!(hc.memory, Some(5));
        assert_eq!(hc.dns, None);
        let endpoints = body
            .networking_config
            .and_then(|n| n.endpoints_config)
            .expect("endpoints");
        assert_eq!(endpoints["net"].aliases, Some(vec!["db".to_string()]));
    }

    #[test]
    fn credentials_carry_user_password_and_server() {
        let c = docker_credentials(RegistryAuth {
            username: "u".to_string(),
            password: "p".to_string().into(),
            server: "registry.example.com".to_string(),
        });
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.password.as_deref(), Some("p"));
        assert_eq!(c.serveraddress.as_deref(), Some("registry.example.com"));
    }
}
