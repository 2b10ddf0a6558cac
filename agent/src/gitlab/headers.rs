//! Parsing of the response headers GitLab's runner API uses for flow control.

use std::time::Duration;

use reqwest::header::HeaderMap;

/// `Job-Status`: the job's state on GitLab (`running`, `canceled`, `canceling`, `failed`, ...).
pub const JOB_STATUS: &str = "job-status";
/// `X-GitLab-Trace-Update-Interval`: seconds until the next trace patch / final update retry.
pub const TRACE_UPDATE_INTERVAL: &str = "x-gitlab-trace-update-interval";
/// `X-GitLab-Last-Update`: the job queue cursor returned with `204` from `/jobs/request`.
pub const LAST_UPDATE: &str = "x-gitlab-last-update";
/// `Range: 0-<size>`: the trace bytes GitLab holds (on `202` and `416` of a trace patch).
pub const RANGE: &str = "range";
/// Job token header for trace/artifacts requests.
pub const JOB_TOKEN: &str = "job-token";
/// Runner token header gitlab-runner also sends on `/jobs/request`.
pub const RUNNER_TOKEN: &str = "runner-token";

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    (!v.is_empty()).then_some(v)
}

/// `Job-Status`, when present and not empty.
pub fn job_status(headers: &HeaderMap) -> Option<String> {
    text(headers, JOB_STATUS).map(str::to_owned)
}

/// `X-GitLab-Last-Update`, when present and not empty.
pub fn last_update(headers: &HeaderMap) -> Option<String> {
    text(headers, LAST_UPDATE).map(str::to_owned)
}

/// `X-GitLab-Trace-Update-Interval` as a duration; `None` when missing, not a number, or
/// not positive.
pub fn trace_update_interval(headers: &HeaderMap) -> Option<Duration> {
    parse_interval(text(headers, TRACE_UPDATE_INTERVAL)?)
}

/// Whole seconds > 0.
pub fn parse_interval(value: &str) -> Option<Duration> {
    let secs: u64 = value.trim().parse().ok()?;
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// The size GitLab holds from a `Range: 0-<size>` header (GitLab sends the size, not an
/// inclusive end: `0-0` is an empty trace, `0-11` is 11 bytes).
pub fn parse_range_size(value: &str) -> Option<u64> {
    let value = value.trim();
    let value = value
        .strip_prefix("bytes")
        .map(str::trim_start)
        .unwrap_or(value);
    let (start, end) = value.split_once('-')?;
    if start.trim() != "0" {
        return None;
    }
    let end = end.split('/').next()?.trim();
    end.parse().ok()
}

/// `Range` of a response, parsed with [`parse_range_size`].
pub fn range_size(headers: &HeaderMap) -> Option<u64> {
    parse_range_size(text(headers, RANGE)?)
}

/// `Content-Range` value for a patch of `len` (> 0) bytes at `offset`: inclusive bounds.
pub fn content_range(offset: u64, len: u64) -> String {
    format!("{}-{}", offset, offset + len.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn range_sizes() {
        assert_eq!(parse_range_size("0-11"), Some(11));
        assert_eq!(parse_range_size("0-0"), Some(0));
        assert_eq!(parse_range_size(" 0-1048576 "), Some(1_048_576));
        assert_eq!(parse_range_size("bytes 0-7"), Some(7));
        assert_eq!(parse_range_size("0-7/8"), Some(7));
        assert_eq!(parse_range_size("3-7"), None);
        assert_eq!(parse_range_size("0-"), None);
        assert_eq!(parse_range_size("0-x"), None);
        assert_eq!(parse_range_size("11"), None);
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_interval(" 60 "), Some(Duration::from_secs(60)));
        assert_eq!(parse_interval("0"), None);
        assert_eq!(parse_interval("-1"), None);
        assert_eq!(parse_interval("1.5"), None);
    }

    #[test]
    fn content_range_is_inclusive() {
        assert_eq!(content_range(0, 1), "0-0");
        assert_eq!(content_range(11, 10), "11-20");
    }

    #[test]
    fn header_lookup_is_case_insensitive_and_skips_empty() {
        let mut h = HeaderMap::new();
        h.insert("Job-Status", HeaderValue::from_static("canceled"));
        h.insert("X-GitLab-Last-Update", HeaderValue::from_static(""));
        h.insert(
            "X-GitLab-Trace-Update-Interval",
            HeaderValue::from_static("30"),
        );
        h.insert("Range", HeaderValue::from_static("0-42"));
        assert_eq!(job_status(&h).as_deref(), Some("canceled"));
        assert_eq!(last_update(&h), None);
        assert_eq!(trace_update_interval(&h), Some(Duration::from_secs(30)));
        assert_eq!(range_size(&h), Some(42));
    }
}
