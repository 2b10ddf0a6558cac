//! `drover`: the Drover controller (`drover serve`) and its admin CLI.
//!
//! Layout:
//! - [`pki`]: the CA, the signing policy (the only code that sets certificate fields),
//!   identities in URI SANs.
//! - [`tokens`]: enrollment token format, hashing and the acceptance rules.
//! - [`store`]: the `Store` trait and its SQLite implementation.
//! - [`fleet`]: runner spec generations, rollouts, GitLab registration on agents' behalf.
//! - [`secrets`]: encryption at rest of runner and registration tokens.
//! - [`server`]: gRPC services over our own mutual-TLS accept loop, per-call auth, live
//!   sessions, and the HTTP listener.
//! - [`wire`]: the edge: every conversion between protobuf and domain types.
//! - [`client`]: dialing the controller (admin CLI, tests).
//! - [`datadir`], [`files`]: the data dir layout and atomic, mode-aware file writes.
//! - [`cli`]: one module per subcommand.

pub mod cli;
pub mod client;
pub mod datadir;
pub mod files;
pub mod fleet;
pub mod health;
pub mod images;
pub mod metrics;
pub mod pki;
pub mod replicas;
pub mod secrets;
pub mod server;
pub mod store;
pub mod timefmt;
pub mod tokens;
pub mod upgrade;
pub mod wire;
