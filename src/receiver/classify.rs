//! Which server errors no retry can fix, decided by SQLSTATE and by what
//! walrcv itself asked for: never by the message text, which the server
//! translates (`lc_messages`).
//!
//! The SQLSTATEs come from PostgreSQL's sources (13 to 18):
//!
//! | error (English text)                                              | raised in                                     | SQLSTATE |
//! |-------------------------------------------------------------------|-----------------------------------------------|----------|
//! | requested WAL segment %s has already been removed                 | walsender.c `WalSndSegmentOpen`, xlog.c `CheckXLogRemoved` (`errcode_for_file_access`, ENOENT) | `58P01` undefined_file |
//! | could not open file "pg_wal/%s.history" (TIMELINE_HISTORY)        | walsender.c `SendTimeLineHistory` (`errcode_for_file_access`) | `58P01` |
//! | requested starting point %X/%X on timeline %u is not in this server's history | walsender.c `StartReplication` (no errcode) | `XX000` internal_error |
//! | requested timeline %u is not in this server's history             | timeline.c `tliSwitchPoint` (no errcode)      | `XX000` |
//! | requested starting point %X/%X is ahead of the WAL flush position of this server %X/%X | walsender.c `StartReplication`, after CopyBothResponse (no errcode) | `XX000` |
//! | replication slot "%s" does not exist                              | slot.c `ReplicationSlotAcquire`               | `42704` undefined_object |
//! | can no longer access replication slot "%s" (invalidated, 18+)     | slot.c `ReplicationSlotAcquire(.., error_if_invalid)` | `55000` object_not_in_prerequisite_state |
//! | cannot use a logical replication slot for physical replication    | walsender.c `StartReplication`                | `55000` |
//! | replication slot "%s" is active for PID %d                        | slot.c `ReplicationSlotAcquire`               | `55006` object_in_use (retried: the previous walsender is still exiting) |
//!
//! Up to 17, an invalidated physical slot (`wal_status = lost`) is still
//! acquired; what fails is reading the WAL it no longer protects: `58P01`.
//!
//! `XX000` is shared: it is also what any unexpected internal error and
//! "cannot execute new commands while WAL sender is in stopping mode" (a
//! server shutting down: retryable) carry. So an `XX000` is final only at
//! START_REPLICATION and only when walrcv's own facts show the refusal: the
//! timeline asked for is not the server's current one (the history
//! refusals), or the start point is past the flush position the server
//! reported in IDENTIFY_SYSTEM (the flush position only moves forward, so
//! the server must refuse). Any other `XX000` is retried (with backoff).

use crate::lsn::{parse_wal_file_name, segment_start_lsn, Lsn, TimeLineId};

/// SQLSTATE undefined_file: a WAL segment (or history file) the server no longer has.
pub const UNDEFINED_FILE: &str = "58P01";
/// SQLSTATE undefined_object: the replication slot does not exist.
pub const UNDEFINED_OBJECT: &str = "42704";
/// SQLSTATE object_not_in_prerequisite_state: an invalidated or logical slot.
pub const NOT_IN_PREREQUISITE_STATE: &str = "55000";
/// SQLSTATE internal_error: errors raised without a code of their own.
pub const INTERNAL_ERROR: &str = "XX000";

/// What walrcv asked START_REPLICATION for, and what the server said about
/// itself just before (IDENTIFY_SYSTEM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartFacts {
    pub start: Lsn,
    pub timeline: TimeLineId,
    pub server_timeline: TimeLineId,
    pub server_flush: Lsn,
    pub segment_size: u64,
}

/// A server refusal that needs an operator: retrying cannot fix it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerFault {
    /// The server no longer has WAL (or a history file) the archive needs next.
    WalRemoved,
    /// The archive's timeline or position is not in the server's history.
    NotInHistory,
    /// The archive holds WAL past the server's flush position.
    AheadOfServer,
    /// The replication slot does not exist (dropped?).
    SlotMissing,
    /// The slot cannot be used: invalidated (18+), or a logical slot.
    SlotUnusable,
}

