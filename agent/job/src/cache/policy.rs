//! Pure decisions about a job's `cache` entries: which keys to try on restore, whether to
//! restore and whether to save, given `policy`, `when`, `fallback_keys`,
//! `CACHE_FALLBACK_KEY` and the runner's `disable_cache`.

use crate::artifacts::When;
use drover_gitlab::types::Cache;

/// `cache:policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CachePolicy {
    Pull,
    Push,
    #[default]
    PullPush,
}

/// An unknown `cache:policy` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cache policy {0:?} (expected pull, push or pull-push)")]
pub struct PolicyError(pub String);

impl CachePolicy {
    /// Parses the payload's `policy` (`None`/empty = `pull-push`) as gitlab-runner's
    /// `Cache.CheckPolicy` (`common/network.go`): any other value is an error, which fails
    /// the job there ("unknown cache policy ... for KEY") and here.
    pub fn parse(value: Option<&str>) -> Result<CachePolicy, PolicyError> {
        match value.unwrap_or("") {
            "" | "pull-push" => Ok(CachePolicy::PullPush),
            "pull" => Ok(CachePolicy::Pull),
            "push" => Ok(CachePolicy::Push),
            other => Err(PolicyError(other.to_string())),
        }
    }

    /// Restore before the job.
    pub fn pulls(self) -> bool {
        matches!(self, CachePolicy::Pull | CachePolicy::PullPush)
    }

    /// Save after the job.
    pub fn pushes(self) -> bool {
        matches!(self, CachePolicy::Push | CachePolicy::PullPush)
    }
}

/// One `cache` entry, decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePlan {
    /// The key to save under (`default` when GitLab sent none).
    pub key: String,
    /// Keys to try on restore, in order: `key`, `fallback_keys`, then `CACHE_FALLBACK_KEY`.
    pub restore_keys: Vec<String>,
    pub paths: Vec<String>,
    pub untracked: bool,
    pub policy: CachePolicy,
    pub when: When,
}

/// A `cache` entry we cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CachePlanError {
    #[error("cache {key:?}: {source}")]
    Policy {
        key: String,
        #[source]
        source: PolicyError,
    },
}

impl CachePlan {
    /// Decides one entry. `fallback_variable` is the job's `CACHE_FALLBACK_KEY`; like
    /// gitlab-runner, a value ending in `-protected` is ignored (it would let unprotected
    /// jobs read protected caches).
    pub fn new(
        cache: &Cache,
        fallback_variable: Option<&str>,
    ) -> Result<CachePlan, CachePlanError> {
        let key = match cache.key.trim() {
            "" => "default".to_string(),
            k => k.to_string(),
        };
        let policy = CachePolicy::parse(cache.policy.as_deref()).map_err(|source| {
            CachePlanError::Policy {
                key: key.clone(),
                source,
            }
        })?;
        let when = When::parse(cache.when.as_deref());
        let mut restore_keys = vec![key.clone()];
        let fallback = fallback_variable
            .map(str::trim)
            .filter(|k| !k.is_empty() && !k.ends_with("-protected"));
        for k in cache.fallback_keys.iter().map(|k| k.trim()).chain(fallback) {
            if !k.is_empty() && !restore_keys.iter().any(|r| r == k) {
                restore_keys.push(k.to_string());
            }
        }
        Ok(CachePlan {
            key,
            restore_keys,
            paths: cache.paths.clone(),
            untracked: cache.untracked,
            policy,
            when,
        })
    }

    /// Whether to restore this cache before the job.
    pub fn should_restore(&self, disable_cache: bool) -> bool {
        !disable_cache && self.policy.pulls()
    }

    /// Whether to save this cache after a job that succeeded (`true`) or failed.
    pub fn should_save(&self, disable_cache: bool, job_succeeded: bool) -> bool {
        !disable_cache
            && self.policy.pushes()
            && self.when.applies(job_succeeded)
            && (self.untracked || !self.paths.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(key: &str, policy: Option<&str>, when: Option<&str>, fallback: &[&str]) -> Cache {
        Cache {
            key: key.to_string(),
            untracked: false,
            policy: policy.map(str::to_string),
            paths: vec!["vendor/".to_string()],
            when: when.map(str::to_string),
            fallback_keys: fallback.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// gitlab-runner's `CacheWhen`/`CheckPolicy`: an unknown `when` restores (policy allows)
    /// but never saves; an unknown `policy`, or a spelling it does not accept, is an error.
    #[test]
    fn unknown_values_as_gitlab_runner() {
        let p = CachePlan::new(&cache("k", None, Some("sometimes"), &[]), None).expect("plan");
        assert!(p.should_restore(false));
        assert!(!p.should_save(false, true) && !p.should_save(false, false));
        for bad in ["pull_push", " pull", "fetch"] {
            assert!(CachePolicy::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn policies() {
        let pull = CachePlan::new(&cache("k", Some("pull"), None, &[]), None).unwrap();
        assert!(pull.should_restore(false));
        assert!(!pull.should_save(false, true));
        let push = CachePlan::new(&cache("k", Some("push"), None, &[]), None).unwrap();
        assert!(!push.should_restore(false));
        assert!(push.should_save(false, true));
        let both = CachePlan::new(&cache("k", None, None, &[]), None).unwrap();
        assert!(both.should_restore(false) && both.should_save(false, true));
        assert!(!both.should_restore(true), "disable_cache");
        assert!(!both.should_save(true, true), "disable_cache");
        assert!(CachePlan::new(&cache("k", Some("fetch"), None, &[]), None).is_err());
    }

    #[test]
    fn when_decides_saving() {
        let on_success = CachePlan::new(&cache("k", None, None, &[]), None).unwrap();
        assert!(on_success.should_save(false, true));
        assert!(!on_success.should_save(false, false));
        let on_failure = CachePlan::new(&cache("k", None, Some("on_failure"), &[]), None).unwrap();
        assert!(!on_failure.should_save(false, true));
        assert!(on_failure.should_save(false, false));
        let always = CachePlan::new(&cache("k", None, Some("always"), &[]), None).unwrap();
        assert!(always.should_save(false, false) && always.should_save(false, true));
    }

    #[test]
    fn restore_keys_in_order() {
        let p = CachePlan::new(&cache("main", None, None, &["a", "main", "b"]), Some("c")).unwrap();
        assert_eq!(p.restore_keys, vec!["main", "a", "b", "c"]);
        let p = CachePlan::new(&cache("", None, None, &[]), Some("x-protected")).unwrap();
        assert_eq!(p.restore_keys, vec!["default"]);
    }
}
