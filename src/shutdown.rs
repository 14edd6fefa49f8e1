//! Stop requests: SIGINT and SIGTERM turn a `watch` channel to `true`
//! (set up once by the binary), and [`unless_stopped`] lets any wait give way
//! to them. Every wait of a session outside the CopyBoth stream (connection,
//! authentication, IDENTIFY_SYSTEM, slot and history commands, the result
//! after a timeline ends) goes through it; the receive loop watches the same
//! channel with [`stop_requested`] so that it can finish the current write
//! first.

use std::future::Future;

use tokio::sync::watch;

/// The receiving end of the stop channel: `true` once a stop was requested.
pub type Shutdown = watch::Receiver<bool>;

/// Completes once a stop is requested (at once if it already was); never
/// when the sender is gone without one.
pub async fn stop_requested(shutdown: &mut Shutdown) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Runs `work` unless a stop is requested first: then `work` is dropped
/// (closing whatever connection it held) and the answer is `None`. A stop
/// already requested wins before `work` is polled at all.
pub async fn unless_stopped<F: Future>(shutdown: &mut Shutdown, work: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        () = stop_requested(shutdown) => None,
        out = work => Some(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn work_completes_when_no_stop_comes() {
        let (_tx, mut rx) = watch::channel(false);
        assert_eq!(unless_stopped(&mut rx, async { 7 }).await, Some(7));
    }

    #[tokio::test]
    async fn a_stop_interrupts_a_wait_that_never_ends() {
        let (tx, mut rx) = watch::channel(false);
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx.send(true);
            tx
        });
        let out = tokio::time::timeout(
            Duration::from_secs(5),
            unless_stopped(&mut rx, std::future::pending::<()>()),
        )
        .await;
        assert_eq!(out, Ok(None));
        drop(stopper.await);
    }

    #[tokio::test]
    async fn a_stop_already_requested_wins_before_the_work_runs() {
        let (tx, mut rx) = watch::channel(false);
        tx.send(true).unwrap();
        // Seen once already: still a stop.
        assert_eq!(unless_stopped(&mut rx, async {}).await, None);
        assert_eq!(unless_stopped(&mut rx, async { 1 }).await, None);
    }

    #[tokio::test]
    async fn a_sender_gone_without_a_stop_is_no_stop() {
        let (tx, mut rx) = watch::channel(false);
        drop(tx);
        assert_eq!(unless_stopped(&mut rx, async { 3 }).await, Some(3));
        let waited = tokio::time::timeout(Duration::from_millis(50), stop_requested(&mut rx)).await;
        assert!(waited.is_err(), "never completes");
    }
}
