//! GitLab runner REST API: payload types, the client trait, and its HTTP implementation.

pub mod api;
pub mod client;
pub mod decode;
pub mod fake;
pub mod features;
pub mod fixtures;
pub mod headers;
pub mod stats;
pub mod system_id;
pub mod types;

pub use api::{
    ArtifactUpload, GitLab, GitLabError, JobRequest, JobUpdate, RegisterOptions, RunnerAuth,
    RunnerCredentials, TraceAnswer, UpdateAnswer,
};
pub use client::{ClientBuildError, ClientOptions, HttpGitLab};
pub use decode::{JobDecode, UnrunnableJob, decode_job};
pub use stats::{ApiStat, ApiStats};
