//! Where the WAL a server still has begins, when it no longer has what the
//! archive needs next: the missing range named in walrcv's error runs from
//! the archive's end to there.
//!
//! The replication protocol has no command for it, so walrcv asks
//! START_REPLICATION for segment starts (on a connection of its own, without
//! the slot) and binary-searches the oldest one the server can stream: a
//! server removes segments oldest first, so those it has are a suffix. The
//! search is the sans-IO [`OldestSegmentSearch`]; [`oldest_available`] runs
//! the probes, bounded in time.

use std::time::Duration;

use super::classify::ServerFault;
use super::classify::{StartFacts, UNDEFINED_FILE};
use super::error::missing_from;
use super::lineage;
use super::{ReceiverError, StreamOptions};
use crate::conninfo::ConnParams;
use crate::lsn::{Lsn, SegNo, TimeLineId};
use crate::pgwire::{BackendMessage, Connection};
use crate::replication::{self, StartReply};
use crate::wal::history::parse_history;

/// The binary search over segment numbers: `missing` is known to be gone,
/// `present` known to be there (the segment of the server's flush position).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OldestSegmentSearch {
    missing: SegNo,
    present: SegNo,
}

impl OldestSegmentSearch {
    /// `present` must be past `missing` (it is clamped there).
    pub fn new(missing: SegNo, present: SegNo) -> OldestSegmentSearch {
        OldestSegmentSearch {
            missing,
            present: present.max(missing + 1),
        }
    }

    /// The next segment to ask for, or `None` once the answer is known.
    pub fn next_probe(&self) -> Option<SegNo> {
        (self.present - self.missing > 1).then(|| self.missing + (self.present - self.missing) / 2)
    }

    /// What the server answered for `segno`.
    pub fn record(&mut self, segno: SegNo, available: bool) {
        if available {
            self.present = self.present.min(segno);
        } else {
            self.missing = self.missing.max(segno);
        }
    }

    /// The oldest segment the server has (once `next_probe` is `None`).
    pub fn oldest_present(&self) -> SegNo {
        self.present
    }
}

/// Bound of the whole search, and of every reply waited for during it.
const SEARCH_LIMIT: Duration = Duration::from_secs(30);

/// The start of the oldest segment the server still has, past the one it
/// reported removed (on whichever timeline of its history each point lies);
/// `None` if the probes failed.
pub async fn oldest_available(conn: &ConnParams, facts: &StartFacts) -> Option<Lsn> {
    let search = probe_all(conn, facts);
    match tokio::time::timeout(SEARCH_LIMIT, search).await {
        Ok(Ok(lsn)) => Some(lsn),
        Ok(Err(e)) => {
            tracing::warn!("could not find the oldest WAL the server has: {e}");
            None
        }
        Err(_) => {
            tracing::warn!("could not find the oldest WAL the server has within 30 s");
            None
        }
    }
}

async fn probe_all(params: &ConnParams, f: &StartFacts) -> Result<Lsn, ReceiverError> {
    let seg = f.segment_size;
    let mut conn = Connection::connect(params, true, SEARCH_LIMIT).await?;
    // Servers up to 14 want IDENTIFY_SYSTEM before START_REPLICATION.
    let system = replication::identify_system(&mut conn).await?;
    // After a failover the WAL the archive needs begins on an ancestor and
    // goes on on the server's timeline: each probe asks for the timeline its
    // point lies on in the server's history.
    let history = if system.timeline > 1 {
        let (_, content) = replication::timeline_history(&mut conn, system.timeline).await?;
        parse_history(&content)
            .map_err(|e| ReceiverError::Unexpected(format!("the server's timeline history: {e}")))?
    } else {
        Vec::new()
    };
    let timeline_at = |lsn| lineage::timeline_at(lsn, system.timeline, &history);
    let end = system.xlogpos;
    let (removed, last) = (f.start.segment_number(seg), end.segment_number(seg));
    if last <= removed {
        return Err(ReceiverError::Unexpected(format!(
            "the server's WAL ends at {end}, in the segment it reported removed"
        )));
    }
    let mut search = OldestSegmentSearch::new(removed, last);
    while let Some(segno) = search.next_probe() {
        let start = Lsn(segno * seg);
        let timeline = timeline_at(start);
        let available = probe(&mut conn, start, timeline).await?;
        tracing::debug!("segment {segno:X} on timeline {timeline}: available {available}");
        search.record(segno, available);
    }
    conn.close().await;
    Ok(Lsn(search.oldest_present() * seg))
}

/// Whether the server can stream from `start` on `timeline`.
async fn probe(
    conn: &mut Connection,
    start: Lsn,
    timeline: TimeLineId,
) -> Result<bool, ReceiverError> {
    match replication::start_replication(conn, None, start, timeline).await {
        Ok(StartReply::TimelineEnded { .. }) => return Ok(true),
        Ok(StartReply::Streaming) => {}
        Err(e) => return Err(e.into()),
    }
    // The first message says it: WAL, or the error of a removed segment
    // (then ReadyForQuery follows).
    let available = loop {
        match conn.read_message().await? {
            BackendMessage::CopyData(_) => break true,
            BackendMessage::Error(m) if m.code == UNDEFINED_FILE => {
                read_until_ready(conn).await?;
                return Ok(false);
            }
            BackendMessage::Error(m) => {
                return Err(ReceiverError::Unexpected(format!(
                    "probing for the oldest WAL: {m}"
                )))
            }
            _ => {}
        }
    };
    conn.send_copy_done().await?;
    read_until_ready(conn).await?;
    Ok(available)
}

async fn read_until_ready(conn: &mut Connection) -> Result<(), ReceiverError> {
    loop {
        if let BackendMessage::ReadyForQuery = conn.read_message().await? {
            return Ok(());
        }
    }
}

/// For WAL the server removed: finds where the WAL it still has begins, so
/// the error names the whole missing range.
pub(super) async fn with_missing_range(
    error: ReceiverError,
    opts: &StreamOptions,
) -> ReceiverError {
    match error {
        ReceiverError::ServerFault {
            fault: ServerFault::WalRemoved,
            target,
            message,
            facts: Some(facts),
            oldest_available: None,
        } => ReceiverError::ServerFault {
            fault: ServerFault::WalRemoved,
            oldest_available: oldest_available(
                &opts.conn,
                &missing_from(ServerFault::WalRemoved, &message, &facts),
            )
            .await,
            target,
            message,
            facts: Some(facts),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the search against a server that has segments `oldest..`.
    fn search(missing: SegNo, present: SegNo, oldest: SegNo) -> (SegNo, usize) {
        let mut s = OldestSegmentSearch::new(missing, present);
        let mut probes = 0;
        while let Some(segno) = s.next_probe() {
            assert!(
                segno > missing && segno < present,
                "probe {segno} out of range"
            );
            s.record(segno, segno >= oldest);
            probes += 1;
        }
        (s.oldest_present(), probes)
    }

    #[test]
    fn finds_the_oldest_segment_in_logarithmic_probes() {
        for oldest in 4..=100 {
            let (found, probes) = search(3, 100, oldest);
            assert_eq!(found, oldest);
            assert!(probes <= 7, "{probes} probes for {oldest}");
        }
    }

    #[test]
    fn adjacent_bounds_need_no_probe() {
        assert_eq!(search(3, 4, 4), (4, 0));
        // A flush position in the removed segment itself (cannot be, but the
        // search stays in range).
        assert_eq!(search(3, 3, 4), (4, 0));
    }
}