/// Classifies a server error: `Some` when only an operator can fix it.
/// `start` is given for errors answering START_REPLICATION (before or during
/// the stream it opens).
pub fn classify(sqlstate: &str, start: Option<&StartFacts>) -> Option<ServerFault> {
    match sqlstate {
        UNDEFINED_FILE => Some(ServerFault::WalRemoved),
        UNDEFINED_OBJECT => Some(ServerFault::SlotMissing),
        NOT_IN_PREREQUISITE_STATE => Some(ServerFault::SlotUnusable),
        INTERNAL_ERROR => start.and_then(refusal_at_start),
        _ => None,
    }
}

/// Which refusal an `XX000` at START_REPLICATION is, from walrcv's own facts.
fn refusal_at_start(f: &StartFacts) -> Option<ServerFault> {
    if f.timeline != f.server_timeline {
        Some(ServerFault::NotInHistory)
    } else if f.start > f.server_flush {
        Some(ServerFault::AheadOfServer)
    } else {
        None
    }
}

/// The WAL segment a "requested WAL segment %s has already been removed"
/// names, on `timeline`, as its start LSN: the file name is the one part of
/// the text no translation changes (24 upper-case hex digits), so it is
/// found whatever the language. `None` when the text names none.
pub fn removed_segment_start(
    message: &str,
    timeline: TimeLineId,
    segment_size: u64,
) -> Option<Lsn> {
    let bytes = message.as_bytes();
    (0..bytes.len().saturating_sub(23))
        .filter(|&i| i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
        .filter(|&i| bytes.get(i + 24).is_none_or(|b| !b.is_ascii_alphanumeric()))
        .filter_map(|i| message.get(i..i + 24))
        .filter_map(|name| parse_wal_file_name(name, segment_size))
        .find(|&(tli, _)| tli == timeline)
        .map(|(_, segno)| segment_start_lsn(segno, segment_size))
}

impl ServerFault {
    /// What the operator can do about it.
    pub fn hint(self) -> &'static str {
        match self {
            ServerFault::WalRemoved => {
                "the server no longer has the WAL the archive needs next, so the archive would have a gap. \
                 Restore the missing segments into the archive from another copy (a backup's WAL, another archive) \
                 if there is one; otherwise take a new base backup, and move the archive's files aside (or use a \
                 new directory) so walrcv starts at the server's current position. Use a replication slot \
                 (--slot), with max_slot_wal_keep_size large enough, to prevent this."
            }
            ServerFault::NotInHistory => {
                "the archive's newest WAL is on a timeline or position this server does not have (a failover \
                 to a server that did not receive it?). Check `walrcv verify` on the archive and the server's \
                 timeline history; archive the new timeline into a new directory."
            }
            ServerFault::AheadOfServer => {
                "the archive holds WAL newer than this server: was the server restored from a backup, rewound, \
                 or is this another server? Point walrcv at the primary the archive came from, or use a new directory."
            }
            ServerFault::SlotMissing => {
                "the replication slot does not exist on this server (dropped, or a new primary after a failover: \
                 physical slots do not follow). Create it (walrcv --create-slot --slot=NAME, or \
                 pg_create_physical_replication_slot), or run walrcv with --create-slot-if-missing: WAL the server \
                 removed meanwhile is lost to the archive, which walrcv then reports."
            }
            ServerFault::SlotUnusable => {
                "the replication slot cannot be used: it was invalidated (wal_status = lost, max_slot_wal_keep_size \
                 exceeded) or is not a physical slot. Drop it and create it again, then restart walrcv; WAL removed \
                 meanwhile is lost to the archive."
            }
        }
    }

    /// A one-line summary for the log.
    pub fn summary(self) -> &'static str {
        match self {
            ServerFault::WalRemoved => "the server no longer has the WAL the archive needs",
            ServerFault::NotInHistory => "the archive's WAL is not in the server's history",
            ServerFault::AheadOfServer => "the archive is ahead of the server",
            ServerFault::SlotMissing => "the replication slot does not exist",
            ServerFault::SlotUnusable => "the replication slot cannot be used",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(
        timeline: TimeLineId,
        start: u64,
        server_timeline: TimeLineId,
        flush: u64,
    ) -> StartFacts {
        StartFacts {
            start: Lsn(start),
            timeline,
            server_timeline,
            server_flush: Lsn(flush),
            segment_size: 1 << 20,
        }
    }

    #[test]
    fn the_removed_segment_is_found_in_any_language() {
        let seg = 1 << 24;
        for text in [
            "requested WAL segment 000000010000000200000003 has already been removed",
            "das angeforderte WAL-Segment 000000010000000200000003 wurde schon entfernt",
            "le segment demandé du journal de transaction, 000000010000000200000003, a déjà été supprimé",
            "要求された WAL セグメント 000000010000000200000003 はすでに削除されています",
        ] {
            assert_eq!(
                removed_segment_start(text, 1, seg),
                Some(Lsn(0x2_0300_0000)),
                "{text}"
            );
            // Another timeline's segment is not the one asked for.
            assert_eq!(removed_segment_start(text, 2, seg), None, "{text}");
        }
        assert_eq!(removed_segment_start("no file here", 1, seg), None);
        // 25 hex digits are not a file name.
        assert_eq!(
            removed_segment_start("segment 0000000100000002000000030 gone", 1, seg),
            None
        );
        assert_eq!(removed_segment_start("", 1, seg), None);
    }

    #[test]
    fn operator_sqlstates_need_an_operator_whatever_the_phase() {
        let at_start = facts(1, 0x100_0000, 1, 0x200_0000);
        for start in [None, Some(&at_start)] {
            assert_eq!(classify("58P01", start), Some(ServerFault::WalRemoved));
            assert_eq!(classify("42704", start), Some(ServerFault::SlotMissing));
            assert_eq!(classify("55000", start), Some(ServerFault::SlotUnusable));
        }
    }

    #[test]
    fn transient_sqlstates_are_retried() {
        let at_start = facts(1, 0x100_0000, 1, 0x200_0000);
        // slot active for another PID, shutdown, crash, starting up, too many
        // connections, disk full on the server, connection failure, cancel.
        for code in [
            "55006", "57P01", "57P02", "57P03", "53300", "53100", "08006", "57014",
        ] {
            assert_eq!(classify(code, None), None, "{code}");
            assert_eq!(classify(code, Some(&at_start)), None, "{code} at start");
        }
    }

    #[test]
    fn internal_error_outside_start_replication_is_retried() {
        assert_eq!(classify("XX000", None), None);
    }

    #[test]
    fn internal_error_at_start_on_another_timeline_is_not_in_history() {
        // Asked for timeline 1, the server is on 2 and forked before the start.
        let f = facts(1, 0x300_0000, 2, 0x500_0000);
        assert_eq!(classify("XX000", Some(&f)), Some(ServerFault::NotInHistory));
        // Asked for a timeline newer than the server's.
        let f = facts(3, 0x300_0000, 2, 0x500_0000);
        assert_eq!(classify("XX000", Some(&f)), Some(ServerFault::NotInHistory));
    }

    #[test]
    fn internal_error_at_start_past_the_flush_position_is_ahead() {
        let f = facts(1, 0x300_0000, 1, 0x2FF_FFFF);
        assert_eq!(
            classify("XX000", Some(&f)),
            Some(ServerFault::AheadOfServer)
        );
    }

    #[test]
    fn internal_error_at_start_without_such_facts_is_retried() {
        // Same timeline, start at or before the flush position: an XX000 here
        // is something else (e.g. a walsender in stopping mode).
        let f = facts(1, 0x300_0000, 1, 0x300_0000);
        assert_eq!(classify("XX000", Some(&f)), None);
        let f = facts(1, 0x300_0000, 1, 0x400_0000);
        assert_eq!(classify("XX000", Some(&f)), None);
    }
}
