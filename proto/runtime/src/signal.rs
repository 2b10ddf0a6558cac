//! Waiting for the signals that ask a process to stop.

use tokio::signal::unix::{SignalKind, signal};

/// Returns when the process gets SIGINT or SIGTERM. The handlers are installed on the first
/// poll; a handler that cannot be installed leaves that signal with its default action
/// (which ends the process).
pub async fn terminated() {
    let wait = |kind: SignalKind| async move {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = wait(SignalKind::interrupt()) => {}
        _ = wait(SignalKind::terminate()) => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// SIGTERM sent to this process ends the wait. The handler is in place once `terminated`
    /// was polled, so the signal is raised only after the first poll.
    #[tokio::test]
    async fn sigterm_ends_the_wait() {
        let mut wait = Box::pin(super::terminated());
        assert!(futures_poll_once(wait.as_mut()).await.is_none());
        let pid = std::process::id();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("SIGTERM ends the wait");
    }

    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
