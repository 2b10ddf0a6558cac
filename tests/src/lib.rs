//! Test support for Drover's end-to-end tests (`tests/tests/*.rs`).
//!
//! - `fake_gitlab`: an HTTP server that speaks GitLab's runner API as GitLab's own request
//!   specs describe it (status codes and headers included).
//! - `harness`: starts the real `drover` and `drover-agent` binaries with temporary dirs.
//! - `images`: builds local test images (busybox) since no registry can be reached.
//! - `image_archive`: `docker save` archives made by hand (`drover image push`).
//! - `git_server`: a smart-HTTP git server (`git http-backend` as CGI) with job-token auth.
//! - `chromium`: headless Chromium (DOM dumps and screenshots of the status page).
//! - `fake_agent`: enrollment and a Session stream spoken by hand (controller tests).
//! - `fleet_support`: what the fleet end-to-end tests share (specs, jobs, status polling).
//! - `flaky_proxy`: a TCP proxy that stalls, resets and refuses connections on command.
//! - `netns`: network namespaces with a veth pair to the host (root only).
//! - `procstat`: memory and CPU figures of a process (for the benchmarks in `src/bin/`).
//! - `standalone_agent`: a `drover-agent run --config` process with its temp dir, whose
//!   Docker objects are removed on drop (standalone tests and `bench-jobs`).
//! - `postgres`: a throwaway PostgreSQL server (the controller's, shared with its store
//!   tests).
//! - `scrape`: an agent's metrics address from its log, and plain HTTP GETs.
//! - `source_scan`: the non-test lines of a source tree matching a pattern (the structure
//!   tests).

pub mod chromium;
pub mod fake_agent;
pub mod fake_gitlab;
pub mod flaky_proxy;
pub mod fleet_support;
pub mod git_server;
pub mod harness;
pub mod image_archive;
pub mod images;
pub mod netns;
pub mod postgres;
pub mod procstat;
pub mod s3_server;
pub mod scrape;
pub mod source_scan;
pub mod standalone_agent;
