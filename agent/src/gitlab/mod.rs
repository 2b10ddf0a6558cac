//! GitLab runner REST API: payload types, the client trait, and its HTTP implementation.

pub mod api;
pub mod fake;
pub mod types;

pub use api::{
    ArtifactUpload, GitLab, GitLabError, JobRequest, JobUpdate, RegisterOptions, RunnerAuth,
    RunnerCredentials, TraceAnswer, UpdateAnswer,
};
