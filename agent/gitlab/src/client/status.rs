//! What a GitLab answer becomes: the one mapping of HTTP statuses to [`GitLabError`], and
//! the read of a JSON body.
//!
//! From GitLab's request specs (`spec/requests/api/ci/runner/`): `403` →
//! [`GitLabError::Forbidden`] (with the `Job-Status` header on job endpoints), `404` →
//! `NotFound`, `409` → `Conflict`, `413` → `TooLarge`, a retried status (`429`, `503`, ...)
//! with `RateLimit-ResetTime` or `Retry-After` → `RetryLater` carrying the wait, other
//! unexpected statuses → `Status` with a short body excerpt; a body that does not parse →
//! `Decode`. What each caller does with them: `STATUS.md`.

use reqwest::StatusCode;

use crate::api::{GitLabError, retried_status};
use crate::headers;

/// Longest body excerpt kept in [`GitLabError::Status`].
const BODY_EXCERPT: usize = 200;

/// Maps a non-success status to a [`GitLabError`].
pub(super) async fn status_error(ep: &'static str, resp: reqwest::Response) -> GitLabError {
    let status = resp.status();
    match status {
        StatusCode::FORBIDDEN => GitLabError::Forbidden {
            endpoint: ep,
            job_status: headers::job_status(resp.headers()),
        },
        StatusCode::NOT_FOUND => GitLabError::NotFound { endpoint: ep },
        StatusCode::CONFLICT => GitLabError::Conflict { endpoint: ep },
        StatusCode::PAYLOAD_TOO_LARGE => GitLabError::TooLarge { endpoint: ep },
        _ => {
            let code = status.as_u16();
            let after = retried_status(code)
                .then(|| headers::retry_wait(resp.headers(), time::OffsetDateTime::now_utc()))
                .flatten();
            let body = excerpt(&resp.text().await.unwrap_or_default());
            match after {
                Some(after) => GitLabError::RetryLater {
                    endpoint: ep,
                    status: code,
                    after,
                    body,
                },
                None => GitLabError::Status {
                    endpoint: ep,
                    status: code,
                    body,
                },
            }
        }
    }
}

fn excerpt(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(BODY_EXCERPT) {
        Some((i, _)) => format!("{}...", &body[..i]),
        None => body.to_owned(),
    }
}

/// `resp` when its status is `want`, else the [`GitLabError`] of its status.
pub(super) async fn expect_status(
    ep: &'static str,
    resp: reqwest::Response,
    want: StatusCode,
) -> Result<reqwest::Response, GitLabError> {
    if resp.status() == want {
        Ok(resp)
    } else {
        Err(status_error(ep, resp).await)
    }
}

/// The JSON body of `resp` as a `T`: a body cut short is `Transport`, one that does not
/// parse `Decode`.
pub(super) async fn decode<T: serde::de::DeserializeOwned>(
    ep: &'static str,
    resp: reqwest::Response,
) -> Result<T, GitLabError> {
    let bytes = resp.bytes().await.map_err(|e| GitLabError::Transport {
        endpoint: ep,
        source: Box::new(e.without_url()),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| GitLabError::Decode {
        endpoint: ep,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_is_bounded_on_char_boundaries() {
        let long = "é".repeat(500);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), BODY_EXCERPT + 3);
        assert_eq!(excerpt("  short  "), "short");
    }
}
