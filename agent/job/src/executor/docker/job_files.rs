//! What gitlab-runner's helper image does, done on the host for one job: sources (host
//! git, then the work dir as a tar), dependencies' artifacts, cache restore; and after the
//! script, `CI_PROJECT_DIR` read back as a tar for cache save and artifact upload. Tars
//! go into the first script container through the engine's archive API.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use drover_proto::spec::DockerConfig;
use futures::StreamExt;
use secrecy::SecretString;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::container_body::BuildBase;
use super::containers::StepEnd;
use super::interrupt::until_interrupted;
use super::{DockerExecutor, End, JobState};
use crate::artifacts::{self, Owner, ProjectTar, Retry};
use crate::cache::{self, CachePlan, CacheStore};
use crate::executor::api::ArchiveStream;
use crate::executor::script::{generate, quote};
use crate::executor::variables::JobEnv;
use crate::executor::{ExecutorError, FailureReason, JobContext};
use crate::sources::{self, SourcesError, SourcesOutcome, TrackedFiles, host_work_dir};
use crate::trace::TraceSink;
use drover_gitlab::types::JobVariable;

/// Host-side files and decisions of one job (temporary files live as long as this).
pub(super) struct JobFiles {
    /// Owner written into tars put into the container (the job's numeric `user`, else root).
    pub(super) owner: Owner,
    /// `CI_PROJECT_DIR` in the container.
    pub(super) project_dir: String,
    pub(super) tmp_dir: PathBuf,
    /// Tars for the first script container, in order: (path in the container, file).
    pub(super) pending: Vec<(String, tempfile::NamedTempFile)>,
    /// Tracked files of the checkout, for `untracked: true`.
    pub(super) tracked: Option<Arc<TrackedFiles>>,
    pub(super) cache_store: CacheStore,
    pub(super) cache_plans: Vec<CachePlan>,
    /// `CI_PROJECT_DIR` was created by the `get-sources` container (not under
    /// `GIT_STRATEGY=none`, where it may not exist when archives are queued for it).
    pub(super) project_dir_made: bool,
}

impl DockerExecutor {
    /// The host-side files of one job: temp dir, tar owner, cache store and plans.
    pub(super) fn job_files(
        &self,
        ctx: &JobContext,
        docker: &DockerConfig,
        vars: &[JobVariable],
        job_project_dir: &str,
        trace: &TraceSink,
    ) -> Result<JobFiles, ExecutorError> {
        let tmp_dir = self.storage.tmp_dir();
        std::fs::create_dir_all(&tmp_dir).map_err(|source| ExecutorError::Archive {
            what: format!("temporary directory {}", tmp_dir.display()),
            source,
        })?;
        let runner_key = if ctx.runner.name.is_empty() {
            ctx.runner_short_token.clone()
        } else {
            ctx.runner.name.clone()
        };
        Ok(JobFiles {
            owner: owner_of(docker.user.as_deref()),
            project_dir: job_project_dir.to_string(),
            tmp_dir,
            pending: Vec::new(),
            tracked: None,
            cache_store: self.cache_store(ctx, &runner_key, trace),
            cache_plans: cache::cache_plans(&ctx.job, vars, trace)
                .map_err(|e| ExecutorError::Cache(e.to_string()))?,
            project_dir_made: false,
        })
    }

    /// The job's cache store: the runner's own, or the box's shared one (`[runners.cache]
    /// Shared = true`), with the distributed cache behind it when one is set. A distributed
    /// cache that cannot be set up is a warning; the job caches on this box.
    fn cache_store(&self, ctx: &JobContext, runner_key: &str, trace: &TraceSink) -> CacheStore {
        let (root, max) = (self.storage.cache_root(), self.storage.cache_max_bytes);
        let Some(cfg) = ctx.runner.cache.as_ref() else {
            return CacheStore::new(&root, runner_key, max);
        };
        let store = if cfg.is_shared() {
            CacheStore::shared(&root, max)
        } else {
            CacheStore::new(&root, runner_key, max)
        };
        let ca = ctx
            .runner
            .tls_ca_file
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(Path::new);
        match cache::remote::remote_for(cfg, &ctx.runner_short_token, ca) {
            Ok(remote) => store.with_remote(remote),
            Err(e) => {
                trace.write_line(&format!(
                    "\x1b[0;33mWARNING: distributed cache not used: {e}; caching on this box\x1b[0;m"
                ));
                store
            }
        }
    }

