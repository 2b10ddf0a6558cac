//! `when` of artifacts and caches: `on_success` (default), `on_failure`, `always`.

/// When an artifacts or cache entry applies, relative to the job's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum When {
    #[default]
    OnSuccess,
    OnFailure,
    Always,
}

/// An unknown `when` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown when {0:?} (expected on_success, on_failure or always)")]
pub struct WhenError(pub String);

impl When {
    /// Parses the payload's `when` (`None`/empty = `on_success`).
    pub fn parse(value: Option<&str>) -> Result<When, WhenError> {
        match value.map(str::trim).unwrap_or("") {
            "" | "on_success" => Ok(When::OnSuccess),
            "on_failure" => Ok(When::OnFailure),
            "always" => Ok(When::Always),
            other => Err(WhenError(other.to_string())),
        }
    }

    /// Whether the entry applies to a job that succeeded (`true`) or failed (`false`).
    pub fn applies(self, job_succeeded: bool) -> bool {
        match self {
            When::OnSuccess => job_succeeded,
            When::OnFailure => !job_succeeded,
            When::Always => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        assert_eq!(When::parse(None), Ok(When::OnSuccess));
        assert!(When::parse(Some("on_success")).unwrap().applies(true));
        assert!(!When::parse(Some("on_success")).unwrap().applies(false));
        assert!(When::parse(Some("on_failure")).unwrap().applies(false));
        assert!(!When::parse(Some("on_failure")).unwrap().applies(true));
        assert!(When::parse(Some("always")).unwrap().applies(false));
        assert_eq!(When::parse(Some("never")), Err(WhenError("never".into())));
    }
}
