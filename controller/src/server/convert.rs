//! Wire ↔ domain conversions: protobuf types stop here.

use drover_proto::v1;

use crate::health::AgentView;
use crate::store::{EventRecord, Facts};
use crate::timefmt;
use crate::tokens::TokenRecord;

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

/// The token as `drover token list` shows it (never its secret or hash).
pub fn token_info(t: &TokenRecord) -> v1::TokenInfo {
    v1::TokenInfo {
        id: t.id.clone(),
        labels: t.labels.clone().into_iter().collect(),
        created_at: Some(timefmt::to_proto(t.created_at)),
        expires_at: Some(timefmt::to_proto(t.expires_at)),
        uses_left: t.uses_left,
        revoked: t.revoked,
    }
}

/// The agent as `drover agents` shows it: stored facts with the live lease state.
pub fn agent_info(v: &AgentView, runners: Vec<v1::RunnerStatus>) -> v1::AgentInfo {
    let a = &v.record;
    let mut facts: v1::AgentFacts = (&a.facts).into();
    facts.ips = v.ips.clone();
    v1::AgentInfo {
        id: a.id.clone(),
        labels: a.labels.clone().into_iter().collect(),
        facts: Some(facts),
        state: v.eval.state.as_str().to_string(),
        reasons: v.eval.reasons.clone(),
        connected: v.connected,
        last_seen: v.last_seen.map(timefmt::to_proto),
        enrolled_at: Some(timefmt::to_proto(a.enrolled_at)),
        cert_not_after: Some(timefmt::to_proto(a.cert_not_after)),
        applied_generation: v.applied_generation,
        runners,
        host: v.host.clone(),
        target_generation: v.target_generation,
        last_heartbeat: v.last_heartbeat.map(timefmt::to_proto),
    }
}

/// A stored event on the wire.
pub fn event(e: &EventRecord) -> v1::Event {
    v1::Event {
        id: e.id,
        at: e.at.map(timefmt::to_proto),
        agent_id: e.agent_id.clone(),
        kind: e.kind.clone(),
        runner: e.runner.clone(),
        message: e.message.clone(),
        job_id: e.job_id,
        job_state: e.job_state.clone(),
    }
}
