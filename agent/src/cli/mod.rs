//! `drover-agent` subcommands, one module each.

pub mod check;
pub mod enroll;
pub mod run;
pub mod status;
