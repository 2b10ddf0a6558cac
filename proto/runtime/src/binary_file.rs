//! What a Drover binary file is, read from its bytes without running it: the architecture
//! from the ELF header (`e_machine`) and the version from the stamp [`crate::version()`]
//! reads (see `version.rs`). The controller reads both from a file given to
//! `drover agent upgrade --binary`; the tests make a "version B" by rewriting the stamp of
//! a copy of a built binary ([`restamp`]).

use std::path::{Path, PathBuf};

use crate::version::{STAMP_LEN, STAMP_PREFIX, stamp, stamped_version};

/// Architectures a binary may be built for, named as `uname -m` (and the agent's facts).
pub const ARCHES: &[(u16, &str)] = &[(62, "x86_64"), (183, "aarch64")];

/// What [`inspect`] read from a binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryInfo {
    /// `x86_64` or `aarch64`.
    pub arch: &'static str,
    pub version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BinaryFileError {
    #[error("cannot read binary {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file} is not a 64-bit little-endian ELF executable")]
    NotElf { file: PathBuf },
    #[error("{file} is built for ELF machine {machine}; known: x86_64 (62), aarch64 (183)")]
    UnknownArch { file: PathBuf, machine: u16 },
    #[error("{file} holds no Drover version stamp (not a Drover binary?)")]
    NoStamp { file: PathBuf },
    #[error("{file} holds {count} Drover version stamps; exactly one is expected")]
    SeveralStamps { file: PathBuf, count: usize },
    #[error("version {version:?} cannot be stamped: {reason}")]
    BadVersion { version: String, reason: String },
}

/// Reads `file` whole and inspects it ([`inspect_bytes`]).
pub fn inspect(file: &Path) -> Result<(Vec<u8>, BinaryInfo), BinaryFileError> {
    let bytes = std::fs::read(file).map_err(|source| BinaryFileError::Read {
        file: file.to_path_buf(),
        source,
    })?;
    let info = inspect_bytes(file, &bytes)?;
    Ok((bytes, info))
}

/// The architecture and version of a binary's bytes; `file` only names it in errors.
pub fn inspect_bytes(file: &Path, bytes: &[u8]) -> Result<BinaryInfo, BinaryFileError> {
    let arch = elf_arch(file, bytes)?;
    let at = stamp_offset(file, bytes)?;
    let version = stamped_version(&bytes[at..at + STAMP_LEN])
        .unwrap_or_default()
        .to_string();
    Ok(BinaryInfo { arch, version })
}

/// Rewrites the version stamp of a binary in place (same length), so it reports `version`.
pub fn restamp(file: &Path, bytes: &mut [u8], version: &str) -> Result<(), BinaryFileError> {
    crate::version_rule::check(version).map_err(|reason| BinaryFileError::BadVersion {
        version: version.to_string(),
        reason,
    })?;
    let at = stamp_offset(file, bytes)?;
    bytes[at..at + STAMP_LEN].copy_from_slice(&stamp(version));
    Ok(())
}

/// The stamp of `version`, to append to a file (an ELF loader ignores trailing bytes).
pub fn stamp_bytes(version: &str) -> Result<Vec<u8>, BinaryFileError> {
    crate::version_rule::check(version).map_err(|reason| BinaryFileError::BadVersion {
        version: version.to_string(),
        reason,
    })?;
    Ok(stamp(version).to_vec())
}

fn elf_arch(file: &Path, bytes: &[u8]) -> Result<&'static str, BinaryFileError> {
    // e_ident: magic, EI_CLASS 2 (64-bit), EI_DATA 1 (little-endian); e_machine at 18.
    let header = bytes
        .get(..20)
        .filter(|h| h.starts_with(b"\x7fELF") && h[4] == 2 && h[5] == 1);
    let Some(h) = header else {
        return Err(BinaryFileError::NotElf {
            file: file.to_path_buf(),
        });
    };
    let machine = u16::from_le_bytes([h[18], h[19]]);
    ARCHES
        .iter()
        .find(|(m, _)| *m == machine)
        .map(|(_, name)| *name)
        .ok_or_else(|| BinaryFileError::UnknownArch {
            file: file.to_path_buf(),
            machine,
        })
}

