//! Reading a `201` answer of `POST /jobs/request`: every job the agent took is either run or
//! reported failed, never left running in GitLab.
//!
//! 1. The head (`id`, `token`, `features.failure_reasons`) is read first, field by field,
//!    keeping what was read even when the body turns out broken further on (truncated,
//!    wrong types, not JSON after the token): with `id` and `token` the job can be reported.
//! 2. The whole payload is read with Go's rules ([`super::types`]).
//! 3. What Go would read but no job can run with is refused ([`check`]).
//!
//! gitlab-runner drops a job whose payload does not decode (`network/gitlab.go`
//! `RequestJob` logs "Checking for jobs... failed" and returns no job), so GitLab shows it
//! running until its timeout; here it is reported `failed` with `runner_system_failure`
//! and a trace line that says why. Only a body without a readable `id` and `token` is lost.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserializer;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::types::JobResponse;

/// What a `201` body holds.
#[derive(Debug)]
pub enum JobDecode {
    /// A job to run.
    Job(Box<JobResponse>),
    /// A job taken that cannot run: report it failed with `reason`.
    Unrunnable(Box<UnrunnableJob>),
    /// Not even `id` and `token` could be read: the job cannot be reported.
    Lost { reason: String },
}

/// A job the agent took but cannot run.
#[derive(Debug, Clone)]
pub struct UnrunnableJob {
    pub id: i64,
    pub token: SecretString,
    /// `features.failure_reasons` when it could be read (empty otherwise: send as is).
    pub failure_reasons: Vec<String>,
    /// Why, for the trace and the log (names the field; never a value).
    pub reason: String,
}

/// Reads a `201` body of `POST /jobs/request`.
pub fn decode_job(body: &[u8]) -> JobDecode {
    let head = read_head(body);
    let reason = match full(body) {
        Ok(job) => match check(&job) {
            Ok(()) => return JobDecode::Job(Box::new(job)),
            Err(e) => format!("job payload cannot run: {e}"),
        },
        Err(e) => format!("job payload does not decode: {e}"),
    };
    match (head.id.filter(|id| *id > 0), head.token) {
        (Some(id), Some(token)) => JobDecode::Unrunnable(Box::new(UnrunnableJob {
            id,
            token: SecretString::from(token),
            failure_reasons: head.failure_reasons,
            reason,
        })),
        (id, _) => JobDecode::Lost {
            reason: match id {
                Some(id) => format!("job {id}: no readable token: {reason}"),
                None => format!("no readable job id: {reason}"),
            },
        },
    }
}

/// The payload with Go's rules; errors name the field path (`variables[2].key: ...`).
fn full(body: &[u8]) -> Result<JobResponse, String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let job: JobResponse = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = scrub(&e.into_inner().to_string());
        if path == "." || path.is_empty() {
            inner
        } else {
            format!("{path}: {inner}")
        }
    })?;
    de.end().map_err(|e| e.to_string())?;
    Ok(job)
}

/// serde's message without the offending value (`invalid type: string "s3cr3t", expected
/// i64` becomes `invalid type: string, expected i64`): a misplaced secret stays out of
/// traces and logs.
fn scrub(msg: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(prefix)
            && let Some(at) = rest.find(", expected")
        {
            let kind = rest[..at].split(['`', '"']).next().unwrap_or("").trim();
            return format!("{prefix}{kind}{}", &rest[at..]);
        }
    }
    msg.to_string()
}

/// Refuses what decodes but cannot run. Each refusal names the field.
pub fn check(job: &JobResponse) -> Result<(), String> {
    if job.id <= 0 {
        return Err(format!("id: {} is not a job id", job.id));
    }
    if job.token.expose_secret().is_empty() {
        return Err("token: empty".to_string());
    }
    if job.runner_info.timeout < 0 {
        return Err(format!(
            "runner_info.timeout: {} is negative",
            job.runner_info.timeout
        ));
    }
    if let Some(i) = job.variables.iter().position(|v| v.key.is_empty()) {
        return Err(format!("variables[{i}].key: empty"));
    }
    if let Some(i) = job.steps.iter().position(|s| s.name.is_empty()) {
        return Err(format!("steps[{i}].name: empty"));
    }
    Ok(())
}

/// The fields read before anything else.
#[derive(Default)]
struct Head {
    id: Option<i64>,
    token: Option<String>,
    failure_reasons: Vec<String>,
}

fn read_head(body: &[u8]) -> Head {
    let mut head = Head::default();
    let mut de = serde_json::Deserializer::from_slice(body);
    // Errors are expected here (the body may be broken past the token): what was read
    // before the error is kept in `head`.
    let _ = HeadSeed(&mut head).deserialize(&mut de);
    head
}

struct HeadSeed<'a>(&'a mut Head);

impl<'de> DeserializeSeed<'de> for HeadSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for HeadSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a job object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "id" => self.0.id = map.next_value::<Option<i64>>()?,
                "token" => {
                    self.0.token = map
                        .next_value::<Option<String>>()?
                        .filter(|t| !t.is_empty())
                }
                "features" => {
                    if let Ok(Some(f)) = map.next_value::<Option<serde_json::Value>>()
                        && let Some(list) = f.get("failure_reasons").and_then(|l| l.as_array())
                    {
                        self.0.failure_reasons = list
                            .iter()
                            .filter_map(|r| r.as_str().map(str::to_string))
                            .collect();
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;
