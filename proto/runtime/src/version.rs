//! The version both binaries report (`--version`, the agent's facts and heartbeats,
//! `drover agents -o json`, `/metrics` build info): `DROVER_BUILD_VERSION` when it was set
//! at build time (checked by `build.rs` with [`crate::version_rule`]), else the workspace
//! version.
//!
//! The version lives in a stamp embedded in the binary ([`STAMP_PREFIX`], then the version
//! padded with NUL bytes to [`STAMP_VERSION_BYTES`]), read at run time through
//! `black_box`, so the compiler cannot fold it: rewriting the stamp of a built binary in
//! place ([`crate::binary_file::restamp`]) changes the version it reports, and the
//! controller reads the version of a binary file from it ([`crate::binary_file::inspect`]).

/// What precedes the version in a binary's stamp.
pub const STAMP_PREFIX: &[u8] = b"DROVER-VERSION-STAMP:";
/// Bytes after the prefix: the version (at most 64 characters of at most 4 bytes) padded
/// with NUL bytes.
pub const STAMP_VERSION_BYTES: usize = 4 * crate::version_rule::MAX_LEN;
/// The whole stamp.
pub const STAMP_LEN: usize = STAMP_PREFIX.len() + STAMP_VERSION_BYTES;

const BUILD_VERSION: &str = match option_env!("DROVER_CHECKED_BUILD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// The stamp of `version` (a version the rule accepts fits: at most 256 bytes).
pub const fn stamp(version: &str) -> [u8; STAMP_LEN] {
    let mut out = [0u8; STAMP_LEN];
    let mut i = 0;
    while i < STAMP_PREFIX.len() {
        out[i] = STAMP_PREFIX[i];
        i += 1;
    }
    let v = version.as_bytes();
    let mut j = 0;
    while j < v.len() && j < STAMP_VERSION_BYTES {
        out[STAMP_PREFIX.len() + j] = v[j];
        j += 1;
    }
    out
}

#[used]
static STAMP: [u8; STAMP_LEN] = stamp(BUILD_VERSION);

/// See the module doc. A stamp rewritten into something unreadable reads as the version
/// the binary was built with.
pub fn version() -> &'static str {
    let stamp: &'static [u8; STAMP_LEN] = std::hint::black_box(&STAMP);
    stamped_version(stamp).unwrap_or(BUILD_VERSION)
}

/// The version a stamp holds (the bytes after the prefix up to the first NUL), when it is
/// one the rule accepts and the rest is NUL padding.
pub fn stamped_version(stamp: &[u8]) -> Option<&str> {
    let rest = stamp
        .strip_prefix(STAMP_PREFIX)?
        .get(..STAMP_VERSION_BYTES)?;
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    if rest[end..].iter().any(|b| *b != 0) {
        return None;
    }
    let v = std::str::from_utf8(&rest[..end]).ok()?;
    crate::version_rule::check(v).ok().map(|()| v)
}

#[cfg(test)]
mod tests {
    use crate::version_rule::{MAX_LEN, check};

    #[test]
    fn the_version_is_one_the_rule_accepts() {
        assert_eq!(check(super::version()), Ok(()));
        if option_env!("DROVER_CHECKED_BUILD_VERSION").is_none() {
            assert_eq!(super::version(), env!("CARGO_PKG_VERSION"));
        }
    }

    #[test]
    fn a_stamp_reads_back_its_version_and_refuses_garbage() {
        let s = super::stamp("1.4.0-rc.1");
        assert_eq!(super::stamped_version(&s), Some("1.4.0-rc.1"));
        let longest = "é".repeat(MAX_LEN);
        assert_eq!(
            super::stamped_version(&super::stamp(&longest)),
            Some(longest.as_str())
        );
        let mut trailing = s;
        trailing[super::STAMP_LEN - 1] = b'x';
        assert_eq!(super::stamped_version(&trailing), None, "padding not NUL");
        assert_eq!(super::stamped_version(&super::stamp("")), None, "empty");
        assert_eq!(super::stamped_version(&super::stamp("1 0")), None);
        assert_eq!(super::stamped_version(&s[..40]), None, "cut short");
    }

    #[test]
    fn the_rule_refuses_whitespace_control_characters_and_length() {
        assert_eq!(check("1.4.0-rc.1+g1234abc"), Ok(()));
        assert_eq!(check(&"a".repeat(MAX_LEN)), Ok(()));
        let long = check(&"a".repeat(MAX_LEN + 1)).unwrap_err();
        assert!(long.contains("65 characters"), "{long}");
        assert!(check("1.0 beta").unwrap_err().contains("' '"));
        assert!(check("1.0\n").unwrap_err().contains("'\\n'"));
        assert!(check("1.0\u{1b}[31m").unwrap_err().contains("'\\u{1b}'"));
        assert!(check("1.0\u{a0}").is_err(), "no-break space is whitespace");
        assert!(check("").unwrap_err().contains("empty"));
    }
}
