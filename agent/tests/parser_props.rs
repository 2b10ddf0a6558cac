//! Property tests for the agent's parsers of bytes that come from the network or a job
//! author: GitLab's flow-control headers, enrollment tokens, cache keys, a pushed desired
//! state (protobuf → domain), zips of caches and dependency artifacts, and the project tar.
//! Arbitrary input never panics; what is accepted keeps the parser's promise.

use std::io::{Cursor, Write};

use drover_agent::fleet::desired::{Raw, validate_all};
use drover_agent::fleet::messages::DesiredState;
use drover_agent::identity::token;
use drover_gitlab::headers;
use drover_job::artifacts::{Owner, ProjectTar, zip_to_tar};
use drover_job::cache::key::sanitize_key;
use drover_proto::v1;
use proptest::prelude::*;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// A valid zip of `files` (name, content), deflated.
fn zip_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, data) in files {
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o644);
        if w.start_file(name.as_str(), opts).is_ok() {
            w.write_all(data).unwrap();
        }
    }
    w.finish().unwrap().into_inner()
}

/// Every entry of a tar `zip_to_tar` wrote: it must parse to its end, and hold only
/// relative paths without `..`.
fn assert_tar_is_safe(tar: &[u8]) -> Result<(), TestCaseError> {
    let mut archive = tar::Archive::new(tar);
    for entry in archive
        .entries()
        .map_err(|e| TestCaseError::fail(e.to_string()))?
    {
        let mut entry = entry.map_err(|e| TestCaseError::fail(e.to_string()))?;
        let path = entry.path_bytes().into_owned();
        let path = String::from_utf8_lossy(&path);
        prop_assert!(!path.starts_with('/'), "{}", path);
        prop_assert!(!path.split('/').any(|s| s == ".."), "{}", path);
        std::io::copy(&mut entry, &mut std::io::sink())
            .map_err(|e| TestCaseError::fail(format!("{path}: {e}")))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn header_values_never_panic(value in proptest::collection::vec(any::<u8>(), 0..64)) {
        let text = String::from_utf8_lossy(&value);
        let _ = headers::parse_range_size(&text);
        let _ = headers::parse_interval(&text);
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            let mut map = HeaderMap::new();
            for name in [headers::JOB_STATUS, headers::TRACE_UPDATE_INTERVAL,
                         headers::LAST_UPDATE, headers::RANGE] {
                map.insert(HeaderName::from_static(name), v.clone());
            }
            let status = headers::job_status(&map);
            prop_assert!(status.is_none_or(|s| !s.is_empty() && s == s.trim()));
            let _ = headers::last_update(&map);
            prop_assert!(headers::trace_update_interval(&map).is_none_or(|d| d.as_secs() > 0));
            let _ = headers::range_size(&map);
        }
    }

    #[test]
    fn range_sizes_round_trip(size in any::<u64>(), total in proptest::option::of(any::<u64>()),
                              bytes_prefix in any::<bool>(), start in 1u64..) {
        let tail = total.map(|t| format!("/{t}")).unwrap_or_default();
        let prefix = if bytes_prefix { "bytes " } else { "" };
        prop_assert_eq!(headers::parse_range_size(&format!("{prefix}0-{size}{tail}")), Some(size));
        // Only a range from the start says how much GitLab holds.
        prop_assert_eq!(headers::parse_range_size(&format!("{start}-{size}")), None);
        prop_assert_eq!(
            headers::parse_interval(&format!(" {size} ")).map(|d| d.as_secs()),
            (size > 0).then_some(size)
        );
    }

    #[test]
    fn enrollment_tokens_never_panic(token in ".{0,200}") {
        if let Ok(pin) = token::parse(&token) {
            prop_assert!(!pin.id.is_empty());
            prop_assert!(!pin.ca_fingerprint.is_empty());
        }
    }

    /// A cache key becomes a file name: whatever a job asks for, an accepted key is one
    /// path component.
    #[test]
    fn cache_keys_are_single_file_names(key in "(\\PC|[./\\\\%]|%2[eEfF]|%5[cC]){0,40}") {
        if let Ok(k) = sanitize_key(&key) {
            prop_assert!(!k.is_empty() && k.len() <= 250);
            prop_assert!(!k.contains('/') && !k.contains('\\') && !k.contains('\0'));
            prop_assert!(k != "." && k != "..");
            let p = std::path::Path::new(&k);
            prop_assert_eq!(p.components().count(), 1, "{}", k);
            prop_assert!(matches!(p.components().next(), Some(std::path::Component::Normal(_))));
        }
    }

    /// Whatever bytes a controller pushes as a desired state, decoding and validating never
    /// panic, and an accepted runner has a name and a token.
    #[test]
    fn pushed_desired_states_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(state) = <v1::DesiredState as prost::Message>::decode(bytes.as_slice()) {
            let state = DesiredState::from(state);
            if let Ok(desired) = validate_all(state.generation, &state.runners) {
                for r in &desired.runners {
                    prop_assert!(!r.raw.name.trim().is_empty());
                    prop_assert!(!r.raw.runner_token.trim().is_empty());
                }
            }
        }
    }

    #[test]
    fn desired_assignments_never_panic(
        name in ".{0,12}",
        spec_json in prop_oneof![
            Just("{}".to_string()),
            Just(r#"{"url":"https://gitlab.example.com","executor":"docker","docker":{"image":"alpine"}}"#.to_string()),
            "\\{\"[a-z_]{1,12}\":(-?[0-9]{1,20}|\"[^\"]{0,10}\"|true|null|\\[\\])\\}",
            ".{0,40}",
        ],
        runner_token in ".{0,12}",
        expires in any::<i64>(),
        nanos in any::<i32>(),
    ) {
        let a = v1::RunnerAssignment {
            name,
            spec_json,
            runner_token,
            gitlab_runner_id: expires.wrapping_mul(31),
            token_expires_at: Some(prost_types::Timestamp { seconds: expires, nanos }),
            ..Default::default()
        };
        let _ = validate_all(1, &[Raw::from(a)]);
    }

    /// Arbitrary bytes as a zip (a restored cache, a dependency's artifacts) are refused
    /// with an error, never a panic.
    #[test]
    fn arbitrary_zip_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut out = Vec::new();
        if zip_to_tar(Cursor::new(bytes), &mut out, Owner::default()).is_ok() {
            assert_tar_is_safe(&out)?;
        }
    }

    /// A valid zip with some bytes changed (sizes, names, flags, content): either refused,
    /// or the tar it becomes parses to its end and stays inside the project directory.
    #[test]
    fn mutated_zips_are_refused_or_safe(
        files in proptest::collection::vec(
            ("[a-z./]{1,12}", proptest::collection::vec(any::<u8>(), 0..64)), 1..4),
        flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = zip_of(&files);
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let mut out = Vec::new();
        if zip_to_tar(Cursor::new(bytes), &mut out, Owner::default()).is_ok() {
            assert_tar_is_safe(&out)?;
        }
    }

    /// The project tar comes from Docker but its names and links from the job: arbitrary
    /// bytes are listed or refused, never a panic, and listed paths are relative.
    #[test]
    fn arbitrary_project_tars_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("project.tar");
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(entries) = ProjectTar::new(&path, "proj").entries() {
            for e in entries {
                prop_assert!(!e.path.is_empty());
            }
        }
    }
}
