//! Live agent sessions: one cancel token per connected agent, so a revoked agent's stream
//! is closed at once and `drover agents` knows who is connected.
//!
//! With several replicas an agent's session may be on another replica: [`Sessions::kick`]
//! and [`Sessions::close`] act here and publish the change to every replica
//! (`replicas::fanout`), whose listener calls the `_local` forms.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::replicas::fanout::{Change, Publisher};

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
    publisher: Arc<std::sync::OnceLock<Publisher>>,
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

    /// Publishes kicks and closes to the other replicas from now on.
    pub fn publish_to(&self, publisher: Publisher) {
        let _ = self.publisher.set(publisher);
    }

    fn publish(&self, change: Change) {
        if let Some(p) = self.publisher.get() {
            p.send(change);
        }
    }

    /// Tells the agent's session, on whichever replica, to look at its desired state again.
    pub fn kick(&self, agent_id: &str) {
        self.kick_local(agent_id);
        self.publish(Change::Kick(agent_id.to_string()));
    }

    /// Tells the agent's session to look again, if it is on this replica.
    pub fn kick_local(&self, agent_id: &str) {
        if let Some(e) = self.lock().1.get(agent_id) {
            e.kick.notify_one();
        }
    }

    /// Tells every session on this replica to look again.
    pub fn kick_all_local(&self) {
        for e in self.lock().1.values() {
            e.kick.notify_one();
        }
    }

    /// Closes every session on this replica (it lost its database); returns how many.
    pub fn close_all_local(&self) -> usize {
        let closed: Vec<Entry> = self.lock().1.drain().map(|(_, e)| e).collect();
        for e in &closed {
            e.cancel.cancel();
        }
        closed.len()
    }

    /// Whether `agent_id` has an open session.
    pub fn is_connected(&self, agent_id: &str) -> bool {
        self.lock().1.contains_key(agent_id)
    }

    /// The agents with an open session now.
    pub fn connected(&self) -> std::collections::HashSet<String> {
        self.lock().1.keys().cloned().collect()
    }

    /// Closes the agent's session, on whichever replica.
    pub fn close(&self, agent_id: &str) {
        self.close_local(agent_id);
        self.publish(Change::Close(agent_id.to_string()));
    }

    /// Closes the agent's session, if it is on this replica.
    pub fn close_local(&self, agent_id: &str) {
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

    #[test]
    fn kicks_and_closes_reach_other_replicas_and_a_lost_database_closes_all() {
        let s = Sessions::default();
        let (publisher, mut queue) = Publisher::new();
        s.publish_to(publisher);
        let root = CancellationToken::new();
        let a = s.register("a", &root);
        s.kick("a");
        s.kick("elsewhere");
        s.close("gone");
        let sent: Vec<Change> = std::iter::from_fn(|| queue.try_recv().ok()).collect();
        assert_eq!(
            sent,
            [
                Change::Kick("a".into()),
                Change::Kick("elsewhere".into()),
                Change::Close("gone".into())
            ]
        );
        s.kick_local("b");
        assert!(queue.try_recv().is_err(), "local forms publish nothing");
        let b = s.register("b", &root);
        assert_eq!(s.close_all_local(), 2);
        assert!(a.cancel.is_cancelled() && b.cancel.is_cancelled());
        assert!(s.connected().is_empty());
    }
}
