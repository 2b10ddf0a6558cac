//! Runner configuration types: gitlab-runner's `config.toml` as people write it, and
//! Drover's runner spec file (the same `[[runners]]` tables plus a few keys of Drover's).
//!
//! The types here are plain data with serde; parsing with file/line errors, warnings for
//! keys Drover does not implement ([`parse`]), bounds on sizes and counts ([`limits`]) and
//! validation ([`validate`]) sit beside them, with the one size grammar ([`size`]).
//! Entry point: [`parse_config`] (standalone `config.toml`) or [`parse_with`].

mod cache;
mod disk_gc;
mod docker;
mod drover_images;
mod go_duration;
mod label;
pub mod limits;
mod locate;
pub mod parse;
mod runner;
pub mod size;
pub mod validate;

pub use cache::{CacheConfig, CacheS3Config, CacheSecrets, S3AuthType, S3Encryption};
pub use disk_gc::{
    DEFAULT_IMAGES_MAX_IDLE, DEFAULT_IMAGES_MAX_SIZE, DEFAULT_VOLUMES_MAX_IDLE,
    DEFAULT_VOLUMES_MAX_SIZE, DiskGcConfig,
};
pub use docker::{DockerConfig, PullPolicy, PullPolicyList};
pub use drover_images::{DroverImagesConfig, MAX_IMAGE_REF_LEN, image_ref_problem};
pub use go_duration::{GoDuration, parse_go_duration};
pub use label::{MAX_LABEL_LEN, validate_label, validate_labels};
pub use locate::{Segment, TomlPath};
pub use parse::{ParseMode, Parsed, SpecError, Warning, parse_config, parse_with};
pub use runner::{Config, RunnerConfig, SessionServer};
pub use size::{SizeError, parse_size};
