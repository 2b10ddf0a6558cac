//! The controller's edge: every conversion between the wire (`drover_proto::v1`) and the
//! domain types happens here, so protobuf types stop at this module, the gRPC services
//! (`server/`, outside `server/http/`) and the CLI (`cli/`, `client.rs`). A test
//! (`tests/wire_boundary.rs`) keeps `v1::` out of every other module.
//!
//! What comes from an agent or the CLI is untrusted: `TryFrom<v1::X>` refuses what no
//! conforming peer sends (a time out of range, ...) with a [`WireError`] naming the field
//! and value; a value a newer peer may send (an unknown unit state or event kind) is kept
//! as an `Unknown`/`Other` variant instead. Outward conversions are `From`.
//!
//! - [`report`]: what agents send (heartbeats, acks, runner events, rotated tokens) and
//!   the desired state pushed to them.
//! - [`admin`]: what the admin calls answer (agents, tokens, events, rollout status).
//! - [`fits`]: what is sent must fit one gRPC message (runner set check, `ListRunners`
//!   pages).
//! - [`enums`]: the domain enums to and from the proto enums (names in
//!   `drover_proto::names`), with the deprecated string fields beside them.

pub mod admin;
pub mod drains;
pub mod enums;
pub mod fits;
pub mod images;
pub mod report;
pub mod upgrade;

use drover_proto::v1;
use time::OffsetDateTime;

use crate::store::Facts;

pub use admin::{agent_info, event, job, job_state_filter, token_info};

/// A message from a peer that no conforming peer sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct WireError {
    /// The field, as a path (`runners[2].token_expires_at`).
    pub field: String,
    /// What is wrong with its value (the value included).
    pub problem: String,
}

impl WireError {
    /// `field` refused because of `problem`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> WireError {
        WireError {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The same error under `parent` (`runners[2]` + `.name`).
    pub fn within(self, parent: &str) -> WireError {
        WireError {
            field: format!("{parent}.{}", self.field),
            problem: self.problem,
        }
    }
}

/// A wire time as a domain one (nanoseconds kept); absent stays `None`, a time out of
/// range is refused.
pub fn time_in(
    field: &str,
    t: Option<&prost_types::Timestamp>,
) -> Result<Option<OffsetDateTime>, WireError> {
    let Some(t) = t else { return Ok(None) };
    let bad = || {
        WireError::new(
            field,
            format!("{}s {}ns is not a valid time", t.seconds, t.nanos),
        )
    };
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(bad());
    }
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map(Some)
        .map_err(|_| bad())
}

/// A domain time on the wire (nanoseconds kept).
pub fn time_out(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    }
}

/// Longest string kept from an agent's facts; longer ones are cut.
const MAX_FACT_LEN: usize = 256;
/// Most IPs kept from one report.
const MAX_IPS: usize = 64;

fn clip(s: &str) -> String {
    s.chars().take(MAX_FACT_LEN).collect()
}

/// Cleans a reported IP list: at most [`MAX_IPS`], each parseable as an IP address.
pub fn ips(list: &[String]) -> Vec<String> {
    list.iter()
        .filter(|s| s.parse::<std::net::IpAddr>().is_ok())
        .take(MAX_IPS)
        .cloned()
        .collect()
}

impl From<&v1::AgentFacts> for Facts {
    fn from(f: &v1::AgentFacts) -> Facts {
        Facts {
            hostname: clip(&f.hostname),
            arch: clip(&f.arch),
            os: clip(&f.os),
            kernel: clip(&f.kernel),
            agent_version: clip(&f.agent_version),
            ips: ips(&f.ips),
            docker_version: clip(&f.docker_version),
            system_id: clip(&f.system_id),
        }
    }
}

impl From<&Facts> for v1::AgentFacts {
    fn from(f: &Facts) -> v1::AgentFacts {
        v1::AgentFacts {
            hostname: f.hostname.clone(),
            arch: f.arch.clone(),
            os: f.os.clone(),
            kernel: f.kernel.clone(),
            agent_version: f.agent_version.clone(),
            ips: f.ips.clone(),
            docker_version: f.docker_version.clone(),
            system_id: f.system_id.clone(),
        }
    }
}
