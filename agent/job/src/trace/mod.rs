//! The job trace: what the executor writes, masked, bounded, and shipped to GitLab.
//!
//! - [`TraceSink`] (this file): the handle the executor writes to. Masks secrets
//!   ([`mask::Masker`]), caps the size at `output_limit`, and keeps in memory only what
//!   GitLab has not accepted yet; accepted bytes move to an unnamed temporary file (as
//!   gitlab-runner keeps its trace buffer in one), so a 416 can still be answered from any
//!   offset while a 100 MB trace costs the agent only what is in flight. A running CRC-32
//!   covers the whole trace.
//! - [`upload::TraceUploader`]: ships increments with `PATCH /jobs/:id/trace`, detects
//!   cancellation, and sends the final `PUT /jobs/:id`.
//!
//! Invariant: nothing unmasked is ever stored past the masker's hold-back window, sent, or
//! logged.

pub mod mask;
pub mod upload;

use std::sync::{Arc, Mutex, MutexGuard};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Notify;

pub use upload::{FinalState, TraceUploader, UploadOptions, UploadReport};

/// gitlab-runner's default `output_limit`: 4096 KiB.
pub const DEFAULT_OUTPUT_LIMIT: usize = 4096 * 1024;

/// Handle the executor writes job output to. Cheap to clone.
///
/// Masking of secret values happens here, before bytes are buffered, so nothing unmasked
/// is ever kept or sent.
#[derive(Clone)]
pub struct TraceSink {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    notify: Notify,
}

struct State {
    masker: mask::Masker,
    /// The masked trace from byte `base` on (the whole trace is never more than `limit`
    /// plus the truncation notice).
    buf: Vec<u8>,
    /// Bytes before `buf`: GitLab accepted them, so they moved to `spool`.
    base: u64,
    /// The first `base` bytes (created at the first release).
    spool: Option<std::fs::File>,
    /// CRC-32 of the whole masked trace so far.
    crc: crc32fast::Hasher,
    limit: usize,
    truncated: bool,
    closed: bool,
}

impl TraceSink {
    /// A sink with no secrets and the default output limit.
    pub fn new() -> Self {
        Self::with_masks(std::iter::empty::<&SecretString>(), DEFAULT_OUTPUT_LIMIT)
    }

    /// A sink that replaces each of `secrets` with `[MASKED]` and keeps at most
    /// `output_limit` bytes.
    pub fn with_masks<'a, I>(secrets: I, output_limit: usize) -> Self
    where
        I: IntoIterator<Item = &'a SecretString>,
    {
        let masker = mask::Masker::new(
            secrets
                .into_iter()
                .map(|s| s.expose_secret().as_bytes().to_vec()),
        );
        TraceSink {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    masker,
                    buf: Vec::new(),
                    base: 0,
                    spool: None,
                    crc: crc32fast::Hasher::new(),
                    limit: output_limit,
                    truncated: false,
                    closed: false,
                }),
                notify: Notify::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (appends only).
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends raw output bytes. Ignored after [`TraceSink::close`].
    pub fn write(&self, bytes: &[u8]) {
        {
            let mut st = self.state();
            if st.closed || st.truncated {
                return;
            }
            let mut out = Vec::with_capacity(bytes.len());
            st.masker.push(bytes, &mut out);
            st.append(&out);
        }
        self.shared.notify.notify_waiters();
    }

    /// Appends a line of text followed by `\n`.
    pub fn write_line(&self, text: &str) {
        let mut v = Vec::with_capacity(text.len() + 1);
        v.extend_from_slice(text.as_bytes());
        v.push(b'\n');
        self.write(&v);
    }

    /// Opens a collapsible GitLab trace section (`section_start:<unix>:<name>\r\e[0K`)
    /// followed by `header` in bold green, as gitlab-runner prints it.
    pub fn section_start(&self, name: &str, header: &str) {
        let now = unix_now();
        self.write(
            format!("section_start:{now}:{name}\r\x1b[0K\x1b[0;32m\x1b[1m{header}\x1b[0;m\n")
                .as_bytes(),
        );
    }

    /// Closes the section opened with [`TraceSink::section_start`].
    pub fn section_end(&self, name: &str) {
        let now = unix_now();
        self.write(format!("section_end:{now}:{name}\r\x1b[0K\n").as_bytes());
    }

