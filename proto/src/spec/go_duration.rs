//! Durations as gitlab-runner's `config.toml` holds them (a Go `time.Duration`): a string in
//! Go's `time.ParseDuration` syntax (`"90s"`, `"1h30m"`, `"1.5h"`, `"250ms"`) or an integer
//! count of nanoseconds (how a TOML integer decodes into a Go `time.Duration`).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration written the Go way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

/// Parses Go's `time.ParseDuration` syntax; negative durations are refused.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("duration {text:?}: {why} (e.g. \"90s\", \"1h30m\")");
    let mut rest = text.trim();
    if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    } else if rest.starts_with('-') {
        return Err(bad("must not be negative"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad("empty"));
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| bad("missing unit"))?;
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return Err(bad("expected a number"));
        }
        let value: f64 = num.parse().map_err(|_| bad("expected a number"))?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let nanos_per = match unit {
            "ns" => 1e0,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad(&format!("unknown unit {unit:?}"))),
        };
        total += value * nanos_per;
        rest = next;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(bad("too large"));
    }
    Ok(Duration::from_nanos(total as u64))
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Nanos(i64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => parse_go_duration(&s)
                .map(GoDuration)
                .map_err(serde::de::Error::custom),
            Raw::Nanos(n) => u64::try_from(n)
                .map(|n| GoDuration(Duration::from_nanos(n)))
                .map_err(|_| {
                    serde::de::Error::custom(format!("duration {n}: must not be negative"))
                }),
        }
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            s.serialize_str(&format!("{}s", d.as_secs()))
        } else {
            s.serialize_str(&format!("{}ns", d.as_nanos()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_syntax() {
        let p = |s| parse_go_duration(s).unwrap();
        assert_eq!(p("90s"), Duration::from_secs(90));
        assert_eq!(p("1h30m"), Duration::from_secs(5400));
        assert_eq!(p("1.5h"), Duration::from_secs(5400));
        assert_eq!(p("250ms"), Duration::from_millis(250));
        assert_eq!(p("2us"), Duration::from_micros(2));
        assert_eq!(p("0"), Duration::ZERO);
        assert_eq!(p("+5m"), Duration::from_secs(300));
        for bad in ["", "5", "-1s", "1d", "s", "1.2.3s", "abc"] {
            let e = parse_go_duration(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn toml_string_or_nanos_and_round_trip() {
        #[derive(Deserialize, Serialize)]
        struct T {
            d: GoDuration,
        }
        let t: T = toml::from_str("d = \"1h\"").unwrap();
        assert_eq!(t.d.0, Duration::from_secs(3600));
        let t: T = toml::from_str("d = 1500000000").unwrap();
        assert_eq!(t.d.0, Duration::from_millis(1500));
        let back: T = toml::from_str(&toml::to_string(&t).unwrap()).unwrap();
        assert_eq!(back.d, t.d);
        assert!(toml::from_str::<T>("d = -1").is_err());
    }

    #[test]
    fn runner_keys_parse_without_warnings_and_bad_values_name_the_line() {
        let base = "[[runners]]\nurl = \"http://g\"\ntoken = \"glrt-x\"\nexecutor = \"docker\"\n";
        let ok = crate::spec::parse_config(
            &format!("{base}request_concurrency = 4\nunhealthy_requests_limit = 5\nunhealthy_interval = \"1h30m\"\n"),
            "config.toml",
        )
        .unwrap();
        assert!(ok.warnings.is_empty(), "{:?}", ok.warnings);
        let r = &ok.config.runners[0];
        assert_eq!(r.request_concurrency, Some(4));
        assert_eq!(r.unhealthy_requests_limit, Some(5));
        assert_eq!(
            r.unhealthy_interval,
            Some(GoDuration(Duration::from_secs(5400)))
        );
        let err = crate::spec::parse_config(
            &format!("{base}unhealthy_interval = \"1d\"\n"),
            "config.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("config.toml:5") && err.contains("\"1d\""),
            "{err}"
        );
    }
}
