//! What the controller sends must fit one gRPC message ([`MAX_MESSAGE_BYTES`], the limit
//! every agent and CLI decodes with): a runner set is refused before it is stored when the
//! desired state of an agent running all of it would not fit, and `ListRunners` is paged.

use drover_proto::MAX_MESSAGE_BYTES;
use drover_proto::spec::{RunnerConfig, limits};
use drover_proto::v1;
use prost::Message;
use secrecy::ExposeSecret;

use crate::fleet::spec;

/// Room left for the envelope around a desired state or a page of runners.
const ENVELOPE: usize = 64 * 1024;

/// Most bytes of a desired state or a page of `ListRunners`.
pub const BUDGET: usize = MAX_MESSAGE_BYTES - ENVELOPE;

/// Length assumed for a runner token the controller will obtain from GitLab (`glrt-` tokens
/// are about 30 characters; this leaves room for longer formats).
const REGISTERED_TOKEN_LEN: usize = 256;

/// Refuses a runner set that is too large for a fleet: more than [`limits::MAX_RUNNERS`]
/// runners (a merge by `runner import` can add up past a file's own bound), or a desired
/// state over [`BUDGET`] for an agent whose labels match every selector.
pub fn check_runner_set(runners: &[RunnerConfig]) -> Result<(), String> {
    if runners.len() > limits::MAX_RUNNERS {
        return Err(format!(
            "runners: {} runners; at most {} are accepted",
            runners.len(),
            limits::MAX_RUNNERS
        ));
    }
    let len = worst_desired_state(runners).encoded_len();
    if len > BUDGET {
        return Err(format!(
            "runners: an agent that matches every selector would receive a desired state of \
             {len} bytes, over the {BUDGET} bytes that fit one message to an agent; use fewer \
             or smaller runners"
        ));
    }
    Ok(())
}

/// The largest desired state `runners` can make: every runner on one agent, with the
/// longest values the controller may fill in.
fn worst_desired_state(runners: &[RunnerConfig]) -> v1::DesiredState {
    v1::DesiredState {
        generation: u64::MAX,
        runners: runners
            .iter()
            .map(|r| {
                let [
                    cache_s3_access_key,
                    cache_s3_secret_key,
                    cache_s3_session_token,
                ] = spec::cache_secrets(r).exposed();
                v1::RunnerAssignment {
                    cache_s3_access_key,
                    cache_s3_secret_key,
                    cache_s3_session_token,
                    name: r.name.clone(),
                    spec_json: spec::agent_spec_json(r),
                    runner_token: match &r.token {
                        Some(t) => t.expose_secret().to_string(),
                        None => "x".repeat(REGISTERED_TOKEN_LEN),
                    },
                    gitlab_runner_id: i64::MAX,
                    token_expires_at: Some(prost_types::Timestamp {
                        seconds: i64::MAX,
                        nanos: i32::MAX,
                    }),
                }
            })
            .collect(),
    }
}

/// Splits `infos` into the page starting at `start`: as many as fit [`BUDGET`] (at least
/// one, so a listing always advances). Returns the page and the index after it.
pub fn page(
    generation: u64,
    infos: &[v1::RunnerInfo],
    start: usize,
) -> (Vec<v1::RunnerInfo>, usize) {
    let mut out = Vec::new();
    let mut len = v1::ListRunnersResponse {
        generation,
        runners: Vec::new(),
        next_page_token: page_token(u64::MAX, usize::MAX),
    }
    .encoded_len();
    for info in infos.iter().skip(start) {
        // A repeated field costs its tag and length prefix besides the message.
        let n = info.encoded_len();
        let cost = 1 + prost::length_delimiter_len(n) + n;
        if !out.is_empty() && len + cost > BUDGET {
            break;
        }
        len += cost;
        out.push(info.clone());
    }
    let next = start + out.len();
    (out, next)
}

/// The token of the page starting at `index` of `generation`.
pub fn page_token(generation: u64, index: usize) -> String {
    format!("{generation}:{index}")
}

/// Reads a page token; `None` when malformed.
pub fn parse_page_token(token: &str) -> Option<(u64, usize)> {
    let (g, i) = token.split_once(':')?;
    Some((g.parse().ok()?, i.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// `n` runners with nine `image_len`-byte images each, parsed 100 to a file as
    /// successive `runner import`s would (each file within its own bounds).
    fn spec_of(n: usize, image_len: usize) -> Vec<RunnerConfig> {
        let one = |i: usize| {
            format!(
                "[[runners]]\nname = \"r{i}\"\nurl = \"https://gitlab.example.com\"\n\
                 registration_token = \"GR1348941x\"\nexecutor = \"docker\"\n\
                 [runners.docker]\nimage = \"{}\"\nallowed_images = [{}]\n",
                "a".repeat(image_len),
                vec![format!("\"{}\"", "b".repeat(image_len)); 8].join(",")
            )
        };
        let mut out = Vec::new();
        for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
            let text: String = chunk.iter().map(|i| one(*i)).collect();
            out.extend(
                spec::parse_spec(&text, "r.toml", &BTreeMap::new())
                    .unwrap()
                    .runners,
            );
        }
        out
    }

    #[test]
    fn a_set_whose_desired_state_cannot_reach_an_agent_is_refused() {
        // 1000 runners, imported 100 at a time (each file within its bounds), with nine
        // 400-byte images each: about 5 MB as the JSON an agent running them all receives.
        let ok = spec_of(100, 400);
        check_runner_set(&ok).unwrap();
        let big = spec_of(limits::MAX_RUNNERS, 400);
        let e = check_runner_set(&big).unwrap_err();
        assert!(
            e.contains("over the 4128768 bytes that fit one message"),
            "{e}"
        );
        assert!(worst_desired_state(&big).encoded_len() > MAX_MESSAGE_BYTES);
    }

    #[test]
    fn too_many_runners_after_a_merge_are_refused() {
        let mut set = spec_of(limits::MAX_RUNNERS, 1);
        check_runner_set(&set).unwrap();
        set.push(set[0].clone());
        assert_eq!(
            check_runner_set(&set).unwrap_err(),
            "runners: 1001 runners; at most 1000 are accepted"
        );
    }

    #[test]
    fn pages_fit_the_budget_and_cover_everything() {
        let info = |i: usize| v1::RunnerInfo {
            name: format!("r{i}"),
            spec_json: "x".repeat(100_000),
            ..Default::default()
        };
        let infos: Vec<_> = (0..100).map(info).collect();
        let mut start = 0;
        let mut seen = 0;
        while start < infos.len() {
            let (p, next) = page(7, &infos, start);
            let resp = v1::ListRunnersResponse {
                generation: 7,
                runners: p.clone(),
                next_page_token: page_token(7, next),
            };
            assert!(resp.encoded_len() <= BUDGET, "{}", resp.encoded_len());
            assert!(!p.is_empty());
            seen += p.len();
            start = next;
        }
        assert_eq!(seen, 100);
        assert_eq!(parse_page_token(&page_token(7, 40)), Some((7, 40)));
        assert_eq!(parse_page_token("x"), None);
    }
}
