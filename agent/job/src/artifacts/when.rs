//! `when` of artifacts and caches: `on_success` (default), `on_failure`, `always`, read
//! as gitlab-runner's `ArtifactWhen`/`CacheWhen` (`common/network.go`): `OnSuccess()` is
//! empty, `on_success` or `always`; `OnFailure()` is `on_failure` or `always`; any other
//! value applies to neither, so that entry is never uploaded or saved.

/// When an artifacts or cache entry applies, relative to the job's result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum When {
    #[default]
    OnSuccess,
    OnFailure,
    Always,
    /// A value gitlab-runner does not know: applies to no job result.
    Unknown(String),
}

impl When {
    /// Reads the payload's `when` (`None`/empty = `on_success`).
    pub fn parse(value: Option<&str>) -> When {
        match value.unwrap_or("") {
            "" | "on_success" => When::OnSuccess,
            "on_failure" => When::OnFailure,
            "always" => When::Always,
            other => When::Unknown(other.to_string()),
        }
    }

    /// Whether the entry applies to a job that succeeded (`true`) or failed (`false`).
    pub fn applies(&self, job_succeeded: bool) -> bool {
        match self {
            When::OnSuccess => job_succeeded,
            When::OnFailure => !job_succeeded,
            When::Always => true,
            When::Unknown(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        assert_eq!(When::parse(None), When::OnSuccess);
        assert_eq!(When::parse(Some("")), When::OnSuccess);
        assert!(When::parse(Some("on_success")).applies(true));
        assert!(!When::parse(Some("on_success")).applies(false));
        assert!(When::parse(Some("on_failure")).applies(false));
        assert!(!When::parse(Some("on_failure")).applies(true));
        assert!(When::parse(Some("always")).applies(false));
        // gitlab-runner: an unknown value is neither OnSuccess nor OnFailure.
        let never = When::parse(Some("never"));
        assert_eq!(never, When::Unknown("never".into()));
        assert!(!never.applies(true) && !never.applies(false));
    }
}