    /// Ends the trace: releases what the masker held back; later writes are ignored.
    pub fn close(&self) {
        {
            let mut st = self.state();
            if st.closed {
                return;
            }
            if !st.truncated {
                let mut out = Vec::new();
                st.masker.finish(&mut out);
                st.append(&out);
            }
            st.closed = true;
        }
        self.shared.notify.notify_waiters();
    }

    /// `true` once [`TraceSink::close`] ran.
    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// `true` once output went past the limit and was dropped.
    pub fn is_truncated(&self) -> bool {
        self.state().truncated
    }

    /// Bytes of masked trace written so far (released ones included).
    pub fn len(&self) -> u64 {
        self.state().total()
    }

    /// `true` when nothing is available to send yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// At most `max` bytes of masked trace starting at `offset` (fewer when the range
    /// starts in the spooled part and runs past it); empty at the end.
    pub fn read_at(&self, offset: u64, max: usize) -> Vec<u8> {
        let st = self.state();
        if offset < st.base {
            return st.read_spool(offset, max);
        }
        let start = usize::try_from(offset - st.base)
            .unwrap_or(usize::MAX)
            .min(st.buf.len());
        let end = start.saturating_add(max).min(st.buf.len());
        st.buf[start..end].to_vec()
    }

    /// Moves the bytes before `offset` out of memory (GitLab accepted them) into the spool
    /// file. If the file cannot be written they stay in memory: nothing is dropped.
    pub fn release_before(&self, offset: u64) {
        let mut st = self.state();
        let n = usize::try_from(offset.saturating_sub(st.base))
            .unwrap_or(usize::MAX)
            .min(st.buf.len());
        if n == 0 {
            return;
        }
        if let Err(e) = st.spool_front(n) {
            tracing::warn!(error = %e, "spool the accepted trace to a temporary file; keeping it in memory");
            return;
        }
        st.buf.drain(..n);
        st.base += n as u64;
        // Give back the memory a burst of output took once it has been shipped.
        let held = st.buf.len();
        if st.buf.capacity() > 4 * held + (1 << 20) {
            st.buf.shrink_to(2 * held);
        }
    }

    /// How many leading bytes live in the spool file instead of memory.
    pub fn released(&self) -> u64 {
        self.state().base
    }

    /// `crc32:<hex>` of the whole masked trace and its length, as `PUT /jobs/:id` wants.
    pub fn checksum(&self) -> (String, u64) {
        let st = self.state();
        (
            format!("crc32:{:08x}", st.crc.clone().finalize()),
            st.total(),
        )
    }

    /// The whole masked trace so far, spooled part included.
    pub fn snapshot(&self) -> Vec<u8> {
        let st = self.state();
        let mut out = st.read_spool(0, usize::try_from(st.base).unwrap_or(usize::MAX));
        out.extend_from_slice(&st.buf);
        out
    }

    /// Resolves once at least `len` bytes were written (never, once closed short of it).
    pub async fn wait_for_len(&self, len: u64) {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.state();
                if st.total() >= len {
                    return;
                }
            }
            notified.await;
        }
    }
}

