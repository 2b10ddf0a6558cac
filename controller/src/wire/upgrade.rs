//! Agent binary upgrades on the wire: an agent's report in, the upgrade command and the
//! status out.

use drover_proto::names::Named;
use drover_proto::v1;

use super::{WireError, time_out};
use crate::upgrade::step::{MAX_DETAIL, Report, Step, UpgradeCommand};
use crate::upgrade::{AgentStatus, UpgradeStatus};

/// The domain step of a wire one; unspecified or unknown (a newer agent) is refused.
fn step_in(value: i32) -> Result<Step, WireError> {
    v1::UpgradeStep::try_from(value)
        .ok()
        .and_then(|s| Step::parse(s.name()))
        .ok_or_else(|| WireError::new("upgrade.step", format!("unknown step {value}")))
}

fn step_out(step: Step) -> v1::UpgradeStep {
    v1::UpgradeStep::from_name(step.as_str()).unwrap_or(v1::UpgradeStep::Unspecified)
}

impl TryFrom<&v1::UpgradeReport> for Report {
    type Error = WireError;

    fn try_from(r: &v1::UpgradeReport) -> Result<Report, WireError> {
        let mut detail = r.detail.clone();
        if detail.len() > MAX_DETAIL {
            let mut end = MAX_DETAIL;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
        }
        Ok(Report {
            upgrade_id: r.upgrade_id,
            step: step_in(r.step)?,
            detail: detail.chars().filter(|c| !c.is_control()).collect(),
        })
    }
}

impl From<UpgradeCommand> for v1::Upgrade {
    fn from(c: UpgradeCommand) -> v1::Upgrade {
        v1::Upgrade {
            upgrade_id: c.upgrade_id,
            sha256: c.sha256,
            size: c.size,
            signature: c.signature,
            version: c.version,
            health_timeout_seconds: c.health_timeout_seconds,
        }
    }
}

fn agent_out(a: AgentStatus) -> v1::AgentUpgradeStatus {
    v1::AgentUpgradeStatus {
        agent_id: a.agent_id,
        hostname: a.hostname,
        step: step_out(a.step).into(),
        detail: a.detail,
        version: a.version,
    }
}

/// Sets an agent's step in the newest upgrade (when it is one the upgrade is for).
pub fn annotate(info: &mut v1::AgentInfo, status: Option<&UpgradeStatus>) {
    if let Some(a) = status.and_then(|s| s.agents.iter().find(|a| a.agent_id == info.id)) {
        info.upgrade_step = step_out(a.step).into();
        info.upgrade_detail = a.detail.clone();
    }
}

/// The status as the admin API answers it (`None`: no upgrade yet, id 0).
pub fn status_out(s: Option<UpgradeStatus>) -> v1::UpgradeStatusResponse {
    let Some(s) = s else {
        return v1::UpgradeStatusResponse::default();
    };
    v1::UpgradeStatusResponse {
        id: s.upgrade.id,
        state: s.upgrade.state.as_str().to_string(),
        reason: s.upgrade.reason,
        created_at: Some(time_out(s.upgrade.created_at)),
        selector: s.upgrade.selector.into_iter().collect(),
        max_unavailable: s.upgrade.max_unavailable,
        health_timeout_seconds: s.upgrade.health_timeout_seconds,
        binaries: s
            .binaries
            .into_iter()
            .map(|b| v1::UpgradeBinary {
                arch: b.arch,
                version: b.version,
                sha256: b.sha256,
                size: b.size,
            })
            .collect(),
        agents: s.agents.into_iter().map(agent_out).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_bounded_and_an_unknown_step_refused() {
        let r = Report::try_from(&v1::UpgradeReport {
            upgrade_id: 2,
            step: v1::UpgradeStep::RolledBack.into(),
            detail: format!("\u{1b}[31m{}", "é".repeat(MAX_DETAIL)),
        })
        .unwrap();
        assert_eq!(r.step, Step::RolledBack);
        assert!(r.detail.len() <= MAX_DETAIL && !r.detail.contains('\u{1b}'));
        let e = Report::try_from(&v1::UpgradeReport {
            upgrade_id: 2,
            step: 99,
            detail: String::new(),
        })
        .unwrap_err();
        assert!(e.to_string().contains("99"), "{e}");
        for s in [Step::Pending, Step::Healthy, Step::TimedOut] {
            assert_eq!(step_in(step_out(s).into()).unwrap(), s);
        }
    }
}
