//! Registering GitLab runners on an agent's behalf: the [`Registrar`] seam, its HTTP
//! implementation over the agent crate's GitLab client, and a fake for unit tests.
//! Registration tokens are used here and nowhere else; they never leave the controller.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// What `POST /runners` sends besides the registration token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registration {
    /// Shown in GitLab's runner list (the spec's description template, filled in).
    pub description: String,
    /// Runner tags.
    pub tag_list: Vec<String>,
    /// Take jobs without tags.
    pub run_untagged: bool,
    /// Locked to its projects.
    pub locked: bool,
    /// `not_protected` or `ref_protected`.
    pub access_level: Option<String>,
    /// Seconds.
    pub maximum_timeout: Option<u64>,
    /// Registered paused.
    pub paused: bool,
    /// Note for GitLab admins.
    pub maintenance_note: Option<String>,
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
        registration: &Registration,
    ) -> Result<Registered, RegistrarError>;
    /// `DELETE /runners` with the runner's authentication token.
    async fn unregister(&self, url: &str, token: &SecretString) -> Result<(), RegistrarError>;
}

/// [`Registrar`] over HTTP with [`drover_agent::gitlab::HttpGitLab`].
#[derive(Debug, Default)]
pub struct HttpRegistrar;

fn client(url: &str) -> Result<drover_agent::gitlab::HttpGitLab, RegistrarError> {
    let opts = drover_agent::gitlab::ClientOptions {
        request_timeout: std::time::Duration::from_secs(30),
        user_agent: format!("drover {}", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    };
    drover_agent::gitlab::HttpGitLab::new(url, opts).map_err(|e| RegistrarError {
        url: url.to_string(),
        message: e.to_string(),
        forbidden: false,
    })
}

fn gitlab_error(url: &str, e: drover_agent::gitlab::GitLabError) -> RegistrarError {
    RegistrarError {
        url: url.to_string(),
        forbidden: matches!(e, drover_agent::gitlab::GitLabError::Forbidden { .. }),
        message: e.to_string(),
    }
}

#[async_trait]
impl Registrar for HttpRegistrar {
    async fn register(
        &self,
        url: &str,
        registration_token: &SecretString,
        r: &Registration,
    ) -> Result<Registered, RegistrarError> {
        use drover_agent::gitlab::GitLab;
        let opts = drover_agent::gitlab::RegisterOptions {
            description: r.description.clone(),
            tag_list: r.tag_list.clone(),
            run_untagged: r.run_untagged,
            locked: r.locked,
            access_level: r.access_level.clone(),
            maximum_timeout: r.maximum_timeout,
            paused: r.paused,
            maintenance_note: r.maintenance_note.clone(),
        };
        let creds = client(url)?
            .register(registration_token, &opts)
            .await
            .map_err(|e| gitlab_error(url, e))?;
        let id = creds.id.ok_or_else(|| RegistrarError {
            url: url.to_string(),
            message: "POST /runners answered without a runner id".into(),
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

    async fn unregister(&self, url: &str, token: &SecretString) -> Result<(), RegistrarError> {
        use drover_agent::gitlab::GitLab;
        client(url)?
            .unregister(token)
            .await
            .map_err(|e| gitlab_error(url, e))
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
    next_id: i64,
    /// Live runners: id → (token, registration).
    live: BTreeMap<i64, (String, Registration)>,
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

    /// Makes every call fail as if GitLab were down (or not).
    pub fn set_down(&self, down: bool) {
        self.lock().fail = down;
    }

    /// Live runners: id → (token, registration).
    pub fn live(&self) -> BTreeMap<i64, (String, Registration)> {
        self.lock().live.clone()
    }

    /// Ids unregistered so far.
    pub fn unregistered(&self) -> Vec<i64> {
        self.lock().unregistered.clone()
    }
}

#[async_trait]
impl Registrar for FakeRegistrar {
    async fn register(
        &self,
        url: &str,
        registration_token: &SecretString,
        registration: &Registration,
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
}
