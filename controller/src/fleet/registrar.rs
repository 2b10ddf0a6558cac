//! Registering GitLab runners on an agent's behalf: the [`Registrar`] seam, its HTTP
//! implementation over `drover-gitlab`'s client, and a fake for unit tests. What a
//! registration sends is `drover_gitlab::RegisterOptions`.
//! Registration tokens and runner-creation (access) tokens are used here and nowhere else;
//! they never leave the controller.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use drover_gitlab::{
    ClientOptions, GitLab, GitLabError, HttpGitLab, RegisterOptions, RunnerAuth, RunnerCredentials,
};
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Where `POST /user/runners` creates a runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerScope {
    /// `instance_type`, `group_type` or `project_type`.
    pub runner_type: String,
    /// The group or project id for `group_type`/`project_type`.
    pub scope_id: Option<i64>,
}

/// A registered runner.
#[derive(Debug, Clone)]
pub struct Registered {
    /// GitLab's runner id.
    pub id: i64,
    /// Its authentication token.
    pub token: SecretString,
    /// Token expiry; `None` = never.
    pub token_expires_at: Option<OffsetDateTime>,
}

/// A failed GitLab call.
#[derive(Debug, thiserror::Error)]
#[error("gitlab {url}: {message}")]
pub struct RegistrarError {
    /// The GitLab URL.
    pub url: String,
    /// What went wrong (never a token).
    pub message: String,
    /// GitLab answered 403: the token is unknown, expired or revoked; retrying will not help.
    pub forbidden: bool,
}

/// GitLab's runner lifecycle endpoints, as the controller needs them.
#[async_trait]
pub trait Registrar: Send + Sync {
    /// `POST /runners` with a registration token.
    async fn register(
        &self,
        url: &str,
        registration_token: &SecretString,
        registration: &RegisterOptions,
    ) -> Result<Registered, RegistrarError>;
    /// `DELETE /runners` with the runner's authentication token.
    async fn unregister(&self, url: &str, token: &SecretString) -> Result<(), RegistrarError>;
    /// `POST /user/runners` with an access token (`create_runner` scope).
    async fn create(
        &self,
        url: &str,
        access_token: &SecretString,
        scope: &RunnerScope,
        registration: &RegisterOptions,
    ) -> Result<Registered, RegistrarError>;
    /// `DELETE /runners/:id` with an access token; a runner already gone is `Ok`.
    async fn delete(
        &self,
        url: &str,
        access_token: &SecretString,
        id: i64,
    ) -> Result<(), RegistrarError>;
    /// `POST /runners/verify` without a `system_id` (so no runner manager is made): which
    /// runner `token` belongs to, and its expiry, as GitLab says. `forbidden` = GitLab does
    /// not accept the token. This is how the controller checks a token an agent reports.
    async fn verify(&self, url: &str, token: &SecretString) -> Result<Registered, RegistrarError>;
}

fn registered(
    url: &str,
    what: &str,
    creds: RunnerCredentials,
) -> Result<Registered, RegistrarError> {
    let id = creds.id.ok_or_else(|| RegistrarError {
        url: url.to_string(),
        message: format!("{what} answered without a runner id"),
        forbidden: false,
    })?;
    Ok(Registered {
        id,
        token: creds.token,
        token_expires_at: creds
            .token_expires_at
            .as_deref()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok()),
    })
}

/// [`Registrar`] over HTTP with [`HttpGitLab`]: one client per GitLab URL, built on first
/// use and kept, so the system roots are loaded once per URL and connections are reused.
#[derive(Debug, Default)]
pub struct HttpRegistrar {
    /// GitLab URL → its client (cheap to clone: the pool and stats are shared).
    clients: Mutex<HashMap<String, HttpGitLab>>,
}

impl HttpRegistrar {
    /// A registrar with no client built yet.
    pub fn new() -> HttpRegistrar {
        HttpRegistrar::default()
    }

    /// The client for `url`, built once. A failed build is not kept: the next call retries
    /// (the system roots or the URL may be fixed meanwhile).
    fn client(&self, url: &str) -> Result<HttpGitLab, RegistrarError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(url) {
            return Ok(c.clone());
        }
        let opts = ClientOptions {
            request_timeout: std::time::Duration::from_secs(30),
            user_agent: format!("drover {}", drover_runtime::version()),
            ..Default::default()
        };
        let c = HttpGitLab::new(url, opts).map_err(|e| RegistrarError {
            url: url.to_string(),
            message: e.to_string(),
            forbidden: false,
        })?;
        clients.insert(url.to_string(), c.clone());
        Ok(c)
    }
}

