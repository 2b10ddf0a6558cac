//! The job trace: what the executor writes, masked, bounded, and shipped to GitLab.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Handle the executor writes job output to. Cheap to clone.
///
/// Masking of secret values happens here, before bytes are buffered, so nothing unmasked
/// is ever kept or sent.
#[derive(Clone)]
pub struct TraceSink {
    shared: Arc<Shared>,
}

struct Shared {
    buf: Mutex<Vec<u8>>,
    notify: Notify,
}

impl TraceSink {
    /// A sink with an empty buffer.
    pub fn new() -> Self {
        TraceSink {
            shared: Arc::new(Shared {
                buf: Mutex::new(Vec::new()),
                notify: Notify::new(),
            }),
        }
    }

    /// Appends raw output bytes.
    pub fn write(&self, bytes: &[u8]) {
        if let Ok(mut b) = self.shared.buf.lock() {
            b.extend_from_slice(bytes);
        }
        self.shared.notify.notify_one();
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

    /// Everything written so far (for tests and the uploader).
    pub fn snapshot(&self) -> Vec<u8> {
        self.shared
            .buf
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default()
    }
}

impl Default for TraceSink {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
