//! The rule for `DROVER_BUILD_VERSION`, shared by the build script (which refuses a bad
//! value at build time) and the crate (its tests). No dependency: `build.rs` includes it.

/// The longest build version accepted.
pub const MAX_LEN: usize = 64;

/// `Ok` when `value` may be the version both binaries report: 1 to 64 characters, none of
/// them whitespace or a control character. The error names the value and what is wrong.
pub fn check(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("DROVER_BUILD_VERSION is empty".to_string());
    }
    let chars = value.chars().count();
    if chars > MAX_LEN {
        return Err(format!(
            "DROVER_BUILD_VERSION {value:?} is {chars} characters long; at most {MAX_LEN}"
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "DROVER_BUILD_VERSION {value:?} holds {c:?}; no whitespace or control characters"
        ));
    }
    Ok(())
}
