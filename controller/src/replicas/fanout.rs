//! Fan-out between replicas: a change made through one replica that sessions held by
//! another must see travels as a line in a `NOTIFY` payload on one channel, after a line
//! naming the sending replica ([`Origin`]). Every replica listens, and drops the kicks and
//! closes of its own payloads (made locally when sent). A notification lost (a listener
//! reconnecting) only delays: after a reconnect every local session looks again at once,
//! and every [`RECHECK`] anyway.
//!
//! Cost: one `NOTIFY` per batch of changes (lines joined up to [`MAX_PAYLOAD`] bytes), one
//! listening connection per replica, and every [`RECHECK`] one desired-state read per
//! connected agent.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::StoreError;

/// How often every local session looks at its desired state again, notifications or not.
pub const RECHECK: Duration = Duration::from_secs(15);

/// Bytes of one payload (PostgreSQL allows 8000).
pub const MAX_PAYLOAD: usize = 7000;

/// One change other replicas act on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// The agent's desired state may have changed: its session looks again.
    Kick(String),
    /// The agent was deleted: its session closes.
    Close(String),
    /// The leader should run a reconciliation pass (a generation applied, acks written).
    Reconcile,
    /// Every session looks again.
    All,
}

impl Change {
    /// The payload line.
    pub fn encode(&self) -> String {
        match self {
            Change::Kick(id) => format!("kick {id}"),
            Change::Close(id) => format!("close {id}"),
            Change::Reconcile => "reconcile".into(),
            Change::All => "all".into(),
        }
    }

    /// A payload line; `None` for one this build does not know (a newer replica's), or an
    /// agent id that is not one (ids are at most 64 characters without spaces).
    pub fn decode(line: &str) -> Option<Change> {
        let id = |s: &str| {
            (!s.is_empty() && s.len() <= 64 && !s.contains(char::is_whitespace))
                .then(|| s.to_string())
        };
        match line.split_once(' ') {
            Some(("kick", a)) => id(a).map(Change::Kick),
            Some(("close", a)) => id(a).map(Change::Close),
            None if line == "reconcile" => Some(Change::Reconcile),
            None if line == "all" => Some(Change::All),
            _ => None,
        }
    }
}

/// A replica's fan-out identity: the first line of every payload it sends, so it can tell
/// its own notifications (whose kicks and closes it already made) from others'. Replicas
/// of an earlier build ignore the line as unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin(String);

impl Origin {
    /// A new random identity.
    pub fn random() -> Origin {
        Origin(format!("from {}", hex::encode(rand::random::<[u8; 8]>())))
    }
}

/// Payloads for `changes` sent by `origin`: its line, then distinct lines, each payload at
/// most [`MAX_PAYLOAD`] bytes.
pub fn payloads(origin: &Origin, changes: impl IntoIterator<Item = Change>) -> Vec<String> {
    let distinct: BTreeSet<Change> = changes.into_iter().collect();
    let mut out: Vec<String> = Vec::new();
    let mut current = origin.0.clone();
    let mut lines = 0;
    for c in distinct {
        let line = c.encode();
        if lines > 0 && current.len() + 1 + line.len() > MAX_PAYLOAD {
            out.push(std::mem::replace(&mut current, origin.0.clone()));
            lines = 0;
        }
        current.push('\n');
        current.push_str(&line);
        lines += 1;
    }
    if lines > 0 {
        out.push(current);
    }
    out
}

/// The changes of one payload `origin` heard. Its own kicks and closes were made when it
/// sent them (and every local session looking again for each one of a rollout's kicks
/// doubles the leader's reads): only its own `reconcile` is kept, for a replica that came
/// to lead since it sent it.
pub fn heard(origin: &Origin, payload: &str) -> Vec<Change> {
    let mut lines = payload.lines().peekable();
    let own = lines.peek() == Some(&origin.0.as_str());
    lines
        .filter_map(|line| match Change::decode(line) {
            Some(c) => Some(c),
            None => {
                if !line.starts_with("from ") {
                    tracing::debug!(line, "ignoring an unknown fan-out line");
                }
                None
            }
        })
        .filter(|c| !own || *c == Change::Reconcile)
        .collect()
}

/// The sending seam (PostgreSQL `NOTIFY`).
pub trait Notifier: Send + Sync {
    /// Sends one payload to every listening replica.
    fn notify(&self, payload: &str) -> Result<(), StoreError>;
}

impl Notifier for crate::store::postgres::PgStore {
    fn notify(&self, payload: &str) -> Result<(), StoreError> {
        crate::store::postgres::PgStore::notify(self, payload)
    }
}

/// Queues changes for [`publish`]. Cheap to clone; never blocks.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Change>,
}

impl Publisher {
    /// A publisher and the queue [`publish`] drains.
    pub fn new() -> (Publisher, mpsc::UnboundedReceiver<Change>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Publisher { tx }, rx)
    }

    /// Queues `change` (dropped once the replica stops).
    pub fn send(&self, change: Change) {
        let _ = self.tx.send(change);
    }
}

