//! Parsing of the response headers GitLab's runner API uses for flow control.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use time::OffsetDateTime;

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
/// `Retry-After: <seconds>` (or an HTTP date) on `429`/`503` and other retried answers.
pub const RETRY_AFTER: &str = "retry-after";
/// `RateLimit-ResetTime: Wed, 21 Oct 2015 07:28:00 GMT`: when GitLab's rate limit resets.
pub const RATELIMIT_RESET_TIME: &str = "ratelimit-resettime";

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

/// How long GitLab asks us to wait before retrying, as gitlab-runner reads it
/// (`network/retry_requester.go`, `calculateWaitTime`): `RateLimit-ResetTime` when it lies in
/// the future, else `Retry-After` when positive. `None` when neither says anything usable.
pub fn retry_wait(headers: &HeaderMap, now: OffsetDateTime) -> Option<Duration> {
    let reset = text(headers, RATELIMIT_RESET_TIME).and_then(|v| until_http_date(v, now));
    reset.or_else(|| parse_retry_after(text(headers, RETRY_AFTER)?, now))
}

/// `Retry-After`: whole seconds (what gitlab-runner reads) or an HTTP date (RFC 9110);
/// `None` when zero, past, or not understood.
pub fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    parse_interval(value).or_else(|| until_http_date(value, now))
}

/// Time from `now` until an IMF-fixdate (`Wed, 21 Oct 2015 07:28:00 GMT`, Go's
/// `time.RFC1123` as GitLab writes it); `None` when past or not a date.
pub fn until_http_date(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let at = OffsetDateTime::from(parse_http_date(value).ok()?);
    Duration::try_from(at - now).ok().filter(|d| !d.is_zero())
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only form servers may send
/// (`Date`, `Retry-After`, `RateLimit-ResetTime`).
pub fn parse_http_date(value: &str) -> Result<SystemTime, String> {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let dt = time::PrimitiveDateTime::parse(value.trim(), &fmt)
        .map_err(|e| format!("date header {value:?}: {e}"))?;
    Ok(dt.assume_utc().into())
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
    fn retry_after_values() {
        let now = OffsetDateTime::from_unix_timestamp(1_445_412_450).unwrap(); // 07:27:30 GMT
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("0", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            until_http_date("Wed, 21 Oct 2015 07:27:00 GMT", now),
            None,
            "past"
        );
        assert_eq!(until_http_date("2015-10-21T07:28:00Z", now), None);
    }

    #[test]
    fn reset_time_wins_over_retry_after() {
        let now = OffsetDateTime::from_unix_timestamp(1_445_412_450).unwrap();
        let mut h = HeaderMap::new();
        h.insert("Retry-After", HeaderValue::from_static("5"));
        assert_eq!(retry_wait(&h, now), Some(Duration::from_secs(5)));
        h.insert(
            "RateLimit-ResetTime",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_wait(&h, now), Some(Duration::from_secs(30)));
        // A reset time in the past or unreadable falls back to Retry-After.
        h.insert("RateLimit-ResetTime", HeaderValue::from_static("garbage"));
        assert_eq!(retry_wait(&h, now), Some(Duration::from_secs(5)));
        assert_eq!(retry_wait(&HeaderMap::new(), now), None);
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
