//! Each step of the session on its own: no server, no files.

use std::time::Instant;

use super::*;
use crate::archive::names::Compression;
use crate::archive::SegmentFile;
use crate::receiver::feedback::FeedbackConfig;

const SEG: u64 = 16 << 20;

fn entry(parent: TimeLineId, switchpoint: u64) -> HistoryEntry {
    HistoryEntry {
        parent,
        switchpoint: Lsn(switchpoint),
    }
}

fn point(lsn: u64, timeline: TimeLineId) -> StartPoint {
    StartPoint {
        lsn: Lsn(lsn),
        timeline,
    }
}

fn slot(kind: Option<&str>, lsn: Option<u64>, tli: Option<TimeLineId>) -> SlotInfo {
    SlotInfo {
        slot_type: kind.map(Into::into),
        restart_lsn: lsn.map(Lsn),
        restart_tli: tli,
    }
}

fn positions(write: u64, flush: u64) -> Positions {
    Positions {
        write: Lsn(write),
        flush: Lsn(flush),
    }
}

fn feedback() -> Feedback {
    Feedback::new(
        FeedbackConfig {
            status_interval: None,
            receive_timeout: std::time::Duration::from_secs(60),
        },
        Instant::now(),
    )
}

fn fsync_failed() -> SinkError {
    SinkError::Archive(ArchiveError::Fsync {
        path: "000000010000000000000003.partial".into(),
        source: std::io::Error::from_raw_os_error(libc::EIO),
    })
}

fn other_write_error() -> SinkError {
    SinkError::Discontinuity {
        expected: Lsn(1),
        got: Lsn(2),
    }
}

#[test]
fn a_slot_starts_at_its_restart_lsns_segment() {
    let start = slot_start(
        "s",
        &slot(Some("physical"), Some(3 * SEG + 77), Some(2)),
        SEG,
    )
    .unwrap()
    .unwrap();
    assert_eq!(start.point, point(3 * SEG, 2));
    assert!(
        !start.from_archive,
        "a slot's position is not the archive's WAL"
    );
    // Nothing reserved yet: the server's position is used.
    assert_eq!(
        slot_start("s", &slot(Some("physical"), None, None), SEG).unwrap(),
        None
    );
}

#[test]
fn a_missing_or_logical_slot_is_a_configuration_error() {
    let missing = slot_start("s", &slot(None, None, None), SEG).unwrap_err();
    assert!(
        matches!(&missing, ReceiverError::Config(m) if m.contains("does not exist")),
        "{missing}"
    );
    let logical = slot_start("s", &slot(Some("logical"), Some(SEG), Some(1)), SEG).unwrap_err();
    assert!(
        matches!(&logical, ReceiverError::Config(m) if m.contains("logical slot")),
        "{logical}"
    );
}

#[test]
fn without_archive_or_slot_the_servers_segment_is_the_start() {
    let start = server_position_start(Lsn(5 * SEG + 123), 3, SEG);
    assert_eq!(start.point, point(5 * SEG, 3));
    assert!(!start.from_archive);
}

#[test]
fn a_start_on_a_newer_timeline_than_the_servers_is_refused() {
    assert!(check_start_timeline(point(SEG, 2), 2).is_ok());
    assert!(check_start_timeline(point(SEG, 1), 2).is_ok());
    let e = check_start_timeline(point(SEG, 3), 2).unwrap_err();
    assert!(matches!(e, ReceiverError::NeedsOperator { .. }), "{e}");
}

#[test]
fn the_archives_end_is_measured_only_off_the_servers_timeline() {
    assert!(!must_measure_end(point(SEG, 2), 2));
    assert!(must_measure_end(point(SEG, 1), 2));
}

