//! The session's decisions as pure functions: where to start (the archive,
//! a slot's `restart_lsn`, or the server's position), the lineage decision
//! split into its steps (which end to measure, what the decision means,
//! which older tails to set aside), the end of a timeline (is the next one
//! plausible, is there a divergent tail, where the next stream starts) and
//! how a stream closes (which status, if any, before which goodbye).
//!
//! The IO around them (the archive's files, the server's answers) is done by
//! the session ([`super`]) and by the property test's harness
//! (`receiver::sink::proptests`), which both call these same steps.

use crate::archive::ArchiveError;
use crate::archive::{Scan, StartPoint};
use crate::lsn::{Lsn, TimeLineId};
use crate::receiver::feedback::{Feedback, Positions, Status};
use crate::receiver::lineage::{self, ArchiveEnd, Decision, ServerLineage};
use crate::receiver::sink::SinkError;
use crate::receiver::ReceiverError;
use crate::replication::SlotInfo;
use crate::wal::history::HistoryEntry;

/// Where a session starts, and whether the WAL before it is the archive's own
/// durable files (only then may the start be reported as flushed at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    pub point: StartPoint,
    pub from_archive: bool,
}

/// The start at a physical slot's `restart_lsn` (asked of 15+ servers when
/// the archive holds no WAL): `None` when the slot has reserved nothing yet
/// (the server's position is used then). A missing or logical slot is a
/// configuration error.
pub fn slot_start(slot: &str, info: &SlotInfo, seg: u64) -> Result<Option<Start>, ReceiverError> {
    match (info.slot_type.as_deref(), info.restart_lsn, info.restart_tli) {
        (None, _, _) => Err(ReceiverError::Config(format!(
            "replication slot \"{slot}\" does not exist (create it with --create-slot --slot={slot})"
        ))),
        (Some("physical"), Some(lsn), Some(tli)) => {
            tracing::info!("starting at the restart_lsn {lsn} of slot \"{slot}\" (timeline {tli})");
            Ok(Some(Start {
                point: StartPoint {
                    lsn: lsn.segment_start(seg),
                    timeline: tli,
                },
                from_archive: false,
            }))
        }
        (Some("physical"), _, _) => Ok(None),
        (Some(other), _, _) => Err(ReceiverError::Config(format!(
            "replication slot \"{slot}\" is a {other} slot, not a physical one"
        ))),
    }
}

/// The start when neither the archive nor a slot says where: the beginning
/// of the segment of the server's current position (pg_receivewal's rule).
pub fn server_position_start(xlogpos: Lsn, timeline: TimeLineId, seg: u64) -> Start {
    tracing::warn!(
        "the archive directory holds no WAL: starting at the server's current position {xlogpos} (timeline \
         {timeline}); older WAL is not in the archive"
    );
    Start {
        point: StartPoint {
            lsn: xlogpos.segment_start(seg),
            timeline,
        },
        from_archive: false,
    }
}

/// A start on a timeline newer than the server's cannot be served.
pub fn check_start_timeline(
    start: StartPoint,
    server_timeline: TimeLineId,
) -> Result<(), ReceiverError> {
    if start.timeline > server_timeline {
        return Err(ReceiverError::NeedsOperator {
            message: format!(
                "starting timeline {} is not present in the server (its timeline is {server_timeline})",
                start.timeline
            ),
            hint: "the archive holds WAL of a newer timeline than this server's: is this the right server?".into(),
        });
    }
    Ok(())
}

/// Lineage step 1: must the archive's newest file be read to know where its
/// WAL ends? Not on the server's own timeline: there only the histories are
/// compared, and a reconnect does not read the `.partial` it resumes.
pub fn must_measure_end(point: StartPoint, server_timeline: TimeLineId) -> bool {
    point.timeline != server_timeline
}

/// WAL on `timeline` from `switchpoint` to `end` that the timeline `next`
/// (which begins at the switch point) does not contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DivergentTail {
    pub timeline: TimeLineId,
    pub switchpoint: Lsn,
    pub end: Lsn,
    pub next: TimeLineId,
}

impl DivergentTail {
    /// The tail a [`Decision::Diverged`] names; `None` for other decisions.
    pub fn of(decision: &Decision) -> Option<DivergentTail> {
        match *decision {
            Decision::Diverged {
                timeline,
                switchpoint,
                end,
                next,
            } => Some(DivergentTail {
                timeline,
                switchpoint,
                end,
                next,
            }),
            _ => None,
        }
    }

    /// Where streaming resumes after it: the switch point's segment on the
    /// next timeline.
    pub fn resume(&self, seg: u64) -> StartPoint {
        StartPoint {
            lsn: self.switchpoint.segment_start(seg),
            timeline: self.next,
        }
    }
}

