//! Drover's wire contract and shared spec types.
//!
//! - [`v1`]: the generated gRPC types (`drover.v1`). Wire types stop at the edge:
//!   each side converts them into its own domain types with `TryFrom`.
//! - [`spec`]: gitlab-runner `config.toml` / runner spec types and their validation,
//!   used by the controller (`drover runner apply`) and the agent (standalone mode).
//! - [`names`]: the documented name of every wire enum value, and how an enum field is read
//!   with the deprecated string field beside it.
//! - [`error_chain`]: an error and its causes as one line, each cause once.
//! - [`stdout`]: command output that a closed pipe ends quietly instead of a panic.
//! - [`cert_check`]: a TLS server verifier made of a certificate check, the handshake's
//!   signatures verified with the provider's algorithms.
//! - [`transport`]: how clients dial a controller (TLS, verified as [`transport::SERVER_NAME`]).

pub mod cert_check;
pub mod error_chain;
pub mod names;
pub mod spec;
pub mod stdout;
pub mod transport;

/// Largest gRPC message a Drover client or agent decodes: tonic's default (4 MiB), which
/// every agent already deployed keeps. The controller never sends more: it refuses a spec
/// whose desired state could not reach an agent, and pages `ListRunners`.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Generated code for package `drover.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("drover.v1");
}