fn gitlab_error(url: &str, e: GitLabError) -> RegistrarError {
    RegistrarError {
        url: url.to_string(),
        forbidden: matches!(e, GitLabError::Forbidden { .. }),
        message: e.to_string(),
    }
}

#[async_trait]
impl Registrar for HttpRegistrar {
    async fn register(
        &self,
        url: &str,
        registration_token: &SecretString,
        r: &RegisterOptions,
    ) -> Result<Registered, RegistrarError> {
        let creds = self
            .client(url)?
            .register(registration_token, r)
            .await
            .map_err(|e| gitlab_error(url, e))?;
        registered(url, "POST /runners", creds)
    }

    async fn create(
        &self,
        url: &str,
        access_token: &SecretString,
        scope: &RunnerScope,
        r: &RegisterOptions,
    ) -> Result<Registered, RegistrarError> {
        let creds = self
            .client(url)?
            .create_runner(access_token, &scope.runner_type, scope.scope_id, r)
            .await
            .map_err(|e| gitlab_error(url, e))?;
        registered(url, "POST /user/runners", creds)
    }

    async fn delete(
        &self,
        url: &str,
        access_token: &SecretString,
        id: i64,
    ) -> Result<(), RegistrarError> {
        match self.client(url)?.delete_runner(access_token, id).await {
            Ok(()) | Err(GitLabError::NotFound { .. }) => Ok(()),
            Err(e) => Err(gitlab_error(url, e)),
        }
    }

    async fn unregister(&self, url: &str, token: &SecretString) -> Result<(), RegistrarError> {
        self.client(url)?
            .unregister(token)
            .await
            .map_err(|e| gitlab_error(url, e))
    }

    async fn verify(&self, url: &str, token: &SecretString) -> Result<Registered, RegistrarError> {
        // An empty system_id is left out of GitLab's runner-manager bookkeeping
        // (`params[:system_id].blank?`), so verifying here makes no manager.
        let auth = RunnerAuth {
            token: token.clone(),
            system_id: String::new(),
        };
        let creds = self
            .client(url)?
            .verify(&auth)
            .await
            .map_err(|e| gitlab_error(url, e))?;
        registered(url, "POST /runners/verify", creds)
    }
}

/// In-memory [`Registrar`] for unit tests: accepts one registration token, hands out
/// `glrt-fake-N` tokens, records unregistrations.
#[derive(Debug, Default)]
pub struct FakeRegistrar {
    inner: Mutex<FakeInner>,
}

#[derive(Debug, Default)]
struct FakeInner {
    accepted: Option<String>,
    /// The access token `create`/`delete` accept.
    access: Option<String>,
    next_id: i64,
    /// Live runners: id → (token, registration).
    live: BTreeMap<i64, (String, RegisterOptions)>,
    /// Token expiry per live runner (absent = never).
    expiry: BTreeMap<i64, OffsetDateTime>,
    unregistered: Vec<i64>,
    fail: bool,
}