/// What the lineage decision asks the session to do.
#[derive(Debug)]
pub enum LineageStep {
    /// Continue at the archive's start point (its own WAL backs it).
    Resume(Start),
    /// Set `tail` aside, then start at `start` (nothing backed by the
    /// archive: files were just moved).
    SetAsideThenStart { tail: DivergentTail, start: Start },
    /// Another fork, or a server that does not descend from the archive's.
    Refuse(ReceiverError),
}

/// Lineage step 2: the decision ([`lineage::decide`]) for an archive that
/// ends at `end` and whose newest file starts streaming at `point`.
pub fn lineage_decision(
    point: StartPoint,
    end: Lsn,
    archive_history: Option<&[HistoryEntry]>,
    server: ServerLineage<'_>,
) -> Decision {
    let archive_end = ArchiveEnd {
        timeline: point.timeline,
        end,
    };
    lineage::decide(archive_end, archive_history, server)
}

/// Lineage step 3: does the decision let the archive's older timelines be
/// checked for divergent tails (only when the server continues the archive)?
pub fn checks_older_tails(decision: &Decision) -> bool {
    matches!(
        decision,
        Decision::Continue { .. } | Decision::Diverged { .. }
    )
}

/// Lineage step 4: what the decision means for the start. `target` names
/// the server in the refusal's message.
pub fn lineage_step(
    decision: Decision,
    point: StartPoint,
    end: Lsn,
    target: &str,
    server_timeline: TimeLineId,
    seg: u64,
) -> LineageStep {
    if let Some(tail) = DivergentTail::of(&decision) {
        return LineageStep::SetAsideThenStart {
            tail,
            start: Start {
                point: tail.resume(seg),
                // Files were just moved: nothing is reported flushed before
                // WAL is written on the new timeline (as after an in-session
                // timeline switch).
                from_archive: false,
            },
        };
    }
    match decision {
        Decision::Continue { .. } | Decision::Diverged { .. } => LineageStep::Resume(Start {
            point,
            from_archive: true,
        }),
        Decision::Forked {
            archive_timeline,
            archive_entry,
            server_entry,
        } => LineageStep::Refuse(ReceiverError::NeedsOperator {
            message: format!(
                "{target} (timeline {server_timeline}) has another history of timeline {archive_timeline} than the \
                 archive: the archive's history says {}, the server's says {}; nothing was written",
                describe_entry(archive_entry),
                describe_entry(server_entry)
            ),
            hint: "two standbys were promoted apart and chose the same timeline number: this server is on the \
                   other fork. Point walrcv at the primary whose history continues the archive, or archive this \
                   server into a new directory."
                .into(),
        }),
        Decision::NotDescendant {
            archive_timeline,
            server_timeline,
        } => LineageStep::Refuse(ReceiverError::NeedsOperator {
            message: format!(
                "{target} is on timeline {server_timeline}, whose history does not contain the archive's \
                 timeline {archive_timeline} (the archive's WAL ends at {end} on it): this server did not descend \
                 from the one the archive came from; nothing was written"
            ),
            hint: "is this host another cluster (a clone with the same system identifier), or a fork the archive \
                   does not know? Point walrcv at the primary whose history continues the archive, or archive this \
                   server into a new directory."
                .into(),
        }),
    }
}

fn describe_entry(entry: Option<HistoryEntry>) -> String {
    match entry {
        Some(e) => format!("timeline {} was left at {}", e.parent, e.switchpoint),
        None => "nothing more".into(),
    }
}

/// Lineage step 5: the archive's older timelines (not `newest`, whose end
/// the decision measured) that the server's history left and whose files
/// reach the switch point's segment: each may hold a divergent tail, to be
/// measured. An earlier session can leave one behind while the archive's
/// newest WAL is already on the server's timeline (pg_receivewal, or a
/// version of walrcv that followed a switch without measuring the old
/// timeline's file), and `walrcv restore` would serve it.
pub fn older_timelines_to_measure(
    scan: &Scan,
    newest: TimeLineId,
    server: ServerLineage<'_>,
    seg: u64,
) -> Vec<TimeLineId> {
    let mut older: Vec<TimeLineId> = scan
        .segments
        .iter()
        .map(|f| f.timeline)
        .filter(|&t| t != newest)
        .collect();
    older.sort_unstable();
    older.dedup();
    older.retain(|&timeline| {
        lineage::left_at(timeline, server).is_some_and(|switchpoint| {
            let first = switchpoint.segment_number(seg);
            scan.segments
                .iter()
                .any(|f| f.timeline == timeline && f.segno >= first)
        })
    });
    older
}

/// Lineage step 6: the divergent tail of an older timeline that ends at
/// `end`, if it runs past the point where the server's history left it.
pub fn older_tail(end: ArchiveEnd, server: ServerLineage<'_>) -> Option<DivergentTail> {
    DivergentTail::of(&lineage::decide(end, None, server))
}

