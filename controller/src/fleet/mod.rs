//! The fleet: runner spec generations, GitLab registration on agents' behalf, rollouts, and
//! the desired state each agent is pushed.
//!
//! - [`spec`]: spec files (shared parser + fleet checks), diff, redaction, `spec_json`.
//! - [`fits`]: what is sent must fit one gRPC message (runner set check, `ListRunners` pages).
//! - [`selector`]: which agents a runner selects.
//! - [`rollout`]: pure rollout planning (batches, halt).
//! - [`registrar`]: the GitLab seam (`Registrar`, HTTP and fake).
//! - [`service`]: [`Fleet`], which ties them to the store and the live sessions.
//!
//! Invariants: every change is a new generation (stored sealed, never edited); an agent is
//! pushed only generations the rollout plan let through; a GitLab runner the controller
//! registered is unregistered once nothing uses it (after the agent acknowledged the
//! generation that replaced it), never while an agent may still run it; runner and
//! registration tokens exist in clear only in memory and on the wire to their agent; the
//! controller acts in GitLab only on runner ids GitLab gave it (at registration or
//! creation), and what an agent reports (runner id, token, expiry, `token-invalid`) is a
//! claim checked against that record and against GitLab before anything is kept or done.

pub mod fits;
pub mod registrar;
pub mod rollout;
pub mod selector;
pub mod service;
pub mod spec;

pub use service::{ApplyOutcome, ApplyRequest, Claim, Fleet, FleetError};
