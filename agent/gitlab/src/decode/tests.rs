use proptest::prelude::*;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::*;
use crate::fixtures::{self, optional_paths, unset};

fn value(fixture: &str) -> Value {
    serde_json::from_str(fixture).expect("fixture is JSON")
}

fn job(body: &[u8]) -> JobResponse {
    match decode_job(body) {
        JobDecode::Job(j) => *j,
        other => panic!("not a runnable job: {other:?}"),
    }
}

fn unrunnable(body: &[u8]) -> UnrunnableJob {
    match decode_job(body) {
        JobDecode::Unrunnable(j) => *j,
        other => panic!("not unrunnable: {other:?}"),
    }
}

fn lost(body: &[u8]) -> String {
    match decode_job(body) {
        JobDecode::Lost { reason } => reason,
        other => panic!("not lost: {other:?}"),
    }
}

#[test]
fn every_fixture_decodes() {
    for (name, body) in fixtures::ALL {
        let j = match decode_job(body.as_bytes()) {
            JobDecode::Job(j) => j,
            other => panic!("{name}: {other:?}"),
        };
        assert!(j.id > 0 && !j.token.expose_secret().is_empty(), "{name}");
        assert!(!j.steps.is_empty(), "{name}");
    }
}

#[test]
fn full_fixture_fields() {
    let j = job(fixtures::FULL.as_bytes());
    assert_eq!(j.job_info.name, "spinach");
    assert_eq!(j.job_info.time_in_queue_seconds, 1.25);
    // Go reads `null` as 0.
    assert_eq!(
        job(fixtures::SPARSE.as_bytes())
            .job_info
            .time_in_queue_seconds,
        0.0
    );
    assert_eq!(j.git_info.depth, 20);
    assert_eq!(j.services.len(), 3);
    assert_eq!(j.services[0].alias, None);
    assert!(j.services[0].variables.is_empty());
    assert_eq!(j.services[1].command, vec!["sleep 30"]);
    assert_eq!(j.artifacts[1].artifact_format.as_deref(), Some("gzip"));
    assert!(j.dependencies[0].has_artifacts());
    assert!(!j.dependencies[1].has_artifacts());
    assert!(j.variables.iter().any(|v| v.file) && j.variables.iter().any(|v| v.raw));
}

/// Issue 14 point 2: `artifacts: paths: [out/]` alone made the whole job undecodable.
#[test]
fn artifacts_with_null_name_when_expire_in_decode() {
    let j = job(fixtures::ARTIFACTS_UNSET.as_bytes());
    let a = &j.artifacts[0];
    assert_eq!((a.name.as_str(), a.when.as_deref()), ("", None));
    assert_eq!(a.expire_in, None);
    assert_eq!(a.paths, vec!["out/"]);
    assert!(j.image.is_none());
}

#[test]
fn sparse_fixture_zero_values() {
    let j = job(fixtures::SPARSE.as_bytes());
    assert_eq!(j.runner_info.timeout, 0);
    assert_eq!(j.steps[0].timeout, 0);
    assert!(j.artifacts.is_empty());
    assert_eq!(j.cache[0].key, "");
    assert!(j.dependencies[0].token.expose_secret().is_empty());
    assert_eq!(j.git_info.before_sha, "");
}

fn with(fixture: &str, path: &[&str], v: Value) -> Vec<u8> {
    let mut root = value(fixture);
    let mut at = &mut root;
    for p in path {
        at = match p.parse::<usize>() {
            Ok(i) => &mut at[i],
            Err(_) => &mut at[*p],
        };
    }
    *at = v;
    serde_json::to_vec(&root).expect("json")
}

#[test]
fn hostile_payloads_are_reported_with_why() {
    let f = fixtures::ARTIFACTS_UNSET;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            with(f, &["runner_info", "timeout"], json!(-5)),
            "runner_info.timeout: -5 is negative",
        ),
        (
            with(f, &["variables", "0", "key"], json!(null)),
            "variables[0].key: empty",
        ),
        (
            with(f, &["variables", "0", "key"], json!(7)),
            "variables[0].key: invalid type: integer, expected a string",
        ),
        (
            with(f, &["steps", "0", "name"], json!(null)),
            "steps[0].name: empty",
        ),
        (
            with(f, &["steps", "0"], json!({"script": ["echo"]})),
            "steps[0].name: empty",
        ),
        (
            with(f, &["runner_info", "timeout"], json!(1.5)),
            "runner_info.timeout",
        ),
        (
            with(f, &["steps"], json!({"name": "script"})),
            "steps: invalid type: map",
        ),
    ];
    for (body, want) in cases {
        let u = unrunnable(&body);
        assert_eq!(u.id, 4202);
        assert_eq!(u.token.expose_secret(), "glcbt-64_fixture0art0token0000");
        assert!(u.reason.contains(want), "{} does not say {want}", u.reason);
        assert!(
            u.failure_reasons
                .iter()
                .any(|r| r == "runner_system_failure")
        );
    }
}

