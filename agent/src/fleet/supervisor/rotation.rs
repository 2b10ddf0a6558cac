//! Token rotation: a runner token is reset at 75 % of its lifetime, persisted before the
//! runner uses it, and reported to the controller.

use std::time::Duration;

use secrecy::ExposeSecret;
use time::OffsetDateTime;

use super::Supervisor;
use crate::clock::Deadline;
use crate::fleet::desired::{self, Applied, rfc3339};
use crate::fleet::messages::ToController;
use crate::runner::error_chain;
use drover_gitlab::GitLabError;

impl Supervisor {
    /// Rotates the tokens that reached 75 % of their lifetime.
    pub(super) async fn rotate_due(&mut self) {
        let clock = self.deps.clock.clone();
        let now_t = clock.now();
        for e in self.units.values_mut() {
            // Anchored when the point changes (a new token), not on every tick.
            let at = e.assignment.rotate_at(now_t);
            if e.rotate.map(|d| d.at()) != at {
                e.rotate = at.map(|a| Deadline::new(a, &*clock));
            }
        }
        let due: Vec<String> = self
            .units
            .iter()
            .filter(|(_, e)| e.unit.state.wants_loop())
            .filter(|(_, e)| e.rotation_retry.is_none_or(|r| r.due(&*clock)))
            .filter(|(_, e)| e.rotate.is_some_and(|r| r.due(&*clock)))
            .map(|(k, _)| k.clone())
            .collect();
        for name in due {
            self.rotate(&name).await;
        }
    }

    /// `reset_authentication_token`, persist, then use the new token; `TokenRotated` tells
    /// the controller.
    async fn rotate(&mut self, name: &str) {
        let Some(e) = self.units.get(name) else {
            return;
        };
        let old = e.assignment.token.clone();
        let config = e.assignment.config.clone();
        let gl = match (self.deps.gitlab)(&config) {
            Ok(g) => g,
            Err(err) => {
                tracing::error!(runner = %name, error = %format!("{err:#}"), "token rotation: gitlab client");
                return;
            }
        };
        let answer = tokio::time::timeout(Duration::from_secs(30), gl.reset_token(&old)).await;
        let creds = match answer {
            Ok(Ok(c)) => c,
            Ok(Err(err @ GitLabError::Forbidden { .. })) => {
                self.token_invalid(name, format!("token rotation: {}", error_chain(&err)));
                return;
            }
            Ok(Err(err)) => {
                self.rotation_failed(name, error_chain(&err));
                return;
            }
            Err(_) => {
                self.rotation_failed(name, "reset_authentication_token timed out".into());
                return;
            }
        };
        let now_t = self.deps.clock.now();
        let Some(e) = self.units.get_mut(name) else {
            return;
        };
        let mut raw = e.assignment.raw.clone();
        raw.runner_token = creds.token.expose_secret().to_string();
        raw.token_expires_at = creds
            .token_expires_at
            .as_deref()
            .and_then(|s| {
                OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
            })
            .filter(|t| t.unix_timestamp() > 0)
            .map(rfc3339);
        raw.token_obtained_at = Some(rfc3339(now_t));
        if let Some(id) = creds.id {
            raw.gitlab_runner_id = id;
        }
        let assignment = match desired::validate_one(&raw, 0) {
            Ok(a) => a,
            Err(err) => {
                self.rotation_failed(name, format!("new token unusable: {err}"));
                return;
            }
        };
        let old_raw = std::mem::replace(&mut e.assignment, assignment);
        e.rotated_from = Some(old_raw.raw.runner_token.clone());
        e.rotation_retry = None;
        e.rotation_error = None;
        e.log(format!(
            "token rotated; expires {}",
            raw.token_expires_at.as_deref().unwrap_or("never")
        ));
        // Persist BEFORE the runner uses the new token.
        let applied = Applied {
            generation: self.generation,
            runners: self
                .units
                .values()
                .map(|e| e.assignment.raw.clone())
                .collect(),
        };
        if let Err(err) = self.deps.store.save(&applied) {
            // The old token is already dead at GitLab: run with the new one anyway.
            tracing::error!(runner = %name, error = %err, "persist the rotated token");
        }
        tracing::info!(runner = %name, expires = raw.token_expires_at.as_deref().unwrap_or("never"), "runner token rotated");
        self.send(ToController::TokenRotated {
            runner: name.to_string(),
            token: raw.runner_token.clone().into(),
            token_expires_at: raw.token_expires_at.clone(),
            gitlab_runner_id: raw.gitlab_runner_id,
        });
        // The engine sees a changed runner table: the old loop drains, a new one starts.
        self.sync_engine();
        self.refresh_metrics();
        self.dirty = true;
    }

    /// A failed rotation is retried after a minute, or after a quarter of the token's
    /// remaining lifetime when that is sooner (at least 2 s), so a short-lived token gets
    /// more tries before it expires.
    fn rotation_failed(&mut self, name: &str, why: String) {
        let clock = self.deps.clock.clone();
        let now_t = clock.now();
        if let Some(e) = self.units.get_mut(name) {
            let left = e
                .assignment
                .token_expires_at
                .map_or(time::Duration::minutes(4), |exp| exp - now_t);
            let wait: time::Duration =
                (left / 4_i32).clamp(time::Duration::seconds(2), time::Duration::minutes(1));
            tracing::warn!(runner = %name, error = %why, retry_in_s = wait.whole_seconds(), "token rotation failed; will retry");
            e.rotation_retry = Some(Deadline::new(now_t + wait, &*clock));
            e.log(format!("token rotation failed: {why}"));
            e.rotation_error = Some(why);
        }
    }
}
