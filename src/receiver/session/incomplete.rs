//! The one way a live stream can hold a synchronous primary forever without
//! any timeout firing: a record whose length field was corrupted in transit
//! (a flipped bit in `xl_tot_len`) claims more WAL than the server has. The
//! verifier can refuse it only once its CRC or the next page header arrives,
//! but with every commit waiting for walrcv the primary writes no more WAL,
//! while it stays alive and keeps asking for replies: both wait.
//!
//! The server never stops sending inside a record except at a page boundary:
//! a primary's flush position is the end of a record or a page boundary (a
//! commit flushes to its record's end, the WAL writer backs off to the last
//! full page), and a cascading standby's converges to its upstream's. So a
//! record still incomplete where the server says its WAL ends (its latest
//! `walEnd` is no further than what was received), off a page boundary, and
//! so for [`PATIENCE`] with nothing more arriving, is a record whose length
//! is wrong. The stream then ends with
//! [`crate::receiver::ReceiverError::IncompleteRecord`], nothing of the
//! record acknowledged, and the next session streams it again from its
//! start. At a page boundary the rule never fires: an idle server with an open
//! transaction legitimately stops there, inside a record, for as long as it
//! likes.

use std::time::{Duration, Instant};

use crate::lsn::Lsn;

/// How long a record may stay incomplete where the server's WAL ends.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A record that cannot be completed with what the server has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stuck {
    /// Where the incomplete record begins (the verified end).
    pub record: Lsn,
    /// What was received of it: where the server's WAL ends.
    pub received: Lsn,
    pub waited: Duration,
}

/// Watches the record in progress against the server's end of WAL.
#[derive(Debug, Clone)]
pub struct IncompleteRecordWatch {
    block_size: u64,
    /// The furthest `walEnd` the server sent in this stream.
    server_end: Option<Lsn>,
    /// Since when the stream has been stuck, and where.
    since: Option<(Lsn, Instant)>,
}

impl IncompleteRecordWatch {
    pub fn new(block_size: u64) -> IncompleteRecordWatch {
        IncompleteRecordWatch {
            block_size: block_size.max(1),
            server_end: None,
            since: None,
        }
    }

    /// The server said its WAL ends at `lsn` (a keepalive or XLogData).
    pub fn server_has(&mut self, lsn: Lsn) {
        self.server_end = Some(self.server_end.map_or(lsn, |end| end.max(lsn)));
    }

    /// Checks at `now`, with `received` the next byte expected and `record`
    /// the start of the record the verifier is inside (`None` between
    /// records). `Some` once the record has been stuck for [`PATIENCE`].
    pub fn check(&mut self, now: Instant, received: Lsn, record: Option<Lsn>) -> Option<Stuck> {
        let stuck = record.is_some()
            && self.server_end.is_some_and(|end| end <= received)
            && received.0 % self.block_size != 0;
        let Some(record) = record.filter(|_| stuck) else {
            self.since = None;
            return None;
        };
        let since = match self.since {
            Some((at, since)) if at == received => since,
            _ => {
                self.since = Some((received, now));
                now
            }
        };
        let waited = now.saturating_duration_since(since);
        (waited >= PATIENCE).then_some(Stuck {
            record,
            received,
            waited,
        })
    }

    /// When [`Self::check`] should run again, while a record is stuck.
    pub fn deadline(&self) -> Option<Instant> {
        self.since.map(|(_, since)| since + PATIENCE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLK: u64 = 8192;
    const RECORD: Lsn = Lsn(0x915220);
    const RECEIVED: Lsn = Lsn(0x915a48);

    fn watch_with_server_end(end: Lsn) -> IncompleteRecordWatch {
        let mut w = IncompleteRecordWatch::new(BLK);
        w.server_has(end);
        w
    }

    #[test]
    fn a_record_incomplete_where_the_server_ends_is_stuck_after_the_patience() {
        let t0 = Instant::now();
        let mut w = watch_with_server_end(RECEIVED);
        assert_eq!(w.check(t0, RECEIVED, Some(RECORD)), None);
        assert_eq!(w.deadline(), Some(t0 + PATIENCE));
        assert_eq!(w.check(t0 + PATIENCE / 2, RECEIVED, Some(RECORD)), None);
        assert_eq!(
            w.check(t0 + PATIENCE, RECEIVED, Some(RECORD)),
            Some(Stuck {
                record: RECORD,
                received: RECEIVED,
                waited: PATIENCE
            })
        );
    }

    #[test]
    fn more_wal_arriving_starts_the_wait_again() {
        let t0 = Instant::now();
        let mut w = watch_with_server_end(RECEIVED);
        w.check(t0, RECEIVED, Some(RECORD));
        let later = Lsn(RECEIVED.0 + 0x40);
        w.server_has(later);
        assert_eq!(w.check(t0 + PATIENCE, later, Some(RECORD)), None);
        assert_eq!(w.deadline(), Some(t0 + 2 * PATIENCE));
    }

    #[test]
    fn never_while_the_server_has_more_than_was_received() {
        let t0 = Instant::now();
        let mut w = watch_with_server_end(Lsn(RECEIVED.0 + 8));
        assert_eq!(w.check(t0, RECEIVED, Some(RECORD)), None);
        assert_eq!(w.check(t0 + 2 * PATIENCE, RECEIVED, Some(RECORD)), None);
        assert_eq!(w.deadline(), None);
    }

    #[test]
    fn never_at_a_page_boundary_where_an_idle_server_may_stop_inside_a_record() {
        let t0 = Instant::now();
        let boundary = Lsn(0x916000);
        let mut w = watch_with_server_end(boundary);
        w.check(t0, boundary, Some(RECORD));
        assert_eq!(w.check(t0 + 10 * PATIENCE, boundary, Some(RECORD)), None);
    }

    #[test]
    fn never_between_records_nor_before_the_server_said_where_it_ends() {
        let t0 = Instant::now();
        let mut w = watch_with_server_end(RECEIVED);
        w.check(t0, RECEIVED, None);
        assert_eq!(w.check(t0 + 2 * PATIENCE, RECEIVED, None), None);
        let mut unknown = IncompleteRecordWatch::new(BLK);
        unknown.check(t0, RECEIVED, Some(RECORD));
        assert_eq!(
            unknown.check(t0 + 2 * PATIENCE, RECEIVED, Some(RECORD)),
            None
        );
    }

    #[test]
    fn a_completed_record_clears_the_wait() {
        let t0 = Instant::now();
        let mut w = watch_with_server_end(RECEIVED);
        w.check(t0, RECEIVED, Some(RECORD));
        w.check(t0 + PATIENCE / 2, RECEIVED, None);
        assert_eq!(w.deadline(), None);
        assert_eq!(w.check(t0 + PATIENCE, RECEIVED, Some(RECORD)), None);
    }
}
