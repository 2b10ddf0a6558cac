//! Sizes in bytes, the one grammar for `[runners.docker]` `memory`, `memory_swap` and
//! `memory_reservation` (Docker's `RAMInBytes`) and for the controller's size flags
//! (`drover serve --min-disk-free 2GiB`).
//!
//! Grammar, case-insensitive, surrounding whitespace ignored:
//! `DIGITS [ "." DIGITS ] [ " " ] [ UNIT ]`, UNIT one of `b`, or `k`, `m`, `g`, `t`, `p`
//! alone or followed by `b` or `ib`. Units are binary (`1k` = `1kb` = `1KiB` = 1024 bytes),
//! as in Docker; a fraction of a byte is dropped. At most `i64::MAX` bytes (Docker's
//! `int64`).

/// Why a size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// No number where one was expected.
    #[error("expected a size like 512m, 2g or 500MiB")]
    Malformed,
    /// A unit outside the grammar.
    #[error("unknown unit {0:?} (use b, k, m, g, t or p, optionally followed by b or ib)")]
    UnknownUnit(String),
    /// Above [`MAX_SIZE`].
    #[error("too large (at most 8EiB)")]
    TooLarge,
}

/// The largest size accepted: Docker's sizes are signed 64-bit.
pub const MAX_SIZE: u64 = i64::MAX as u64;

/// Parses a size (see the module doc) into bytes, at most [`MAX_SIZE`].
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let number_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(number_end);
    let well_formed = match number.split_once('.') {
        None => !number.is_empty(),
        Some((whole, frac)) => {
            !whole.is_empty() && !frac.is_empty() && frac.bytes().all(|b| b.is_ascii_digit())
        }
    };
    if !well_formed {
        return Err(SizeError::Malformed);
    }
    let n: f64 = number.parse().map_err(|_| SizeError::Malformed)?;
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let power = match unit.as_str() {
        "" | "b" => 0,
        u => {
            let prefix = u
                .strip_suffix("ib")
                .or_else(|| u.strip_suffix('b'))
                .unwrap_or(u);
            match prefix {
                "k" => 1,
                "m" => 2,
                "g" => 3,
                "t" => 4,
                "p" => 5,
                _ => return Err(SizeError::UnknownUnit(unit.clone())),
            }
        }
    };
    let bytes = n * 1024f64.powi(power);
    // `as` would saturate silently: anything from 2^63 on is refused instead.
    if !bytes.is_finite() || bytes >= MAX_SIZE as f64 {
        return Err(SizeError::TooLarge);
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_and_flag_spellings() {
        for (s, n) in [
            ("100", 100),
            ("100b", 100),
            ("100B", 100),
            ("1k", 1024),
            ("1K", 1024),
            ("100kb", 100 << 10),
            ("64mb", 64 << 20),
            ("512m", 512 << 20),
            ("500MiB", 500 << 20),
            ("2g", 2 << 30),
            ("2GiB", 2 << 30),
            ("2 GiB", 2 << 30),
            (" 1.5g ", 3 << 29),
            ("1.5G", 3 << 29),
            ("1t", 1 << 40),
            ("1p", 1 << 50),
            ("1.5", 1),
            ("0", 0),
        ] {
            assert_eq!(parse_size(s), Ok(n), "{s}");
        }
    }

    #[test]
    fn refusals() {
        for s in ["", "m", "lots", "-5m", ".5g", "5.g", "1.2.3g", "+1"] {
            assert_eq!(parse_size(s), Err(SizeError::Malformed), "{s:?}");
        }
        for s in ["12x", "2 parsecs", "100ib", "100bb", "1mi", "2  GiB", "1e3"] {
            assert!(
                matches!(parse_size(s), Err(SizeError::UnknownUnit(_))),
                "{s:?}: {:?}",
                parse_size(s)
            );
        }
        assert_eq!(parse_size("16777216TiB"), Err(SizeError::TooLarge));
        assert_eq!(parse_size("8192p"), Err(SizeError::TooLarge));
        assert_eq!(parse_size(&"9".repeat(400)), Err(SizeError::TooLarge));
        assert_eq!(parse_size("8191p"), Ok(8191 << 50));
    }
}
