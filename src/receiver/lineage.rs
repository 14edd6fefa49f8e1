//! Does the server's history continue the archive's? The decision taken on
//! every (re)connection before streaming, as a pure function: the archive's
//! end and the server's timeline history in, what to do out.
//!
//! After a failover the new primary is on a new timeline whose history file
//! says where it forked from its parent (`parent<TAB>switchpoint`). Three
//! things can be true of an archive that ends at `end` on timeline `T`:
//!
//! - `T` is the server's timeline, or an ancestor that the archive left at or
//!   before the switch point out of it: the archive is a prefix of the
//!   server's history. Streaming continues from `end` on `T`, and the server
//!   moves the stream onto the next timelines itself (pg_receivewal's rule:
//!   the old timeline's last segment stays `.partial`).
//! - `T` is an ancestor but the archive holds WAL past the switch point: the
//!   old primary sent WAL that the promoted standby never had. Those bytes
//!   `[switchpoint, end)` on `T` are *divergent*: they are not part of the
//!   history that continues, must never be restored into it, and must never be
//!   deleted either (they may hold the only copy of transactions a DBA wants to
//!   look at). Streaming continues from the switch point on the timeline that
//!   begins there.
//! - `T` is not in the server's history at all (a newer timeline than the
//!   server's, another cluster with the same system identifier by accident of
//!   cloning, or a fork the archive does not know): refused.
//!
//! Successive failovers (1 → 2 → 3) need nothing special: the history file of
//! the newest timeline lists every ancestor with its switch point.

use crate::lsn::{Lsn, TimeLineId};
use crate::wal::history::HistoryEntry;

/// Where the archive's WAL ends: the newest timeline it holds and the end of
/// its data on that timeline (measured by [`crate::archive::ArchiveDir::wal_end`]).
pub use crate::archive::divergent::WalEnd as ArchiveEnd;

/// The server's side: its current timeline and that timeline's history
/// (empty for timeline 1).
#[derive(Debug, Clone, Copy)]
pub struct ServerLineage<'a> {
    pub timeline: TimeLineId,
    pub history: &'a [HistoryEntry],
}

/// What to do before streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The archive is a prefix of the server's history: stream from `start`
    /// on `timeline` (the archive's own timeline).
    Continue { timeline: TimeLineId, start: Lsn },
    /// The archive's timeline `timeline` was left by the server's history at
    /// `switchpoint`, but the archive holds WAL up to `end` on it. Keep
    /// `[switchpoint, end)` aside and stream from `switchpoint` on `next`.
    Diverged {
        timeline: TimeLineId,
        switchpoint: Lsn,
        end: Lsn,
        next: TimeLineId,
    },
    /// The server's history does not contain the archive's timeline.
    NotDescendant {
        archive_timeline: TimeLineId,
        server_timeline: TimeLineId,
    },
    /// The server's history names the archive's timeline, but the archive's
    /// own history file of that timeline says it forked elsewhere: the same
    /// timeline number from another promotion (two standbys promoted apart).
    /// `entry` is the first ancestor on which they disagree.
    Forked {
        archive_timeline: TimeLineId,
        archive_entry: Option<HistoryEntry>,
        server_entry: Option<HistoryEntry>,
    },
}

impl Decision {
    /// How many bytes diverge (zero unless [`Decision::Diverged`]).
    pub fn divergent_bytes(&self) -> u64 {
        match self {
            Decision::Diverged {
                switchpoint, end, ..
            } => end.0.saturating_sub(switchpoint.0),
            _ => 0,
        }
    }
}

/// Compares the archive's end with the server's history. `archive_history`
/// is the archive's own history file of its timeline, when it holds one
/// (`None` for timeline 1 or a file not there): the server's history must
/// begin with it, or the timeline number is another promotion's.
///
/// An archive with no WAL yet has no end to compare: callers do not ask.
pub fn decide(
    archive: ArchiveEnd,
    archive_history: Option<&[HistoryEntry]>,
    server: ServerLineage<'_>,
) -> Decision {
    let Some(i) = position_in(archive.timeline, server) else {
        return Decision::NotDescendant {
            archive_timeline: archive.timeline,
            server_timeline: server.timeline,
        };
    };
    if let Some(known) = archive_history {
        if let Some(forked) = first_disagreement(archive.timeline, known, &server.history[..i]) {
            return forked;
        }
    }
    if archive.timeline == server.timeline {
        return Decision::Continue {
            timeline: archive.timeline,
            start: archive.end,
        };
    }
    let switchpoint = server.history[i].switchpoint;
    if archive.end <= switchpoint {
        return Decision::Continue {
            timeline: archive.timeline,
            start: archive.end,
        };
    }
    // The timeline that begins at the switch point: the next ancestor, or
    // the server's own timeline when the archive's is the last ancestor.
    let next = server
        .history
        .get(i + 1)
        .map_or(server.timeline, |e| e.parent);
    Decision::Diverged {
        timeline: archive.timeline,
        switchpoint,
        end: archive.end,
        next,
    }
}

