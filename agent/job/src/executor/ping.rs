//! [`DockerExecutor::ping`]: is the engine there, which version, where it keeps its data.

use std::path::PathBuf;

use super::{DockerExecutor, ExecutorError};

/// What the engine says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerInfo {
    /// Engine version (`20.10.24`).
    pub version: String,
    /// Highest API version the engine speaks (`1.41`).
    pub api_version: String,
    /// `DockerRootDir` (`/var/lib/docker`): images, containers and volumes live on its
    /// filesystem.
    pub root_dir: PathBuf,
}

impl DockerExecutor {
    /// Asks the engine for its version and root dir; an error means it is unreachable (or
    /// answering errors), named by the call that failed.
    pub async fn ping(&self) -> Result<DockerInfo, ExecutorError> {
        self.api.engine_info().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::executor::fake::FakeApi;

    #[tokio::test]
    async fn ping_returns_the_engine_info() {
        let exec = DockerExecutor::with_api(Arc::new(FakeApi::default()));
        let info = exec.ping().await.unwrap();
        assert_eq!(info.root_dir, PathBuf::from("/var/lib/docker"));
        assert!(!info.version.is_empty());
    }
}
