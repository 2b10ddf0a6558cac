//! The fleet: runner spec generations, GitLab registration on agents' behalf, rollouts, and
//! the desired state each agent is pushed.
//!
//! - [`spec`]: spec files (shared parser + fleet checks), diff, redaction, `spec_json`.
//! - [`messages`]: what is pushed to agents and read from them (desired state, acks,
//!   runner events, rotated tokens), as domain types.
//! - [`progress`]: where the newest generation's rollout stands, per agent.
//! - [`selector`]: which agents a runner selects.
//! - [`rollout`]: pure rollout planning (batches, halt).
//! - [`gate`]: the pure health gate of a gated rollout (canary, window, failure ratio).
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

pub mod gate;
pub mod messages;
pub mod progress;
pub mod registrar;
pub mod rollout;
pub mod selector;
pub mod service;
pub mod spec;

pub use service::{ApplyOutcome, ApplyRequest, Claim, Fleet, FleetError, Presence};