/// Where the server's history leaves `timeline` (`None` for its own
/// timeline, or one its history does not contain). Archive files of that
/// timeline from this point's segment on may hold a divergent tail.
pub fn left_at(timeline: TimeLineId, server: ServerLineage<'_>) -> Option<Lsn> {
    server
        .history
        .iter()
        .find(|e| e.parent == timeline)
        .map(|e| e.switchpoint)
}

/// The timeline a server on `server_timeline` with `history` streams `lsn`
/// from: the first ancestor left after `lsn`, else its own timeline
/// (PostgreSQL's `tliOfPointInHistory`).
pub fn timeline_at(lsn: Lsn, server_timeline: TimeLineId, history: &[HistoryEntry]) -> TimeLineId {
    history
        .iter()
        .find(|e| lsn < e.switchpoint)
        .map_or(server_timeline, |e| e.parent)
}

/// Where the archive's timeline is in the server's history: the index of the
/// entry that leaves it, or the history's length for the server's own
/// timeline. `None` when the server's history does not contain it.
fn position_in(timeline: TimeLineId, server: ServerLineage<'_>) -> Option<usize> {
    if timeline == server.timeline {
        return Some(server.history.len());
    }
    server.history.iter().position(|e| e.parent == timeline)
}

/// The archive's history of its timeline against the server's ancestors of
/// that timeline: both list the same ancestors with the same switch points,
/// or they are two different forks.
fn first_disagreement(
    timeline: TimeLineId,
    archive: &[HistoryEntry],
    server: &[HistoryEntry],
) -> Option<Decision> {
    let n = archive.len().max(server.len());
    (0..n).find_map(|k| {
        let (a, b) = (archive.get(k), server.get(k));
        (a != b).then(|| Decision::Forked {
            archive_timeline: timeline,
            archive_entry: a.copied(),
            server_entry: b.copied(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(parent: TimeLineId, switchpoint: u64) -> HistoryEntry {
        HistoryEntry {
            parent,
            switchpoint: Lsn(switchpoint),
        }
    }

    fn archive(timeline: TimeLineId, end: u64) -> ArchiveEnd {
        ArchiveEnd {
            timeline,
            end: Lsn(end),
        }
    }

    fn server(timeline: TimeLineId, history: &[HistoryEntry]) -> ServerLineage<'_> {
        ServerLineage { timeline, history }
    }

    /// Without the archive's own history file (an archive of pg_receivewal's,
    /// or timeline 1).
    fn decide(archive: ArchiveEnd, server: ServerLineage<'_>) -> Decision {
        super::decide(archive, None, server)
    }

    #[test]
    fn the_timeline_of_a_point_in_the_servers_history() {
        let h = [entry(1, 0x500_0000), entry(2, 0x900_0000)];
        assert_eq!(timeline_at(Lsn(0x400_0000), 3, &h), 1);
        assert_eq!(timeline_at(Lsn(0x500_0000), 3, &h), 2);
        assert_eq!(timeline_at(Lsn(0x8FF_FFFF), 3, &h), 2);
        assert_eq!(timeline_at(Lsn(0x900_0000), 3, &h), 3);
        assert_eq!(timeline_at(Lsn(0x100), 1, &[]), 1);
    }

    #[test]
    fn the_archive_history_must_begin_the_servers() {
        // Archive on 2 forked from 1 at 0/5000000; the server is on 3 with the same ancestry.
        let known = [entry(1, 0x500_0000)];
        let h = [entry(1, 0x500_0000), entry(2, 0x900_0000)];
        assert_eq!(
            super::decide(archive(2, 0x700_0000), Some(&known), server(3, &h)),
            Decision::Continue {
                timeline: 2,
                start: Lsn(0x700_0000)
            }
        );
        // Two standbys promoted apart both chose timeline 2, at different points.
        let other = [entry(1, 0x480_0000)];
        assert_eq!(
            super::decide(archive(2, 0x700_0000), Some(&known), server(2, &other)),
            Decision::Forked {
                archive_timeline: 2,
                archive_entry: Some(entry(1, 0x500_0000)),
                server_entry: Some(entry(1, 0x480_0000)),
            }
        );
        // ... and the server went on to 3 from its own 2.
        let later = [entry(1, 0x480_0000), entry(2, 0x900_0000)];
        assert!(matches!(
            super::decide(archive(2, 0x700_0000), Some(&known), server(3, &later)),
            Decision::Forked { .. }
        ));
        // Same timeline, same history: continue.
        assert_eq!(
            super::decide(archive(2, 0x700_0000), Some(&known), server(2, &known)),
            Decision::Continue {
                timeline: 2,
                start: Lsn(0x700_0000)
            }
        );
        // Three failovers deep: the archive on 3 knows 1 and 2.
        let known3 = [entry(1, 0x500_0000), entry(2, 0x900_0000)];
        let h4 = [
            entry(1, 0x500_0000),
            entry(2, 0x900_0000),
            entry(3, 0xC00_0000),
        ];
        assert_eq!(
            super::decide(archive(3, 0xD00_0000), Some(&known3), server(4, &h4)),
            Decision::Diverged {
                timeline: 3,
                switchpoint: Lsn(0xC00_0000),
                end: Lsn(0xD00_0000),
                next: 4
            }
        );
    }

    #[test]
    fn where_the_servers_history_leaves_a_timeline() {
        let h = [entry(1, 0x500_0000), entry(2, 0x900_0000)];
        assert_eq!(left_at(1, server(3, &h)), Some(Lsn(0x500_0000)));
        assert_eq!(left_at(2, server(3, &h)), Some(Lsn(0x900_0000)));
        assert_eq!(left_at(3, server(3, &h)), None, "its own timeline");
        assert_eq!(left_at(4, server(3, &h)), None, "not in its history");
        // An older timeline of the archive measured past that point diverges,
        // whatever the archive's newest timeline is.
        assert_eq!(
            decide(archive(1, 0x500_2000), server(3, &h)),
            Decision::Diverged {
                timeline: 1,
                switchpoint: Lsn(0x500_0000),
                end: Lsn(0x500_2000),
                next: 2
            }
        );
    }

    #[test]
    fn same_timeline_continues_at_the_archive_end() {
        assert_eq!(
            decide(archive(1, 0x300_0000), server(1, &[])),
            Decision::Continue {
                timeline: 1,
                start: Lsn(0x300_0000)
            }
        );
    }

    #[test]
    fn planned_switchover_archive_at_or_before_the_switch_point() {
        let h = [entry(1, 0x500_00A0)];
        for end in [0x400_0000, 0x500_00A0] {
            assert_eq!(
                decide(archive(1, end), server(2, &h)),
                Decision::Continue {
                    timeline: 1,
                    start: Lsn(end)
                },
                "end {end:#x}"
            );
        }
    }

    #[test]
    fn wal_past_the_switch_point_diverges() {
        let h = [entry(1, 0x500_00A0)];
        let d = decide(archive(1, 0x500_2000), server(2, &h));
        assert_eq!(
            d,
            Decision::Diverged {
                timeline: 1,
                switchpoint: Lsn(0x500_00A0),
                end: Lsn(0x500_2000),
                next: 2
            }
        );
        assert_eq!(d.divergent_bytes(), 0x2000 - 0xA0);
    }

    #[test]
    fn successive_failovers() {
        // 1 --(0/5000000)--> 2 --(0/9000000)--> 3
        let h = [entry(1, 0x500_0000), entry(2, 0x900_0000)];
        // The archive stopped on 1 before the first switch: the server walks it through 2 and 3.
        assert_eq!(
            decide(archive(1, 0x480_0000), server(3, &h)),
            Decision::Continue {
                timeline: 1,
                start: Lsn(0x480_0000)
            }
        );
        // It ran on 1 past the first switch: diverged, continue on 2 (not 3).
        assert_eq!(
            decide(archive(1, 0x600_0000), server(3, &h)),
            Decision::Diverged {
                timeline: 1,
                switchpoint: Lsn(0x500_0000),
                end: Lsn(0x600_0000),
                next: 2
            }
        );
        // It followed onto 2 and ran past the second switch: diverged on 2, continue on 3.
        assert_eq!(
            decide(archive(2, 0xA00_0000), server(3, &h)),
            Decision::Diverged {
                timeline: 2,
                switchpoint: Lsn(0x900_0000),
                end: Lsn(0xA00_0000),
                next: 3
            }
        );
        // On 2 within its range.
        assert_eq!(
            decide(archive(2, 0x700_0000), server(3, &h)),
            Decision::Continue {
                timeline: 2,
                start: Lsn(0x700_0000)
            }
        );
    }

    #[test]
    fn timelines_outside_the_servers_history_are_refused() {
        let h = [entry(1, 0x500_0000)];
        // A newer timeline than the server's (the server is an old primary, or another cluster).
        assert_eq!(
            decide(archive(3, 0x600_0000), server(2, &h)),
            Decision::NotDescendant {
                archive_timeline: 3,
                server_timeline: 2
            }
        );
        // A sibling fork: timeline 2 of another promotion, the server is on 3 forked from 1.
        let h3 = [entry(1, 0x500_0000)];
        assert_eq!(
            decide(archive(2, 0x600_0000), server(3, &h3)),
            Decision::NotDescendant {
                archive_timeline: 2,
                server_timeline: 3
            }
        );
        // The server is still on timeline 1 while the archive moved to 2.
        assert_eq!(
            decide(archive(2, 0x600_0000), server(1, &[])),
            Decision::NotDescendant {
                archive_timeline: 2,
                server_timeline: 1
            }
        );
    }
}