/// Sends what is queued, batched, until `stop`. A failed send is logged and dropped: the
/// periodic re-check covers it.
pub async fn publish(
    notifier: Arc<dyn Notifier>,
    origin: Origin,
    mut queue: mpsc::UnboundedReceiver<Change>,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            c = queue.recv() => match c { Some(c) => c, None => return },
            _ = stop.cancelled() => return,
        };
        let mut batch = vec![first];
        while let Ok(c) = queue.try_recv() {
            batch.push(c);
        }
        let n = notifier.clone();
        let origin = origin.clone();
        let sent = tokio::task::spawn_blocking(move || {
            for p in payloads(&origin, batch) {
                n.notify(&p)?;
            }
            Ok::<(), StoreError>(())
        })
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "notify other replicas"),
            Err(e) => tracing::warn!(error = %e, "notify other replicas"),
        }
    }
}

/// The receiving seam: a connection that waits for payloads.
pub trait Listen: Send {
    /// The payloads arriving within `timeout`; an error when the connection is gone.
    fn wait(&mut self, timeout: Duration) -> Result<Vec<String>, StoreError>;
}

impl Listen for crate::store::postgres::Listener {
    fn wait(&mut self, timeout: Duration) -> Result<Vec<String>, StoreError> {
        crate::store::postgres::Listener::wait(self, timeout)
    }
}

/// Listens until `stop` (blocking: run it on the blocking pool), connecting with
/// `connect` and again after any failure (1 s apart). Each change goes to `out` (see
/// [`heard`] for what `origin` keeps of its own); after every (re)connection
/// [`Change::All`] does, since notifications sent meanwhile are lost.
pub fn listen<L: Listen>(
    connect: impl Fn() -> Result<L, StoreError>,
    origin: &Origin,
    out: mpsc::UnboundedSender<Change>,
    stop: CancellationToken,
) {
    const WAIT: Duration = Duration::from_millis(500);
    while !stop.is_cancelled() {
        let mut conn = match connect() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "listen for other replicas; retrying in 1 s");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if out.send(Change::All).is_err() {
            return;
        }
        while !stop.is_cancelled() {
            match conn.wait(WAIT) {
                Ok(payloads) => {
                    for c in payloads.iter().flat_map(|p| heard(origin, p)) {
                        if out.send(c).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listening connection lost; reconnecting");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_unknown_ones_are_ignored() {
        for c in [
            Change::Kick("a1".into()),
            Change::Close("a2".into()),
            Change::Reconcile,
            Change::All,
        ] {
            assert_eq!(Change::decode(&c.encode()), Some(c));
        }
        for bad in [
            "kick ",
            "kick a b",
            "drain a1",
            "",
            &format!("kick {}", "x".repeat(65)),
        ] {
            assert_eq!(Change::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn payloads_are_distinct_lines_within_the_limit() {
        let many: Vec<Change> = (0..2000)
            .map(|i| Change::Kick(format!("agent-{i:06}")))
            .chain([Change::Reconcile, Change::Reconcile])
            .collect();
        let origin = Origin::random();
        let p = payloads(&origin, many);
        assert!(p.len() > 1);
        assert!(p.iter().all(|x| x.len() <= MAX_PAYLOAD));
        assert!(p.iter().all(|x| x.starts_with(&origin.0)));
        let other = Origin::random();
        let changes: Vec<Change> = p.iter().flat_map(|x| heard(&other, x)).collect();
        assert_eq!(changes.len(), 2001, "duplicates dropped");
        assert!(payloads(&origin, []).is_empty());
    }

    /// A replica drops its own kicks and closes (made when sent) but keeps its own
    /// `reconcile`; everything from another replica, or from one of an earlier build
    /// (no origin line), is kept.
    #[test]
    fn own_kicks_are_not_heard_twice() {
        let (me, other) = (Origin::random(), Origin::random());
        let mine = payloads(
            &me,
            [
                Change::Kick("a1".into()),
                Change::Close("a2".into()),
                Change::Reconcile,
            ],
        );
        assert_eq!(heard(&me, &mine[0]), [Change::Reconcile]);
        assert_eq!(heard(&other, &mine[0]).len(), 3);
        assert_eq!(
            heard(&me, "kick a1\nreconcile"),
            [Change::Kick("a1".into()), Change::Reconcile]
        );
    }

    /// A listener that fails reconnects, and every connection starts with `All`.
    #[test]
    fn the_listener_reconnects_and_rechecks() {
        struct Script(Vec<Result<Vec<String>, StoreError>>);
        impl Listen for Script {
            fn wait(&mut self, _: Duration) -> Result<Vec<String>, StoreError> {
                self.0
                    .pop()
                    .unwrap_or(Err(StoreError::Interrupted("end".into())))
            }
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let connects = std::sync::atomic::AtomicUsize::new(0);
        let s = stop.clone();
        listen(
            || {
                let n = connects.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n == 1 {
                    s.cancel();
                }
                Ok(Script(vec![Ok(vec!["kick a1\nbogus\nreconcile".into()])]))
            },
            &Origin::random(),
            tx,
            stop,
        );
        let got: Vec<Change> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            got,
            [
                Change::All,
                Change::Kick("a1".into()),
                Change::Reconcile,
                Change::All,
            ]
        );
    }
}
