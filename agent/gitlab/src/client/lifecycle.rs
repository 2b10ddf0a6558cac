//! Runner lifecycle endpoints: register, verify, reset the token and unregister with runner
//! tokens (the [`crate::GitLab`] trait's, used by both sides), create and delete with an
//! access token and unregister one runner manager (the controller's, inherent to
//! [`HttpGitLab`]).

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::HttpGitLab;
use super::info::runner_info;
use super::status::{decode, expect_status};
use crate::api::{GitLabError, RegisterOptions, RunnerAuth, RunnerCredentials};
use crate::stats::endpoint;

/// `{id, token, token_expires_at}` as GitLab sends it.
#[derive(Deserialize)]
struct CredentialsBody {
    #[serde(default)]
    id: Option<i64>,
    token: String,
    #[serde(default)]
    token_expires_at: Option<String>,
}

impl From<CredentialsBody> for RunnerCredentials {
    fn from(b: CredentialsBody) -> Self {
        RunnerCredentials {
            id: b.id,
            token: SecretString::from(b.token),
            // Older GitLab versions send Go's zero time for "never".
            token_expires_at: b
                .token_expires_at
                .filter(|t| !t.is_empty() && !t.starts_with("0001-01-01")),
        }
    }
}

/// The runner settings `POST /runners` and `POST /user/runners` both send.
fn settings_body(opts: &RegisterOptions) -> serde_json::Value {
    let mut body = json!({
        "description": opts.description,
        "tag_list": opts.tag_list.join(","),
        "run_untagged": opts.run_untagged,
        "locked": opts.locked,
        "paused": opts.paused,
    });
    if let Some(level) = &opts.access_level {
        body["access_level"] = json!(level);
    }
    if let Some(max) = opts.maximum_timeout {
        body["maximum_timeout"] = json!(max);
    }
    if let Some(note) = &opts.maintenance_note {
        body["maintenance_note"] = json!(note);
    }
    body
}

/// `POST /runners` with a registration token (`201`).
pub(super) async fn register(
    gl: &HttpGitLab,
    registration_token: &SecretString,
    opts: &RegisterOptions,
) -> Result<RunnerCredentials, GitLabError> {
    let ep = endpoint::REGISTER_RUNNER;
    let mut body = settings_body(opts);
    body["token"] = json!(registration_token.expose_secret());
    body["info"] = runner_info();
    let resp = gl
        .send(ep, gl.request(ep, Method::POST, "runners")?.json(&body))
        .await?;
    let resp = expect_status(ep, resp, StatusCode::CREATED).await?;
    Ok(decode::<CredentialsBody>(ep, resp).await?.into())
}

/// `POST /runners/verify` `{token, system_id}` (`200`).
pub(super) async fn verify(
    gl: &HttpGitLab,
    auth: &RunnerAuth,
) -> Result<RunnerCredentials, GitLabError> {
    let ep = endpoint::VERIFY_RUNNER;
    let body = json!({"token": auth.token.expose_secret(), "system_id": auth.system_id});
    let resp = gl
        .send(
            ep,
            gl.request(ep, Method::POST, "runners/verify")?.json(&body),
        )
        .await?;
    let resp = expect_status(ep, resp, StatusCode::OK).await?;
    Ok(decode::<CredentialsBody>(ep, resp).await?.into())
}

/// `POST /runners/reset_authentication_token` (`201`).
pub(super) async fn reset_token(
    gl: &HttpGitLab,
    token: &SecretString,
) -> Result<RunnerCredentials, GitLabError> {
    let ep = endpoint::RESET_TOKEN;
    let body = json!({"token": token.expose_secret()});
    let req = gl.request(ep, Method::POST, "runners/reset_authentication_token")?;
    let resp = gl.send(ep, req.json(&body)).await?;
    let resp = expect_status(ep, resp, StatusCode::CREATED).await?;
    Ok(decode::<CredentialsBody>(ep, resp).await?.into())
}