#[test]
fn an_archive_that_the_servers_history_continues_resumes() {
    let history = [entry(1, 4 * SEG + 100)];
    let server = ServerLineage {
        timeline: 2,
        history: &history,
    };
    let at = point(3 * SEG, 1);
    let decision = lineage_decision(at, Lsn(3 * SEG + 500), None, server);
    assert!(checks_older_tails(&decision));
    match lineage_step(decision, at, Lsn(3 * SEG + 500), "primary", 2, SEG) {
        LineageStep::Resume(start) => {
            assert_eq!(start.point, at);
            assert!(start.from_archive);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_archive_past_the_switch_point_sets_its_tail_aside() {
    let switch = 4 * SEG + 100;
    let history = [entry(1, switch)];
    let server = ServerLineage {
        timeline: 2,
        history: &history,
    };
    let at = point(4 * SEG, 1);
    let end = Lsn(switch + 4000);
    let decision = lineage_decision(at, end, None, server);
    assert!(checks_older_tails(&decision));
    match lineage_step(decision, at, end, "primary", 2, SEG) {
        LineageStep::SetAsideThenStart { tail, start } => {
            assert_eq!(
                tail,
                DivergentTail {
                    timeline: 1,
                    switchpoint: Lsn(switch),
                    end,
                    next: 2
                }
            );
            assert_eq!(start.point, point(4 * SEG, 2));
            assert!(
                !start.from_archive,
                "files were moved: nothing is backed yet"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_server_that_does_not_descend_or_forked_is_refused() {
    let history = [entry(1, 4 * SEG)];
    let server = ServerLineage {
        timeline: 2,
        history: &history,
    };
    let at = point(5 * SEG, 3);
    let decision = lineage_decision(at, Lsn(5 * SEG), None, server);
    assert!(!checks_older_tails(&decision));
    match lineage_step(decision, at, Lsn(5 * SEG), "primary:5432", 2, SEG) {
        LineageStep::Refuse(ReceiverError::NeedsOperator { message, .. }) => {
            assert!(
                message.contains("primary:5432") && message.contains("timeline 3"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The archive's own history of timeline 2 says another switch point.
    let history = [entry(1, 4 * SEG), entry(2, 6 * SEG)];
    let server = ServerLineage {
        timeline: 3,
        history: &history,
    };
    let at = point(5 * SEG, 2);
    let known = [entry(1, 3 * SEG)];
    let decision = lineage_decision(at, Lsn(5 * SEG), Some(&known), server);
    assert!(!checks_older_tails(&decision));
    match lineage_step(decision, at, Lsn(5 * SEG), "primary", 3, SEG) {
        LineageStep::Refuse(ReceiverError::NeedsOperator { message, .. }) => {
            assert!(message.contains("another history"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

fn scan(files: &[(TimeLineId, u64)]) -> Scan {
    Scan {
        segments: files
            .iter()
            .map(|&(timeline, segno)| SegmentFile {
                timeline,
                segno,
                partial: false,
                size: SEG,
                path: format!("{timeline:08X}{segno:016X}").into(),
                compression: Compression::None,
            })
            .collect(),
        ..Scan::default()
    }
}

#[test]
fn older_timelines_are_measured_only_when_their_files_reach_the_switch() {
    let history = [entry(1, 3 * SEG + 100)];
    let server = ServerLineage {
        timeline: 2,
        history: &history,
    };
    let reaching = scan(&[(1, 1), (1, 2), (1, 3), (2, 3), (2, 4)]);
    assert_eq!(older_timelines_to_measure(&reaching, 2, server, SEG), [1]);
    let short = scan(&[(1, 1), (1, 2), (2, 3), (2, 4)]);
    assert!(older_timelines_to_measure(&short, 2, server, SEG).is_empty());
    // A timeline the server's history never left is not measured.
    let own = scan(&[(2, 3), (2, 4)]);
    assert!(older_timelines_to_measure(&own, 2, server, SEG).is_empty());
}

#[test]
fn an_older_timelines_tail_is_set_aside_only_past_its_switch() {
    let switch = 3 * SEG + 100;
    let history = [entry(1, switch)];
    let server = ServerLineage {
        timeline: 2,
        history: &history,
    };
    let past = ArchiveEnd {
        timeline: 1,
        end: Lsn(switch + 8),
    };
    assert_eq!(
        older_tail(past, server),
        Some(DivergentTail {
            timeline: 1,
            switchpoint: Lsn(switch),
            end: Lsn(switch + 8),
            next: 2
        })
    );
    let at = ArchiveEnd {
        timeline: 1,
        end: Lsn(switch),
    };
    assert_eq!(older_tail(at, server), None);
}

#[test]
fn the_next_timeline_must_be_newer_and_start_within_what_was_seen() {
    let current = point(3 * SEG, 1);
    let received = Lsn(3 * SEG + 5000);
    assert!(check_next_timeline(current, 2, Lsn(3 * SEG + 4000), received).is_ok());
    // A switch exactly at the start (START_REPLICATION answered with the end
    // of the timeline at once).
    assert!(check_next_timeline(current, 2, Lsn(3 * SEG), Lsn(3 * SEG)).is_ok());
    assert!(check_next_timeline(current, 1, Lsn(3 * SEG + 4000), received).is_err());
    assert!(check_next_timeline(current, 2, Lsn(3 * SEG + 6000), received).is_err());
}

#[test]
fn a_tail_past_the_switch_is_set_aside_at_the_end_of_a_timeline() {
    let switch = Lsn(3 * SEG + 4000);
    // Received past the switch point on this stream.
    assert_eq!(
        tail_at_switch(1, Lsn(3 * SEG + 5000), Lsn::INVALID, 2, switch),
        Some(DivergentTail {
            timeline: 1,
            switchpoint: switch,
            end: Lsn(3 * SEG + 5000),
            next: 2
        })
    );
    // Left in the archive by an earlier session.
    assert_eq!(
        tail_at_switch(1, switch, Lsn(3 * SEG + 4500), 2, switch).map(|t| t.end),
        Some(Lsn(3 * SEG + 4500))
    );
    assert_eq!(tail_at_switch(1, switch, switch, 2, switch), None);
}

#[test]
fn at_a_timeline_switch_reports_are_capped_at_the_switch_point() {
    let mut f = feedback();
    let now = Instant::now();
    // WAL of timeline 1 past the switch point was reported.
    f.after_sync(now, positions(3 * SEG + 9000, 3 * SEG + 9000), false);
    let switch = Lsn(3 * SEG + 4000);
    let next = switch_timeline(&mut f, 2, switch, SEG);
    assert_eq!(next.point, point(3 * SEG, 2));
    assert!(
        !next.from_archive,
        "the new timeline's first segment is a new file"
    );
    // The new stream's first status goes back to the switch point, never
    // past it, until the new timeline's WAL is durable.
    let first = f.stream_started(now, Positions::default());
    assert_eq!((first.write, first.flush), (switch, switch));
}

#[test]
fn endpos_before_the_start_ends_without_streaming() {
    assert!(endpos_before(Some(Lsn(10)), Lsn(11)));
    assert!(!endpos_before(Some(Lsn(11)), Lsn(11)));
    assert!(!endpos_before(None, Lsn(11)));
}

#[test]
fn no_status_at_the_end_of_a_timeline() {
    let mut f = feedback();
    let closed = closing(
        Ok(LoopEnd::ServerCopyDone),
        Ok(positions(100, 100)),
        &mut f,
        Instant::now(),
    );
    assert!(matches!(closed, Closing::TimelineEnded), "{closed:?}");
}

#[test]
fn a_clean_end_reports_the_closed_sinks_positions() {
    for end in [LoopEnd::Signal, LoopEnd::Endpos, LoopEnd::ServerClosed] {
        let mut f = feedback();
        match closing(Ok(end), Ok(positions(200, 100)), &mut f, Instant::now()) {
            Closing::Report { status, end: e } => {
                assert_eq!((status.write, status.flush, e), (Lsn(200), Lsn(100), end));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_failed_close_is_reported_as_nothing() {
    let mut f = feedback();
    match closing(
        Ok(LoopEnd::Signal),
        Err(fsync_failed()),
        &mut f,
        Instant::now(),
    ) {
        Closing::Fail(e) => assert!(matches!(
            e.archive_error(),
            Some(ArchiveError::Fsync { .. })
        )),
        other => panic!("{other:?}"),
    }
    let mut f = feedback();
    assert!(matches!(
        closing(
            Ok(LoopEnd::ServerCopyDone),
            Err(fsync_failed()),
            &mut f,
            Instant::now()
        ),
        Closing::Fail(_)
    ));
}

#[test]
fn a_failed_stream_says_goodbye_with_what_the_close_made_durable() {
    let mut f = feedback();
    match closing(
        Err(ReceiverError::StreamEnded),
        Ok(positions(300, 300)),
        &mut f,
        Instant::now(),
    ) {
        Closing::Goodbye { status, error } => {
            assert_eq!(status.flush, Lsn(300));
            assert!(matches!(error, ReceiverError::StreamEnded));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_failed_fsync_at_the_close_is_the_error_the_session_ends_with() {
    let mut f = feedback();
    match closing(
        Err(ReceiverError::StreamEnded),
        Err(fsync_failed()),
        &mut f,
        Instant::now(),
    ) {
        Closing::Fail(e) => assert!(
            matches!(e.archive_error(), Some(ArchiveError::Fsync { .. })),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    // Another failure of the close: the stream's own error stays.
    let mut f = feedback();
    match closing(
        Err(ReceiverError::Writer(fsync_failed())),
        Err(other_write_error()),
        &mut f,
        Instant::now(),
    ) {
        Closing::Fail(e) => assert!(
            matches!(e.archive_error(), Some(ArchiveError::Fsync { .. })),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
}
