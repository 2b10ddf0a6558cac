//! Test support for Drover's end-to-end tests (`tests/tests/*.rs`).
//!
//! - `fake_gitlab`: an HTTP server that speaks GitLab's runner API as GitLab's own request
//!   specs describe it (status codes and headers included).
//! - `harness`: starts the real `drover` and `drover-agent` binaries with temporary dirs.
//! - `images`: builds local test images (busybox) since no registry can be reached.

pub mod fake_gitlab;
pub mod images;
