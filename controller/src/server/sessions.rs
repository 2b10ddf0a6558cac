//! Live agent sessions: one cancel token per connected agent, so a revoked agent's stream
//! is closed at once and `drover agents` knows who is connected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct Entry {
    session: u64,
    cancel: CancellationToken,
    kick: Arc<Notify>,
}

/// Registry of open sessions by agent id.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<(u64, HashMap<String, Entry>)>>,
}

/// Handle of one registered session; unregisters itself on drop.
#[derive(Debug)]
pub struct SessionGuard {
    sessions: Sessions,
    agent_id: String,
    session: u64,
    /// Cancelled when the session must end (revoked, replaced, controller stopping).
    pub cancel: CancellationToken,
    /// Notified when the agent's desired state may have changed (a permit is kept, so no
    /// change is missed between two looks).
    pub kick: Arc<Notify>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut g = self.sessions.lock();
        if g.1.get(&self.agent_id).map(|e| e.session) == Some(self.session) {
            g.1.remove(&self.agent_id);
        }
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<String, Entry>)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session for `agent_id`, closing an older one of the same agent.
    /// `parent` is the server's shutdown token.
    pub fn register(&self, agent_id: &str, parent: &CancellationToken) -> SessionGuard {
        let cancel = parent.child_token();
        let kick = Arc::new(Notify::new());
        let mut g = self.lock();
        g.0 += 1;
        let session = g.0;
        if let Some(old) = g.1.insert(
            agent_id.to_string(),
            Entry {
                session,
                cancel: cancel.clone(),
                kick: kick.clone(),
            },
        ) {
            old.cancel.cancel();
        }
        SessionGuard {
            sessions: self.clone(),
            agent_id: agent_id.to_string(),
            session,
            cancel,
            kick,
        }
    }

    /// Tells the agent's session to look at its desired state again.
    pub fn kick(&self, agent_id: &str) {
        if let Some(e) = self.lock().1.get(agent_id) {
            e.kick.notify_one();
        }
    }

    /// Whether `agent_id` has an open session.
    pub fn is_connected(&self, agent_id: &str) -> bool {
        self.lock().1.contains_key(agent_id)
    }

    /// The agents with an open session now.
    pub fn connected(&self) -> std::collections::HashSet<String> {
        self.lock().1.keys().cloned().collect()
    }

    /// Closes the agent's session, if any.
    pub fn close(&self, agent_id: &str) {
        if let Some(e) = self.lock().1.remove(agent_id) {
            e.cancel.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_replace_close() {
        let s = Sessions::default();
        let root = CancellationToken::new();
        let a = s.register("a", &root);
        assert!(s.is_connected("a"));
        let b = s.register("a", &root);
        assert!(a.cancel.is_cancelled());
        drop(a);
        assert!(
            s.is_connected("a"),
            "old guard must not unregister the new session"
        );
        s.close("a");
        assert!(b.cancel.is_cancelled());
        assert!(!s.is_connected("a"));
    }
}
