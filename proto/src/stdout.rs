//! Command output on stdout, for both binaries' CLIs.
//!
//! `println!` panics when stdout is a pipe whose reader went away, as in
//! `drover agents -o json | grep -q healthy` under `set -o pipefail`: the reader exits at its
//! first match and the next write fails. These functions return that error instead, and
//! [`reader_went_away`] lets `main` end quietly with success, as Unix tools do.

use std::io::Write;

/// Writes `text` as it is and flushes.
pub fn write(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Writes `text` and a newline, and flushes.
pub fn line(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Whether `e` or one of its causes is a write to a pipe that nobody reads any more.
pub fn reader_went_away(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        cause = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_is_found_among_the_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("print agents")]
        struct Wrapper(#[source] std::io::Error);
        let broken = Wrapper(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(reader_went_away(&broken));
        let other = Wrapper(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(!reader_went_away(&other));
    }
}