/// The offset of the one valid stamp (prefix, a version the rule accepts, NUL padding).
/// The prefix alone may appear elsewhere (this very code's constant); only a valid stamp
/// counts.
fn stamp_offset(file: &Path, bytes: &[u8]) -> Result<usize, BinaryFileError> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(i) = find(&bytes[from..], STAMP_PREFIX) {
        let at = from + i;
        if bytes
            .get(at..at + STAMP_LEN)
            .and_then(stamped_version)
            .is_some()
        {
            found.push(at);
        }
        from = at + 1;
    }
    match found.as_slice() {
        [] => Err(BinaryFileError::NoStamp {
            file: file.to_path_buf(),
        }),
        [one] => Ok(*one),
        many => Err(BinaryFileError::SeveralStamps {
            file: file.to_path_buf(),
            count: many.len(),
        }),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut from = 0;
    while let Some(i) = haystack[from..].iter().position(|b| *b == first) {
        let at = from + i;
        if haystack[at..].starts_with(needle) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h
    }

    #[test]
    fn reads_arch_and_version_and_restamps_in_place() {
        let mut bytes = elf(62);
        bytes.extend_from_slice(&stamp_bytes("1.0.0").unwrap());
        bytes.extend_from_slice(STAMP_PREFIX); // a stray prefix is not a stamp
        bytes.extend_from_slice(b"tail");
        let f = Path::new("agent-a");
        let info = inspect_bytes(f, &bytes).unwrap();
        assert_eq!(
            info,
            BinaryInfo {
                arch: "x86_64",
                version: "1.0.0".into()
            }
        );
        let len = bytes.len();
        restamp(f, &mut bytes, "2.0.0-b").unwrap();
        assert_eq!(bytes.len(), len);
        assert_eq!(inspect_bytes(f, &bytes).unwrap().version, "2.0.0-b");
        let mut arm = elf(183);
        arm.extend_from_slice(&stamp_bytes("3").unwrap());
        assert_eq!(inspect_bytes(f, &arm).unwrap().arch, "aarch64");
        assert!(restamp(f, &mut bytes, "bad version").is_err());
    }

    #[test]
    fn refuses_non_elf_unknown_arch_and_missing_or_repeated_stamps_naming_the_file() {
        let f = Path::new("/tmp/some-file");
        let e = inspect_bytes(f, b"#!/bin/sh\n").unwrap_err();
        assert!(matches!(e, BinaryFileError::NotElf { .. }));
        assert!(e.to_string().contains("/tmp/some-file"), "{e}");
        let mut riscv = elf(243);
        riscv.extend_from_slice(&stamp_bytes("1").unwrap());
        let e = inspect_bytes(f, &riscv).unwrap_err();
        assert!(
            e.to_string().contains("243") && e.to_string().contains("some-file"),
            "{e}"
        );
        let e = inspect_bytes(f, &elf(62)).unwrap_err();
        assert!(matches!(e, BinaryFileError::NoStamp { .. }), "{e}");
        assert!(e.to_string().contains("some-file"));
        let mut two = elf(62);
        two.extend_from_slice(&stamp_bytes("1").unwrap());
        two.extend_from_slice(&stamp_bytes("2").unwrap());
        let e = inspect_bytes(f, &two).unwrap_err();
        assert!(
            matches!(e, BinaryFileError::SeveralStamps { count: 2, .. }),
            "{e}"
        );
    }

    #[test]
    fn this_test_binary_carries_exactly_one_stamp_of_its_version() {
        let exe = std::env::current_exe().unwrap();
        let (_, info) = inspect(&exe).unwrap();
        assert_eq!(info.version, crate::version());
        assert_eq!(info.arch, std::env::consts::ARCH);
    }
}
