//! Job payloads exactly as GitLab sends them, from GitLab's own source: see
//! `fixtures/README.md` for the file each key and `null` comes from. Used by the decoder's
//! tests and by the fake GitLab in `tests/`, so neither can drift from GitLab's shape.

/// The "picks a job" payload of `jobs_request_post_spec.rb`: every key of every entity.
pub const FULL: &str = include_str!("fixtures/full.json");
/// `artifacts: paths: [out/]` alone: `name`, `when`, `expire_in` are `null`.
pub const ARTIFACTS_UNSET: &str = include_str!("fixtures/artifacts_unset.json");
/// Everything GitLab may send as `null`, sent as `null`.
pub const SPARSE: &str = include_str!("fixtures/sparse.json");

/// Every fixture, with its file name.
pub const ALL: &[(&str, &str)] = &[
    ("full.json", FULL),
    ("artifacts_unset.json", ARTIFACTS_UNSET),
    ("sparse.json", SPARSE),
];