/// `DELETE /runners` with the runner's token (`204`).
pub(super) async fn unregister(gl: &HttpGitLab, token: &SecretString) -> Result<(), GitLabError> {
    let ep = endpoint::UNREGISTER_RUNNER;
    let body = json!({"token": token.expose_secret()});
    let resp = gl
        .send(ep, gl.request(ep, Method::DELETE, "runners")?.json(&body))
        .await?;
    expect_status(ep, resp, StatusCode::NO_CONTENT)
        .await
        .map(drop)
}

impl HttpGitLab {
    /// `POST /user/runners` with an access token (`PRIVATE-TOKEN`, `create_runner` scope):
    /// creates a runner of `runner_type` (`instance_type`, `group_type` with `group_id`,
    /// `project_type` with `project_id`) and answers `201 {id, token, token_expires_at}`.
    /// The runner API's replacement for registration tokens (the controller's use).
    pub async fn create_runner(
        &self,
        access_token: &SecretString,
        runner_type: &str,
        scope_id: Option<i64>,
        opts: &RegisterOptions,
    ) -> Result<RunnerCredentials, GitLabError> {
        let ep = endpoint::CREATE_RUNNER;
        let mut body = settings_body(opts);
        body["runner_type"] = json!(runner_type);
        match (runner_type, scope_id) {
            ("group_type", Some(id)) => body["group_id"] = json!(id),
            ("project_type", Some(id)) => body["project_id"] = json!(id),
            _ => {}
        }
        let req = self
            .request(ep, Method::POST, "user/runners")?
            .header("PRIVATE-TOKEN", access_token.expose_secret())
            .json(&body);
        let resp = self.send(ep, req).await?;
        let resp = expect_status(ep, resp, StatusCode::CREATED).await?;
        Ok(decode::<CredentialsBody>(ep, resp).await?.into())
    }

    /// `DELETE /runners/:id` with an access token (`204`): removes a runner whatever its own
    /// token's state.
    pub async fn delete_runner(
        &self,
        access_token: &SecretString,
        id: i64,
    ) -> Result<(), GitLabError> {
        let ep = endpoint::DELETE_RUNNER;
        let req = self
            .request(ep, Method::DELETE, &format!("runners/{id}"))?
            .header("PRIVATE-TOKEN", access_token.expose_secret());
        let resp = self.send(ep, req).await?;
        expect_status(ep, resp, StatusCode::NO_CONTENT)
            .await
            .map(drop)
    }

    /// `DELETE /runners/managers` `{token, system_id}`: removes only this machine's runner
    /// manager entry (`204`).
    pub async fn unregister_manager(&self, auth: &RunnerAuth) -> Result<(), GitLabError> {
        let ep = endpoint::UNREGISTER_RUNNER_MANAGER;
        let body = json!({"token": auth.token.expose_secret(), "system_id": auth.system_id});
        let resp = self
            .send(
                ep,
                self.request(ep, Method::DELETE, "runners/managers")?
                    .json(&body),
            )
            .await?;
        expect_status(ep, resp, StatusCode::NO_CONTENT)
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_zero_time_is_never() {
        let c: RunnerCredentials = CredentialsBody {
            id: Some(1),
            token: "t".into(),
            token_expires_at: Some("0001-01-01T00:00:00Z".into()),
        }
        .into();
        assert!(c.token_expires_at.is_none());
    }

    #[test]
    fn register_and_create_send_the_same_settings() {
        let opts = RegisterOptions {
            description: "d".into(),
            tag_list: vec!["a".into(), "b".into()],
            run_untagged: true,
            locked: false,
            paused: true,
            access_level: Some("ref_protected".into()),
            maximum_timeout: Some(600),
            maintenance_note: Some("n".into()),
        };
        let body = settings_body(&opts);
        assert_eq!(
            body,
            json!({
                "description": "d",
                "tag_list": "a,b",
                "run_untagged": true,
                "locked": false,
                "paused": true,
                "access_level": "ref_protected",
                "maximum_timeout": 600,
                "maintenance_note": "n",
            })
        );
        let bare = settings_body(&RegisterOptions::default());
        assert!(bare.get("access_level").is_none() && bare.get("maximum_timeout").is_none());
    }
}