impl State {
    fn total(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    fn append(&mut self, bytes: &[u8]) {
        let written = usize::try_from(self.total()).unwrap_or(usize::MAX);
        let room = self.limit.saturating_sub(written);
        if bytes.len() <= room {
            self.push(bytes);
            return;
        }
        self.push(&bytes[..room]);
        self.truncated = true;
        let notice = format!(
            "\n\x1b[0;33mJob's log exceeded limit of {} bytes.\nJob execution will \
             continue but no more output will be collected.\x1b[0;m\n",
            self.limit
        );
        self.push(notice.as_bytes());
    }

    fn push(&mut self, bytes: &[u8]) {
        self.crc.update(bytes);
        self.buf.extend_from_slice(bytes);
    }

    /// Appends the first `n` bytes of `buf` to the spool file.
    fn spool_front(&mut self, n: usize) -> std::io::Result<()> {
        use std::io::Write;
        if self.spool.is_none() {
            self.spool = Some(tempfile::tempfile()?);
        }
        let Some(file) = self.spool.as_mut() else {
            return Ok(());
        };
        file.write_all(&self.buf[..n])
    }

    /// Up to `max` spooled bytes from `offset` (which is below `base`).
    fn read_spool(&self, offset: u64, max: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let Some(file) = self.spool.as_ref() else {
            return Vec::new();
        };
        let len = usize::try_from(self.base.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(max);
        let mut out = vec![0; len];
        match file.read_exact_at(&mut out, offset) {
            Ok(()) => out,
            Err(e) => {
                tracing::error!(error = %e, offset, "read the spooled trace");
                Vec::new()
            }
        }
    }
}

impl Default for TraceSink {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for TraceSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state();
        f.debug_struct("TraceSink")
            .field("len", &st.total())
            .field("held", &st.buf.len())
            .field("truncated", &st.truncated)
            .field("closed", &st.closed)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    #[test]
    fn masks_across_writes_and_flushes_on_close() {
        let s = [secret("hunter22"), secret("glcbt-jobtoken")];
        let sink = TraceSink::with_masks(&s, DEFAULT_OUTPUT_LIMIT);
        sink.write(b"password: hunt");
        assert_eq!(sink.snapshot(), b"password: ");
        sink.write(b"er22\ntoken glcbt-");
        sink.write(b"jobtoken done\ntail hunt");
        sink.close();
        assert_eq!(
            String::from_utf8(sink.snapshot()).unwrap(),
            "password: [MASKED]\ntoken [MASKED] done\ntail hunt"
        );
        sink.write(b"after close");
        assert!(
            !String::from_utf8(sink.snapshot())
                .unwrap()
                .contains("after")
        );
    }

    #[test]
    fn output_limit_truncates_once_with_notice() {
        let sink = TraceSink::with_masks(&[], 10);
        sink.write(b"0123456");
        sink.write(b"789abcdef");
        sink.write(b"zzzz");
        sink.close();
        let s = String::from_utf8(sink.snapshot()).unwrap();
        assert!(s.starts_with("0123456789\n"), "{s:?}");
        assert_eq!(
            s.matches("Job's log exceeded limit of 10 bytes.").count(),
            1
        );
        assert!(!s.contains("abc") && !s.contains("zzzz"), "{s:?}");
        assert!(sink.is_truncated());
    }

    #[test]
    fn read_at_and_checksum() {
        let sink = TraceSink::new();
        sink.write(b"hello world");
        assert_eq!(sink.read_at(6, 100), b"world");
        assert_eq!(sink.read_at(6, 2), b"wo");
        assert_eq!(sink.read_at(50, 2), b"");
        let (sum, size) = sink.checksum();
        assert_eq!(size, 11);
        assert_eq!(
            sum,
            format!("crc32:{:08x}", crc32fast::hash(b"hello world"))
        );
    }

    #[test]
    fn released_bytes_are_spooled_and_still_readable() {
        let sink = TraceSink::with_masks(&[], 20);
        sink.write(b"hello world");
        sink.release_before(6);
        assert_eq!(sink.released(), 6);
        assert_eq!(sink.read_at(6, 100), b"world");
        // From the spool: stops where memory starts.
        assert_eq!(sink.read_at(2, 100), b"llo ");
        assert_eq!(sink.read_at(2, 2), b"ll");
        sink.release_before(3);
        assert_eq!(sink.released(), 6, "never moves back");
        assert_eq!(sink.snapshot(), b"hello world");
        // The limit and the checksum count the whole trace.
        sink.write(b"0123456789abc");
        assert!(sink.is_truncated());
        let (sum, size) = sink.checksum();
        let all = sink.snapshot();
        assert_eq!(size, all.len() as u64);
        assert!(all.starts_with(b"hello world012345678\n"), "{all:?}");
        assert_eq!(sum, format!("crc32:{:08x}", crc32fast::hash(&all)));
        sink.release_before(1000);
        assert_eq!(sink.released(), size);
        assert_eq!(sink.read_at(size, 10), b"");
        assert_eq!(sink.snapshot(), all);
    }

    #[tokio::test]
    async fn wait_for_len_wakes_on_enough_output() {
        let sink = TraceSink::new();
        sink.write(b"abc");
        sink.wait_for_len(3).await;
        let waiter = {
            let sink = sink.clone();
            tokio::spawn(async move { sink.wait_for_len(6).await })
        };
        tokio::task::yield_now().await;
        sink.write(b"de");
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        sink.write(b"f");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn sections_are_written() {
        let sink = TraceSink::new();
        sink.section_start("step_script", "Executing step");
        sink.section_end("step_script");
        let s = String::from_utf8(sink.snapshot()).unwrap();
        assert!(s.contains(":step_script\r\x1b[0K\x1b[0;32m\x1b[1mExecuting step"));
        assert!(s.contains("section_end:"));
    }
}
