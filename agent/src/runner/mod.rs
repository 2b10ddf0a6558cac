//! One runner = one job loop.

pub mod backoff;
