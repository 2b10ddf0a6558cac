//! [`ContainerApi`](crate::executor::ContainerApi) on the real engine, through bollard: the only module of the crate that
//! names bollard (`tests/tests/structure.rs` keeps it so).
//!
//! - `bollard_api`: [`BollardApi`], the calls.
//! - `convert`: the executor's [`ContainerSpec`](crate::executor::spec::ContainerSpec) and
//!   [`RegistryAuth`](crate::executor::spec::RegistryAuth) as bollard's types.
//! - `bounds`: the time bounds of every call.
//! - `system_df`: `GET /system/df` read by hand (bollard's model reads only API 1.52).
//!
//! Every call is bounded. A stalled engine (a `SIGSTOP`ped or wedged `dockerd`) accepts
//! connections and never answers; bollard bounds only the wait for response headers (2 min)
//! and never a body or a stream, so the bounds are here, each named in its error
//! ([`ExecutorError::NoAnswer`](crate::executor::ExecutorError::NoAnswer): `create container X: docker engine did not answer for 30s`):
//! - `PING_TIMEOUT` (10 s): version and info, the version negotiation at connect;
//! - `CALL_TIMEOUT` (30 s): create, start, inspect, kill, list, network create, the attach
//!   handshake (not its stream);
//! - `REMOVE_TIMEOUT` (60 s): removals of containers (with their anonymous volumes),
//!   volumes and networks, which wait on the disk;
//! - calls that last as long as their work (wait, pull, archive upload, logs) have no fixed
//!   bound: they end when the engine has answered no `/_ping` for `STALL_LIMIT` (90 s),
//!   probed every `STALL_PROBE_EVERY` while they run; an archive download ends when it
//!   receives nothing for `STALL_LIMIT`. A job's attached output stream ends with its
//!   wait. So a healthy engine never cuts a long job short, and a stall of up to a minute
//!   only delays the job (its containers run on without `dockerd`).

mod bollard_api;
mod bounds;
mod convert;
mod system_df;

pub use bollard_api::BollardApi;
