//! GitLab runner REST API: payload types, the client trait, and its HTTP implementation.

pub mod types;
