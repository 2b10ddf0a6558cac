//! What a script container is made of: the job image, the shell reading the script on
//! stdin, the job environment, the builds and per-job volumes, and the layout archive.

use drover_proto::spec::DockerConfig;

use crate::executor::ExecutorError;
use crate::executor::names::JobNames;
use crate::executor::script::shell_command;
use crate::executor::spec::{ContainerSpec, HostSpec, VolumeMount};
use crate::executor::variables::JobEnv;

/// What every script container of a job shares.
pub(super) struct BuildBase<'a> {
    pub(super) image_id: String,
    pub(super) hc: HostSpec,
    pub(super) docker: &'a DockerConfig,
    pub(super) env: &'a JobEnv,
    /// The job's `image.entrypoint` (empty = keep the image's).
    pub(super) entrypoint: Vec<String>,
    /// Whether the first container gets the layout archive (project and tmp dirs open to
    /// any user, file variables): needed unless there are no file variables and the
    /// containers run as root, which creates the dirs itself (`mkdir -p` in the script).
    pub(super) layout: bool,
}

impl BuildBase<'_> {
    pub(super) fn body(
        &self,
        names: &JobNames,
        kind: &str,
        extra_env: &[(&str, &str)],
    ) -> ContainerSpec {
        let mut hc = self.hc.clone();
        let user_covers_builds = hc
            .binds
            .iter()
            .any(|b| b.split(':').nth(1) == Some(self.env.builds_dir.as_str()))
            || hc.mounts.iter().any(|m| m.target == self.env.builds_dir);
        if !user_covers_builds {
            hc.mounts.push(VolumeMount {
                target: self.env.builds_dir.clone(),
                volume: Some(names.builds_volume(&self.env.builds_dir)),
                labels: names.labels("builds", false),
            });
        }
        hc.mounts.push(VolumeMount {
            target: self.env.tmp_dir.clone(),
            volume: Some(names.tmp_volume()),
            labels: names.labels("tmp", true),
        });
        // The job trace is the build container's log: its output is read from the attach
        // stream, so the engine keeping a second copy (json-file) only halves throughput
        // and fills the disk.
        hc.log_driver = Some("none".to_string());
        let entrypoint = if self.docker.disable_entrypoint_overwrite == Some(true)
            || self.entrypoint.is_empty()
        {
            None
        } else {
            // `entrypoint: [""]` clears the image's entrypoint.
            Some(
                self.entrypoint
                    .iter()
                    .filter(|e| !e.is_empty())
                    .cloned()
                    .collect(),
            )
        };
        ContainerSpec {
            image: self.image_id.clone(),
            cmd: Some(shell_command()),
            entrypoint,
            env: self.env.docker_env(extra_env),
            working_dir: Some(self.env.builds_dir.clone()),
            user: self.docker.user.clone().filter(|u| !u.is_empty()),
            stdin: true,
            labels: names.labels(kind, true),
            host: hc,
            network_aliases: None,
        }
    }
}

/// A tar, extracted at `/`, creating the builds and project directories (world-writable
/// so a job `user` other than root can work in them) and the file variables.
pub(super) fn layout_archive(env: &JobEnv) -> Result<Vec<u8>, ExecutorError> {
    let err = |source| ExecutorError::Archive {
        what: "project directory and file variables".to_string(),
        source,
    };
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs: Vec<String> = Vec::new();
    let rel = env.project_dir.trim_start_matches('/');
    let mut acc = String::new();
    for seg in rel.split('/') {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(seg);
        dirs.push(acc.clone());
    }
    dirs.push(env.tmp_dir.trim_start_matches('/').to_string());
    for d in &dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_data(&mut h, format!("{d}/"), std::io::empty())
            .map_err(err)?;
    }
    for f in &env.files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(f.content.len() as u64);
        b.append_data(&mut h, f.path.trim_start_matches('/'), f.content.as_slice())
            .map_err(err)?;
    }
    b.into_inner().map_err(err)
}
