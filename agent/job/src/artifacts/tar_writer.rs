//! Writing the tar streams the executor hands to Docker's "put archive" (sources, restored
//! caches, dependency artifacts). Entries carry explicit modes, mtimes and owner, and
//! symlinks stay symlinks.

use std::io::{Read, Write};

/// Owner written into every entry (Docker applies it when extracting as root).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Owner {
    pub uid: u64,
    pub gid: u64,
}

/// A tar being written to `W`.
pub struct TarWriter<W: Write> {
    builder: tar::Builder<W>,
    owner: Owner,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W, owner: Owner) -> Self {
        TarWriter {
            builder: tar::Builder::new(out),
            owner,
        }
    }

    fn header(&self, kind: tar::EntryType, mode: u32, mtime: u64, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode & 0o7777);
        h.set_mtime(mtime);
        h.set_size(size);
        h.set_uid(self.owner.uid);
        h.set_gid(self.owner.gid);
        h
    }

    /// A directory entry.
    pub fn dir(&mut self, path: &str, mode: u32, mtime: u64) -> std::io::Result<()> {
        let mut h = self.header(tar::EntryType::Directory, mode, mtime, 0);
        let name = format!("{}/", path.trim_end_matches('/'));
        self.builder.append_data(&mut h, name, std::io::empty())
    }

    /// A regular file of `size` bytes read from `data`.
    pub fn file(
        &mut self,
        path: &str,
        mode: u32,
        mtime: u64,
        size: u64,
        data: impl Read,
    ) -> std::io::Result<()> {
        let mut h = self.header(tar::EntryType::Regular, mode, mtime, size);
        let exact = Exact {
            inner: data,
            remaining: size,
            declared: size,
        };
        self.builder.append_data(&mut h, path, exact)
    }

    /// A symbolic link to `target` (kept as written, never followed).
    pub fn symlink(&mut self, path: &str, target: &str, mtime: u64) -> std::io::Result<()> {
        let mut h = self.header(tar::EntryType::Symlink, 0o777, mtime, 0);
        self.builder.append_link(&mut h, path, target)
    }

    /// Writes the end-of-archive marker and returns the writer.
    pub fn finish(self) -> std::io::Result<W> {
        self.builder.into_inner()
    }
}

/// Yields exactly `declared` bytes of `inner` and fails otherwise: the tar crate writes what
/// it reads after a header of the declared size, so a source with fewer bytes would have the
/// following headers read as this file's content, and one with more would have its extra
/// bytes read as entries nobody checked.
struct Exact<R> {
    inner: R,
    remaining: u64,
    declared: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "content is longer than the {} bytes declared",
                        self.declared
                    ),
                )),
            };
        }
        let want = usize::try_from(self.remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "content is shorter than the {} bytes declared ({} missing)",
                    self.declared, self.remaining
                ),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_content_must_have_the_declared_size() {
        let write = |declared: u64, data: &[u8]| {
            let mut tar = TarWriter::new(Vec::new(), Owner::default());
            tar.file("f", 0o644, 0, declared, data)
        };
        write(3, b"abc").unwrap();
        let longer = write(3, b"abcdef").unwrap_err();
        assert!(
            longer.to_string().contains("longer than the 3 bytes"),
            "{longer}"
        );
        let shorter = write(6, b"abc").unwrap_err();
        assert!(
            shorter.to_string().contains("shorter than the 6 bytes"),
            "{shorter}"
        );
    }
}