    /// `cache`: restores each pulled cache into the queue for the first script container.
    /// Never fails the job.
    pub(super) async fn restore_caches(
        &self,
        ctx: &JobContext,
        docker: &DockerConfig,
        work: &mut JobFiles,
        trace: &TraceSink,
    ) {
        if !work.cache_plans.iter().any(|p| p.policy.pulls()) {
            return;
        }
        trace.section_start("restore_cache", "Restoring cache");
        let restored = cache::restore_caches(
            &work.cache_store,
            &work.cache_plans,
            ctx.job.job_info.project_id,
            docker.disable_cache == Some(true),
            work.owner,
            &work.tmp_dir,
            trace,
        )
        .await;
        trace.section_end("restore_cache");
        for r in restored {
            work.pending.push((work.project_dir.clone(), r.tar));
        }
    }

    /// Handles `GIT_STRATEGY` with the host git ([`crate::sources`]): the work dir kept per
    /// runner, project and slot is brought up to date, `CI_PROJECT_DIR` is emptied in a
    /// `get-sources` container, and the work dir's tar is queued for the first script
    /// container. `GIT_STRATEGY=none` touches nothing here (see [`Self::make_project_dir`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn get_sources(
        &self,
        ctx: &JobContext,
        st: &JobState,
        base: &BuildBase<'_>,
        vars: &[JobVariable],
        work: &mut JobFiles,
        trace: &TraceSink,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<(), End> {
        let storage = &self.storage;
        let sources_failure = |e: SourcesError| End::Failed {
            reason: e.failure_reason(),
            exit_code: None,
            message: e.to_string(),
        };
        let plan = sources::plan(&ctx.job, vars, ctx.runner.clone_url.as_deref())
            .map_err(|e| sources_failure(SourcesError::Plan(e)))?;
        let mut git = storage.git.clone();
        if let Some(ca) = ctx.runner.tls_ca_file.as_deref().filter(|c| !c.is_empty()) {
            git = git.with_ca_file(ca);
        }
        let work_dir = host_work_dir(
            &storage.builds_root(),
            &ctx.runner_short_token,
            ctx.job.job_info.project_id,
            ctx.slot,
        );
        let fetch = git.get_sources(
            &plan,
            &ctx.job.token,
            &work_dir,
            &base.env.project_dir,
            trace,
        );
        let outcome = until_interrupted(cancel, deadline, fetch)
            .await
            .map_err(|i| End::interrupted(i, job_timeout_end))?
            .map_err(sources_failure)?;
        if outcome == SourcesOutcome::Untouched {
            return Ok(());
        }
        // Empty the directory in a container of its own, before the archive goes into the
        // first script container.
        self.make_project_dir(st, base, true, trace, deadline, cancel)
            .await?;
        work.project_dir_made = true;
        let tar = sources::tar_work_dir(&work_dir, "", work.owner, &work.tmp_dir)
            .await
            .map_err(sources_failure)?;
        work.pending.push((base.env.project_dir.clone(), tar));
        if outcome == SourcesOutcome::Repository {
            match git.tracked_files(&work_dir).await {
                Ok(t) => work.tracked = Some(Arc::new(t)),
                Err(e) => tracing::warn!("tracked files of {}: {e}", work_dir.display()),
            }
        }
        Ok(())
    }

