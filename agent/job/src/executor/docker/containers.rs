//! The container lifecycle of a job: create a script container, give it its archives,
//! attach, start, feed the script, stream its output, wait, kill on cancel or deadline;
//! remove everything the job created at the end.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::container_body::{BuildBase, layout_archive};
use super::{DockerExecutor, JobState};
use crate::executor::ExecutorError;
use crate::executor::api::ArchiveStream;
use crate::trace::TraceSink;

/// How long output may keep coming after a container exited.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// How one script container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StepEnd {
    Exited(i64),
    TimedOut,
    Canceled,
}

impl DockerExecutor {
    /// Creates, feeds and runs one script container; output goes to `trace`. The container
    /// is recorded for removal at the end of the job.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run_container(
        &self,
        st: &JobState,
        base: &BuildBase<'_>,
        kind: &str,
        extra_env: &[(&str, &str)],
        script: String,
        archives: Vec<(String, ArchiveStream)>,
        trace: &TraceSink,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<StepEnd, ExecutorError> {
        if cancel.is_cancelled() {
            return Ok(StepEnd::Canceled);
        }
        let name = st.names.container(kind);
        let body = base.body(&st.names, kind, extra_env);
        let id = self.api.create(&name, body).await?;
        if let Ok(mut c) = st.containers.lock() {
            c.push(id.clone());
        }
        if let Ok(mut l) = st.last_script.lock() {
            *l = Some(id.clone());
        }
        let first = st
            .prepared
            .lock()
            .map(|mut p| !std::mem::replace(&mut *p, true))
            .unwrap_or(false);
        if first && base.layout {
            let tar = layout_archive(base.env)?;
            self.api.put_archive(&id, "/", single(tar)).await?;
        }
        for (path, archive) in archives {
            self.api.put_archive(&id, &path, archive).await?;
        }
        let attached = self.api.attach(&id).await?;
        let mut output = attached.output;
        let mut input = attached.input;
        self.api.start(&id).await?;
        let feeder = tokio::spawn(async move {
            // A shell that exits early closes stdin; that is not our error to report.
            let _ = input.write_all(script.as_bytes()).await;
            let _ = input.shutdown().await;
        });

        let wait = self.api.wait(&id);
        tokio::pin!(wait);
        let mut exit: Option<i64> = None;
        let mut output_done = false;
        let mut drain_until = deadline;
        let result = loop {
            if exit.is_some() && output_done {
                break Ok(StepEnd::Exited(exit.unwrap_or_default()));
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    self.kill_logged(&id).await;
                    break Ok(StepEnd::Canceled);
                }
                _ = tokio::time::sleep_until(deadline), if exit.is_none() => {
                    self.kill_logged(&id).await;
                    break Ok(StepEnd::TimedOut);
                }
                chunk = output.next(), if !output_done => match chunk {
                    Some(Ok(b)) => trace.write(&b),
                    Some(Err(e)) => {
                        tracing::warn!(container = %name, "output stream failed: {e}");
                        output_done = true;
                    }
                    None => output_done = true,
                },
                code = &mut wait, if exit.is_none() => match code {
                    Ok(c) => {
                        exit = Some(c);
                        drain_until = Instant::now() + OUTPUT_DRAIN;
                    }
                    Err(e) => {
                        self.kill_logged(&id).await;
                        break Err(e);
                    }
                },
                _ = tokio::time::sleep_until(drain_until), if exit.is_some() => {
                    break Ok(StepEnd::Exited(exit.unwrap_or_default()));
                }
            }
        };
        feeder.abort();
        result
    }

    pub(super) async fn kill_logged(&self, id: &str) {
        if let Err(e) = self.api.kill(id).await {
            tracing::warn!("{e}");
        }
    }

    /// Removes the job's containers and its per-job volume.
    pub(super) async fn cleanup(&self, st: &JobState, trace: &TraceSink) {
        let ids = st.containers.lock().map(|c| c.clone()).unwrap_or_default();
        for id in ids {
            if let Err(e) = self.api.remove(&id).await {
                tracing::warn!("{e}");
                trace.write_line(&format!("\x1b[0;33mWARNING: {e}\x1b[0;m"));
            }
        }
        let network = st.network.lock().ok().and_then(|mut n| n.take());
        if let Some(net) = network
            && let Err(e) = self.api.remove_network(&net).await
        {
            tracing::warn!("{e}");
            trace.write_line(&format!("\x1b[0;33mWARNING: {e}\x1b[0;m"));
        }
        let prepared = st.prepared.lock().map(|p| *p).unwrap_or(true);
        if prepared {
            trace.section_start(
                "cleanup_file_variables",
                "Cleaning up project directory and file based variables",
            );
            if let Err(e) = self.api.remove_volume(&st.names.tmp_volume()).await {
                tracing::warn!("{e}");
                trace.write_line(&format!("\x1b[0;33mWARNING: {e}\x1b[0;m"));
            }
            trace.section_end("cleanup_file_variables");
        }
    }
}

pub(super) fn single(b: Vec<u8>) -> ArchiveStream {
    futures::stream::once(async move { Ok(Bytes::from(b)) }).boxed()
}