#[test]
fn broken_json_after_the_token_is_still_reported() {
    let u = unrunnable(br#"{"id": 9, "token": "tok-9", "steps": [ {"name": "#);
    assert_eq!((u.id, u.token.expose_secret()), (9, "tok-9"));
    assert!(u.reason.contains("does not decode"), "{}", u.reason);
    let u = unrunnable(b"{\"id\": 9, \"token\": \"tok-9\"} trailing <html>");
    assert!(u.reason.contains("trailing"), "{}", u.reason);
    // No failure_reasons read: empty (the uploader then sends the reason as is).
    assert!(u.failure_reasons.is_empty());
}

#[test]
fn without_id_and_token_the_job_is_lost() {
    assert!(lost(b"<html>502 Bad Gateway</html>").contains("no readable job id"));
    assert!(lost(b"").contains("no readable job id"));
    assert!(lost(br#"{"id": "9", "token": "t"}"#).contains("no readable job id"));
    assert!(lost(br#"{"id": 9, "steps": []}"#).contains("job 9: no readable token"));
    assert!(lost(br#"{"id": 9, "token": null}"#).contains("job 9"));
    assert!(
        lost(br#"{"id": 0, "token": "t"}"#)
            .contains("no readable job id: job payload cannot run: id: 0 is not a job id")
    );
    assert!(lost(br#"[1, 2]"#).contains("no readable job id"));
}

#[test]
fn values_stay_out_of_the_reason() {
    let body = with(
        fixtures::ARTIFACTS_UNSET,
        &["variables", "1", "masked"],
        json!("s3cr3t-value"),
    );
    let u = unrunnable(&body);
    assert!(!u.reason.contains("s3cr3t"), "{}", u.reason);
    assert!(
        u.reason
            .contains("variables[1].masked: invalid type: string, expected a boolean"),
        "{}",
        u.reason
    );
}

#[test]
fn every_optional_field_alone_absent_or_null_decodes() {
    for (name, body) in fixtures::ALL {
        let base = value(body);
        let paths = optional_paths(&base);
        assert!(paths.len() > 20, "{name}: {} paths", paths.len());
        for path in &paths {
            for remove in [false, true] {
                let mut v = base.clone();
                unset(&mut v, path, remove);
                let bytes = serde_json::to_vec(&v).expect("json");
                assert!(
                    matches!(decode_job(&bytes), JobDecode::Job(_)),
                    "{name}: {} {}",
                    path.join("."),
                    if remove { "absent" } else { "null" }
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any set of optional fields absent or `null` at once still decodes.
    #[test]
    fn any_optional_fields_absent_or_null_decode(
        fixture in 0..fixtures::ALL.len(),
        picks in proptest::collection::vec((any::<prop::sample::Index>(), any::<bool>()), 0..40),
    ) {
        let mut v = value(fixtures::ALL[fixture].1);
        let paths = optional_paths(&v);
        for (i, remove) in picks {
            unset(&mut v, &paths[i.index(paths.len())], remove);
        }
        let bytes = serde_json::to_vec(&v).expect("json");
        prop_assert!(matches!(decode_job(&bytes), JobDecode::Job(_)));
    }

    /// Arbitrary bytes never panic; anything with a readable id and token is reportable.
    #[test]
    fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_job(&body);
    }

    /// Any value in place of any field: decoded, refused with a reason, never a panic, and
    /// always reportable (the id and token are untouched).
    #[test]
    fn any_value_anywhere_is_run_or_reported(
        fixture in 0..fixtures::ALL.len(),
        at in any::<prop::sample::Index>(),
        replacement in prop_oneof![
            Just(json!(null)), Just(json!(-1)), Just(json!(1.5)), Just(json!("x")),
            Just(json!(true)), Just(json!([])), Just(json!({})), Just(json!([null])),
            Just(json!(i64::MIN)), Just(json!(u64::MAX)),
        ],
    ) {
        let mut v = value(fixtures::ALL[fixture].1);
        let paths = optional_paths(&v);
        let path = &paths[at.index(paths.len())];
        let mut cursor = &mut v;
        for p in path {
            cursor = match p.parse::<usize>() {
                Ok(i) if cursor.is_array() => &mut cursor[i],
                _ => &mut cursor[p.as_str()],
            };
        }
        *cursor = replacement;
        let bytes = serde_json::to_vec(&v).expect("json");
        match decode_job(&bytes) {
            JobDecode::Job(_) => {}
            JobDecode::Unrunnable(u) => prop_assert!(!u.reason.is_empty()),
            JobDecode::Lost { reason } => prop_assert!(false, "lost: {reason}"),
        }
    }
}