    /// Creates `CI_PROJECT_DIR` (emptied first when `empty`) in a `get-sources` container, as
    /// gitlab-runner's get_sources stage does (`mkdir` of the project dir, also under
    /// `GIT_STRATEGY=none`): the engine only copies an archive into a directory that exists.
    pub(super) async fn make_project_dir(
        &self,
        st: &JobState,
        base: &BuildBase<'_>,
        empty: bool,
        trace: &TraceSink,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<(), End> {
        let dir = quote(&base.env.project_dir);
        let mut commands = Vec::new();
        if empty {
            commands.push(format!("rm -rf -- {dir}"));
        }
        commands.push(format!("mkdir -p {dir}"));
        let script = generate(&base.env.builds_dir, &commands, &[]);
        match self
            .run_container(
                st,
                base,
                "get-sources",
                &[],
                script,
                Vec::new(),
                trace,
                deadline,
                cancel,
            )
            .await
        {
            Ok(StepEnd::Exited(0)) => Ok(()),
            Ok(StepEnd::Exited(code)) => Err(End::system(format!(
                "preparing {dir} failed with exit code {code}"
            ))),
            Ok(StepEnd::TimedOut) => Err(job_timeout_end()),
            Ok(StepEnd::Canceled) => Err(End::Canceled),
            Err(e) => Err(End::system(e)),
        }
    }

    /// `dependencies`: downloads each dependency's artifacts and queues them for the first
    /// script container.
    pub(super) async fn download_dependencies(
        &self,
        ctx: &JobContext,
        work: &mut JobFiles,
        trace: &TraceSink,
    ) -> Result<(), End> {
        if !ctx.job.dependencies.iter().any(|d| d.has_artifacts()) {
            return Ok(());
        }
        trace.section_start("download_artifacts", "Downloading artifacts");
        let result = artifacts::download_dependencies(
            ctx.gitlab.as_ref(),
            &ctx.job,
            &work.tmp_dir,
            work.owner,
            Retry::default(),
            trace,
        )
        .await;
        trace.section_end("download_artifacts");
        match result {
            Ok(list) => {
                for d in list {
                    work.pending.push((work.project_dir.clone(), d.tar));
                }
                Ok(())
            }
            Err(e) => Err(End::Failed {
                reason: e.failure_reason(),
                exit_code: None,
                message: e.to_string(),
            }),
        }
    }

    /// Downloads `CI_PROJECT_DIR` from the last script container as a tar, then saves caches
    /// and uploads artifacts as the job's result says. Returns the (maybe changed) end.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn archive_results(
        &self,
        ctx: &JobContext,
        st: &JobState,
        base: &BuildBase<'_>,
        vars: &[JobVariable],
        work: &JobFiles,
        trace: &TraceSink,
        end: End,
    ) -> End {
        if matches!(end, End::Canceled) {
            return end;
        }
        let succeeded = matches!(end, End::Success);
        let disable_cache = base.docker.disable_cache == Some(true);
        let cache_wanted = work.cache_plans.iter().any(|p| p.policy.pushes());
        // An unknown `when` is warned about by the upload step.
        let artifacts_wanted = ctx.job.artifacts.iter().any(|a| {
            let when = artifacts::When::parse(a.when.as_deref());
            when.applies(succeeded) || matches!(when, artifacts::When::Unknown(_))
        });
        if !cache_wanted && !artifacts_wanted {
            return end;
        }
        let Some(container) = st.last_script.lock().ok().and_then(|l| l.clone()) else {
            return end;
        };
        let project_tar = match self
            .download_project(&container, &base.env.project_dir, &work.tmp_dir)
            .await
        {
            Ok(t) => t,
            Err(e) => {
                trace.write_line(&format!(
                    "\x1b[0;33mWARNING: could not read {} for caches and artifacts: {e}\x1b[0;m",
                    base.env.project_dir
                ));
                return match end {
                    End::Success if artifacts_wanted => End::system(e),
                    other => other,
                };
            }
        };
        let root = base
            .env
            .project_dir
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let tar = ProjectTar::new(project_tar.path(), &root);
        if cache_wanted {
            let section = if succeeded {
                "archive_cache"
            } else {
                "archive_cache_on_failure"
            };
            trace.section_start(section, "Saving cache");
            cache::save_caches(
                &work.cache_store,
                &work.cache_plans,
                ctx.job.job_info.project_id,
                disable_cache,
                &tar,
                &base.env.project_dir,
                work.tracked.clone(),
                succeeded,
                trace,
            )
            .await;
            trace.section_end(section);
        }
        if artifacts_wanted {
            let section = if succeeded {
                "upload_artifacts_on_success"
            } else {
                "upload_artifacts_on_failure"
            };
            trace.section_start(section, "Uploading artifacts");
            let result = artifacts::upload_job_artifacts(
                ctx.gitlab.as_ref(),
                &ctx.job,
                vars,
                &tar,
                &base.env.project_dir,
                work.tracked.clone(),
                succeeded,
                &work.tmp_dir,
                Retry::default(),
                trace,
            )
            .await;
            trace.section_end(section);
            if let Err(e) = result
                && matches!(end, End::Success)
            {
                return End::Failed {
                    reason: e.failure_reason(),
                    exit_code: None,
                    message: e.to_string(),
                };
            }
        }
        end
    }

