//! The reads a kicked session makes (its drain, target generation, assignments, image
//! deliveries, and the newest agent upgrade), gathered across sessions: the sessions kicked
//! together (a rollout's batch, a fan-out payload, the periodic re-check) are answered by
//! one store call ([`crate::store::BatchReadStore::session_reads`]) per batch of up to
//! [`MAX_BATCH`] agents, instead of five or six store calls per session. On PostgreSQL that
//! is five queries for the batch instead of a pooled connection and a round trip per read.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::store::upgrades::UpgradeRecord;
use crate::store::{self, SessionRead, Store, StoreError};

/// Agents read by one store call at most.
pub const MAX_BATCH: usize = 512;

/// What one session looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Look {
    /// The agent's own rows.
    pub read: SessionRead,
    /// The newest agent upgrade (the same for every session of the batch).
    pub upgrade: Option<UpgradeRecord>,
}

/// Why a session's look could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookError {
    /// The store failed for the whole batch.
    #[error("read the agent's desired state: {0}")]
    Store(Arc<StoreError>),
    /// The reader stopped (the controller is stopping).
    #[error("the session reader stopped")]
    Stopped,
}

type Waiter = (String, oneshot::Sender<Result<Look, LookError>>);

/// Queues reads for the batching loop. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionReads {
    tx: mpsc::UnboundedSender<Waiter>,
}

impl SessionReads {
    /// A reader over `store` and its loop, to be spawned; the loop ends with `stop` or
    /// when every reader is dropped.
    pub fn new(
        store: Arc<dyn Store>,
        stop: CancellationToken,
    ) -> (SessionReads, impl std::future::Future<Output = ()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (SessionReads { tx }, run(store, rx, stop))
    }

    /// What `agent_id`'s session reads now, batched with every other session asking
    /// meanwhile.
    pub async fn look(&self, agent_id: &str) -> Result<Look, LookError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((agent_id.to_string(), tx))
            .map_err(|_| LookError::Stopped)?;
        rx.await.map_err(|_| LookError::Stopped)?
    }
}

async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<Waiter>,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            w = rx.recv() => match w { Some(w) => w, None => return },
            _ = stop.cancelled() => return,
        };
        let mut waiters = vec![first];
        while waiters.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => waiters.push(w),
                Err(_) => break,
            }
        }
        let mut ids: Vec<String> = waiters.iter().map(|(id, _)| id.clone()).collect();
        ids.sort();
        ids.dedup();
        let read = store::blocking(&store, move |s| {
            let reads = s.session_reads(&ids)?;
            let upgrade = s.latest_upgrade()?;
            Ok((reads, upgrade))
        })
        .await;
        answer(waiters, read);
    }
}

fn answer(
    waiters: Vec<Waiter>,
    read: Result<(HashMap<String, SessionRead>, Option<UpgradeRecord>), StoreError>,
) {
    match read {
        Ok((reads, upgrade)) => {
            for (id, tx) in waiters {
                let _ = tx.send(Ok(Look {
                    read: reads.get(&id).cloned().unwrap_or_default(),
                    upgrade: upgrade.clone(),
                }));
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for (_, tx) in waiters {
                let _ = tx.send(Err(LookError::Store(e.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    /// Sessions asking together are answered by one batch each with its own rows; an
    /// unknown agent has no labels; a stopped reader answers `Stopped`.
    #[tokio::test]
    async fn concurrent_looks_share_a_batch_and_get_their_own_rows() {
        let mem = MemoryStore::new();
        crate::store::suite::enrolled(&mem, 2, &["a1", "a2"]);
        let store: Arc<dyn Store> = Arc::new(mem);
        let stop = CancellationToken::new();
        let (reads, run) = SessionReads::new(store, stop.clone());
        let looks =
            futures::future::join3(reads.look("a1"), reads.look("a2"), reads.look("nobody"));
        let ((a1, a2, nobody), ()) = tokio::join!(looks, async {
            tokio::select! {
                _ = run => {}
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => stop.cancel(),
            }
        });
        assert!(a1.unwrap().read.labels.is_some());
        assert!(a2.unwrap().read.labels.is_some());
        assert_eq!(nobody.unwrap().read, SessionRead::default());
        assert!(matches!(reads.look("a1").await, Err(LookError::Stopped)));
    }
}
