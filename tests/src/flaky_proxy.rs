//! A TCP proxy for link faults where a network namespace is awkward (no root): it forwards
//! every connection to one address and, on command, stalls (holds every byte in both
//! directions, connections stay open), resets every open connection (RST, as a middlebox
//! dropping its state does), refuses new connections (accepted, then reset) or loses
//! answers (a request reaches the server, and the connection is reset when the answer
//! comes back, so the client cannot know whether it was done).
//!
//! Used by `tests/tests/link_faults.rs`; the proxy task ends when the [`FlakyProxy`] drops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// See the module doc.
pub struct FlakyProxy {
    addr: SocketAddr,
    ctl: Arc<Ctl>,
    task: tokio::task::JoinHandle<()>,
}

struct Ctl {
    /// `true` while stalled.
    stalled: watch::Sender<bool>,
    /// Bumped to reset every open connection.
    resets: watch::Sender<u64>,
    refuse: AtomicBool,
    lose_answers: AtomicBool,
    /// Connections accepted (refused ones included).
    accepted: AtomicU64,
}

impl FlakyProxy {
    /// Listens on `127.0.0.1:0` and forwards to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<FlakyProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let ctl = Arc::new(Ctl {
            stalled: watch::channel(false).0,
            resets: watch::channel(0).0,
            refuse: AtomicBool::new(false),
            lose_answers: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
        });
        let accept_ctl = ctl.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                accept_ctl.accepted.fetch_add(1, Ordering::Relaxed);
                if accept_ctl.refuse.load(Ordering::Relaxed) {
                    let _ = client.set_zero_linger();
                    continue;
                }
                tokio::spawn(forward(client, target, accept_ctl.clone()));
            }
        });
        Ok(FlakyProxy { addr, ctl, task })
    }

    /// The address clients dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stalls (`true`) or resumes (`false`) every connection, both directions.
    pub fn stall(&self, on: bool) {
        self.ctl.stalled.send_replace(on);
    }

    /// Resets every open connection.
    pub fn reset_all(&self) {
        self.ctl.resets.send_modify(|n| *n += 1);
    }

    /// Refuses (`true`) new connections with a reset, or accepts them again.
    pub fn refuse(&self, on: bool) {
        self.ctl.refuse.store(on, Ordering::Relaxed);
    }

    /// Loses (`true`) every answer from the server: the connection is reset instead.
    pub fn lose_answers(&self, on: bool) {
        self.ctl.lose_answers.store(on, Ordering::Relaxed);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.ctl.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.reset_all();
    }
}

/// Pumps bytes both ways until both sides closed, a reset, or an error.
async fn forward(mut client: TcpStream, target: SocketAddr, ctl: Arc<Ctl>) {
    let mut resets = ctl.resets.subscribe();
    let mut stalled = ctl.stalled.subscribe();
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        let _ = client.set_zero_linger();
        return;
    };
    let (mut a, mut b) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut client_done, mut upstream_done) = (false, false);
    while !(client_done && upstream_done) {
        if *stalled.borrow_and_update() {
            tokio::select! {
                _ = resets.changed() => break,
                r = stalled.changed() => if r.is_err() { break },
            }
            continue;
        }
        tokio::select! {
            _ = resets.changed() => break,
            r = stalled.changed() => if r.is_err() { break },
            r = client.read(&mut a), if !client_done => match r {
                Ok(0) => {
                    client_done = true;
                    let _ = upstream.shutdown().await;
                }
                Ok(n) => if upstream.write_all(&a[..n]).await.is_err() { break },
                Err(_) => break,
            },
            r = upstream.read(&mut b), if !upstream_done => match r {
                Ok(0) => {
                    upstream_done = true;
                    let _ = client.shutdown().await;
                }
                Ok(_) if ctl.lose_answers.load(Ordering::Relaxed) => break,
                Ok(n) => if client.write_all(&b[..n]).await.is_err() { break },
                Err(_) => break,
            },
        }
    }
    if !(client_done && upstream_done) {
        // Reset or error: both ends see a reset, not a clean close.
        let _ = client.set_zero_linger();
        let _ = upstream.set_zero_linger();
    }
}
