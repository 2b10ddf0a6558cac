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
        self.builder.append_data(&mut h, path, data)
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