/// End of a timeline, step 1: the server named `next_tli` starting at
/// `next_start` after the stream on `current` received up to `received`.
/// A next timeline that is not newer, or that starts past what this stream
/// could have seen, is the server's mistake.
pub fn check_next_timeline(
    current: StartPoint,
    next_tli: TimeLineId,
    next_start: Lsn,
    received: Lsn,
) -> Result<(), ReceiverError> {
    if next_tli <= current.timeline || next_start > received.max(current.lsn) {
        return Err(ReceiverError::Unexpected(format!(
            "server reported new timeline {next_tli} starting at {next_start}, after timeline {} ended at {received}",
            current.timeline
        )));
    }
    Ok(())
}

/// End of a timeline, step 2: past the switch point, the archive may hold
/// WAL of the old timeline that the new one does not contain: sent on this
/// stream (a cascading standby promoted after it passed on the beginning of
/// a record its upstream never finished), or left in the file by an earlier
/// session (the old primary sent more than this server, a standby that was
/// behind, ever had). `in_archive` is where the archive's WAL of the old
/// timeline ends. That tail is set aside, never written over.
pub fn tail_at_switch(
    old: TimeLineId,
    received: Lsn,
    in_archive: Lsn,
    next_tli: TimeLineId,
    next_start: Lsn,
) -> Option<DivergentTail> {
    let end = received.max(in_archive);
    (end > next_start).then_some(DivergentTail {
        timeline: old,
        switchpoint: next_start,
        end,
        next: next_tli,
    })
}

/// End of a timeline, step 3: the policy forgets what was reported past the
/// switch point (the old timeline's WAL there is not the new one's), and
/// the next stream starts at the switch point's segment on the new timeline,
/// in a new file (so not backed by the archive).
pub fn switch_timeline(
    feedback: &mut Feedback,
    next_tli: TimeLineId,
    next_start: Lsn,
    seg: u64,
) -> Start {
    feedback.timeline_switched(next_start);
    Start {
        point: StartPoint {
            lsn: next_start.segment_start(seg),
            timeline: next_tli,
        },
        from_archive: false,
    }
}

/// `--endpos` before the next stream's start: nothing to stream.
pub fn endpos_before(endpos: Option<Lsn>, start: Lsn) -> bool {
    endpos.is_some_and(|e| e < start)
}

/// Why the receive loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopEnd {
    /// SIGINT or SIGTERM.
    Signal,
    /// `--endpos` reached.
    Endpos,
    /// The server sent CopyDone: the timeline ended.
    ServerCopyDone,
    /// The server sent CommandComplete without CopyDone (it is shutting down).
    ServerClosed,
}

/// How a stream closes, once its sink is closed.
#[derive(Debug)]
pub enum Closing {
    /// Report `status`, then end as `end` says.
    Report { status: Status, end: LoopEnd },
    /// The server ended its timeline: CopyDone with no status (see
    /// [`closing`]).
    TimelineEnded,
    /// The stream failed: a bounded, best-effort `status` and CopyDone (the
    /// connection may be what failed), then the session ends with `error`.
    Goodbye {
        status: Status,
        error: ReceiverError,
    },
    /// The session ends with `error`, saying nothing more to the server.
    Fail(ReceiverError),
}

/// End of a stream: whatever ended the receive loop (`result`), the sink was
/// closed first (`closed`: the final fsync happens unless an fsync failed,
/// and the open segment stays `.partial`); then the server is told how far
/// the WAL is good, except at the end of a timeline.
pub fn closing(
    result: Result<LoopEnd, ReceiverError>,
    closed: Result<Positions, SinkError>,
    feedback: &mut Feedback,
    now: std::time::Instant,
) -> Closing {
    match (result, closed) {
        // The server ended its timeline: where it ends (the switch point)
        // comes only after CopyDone, and what this stream holds past it is
        // not the new timeline's, which the server now writes. No status
        // until the switch point is known (pg_receivewal sends none here
        // either); the next stream starts with one capped at it.
        (Ok(LoopEnd::ServerCopyDone), Ok(_)) => Closing::TimelineEnded,
        (Ok(end), Ok(positions)) => Closing::Report {
            status: feedback.final_status(now, positions),
            end,
        },
        (Ok(_), Err(w)) => Closing::Fail(ReceiverError::Writer(w)),
        (Err(error), Ok(positions)) => Closing::Goodbye {
            status: feedback.final_status(now, positions),
            error,
        },
        (Err(e), Err(w)) => {
            // A failed fsync must reach the supervisor, which records it
            // (`archive::taint`): it is the error the session ends with.
            let closing = ReceiverError::Writer(w);
            let fsync_failed = matches!(
                closing.archive_error(),
                Some(ArchiveError::Fsync { .. } | ArchiveError::RenameNotDurable { .. })
            );
            if fsync_failed {
                tracing::error!("{e}");
                Closing::Fail(closing)
            } else {
                tracing::error!("{closing}");
                Closing::Fail(e)
            }
        }
    }
}

#[cfg(test)]
mod tests;
