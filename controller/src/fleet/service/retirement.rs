//! Retirement: GitLab runners no agent needs any more are unregistered (or deleted by id)
//! once their agent runs a generation without them, or is deleted.

use secrecy::SecretString;

use super::{Fleet, RUNNER_TOKEN, creation_token};
use crate::fleet::spec;
use crate::store::{self, Assignment};

impl Fleet {
    /// A deleted agent: retire every GitLab runner it had and unregister them now.
    pub async fn on_agent_deleted(&self, agent_id: &str) {
        {
            // After a pass that was advancing this agent: what it registered is retired too
            // (the agent is revoked already, so no later pass selects it).
            let _g = self.lock.lock().await;
            let id = agent_id.to_string();
            if let Err(e) = store::blocking(&self.store, move |s| s.retire_agent_runners(&id)).await
            {
                tracing::warn!(agent = %agent_id, error = %e, "retire runners of deleted agent");
            }
        }
        self.runtime().remove(agent_id);
        self.reconcile().await;
    }

    /// Unregisters retired GitLab runners whose agent runs a generation without them (or
    /// is gone). A runner created with a runner-creation token is deleted by id with it
    /// (whatever its own token's state); otherwise it is unregistered with its own token,
    /// and a 403 means GitLab no longer accepts that token: nothing more can be done.
    pub(super) async fn unregister_retired(&self) {
        let retired = match store::blocking(&self.store, |s| s.list_retired()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "list retired runners");
                return;
            }
        };
        for r in retired {
            // GitLab calls are not fenced by the database: stop as soon as the lease is lost.
            if !self.cluster.is_leader() {
                return;
            }
            let a = &r.assignment;
            let agent_id = a.agent_id.clone();
            let due = r.after_generation == 0
                || match store::blocking(&self.store, move |s| s.get_agent(&agent_id)).await {
                    Ok(Some(agent)) => {
                        agent.revoked_at.is_some() || agent.applied_generation >= r.after_generation
                    }
                    Ok(None) => true,
                    Err(_) => false,
                };
            if !due {
                continue;
            }
            let token = match self.sealer.open_secret(RUNNER_TOKEN, &a.token_sealed) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(agent = %a.agent_id, runner = %a.runner, error = %e, "retired runner token");
                    self.drop_retired(r.id).await;
                    continue;
                }
            };
            let result = match self.creation_token_for(a).await {
                Some(access) if a.gitlab_runner_id > 0 => {
                    self.registrar
                        .delete(&a.url, &access, a.gitlab_runner_id)
                        .await
                }
                _ => match self.registrar.verify(&a.url, &token).await {
                    // The token may have come from the agent (a rotation kept unverified):
                    // unregister with it only when GitLab says it is the recorded runner's.
                    Ok(v) if v.id != a.gitlab_runner_id => {
                        tracing::warn!(agent = %a.agent_id, runner = %a.runner, gitlab_runner_id = a.gitlab_runner_id, token_of = v.id, "the retired runner's token belongs to another gitlab runner; not unregistered");
                        self.drop_retired(r.id).await;
                        continue;
                    }
                    Ok(_) => self.registrar.unregister(&a.url, &token).await,
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(()) => {
                    tracing::info!(agent = %a.agent_id, runner = %a.runner, gitlab_runner_id = a.gitlab_runner_id, "unregistered gitlab runner");
                    self.drop_retired(r.id).await;
                }
                Err(e) if e.forbidden => {
                    tracing::info!(agent = %a.agent_id, runner = %a.runner, gitlab_runner_id = a.gitlab_runner_id, "gitlab no longer accepts the retired runner's token; nothing to unregister");
                    self.drop_retired(r.id).await;
                }
                Err(e) => {
                    tracing::warn!(agent = %a.agent_id, runner = %a.runner, error = %e, "unregister gitlab runner; will retry");
                }
            }
        }
    }

    /// The runner-creation token of the spec a retired runner was created from, found by
    /// its registration key in the stored generations (newest first, at most 100 back).
    async fn creation_token_for(&self, a: &Assignment) -> Option<SecretString> {
        let newest = store::blocking(&self.store, |s| s.latest_generation())
            .await
            .ok()??
            .generation;
        for g in (1..=newest).rev().take(100) {
            let Ok(Some(rec)) = store::blocking(&self.store, move |s| s.get_generation(g)).await
            else {
                continue;
            };
            let Ok(runners) = self.runners_of(&rec) else {
                continue;
            };
            if let Some(r) = runners.iter().find(|r| {
                r.name == a.runner
                    && r.url == a.url
                    && spec::registration_key(r) == a.registration_key
            }) {
                return creation_token(r);
            }
        }
        None
    }

    /// Drops a retired entry once unregistered (or found beyond help); a failure leaves it
    /// for the next pass.
    async fn drop_retired(&self, id: i64) {
        if let Err(e) = store::blocking(&self.fenced, move |s| s.delete_retired(id)).await {
            tracing::warn!(error = %e, retired = id, "drop retired runner entry");
        }
    }
}
