//! What can go wrong in the executor, naming the Docker operation and object.

/// The engine client's own error, boxed so that no client type crosses the executor's
/// seam (its text is kept as the engine client wrote it).
pub type EngineError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Executor errors. Each names what failed: the Docker operation and its object, the
/// `[runners.docker]` key and value, or the image.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// Connecting to the Docker engine failed.
    #[error("connect to docker engine at {host}: {source}")]
    Connect {
        host: String,
        #[source]
        source: EngineError,
    },
    /// A Docker API call failed; `op` reads like `create container runner-...`.
    #[error("{op}: {source}")]
    Docker {
        op: String,
        #[source]
        source: EngineError,
    },
    /// A Docker API call got no answer in time (a stalled engine); `op` names the call.
    #[error("{op}: docker engine did not answer for {}s", after.as_secs())]
    NoAnswer {
        op: String,
        after: std::time::Duration,
    },
    /// A `[runners.docker]` value could not be used.
    #[error("invalid [runners.docker] {key} = {value:?}: {reason}")]
    Config {
        key: &'static str,
        value: String,
        reason: String,
    },
    /// A `[[runners]]` value (`builds_dir`, `environment`) could not be used.
    #[error("invalid [[runners]] {key} = {value:?}: {reason}")]
    Runner {
        key: &'static str,
        value: String,
        reason: String,
    },
    /// A job variable could not be applied.
    #[error("job variable {key}: {reason}")]
    Variable { key: String, reason: String },
    /// Building a tar archive for the container failed.
    #[error("build archive for {what}: {source}")]
    Archive {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The job's image could not be resolved (not allowed, not present, pull failed...).
    #[error("{0}")]
    Image(String),
    /// The sources provider failed to produce the repository.
    #[error("get sources: {0}")]
    Sources(String),
    /// A `cache` entry gitlab-runner refuses too (unknown `policy`).
    #[error("{0}")]
    Cache(String),
}

impl ExecutorError {
    /// Wraps an engine client error with the operation and object it concerns (for
    /// [`ContainerApi`](super::ContainerApi) implementations).
    pub fn docker(op: impl Into<String>, source: impl Into<EngineError>) -> Self {
        ExecutorError::Docker {
            op: op.into(),
            source: source.into(),
        }
    }

    /// A bad `[runners.docker]` value.
    pub(crate) fn config(
        key: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        ExecutorError::Config {
            key,
            value: value.into(),
            reason: reason.into(),
        }
    }
}