impl FakeRegistrar {
    /// Accepts `registration_token`.
    pub fn new(registration_token: &str) -> FakeRegistrar {
        let f = FakeRegistrar::default();
        f.lock().accepted = Some(registration_token.to_string());
        f
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Also accepts `access_token` for `create` and `delete`.
    pub fn with_access_token(self, access_token: &str) -> FakeRegistrar {
        self.lock().access = Some(access_token.to_string());
        self
    }

    /// Makes every call fail as if GitLab were down (or not).
    pub fn set_down(&self, down: bool) {
        self.lock().fail = down;
    }

    /// Live runners: id → (token, registration).
    pub fn live(&self) -> BTreeMap<i64, (String, RegisterOptions)> {
        self.lock().live.clone()
    }

    /// Revokes a live runner's token: it stays listed, as in GitLab, and only a delete by
    /// id removes it.
    pub fn revoke(&self, id: i64) {
        if let Some((t, _)) = self.lock().live.get_mut(&id) {
            *t = format!("revoked-{id}");
        }
    }

    /// Ids unregistered so far.
    pub fn unregistered(&self) -> Vec<i64> {
        self.lock().unregistered.clone()
    }

    /// Rotates a live runner's token as `reset_authentication_token` does (the old one
    /// stops working), with a new expiry; returns the new token.
    pub fn rotate(&self, id: i64, expires_at: Option<OffsetDateTime>) -> Option<String> {
        let mut g = self.lock();
        let (t, _) = g.live.get_mut(&id)?;
        let token = format!("{t}-rotated");
        *t = token.clone();
        match expires_at {
            Some(at) => g.expiry.insert(id, at),
            None => g.expiry.remove(&id),
        };
        Some(token)
    }
}

#[async_trait]
impl Registrar for FakeRegistrar {
    async fn register(
        &self,
        url: &str,
        registration_token: &SecretString,
        registration: &RegisterOptions,
    ) -> Result<Registered, RegistrarError> {
        let mut g = self.lock();
        if g.fail {
            return Err(RegistrarError {
                url: url.into(),
                message: "connection refused".into(),
                forbidden: false,
            });
        }
        if g.accepted.as_deref() != Some(registration_token.expose_secret()) {
            return Err(RegistrarError {
                url: url.into(),
                message: "POST /runners: forbidden (403)".into(),
                forbidden: true,
            });
        }
        g.next_id += 1;
        let id = g.next_id;
        let token = format!("glrt-fake-{id}");
        g.live.insert(id, (token.clone(), registration.clone()));
        Ok(Registered {
            id,
            token: SecretString::from(token),
            token_expires_at: None,
        })
    }

    async fn unregister(&self, url: &str, token: &SecretString) -> Result<(), RegistrarError> {
        let mut g = self.lock();
        if g.fail {
            return Err(RegistrarError {
                url: url.into(),
                message: "connection refused".into(),
                forbidden: false,
            });
        }
        let id = g
            .live
            .iter()
            .find(|(_, (t, _))| t == token.expose_secret())
            .map(|(id, _)| *id);
        match id {
            Some(id) => {
                g.live.remove(&id);
                g.unregistered.push(id);
                Ok(())
            }
            None => Err(RegistrarError {
                url: url.into(),
                message: "DELETE /runners: forbidden (403)".into(),
                forbidden: true,
            }),
        }
    }

    async fn create(
        &self,
        url: &str,
        access_token: &SecretString,
        _scope: &RunnerScope,
        registration: &RegisterOptions,
    ) -> Result<Registered, RegistrarError> {
        let mut g = self.lock();
        if g.fail || g.access.as_deref() != Some(access_token.expose_secret()) {
            return Err(RegistrarError {
                url: url.into(),
                message: "POST /user/runners: forbidden (403)".into(),
                forbidden: !g.fail,
            });
        }
        g.next_id += 1;
        let id = g.next_id;
        let token = format!("glrt-fake-{id}");
        g.live.insert(id, (token.clone(), registration.clone()));
        Ok(Registered {
            id,
            token: SecretString::from(token),
            token_expires_at: None,
        })
    }

    async fn delete(
        &self,
        url: &str,
        access_token: &SecretString,
        id: i64,
    ) -> Result<(), RegistrarError> {
        let mut g = self.lock();
        if g.fail || g.access.as_deref() != Some(access_token.expose_secret()) {
            return Err(RegistrarError {
                url: url.into(),
                message: "DELETE /runners/:id: forbidden (403)".into(),
                forbidden: !g.fail,
            });
        }
        if g.live.remove(&id).is_some() {
            g.unregistered.push(id);
        }
        Ok(())
    }

    async fn verify(&self, url: &str, token: &SecretString) -> Result<Registered, RegistrarError> {
        let g = self.lock();
        if g.fail {
            return Err(RegistrarError {
                url: url.into(),
                message: "connection refused".into(),
                forbidden: false,
            });
        }
        let found = g
            .live
            .iter()
            .find(|(_, (t, _))| t == token.expose_secret())
            .map(|(id, (t, _))| (*id, t.clone()));
        match found {
            Some((id, t)) => Ok(Registered {
                id,
                token: SecretString::from(t),
                token_expires_at: g.expiry.get(&id).copied(),
            }),
            None => Err(RegistrarError {
                url: url.into(),
                message: "POST /runners/verify: forbidden (403)".into(),
                forbidden: true,
            }),
        }
    }
}
