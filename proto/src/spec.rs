//! Runner configuration types: gitlab-runner's `config.toml` as people write it, and
//! Drover's runner spec file (the same `[[runners]]` tables plus a few keys of Drover's).
//!
//! The types here are plain data with serde; parsing with file/line errors, warnings for
//! keys Drover does not implement, and validation live in [`parse`] and [`validate`].

mod docker;
mod runner;

pub use docker::{DockerConfig, PullPolicy, PullPolicyList};
pub use runner::{CacheConfig, Config, RunnerConfig, SessionServer};
