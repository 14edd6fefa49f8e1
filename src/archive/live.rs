//! The archive's live end for `walrcv stream --serve`: the receiver
//! publishes the position it has just reported flushed to the server (durable
//! and verified) here, and the walsender (`crate::serve`) never serves past
//! it. Here, below both, so that the receiver does not depend on the server:
//! publishing is a watch-channel send that never waits for a client.

use tokio::sync::watch;

use crate::lsn::{Lsn, TimeLineId};

/// The publishing side, held by the receiver.
#[derive(Debug, Clone)]
pub struct LiveEnd {
    tx: watch::Sender<Option<(TimeLineId, Lsn)>>,
}

impl Default for LiveEnd {
    fn default() -> Self {
        LiveEnd {
            tx: watch::channel(None).0,
        }
    }
}

impl LiveEnd {
    /// Publishes the flushed and verified end of `timeline`. Within a
    /// timeline it never goes backwards (a reconnect restarting lower does
    /// not withdraw what was already durable); a new timeline replaces it.
    pub fn publish(&self, timeline: TimeLineId, flushed: Lsn) {
        self.tx.send_if_modified(|cur| match cur {
            Some((t, end)) if *t == timeline && *end >= flushed => false,
            Some((t, _)) if *t > timeline => false,
            _ => {
                *cur = Some((timeline, flushed));
                true
            }
        });
    }

    /// A receiver for the walsender.
    pub fn subscribe(&self) -> watch::Receiver<Option<(TimeLineId, Lsn)>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_within_a_timeline() {
        let live = LiveEnd::default();
        let rx = live.subscribe();
        assert_eq!(*rx.borrow(), None);
        live.publish(1, Lsn(100));
        live.publish(1, Lsn(50));
        assert_eq!(*rx.borrow(), Some((1, Lsn(100))));
        live.publish(2, Lsn(80));
        assert_eq!(*rx.borrow(), Some((2, Lsn(80))));
        live.publish(1, Lsn(500));
        assert_eq!(*rx.borrow(), Some((2, Lsn(80))));
    }
}
