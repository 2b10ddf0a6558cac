//! `drover-gitlab`: GitLab's runner REST API as Drover speaks it, used by the agent (job API,
//! verify, token reset) and by the controller (runner lifecycle on agents' behalf).
//!
//! Layout:
//! - [`api`]: the [`GitLab`] trait (the IO seam) and [`GitLabError`].
//! - [`client`]: [`HttpGitLab`], the trait over reqwest and rustls (ring), one file per
//!   endpoint group, the status mapping in one place.
//! - [`fake`]: `FakeGitLab`, a scripted in-memory [`GitLab`] for tests.
//! - [`types`], [`decode`]: the job payload, read with gitlab-runner's rules; [`fixtures`]
//!   holds payloads exactly as GitLab sends them.
//! - [`headers`]: flow-control headers (`Retry-After`, `RateLimit-ResetTime`, `Date`).
//! - [`features`]: the runner features declared to GitLab; [`stats`]: requests per endpoint.
//! - [`backoff`]: how long a caller waits before retrying a GitLab call (jittered exponential
//!   backoff, or what GitLab asked for, bounded).
//!
//! `STATUS.md` beside this file maps every endpoint and status to what the agent does.
//! The crate holds no token and writes no file but the artifact downloads it is asked for.

pub mod api;
pub mod backoff;
pub mod client;
pub mod decode;
pub mod fake;
pub mod features;
pub mod fixtures;
pub mod headers;
pub mod stats;
pub mod types;

pub use api::{
    ArtifactUpload, GitLab, GitLabError, JobRequest, JobUpdate, RegisterOptions, RunnerAuth,
    RunnerCredentials, TraceAnswer, UpdateAnswer,
};
pub use client::{ClientBuildError, ClientOptions, HttpGitLab};
pub use decode::{JobDecode, UnrunnableJob, decode_job};
pub use stats::{ApiStat, ApiStats};