    /// `path` in container `id` as a tar file in `tmp_dir`.
    pub(super) async fn download_project(
        &self,
        id: &str,
        path: &str,
        tmp_dir: &Path,
    ) -> Result<tempfile::NamedTempFile, ExecutorError> {
        let io_err = |source| ExecutorError::Archive {
            what: format!("download of {path}"),
            source,
        };
        let file = tempfile::Builder::new()
            .prefix("drover-project-")
            .suffix(".tar")
            .tempfile_in(tmp_dir)
            .map_err(io_err)?;
        let mut out = tokio::fs::File::create(file.path()).await.map_err(io_err)?;
        let mut stream = self.api.download_archive(id, path).await?;
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk.map_err(io_err)?)
                .await
                .map_err(io_err)?;
        }
        out.flush().await.map_err(io_err)?;
        Ok(file)
    }
}

/// The end of a job whose deadline passed while its sources were fetched.
fn job_timeout_end() -> End {
    End::Failed {
        reason: FailureReason::JobExecutionTimeout,
        exit_code: None,
        message: "execution took longer than the job timeout".to_string(),
    }
}

/// The job's resolved environment as variables for `sources`, `cache` and `artifacts`
/// (already expanded, so `raw`).
pub(super) fn job_variables(env: &JobEnv) -> Vec<JobVariable> {
    env.vars
        .iter()
        .map(|(k, v)| JobVariable {
            key: k.clone(),
            value: SecretString::from(v.clone()),
            public: false,
            masked: false,
            file: false,
            raw: true,
        })
        .collect()
}

/// The owner of files put into the container: the numeric `user` (`uid[:gid]`), else root.
fn owner_of(user: Option<&str>) -> Owner {
    let Some(user) = user.map(str::trim).filter(|u| !u.is_empty()) else {
        return Owner::default();
    };
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    match (uid.parse::<u64>(), gid.parse::<u64>()) {
        (Ok(uid), Ok(gid)) => Owner { uid, gid },
        (Ok(uid), Err(_)) => Owner { uid, gid: uid },
        _ => Owner::default(),
    }
}

/// A host file streamed into Docker's "put archive".
pub(super) fn file_stream(path: &Path) -> Result<ArchiveStream, ExecutorError> {
    let file = std::fs::File::open(path).map_err(|source| ExecutorError::Archive {
        what: path.display().to_string(),
        source,
    })?;
    Ok(tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file)).boxed())
}

#[cfg(test)]
mod owner_tests {
    use super::*;

    #[test]
    fn owner_follows_a_numeric_user_else_root() {
        assert_eq!(owner_of(None), Owner::default());
        assert_eq!(
            owner_of(Some("1000")),
            Owner {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(owner_of(Some("1000:50")), Owner { uid: 1000, gid: 50 });
        assert_eq!(owner_of(Some("postgres")), Owner::default());
    }
}
