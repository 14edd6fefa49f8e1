//! The receive loop driven event by event, with a controlled clock: no
//! server, no files.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::*;
use crate::archive::ArchiveError;
use crate::pgwire::ServerMessage;
use crate::receiver::feedback::FeedbackConfig;

const START: Lsn = Lsn(0x300_0000);
const SEC: Duration = Duration::from_secs(1);

fn xlogdata(start: Lsn, data: &[u8]) -> BackendMessage {
    let mut p = BytesMut::new();
    p.put_u8(b'w');
    p.put_u64(start.0);
    p.put_u64(start.0 + data.len() as u64);
    p.put_i64(0);
    p.put_slice(data);
    BackendMessage::CopyData(p.freeze())
}

fn keepalive(wal_end: Lsn, reply: bool) -> BackendMessage {
    let mut p = BytesMut::new();
    p.put_u8(b'k');
    p.put_u64(wal_end.0);
    p.put_i64(0);
    p.put_u8(u8::from(reply));
    BackendMessage::CopyData(p.freeze())
}

fn pos(write: Lsn, flush: Lsn) -> Positions {
    Positions { write, flush }
}

fn feedback(t0: Instant, interval: Option<Duration>) -> Feedback {
    Feedback::new(
        FeedbackConfig {
            status_interval: interval,
            receive_timeout: 10 * SEC,
        },
        t0,
    )
}

fn machine(feedback: &mut Feedback, endpos: Option<Lsn>) -> StreamMachine<'_> {
    StreamMachine::new(
        MachineConfig {
            endpos,
            start: START,
            receive_timeout: 10 * SEC,
            target: "primary:5432".into(),
            block_size: 8192,
        },
        feedback,
    )
}

fn report(at: Instant, flush: Lsn) -> Report {
    Report {
        at,
        positions: pos(flush, flush),
    }
}

/// Takes the pending actions, up to the wait.
fn drain(m: &mut StreamMachine<'_>) -> Vec<Action> {
    let mut out = Vec::new();
    loop {
        match m.poll() {
            Action::Wait { .. } => return out,
            a => out.push(a),
        }
    }
}

fn names(actions: &[Action]) -> Vec<&'static str> {
    actions
        .iter()
        .map(|a| match a {
            Action::ServerHas(_) => "server_has",
            Action::Received { .. } => "received",
            Action::Write { .. } => "write",
            Action::CompleteFilled => "complete",
            Action::Sync => "sync",
            Action::Send(_) => "send",
            Action::ReadMore => "read_more",
            Action::ReadClock => "read_clock",
            Action::Tick => "tick",
            Action::Wait { .. } => "wait",
            Action::End(_) => "end",
            Action::Fail(_) => "fail",
        })
        .collect()
}

fn sends(actions: &[Action]) -> Vec<Status> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(s) => Some(*s),
            _ => None,
        })
        .collect()
}

fn fsync_failed() -> SinkError {
    SinkError::Archive(ArchiveError::Fsync {
        path: "000000010000000000000003.partial".into(),
        source: std::io::Error::from_raw_os_error(libc::EIO),
    })
}

/// A machine that has sent its first status (flush invalid: nothing durable yet).
fn started(f: &mut Feedback, t0: Instant) -> StreamMachine<'_> {
    let mut m = machine(f, None);
    let first = m.start(t0, Positions::default());
    assert_eq!(first.flush, Lsn::INVALID);
    m
}

#[test]
fn a_commit_is_written_then_fsynced_then_reported() {
    let t0 = Instant::now();
    let mut f = feedback(t0, None);
    let mut m = started(&mut f, t0);
    m.handle(Event::Arrived {
        msg: xlogdata(START, &[7; 100]),
        at: t0,
    });
    let a = drain(&mut m);
    assert_eq!(names(&a), ["server_has", "received", "write"]);
    match &a[2] {
        Action::Write { at, data } => assert_eq!((*at, data.len()), (START, 100)),
        other => panic!("{other:?}"),
    }
    m.handle(Event::Wrote {
        n: 100,
        filled: None,
    });
    // Written is not durable: nothing is reported before the fsync.
    assert_eq!(names(&drain(&mut m)), ["read_more"]);
    m.handle(Event::Drained);
    assert_eq!(names(&drain(&mut m)), ["sync"]);
    let end = Lsn(START.0 + 100);
    m.handle(Event::Synced {
        started: t0,
        report: report(t0, end),
    });
    let a = drain(&mut m);
    assert_eq!(names(&a), ["send", "tick"]);
    assert_eq!(sends(&a)[0].flush, end);
    assert_eq!(m.position(), end);
    assert!(m.streamed());
}

#[test]
fn messages_readable_at_once_share_one_fsync() {
    let t0 = Instant::now();
    let mut f = feedback(t0, None);
    let mut m = started(&mut f, t0);
    m.handle(Event::Arrived {
        msg: xlogdata(START, &[1; 10]),
        at: t0,
    });
    drain(&mut m);
    m.handle(Event::Wrote {
        n: 10,
        filled: None,
    });
    assert_eq!(names(&drain(&mut m)), ["read_more"]);
    m.handle(Event::AlsoReady(xlogdata(Lsn(START.0 + 10), &[2; 10])));
    assert_eq!(names(&drain(&mut m)), ["server_has", "received", "write"]);
    m.handle(Event::Wrote {
        n: 10,
        filled: None,
    });
    assert_eq!(names(&drain(&mut m)), ["read_more"]);
    m.handle(Event::Drained);
    assert_eq!(names(&drain(&mut m)), ["sync"]);
}

#[test]
fn a_failed_fsync_ends_the_stream_without_a_status() {
    let t0 = Instant::now();
    let mut f = feedback(t0, None);
    let mut m = started(&mut f, t0);
    m.handle(Event::Arrived {
        msg: xlogdata(START, &[7; 100]),
        at: t0,
    });
    drain(&mut m);
    m.handle(Event::Wrote {
        n: 100,
        filled: None,
    });
    m.handle(Event::Drained);
    drain(&mut m);
    m.handle(Event::SinkFailed(fsync_failed()));
    let a = drain(&mut m);
    assert_eq!(names(&a), ["fail"]);
    match &a[0] {
        Action::Fail(e) => assert!(matches!(
            e.archive_error(),
            Some(ArchiveError::Fsync { .. })
        )),
        other => panic!("{other:?}"),
    }
    // Whatever comes later is ignored: no status ever follows.
    m.handle(Event::Synced {
        started: t0,
        report: report(t0, Lsn(START.0 + 100)),
    });
    m.handle(Event::Timer {
        now: t0 + 6 * SEC,
        bytes_arrived: false,
        positions: pos(Lsn(START.0 + 100), Lsn(START.0 + 100)),
        record_in_progress: None,
    });
    assert!(drain(&mut m).is_empty());
}

#[test]
fn a_failed_write_drops_what_was_pending() {
    let t0 = Instant::now();
    let mut f = feedback(t0, None);
    let mut m = started(&mut f, t0);
    m.handle(Event::Arrived {
        msg: xlogdata(START, &[7; 100]),
        at: t0,
    });
    drain(&mut m);
    m.handle(Event::SinkFailed(SinkError::Discontinuity {
        expected: START,
        got: Lsn(1),
    }));
    assert_eq!(names(&drain(&mut m)), ["fail"]);
    assert!(!m.streamed());
}

#[test]
fn a_filled_segment_is_reported_completed_and_reported_again() {
    let t0 = Instant::now();
    let mut f = feedback(t0, None);
    let mut m = started(&mut f, t0);
    m.handle(Event::Arrived {
        msg: xlogdata(START, &[7; 300]),
        at: t0,
    });
    drain(&mut m);
    // The first 200 bytes fill the segment (fdatasynced by the sink); flush
    // stops one byte short of its end until the rename.
    let seg_end = Lsn(START.0 + 200);
    m.handle(Event::Wrote {
        n: 200,
        filled: Some(report(t0, Lsn(seg_end.0 - 1))),
    });
    let a = drain(&mut m);
    assert_eq!(names(&a), ["send", "complete"]);
    assert_eq!(sends(&a)[0].flush, Lsn(seg_end.0 - 1));
    m.handle(Event::Completed(report(t0, seg_end)));
    let a = drain(&mut m);
    assert_eq!(names(&a), ["send", "write"]);
    assert_eq!(sends(&a)[0].flush, seg_end);
    match &a[1] {
        Action::Write { at, data } => assert_eq!((*at, data.len()), (seg_end, 100)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn wal_at_the_wrong_position_fails() {
    let t0 = Instant::now();
    let mut f = feedback(t0, None);
    let mut m = started(&mut f, t0);
    m.handle(Event::Arrived {
        msg: xlogdata(Lsn(START.0 + 8), &[7; 100]),
        at: t0,
    });
    let a = drain(&mut m);
    assert_eq!(names(&a), ["fail"]);
    match &a[0] {
        Action::Fail(ReceiverError::Unexpected(m)) => {
            assert!(m.contains("expected 0/3000000"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn endpos_ends_after_the_batch_is_durable_and_reported() {
    let t0 = Instant::now();
    let mut f = feedback(t0, None);
    let mut m = machine(&mut f, Some(Lsn(START.0 + 50)));
    m.start(t0, Positions::default());
    m.handle(Event::Arrived {
        msg: xlogdata(START, &[7; 100]),
        at: t0,
    });
    drain(&mut m);
    m.handle(Event::Wrote {
        n: 100,
        filled: None,
    });
    assert_eq!(names(&drain(&mut m)), ["sync"]);
    m.handle(Event::Synced {
        started: t0,
        report: report(t0, Lsn(START.0 + 100)),
    });
    let a = drain(&mut m);
    assert_eq!(names(&a), ["send", "end"]);
    assert!(matches!(a[1], Action::End(LoopEnd::Endpos)));
}

#[test]
fn the_servers_copydone_ends_the_stream_after_the_fsync() {
    let t0 = Instant::now();
    let mut f = feedback(t0, None);
    let mut m = started(&mut f, t0);
    m.handle(Event::Arrived {
        msg: BackendMessage::CopyDone,
        at: t0,
    });
    assert_eq!(names(&drain(&mut m)), ["sync"]);
    m.handle(Event::Synced {
        started: t0,
        report: report(t0, Lsn::INVALID),
    });
    let a = drain(&mut m);
    assert!(
        matches!(a.last(), Some(Action::End(LoopEnd::ServerCopyDone))),
        "{a:?}"
    );
    // Nothing after the end.
    m.handle(Event::Drained);
    assert!(drain(&mut m).is_empty());
}

#[test]
fn command_complete_and_errors_end_the_stream() {
    let t0 = Instant::now();
    let mut f = feedback(t0, None);
    let mut m = started(&mut f, t0);
    m.handle(Event::Arrived {
        msg: BackendMessage::CommandComplete {
            tag: "COPY 0".into(),
        },
        at: t0,
    });
    assert_eq!(names(&drain(&mut m)), ["sync"]);
    m.handle(Event::Synced {
        started: t0,
        report: report(t0, Lsn::INVALID),
    });
    assert!(matches!(
        drain(&mut m).last(),
        Some(Action::End(LoopEnd::ServerClosed))
    ));

    let mut f = feedback(t0, None);
    let mut m = started(&mut f, t0);
    m.handle(Event::Arrived {
        msg: BackendMessage::Error(ServerMessage {
            severity: "ERROR".into(),
            code: "58P01".into(),
            message: "requested WAL segment has already been removed".into(),
            detail: None,
            hint: None,
        }),
        at: t0,
    });
    let a = drain(&mut m);
    match &a[..] {
        [Action::Fail(e)] => assert!(e.to_string().contains("already been removed"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_reply_request_is_answered_after_the_fsync() {
    let t0 = Instant::now();
    let mut f = feedback(t0, None);
    let mut m = started(&mut f, t0);
    m.handle(Event::Arrived {
        msg: keepalive(Lsn(START.0 + 4096), true),
        at: t0,
    });
    let a = drain(&mut m);
    assert_eq!(names(&a), ["server_has", "read_more"]);
    assert!(matches!(a[0], Action::ServerHas(l) if l == Lsn(START.0 + 4096)));
    m.handle(Event::Drained);
    assert_eq!(names(&drain(&mut m)), ["sync"]);
    // Flush did not advance, but the server asked.
    m.handle(Event::Synced {
        started: t0,
        report: report(t0, Lsn::INVALID),
    });
    assert_eq!(names(&drain(&mut m)), ["send", "tick"]);

    // Without a request, and nothing new: no status.
    m.handle(Event::Arrived {
        msg: keepalive(Lsn(START.0 + 4096), false),
        at: t0,
    });
    drain(&mut m);
    m.handle(Event::Drained);
    drain(&mut m);
    m.handle(Event::Synced {
        started: t0,
        report: report(t0, Lsn::INVALID),
    });
    assert_eq!(names(&drain(&mut m)), ["tick"]);
}

#[test]
fn a_stop_ends_the_stream() {
    let t0 = Instant::now();
    let mut f = feedback(t0, None);
    let mut m = started(&mut f, t0);
    m.handle(Event::Stop);
    assert!(matches!(drain(&mut m)[..], [Action::End(LoopEnd::Signal)]));
    m.handle(Event::Arrived {
        msg: xlogdata(START, &[7; 10]),
        at: t0,
    });
    assert!(drain(&mut m).is_empty());
}

#[test]
fn timers_ping_at_half_the_timeout_and_time_out_at_it() {
    let t0 = Instant::now();
    let mut f = feedback(t0, None);
    let mut m = started(&mut f, t0);
    let p = pos(START, START);
    assert_eq!(m.deadline(), t0 + 5 * SEC);
    m.handle(Event::Timer {
        now: t0 + 4 * SEC,
        bytes_arrived: false,
        positions: p,
        record_in_progress: None,
    });
    assert!(drain(&mut m).is_empty());
    m.handle(Event::Timer {
        now: t0 + 5 * SEC,
        bytes_arrived: false,
        positions: p,
        record_in_progress: None,
    });
    let a = drain(&mut m);
    assert!(sends(&a)[0].reply_requested, "{a:?}");
    assert_eq!(m.deadline(), t0 + 10 * SEC);
    m.handle(Event::Timer {
        now: t0 + 10 * SEC,
        bytes_arrived: false,
        positions: p,
        record_in_progress: None,
    });
    assert!(matches!(
        drain(&mut m)[..],
        [Action::Fail(ReceiverError::Timeout(10))]
    ));
}

#[test]
fn bytes_arriving_keep_the_connection_alive() {
    let t0 = Instant::now();
    let mut f = feedback(t0, None);
    let mut m = started(&mut f, t0);
    let p = pos(START, START);
    m.handle(Event::Timer {
        now: t0 + 9 * SEC,
        bytes_arrived: true,
        positions: p,
        record_in_progress: None,
    });
    assert!(drain(&mut m).is_empty());
    // Past the timeout counted from the start, but not from the bytes.
    m.handle(Event::Timer {
        now: t0 + 12 * SEC,
        bytes_arrived: false,
        positions: p,
        record_in_progress: None,
    });
    assert!(drain(&mut m).is_empty());
    // Pinged at half the timeout after the bytes.
    m.handle(Event::Timer {
        now: t0 + 14 * SEC,
        bytes_arrived: false,
        positions: p,
        record_in_progress: None,
    });
    let a = drain(&mut m);
    assert!(sends(&a)[0].reply_requested, "{a:?}");
}

#[test]
fn the_status_interval_sends_periodic_updates() {
    let t0 = Instant::now();
    let mut f = feedback(t0, Some(SEC));
    let mut m = started(&mut f, t0);
    assert_eq!(m.deadline(), t0 + SEC);
    let p = pos(START, START);
    m.handle(Event::Timer {
        now: t0 + SEC,
        bytes_arrived: true,
        positions: p,
        record_in_progress: None,
    });
    let a = drain(&mut m);
    assert_eq!(sends(&a).len(), 1);
    assert!(!sends(&a)[0].reply_requested);
    assert_eq!(m.deadline(), t0 + 2 * SEC);
}

#[test]
fn a_long_fsync_is_not_the_servers_silence() {
    let t0 = Instant::now();
    let mut f = feedback(t0, None);
    let mut m = started(&mut f, t0);
    m.handle(Event::Arrived {
        msg: keepalive(START, false),
        at: t0,
    });
    drain(&mut m);
    m.handle(Event::Drained);
    drain(&mut m);
    // An fdatasync of 8 s: the ping is due 5 s after it, not at once.
    m.handle(Event::Synced {
        started: t0,
        report: report(t0 + 8 * SEC, Lsn::INVALID),
    });
    drain(&mut m);
    assert_eq!(m.deadline(), t0 + 13 * SEC);
}

#[test]
fn a_long_batch_reads_the_clock_and_stops_when_a_timer_is_due() {
    let t0 = Instant::now();
    let mut f = feedback(t0, Some(SEC));
    let mut m = started(&mut f, t0);
    m.handle(Event::Arrived {
        msg: keepalive(START, false),
        at: t0,
    });
    for _ in 1..CLOCK_EVERY {
        assert_eq!(names(&drain(&mut m)), ["server_has", "read_more"]);
        m.handle(Event::AlsoReady(keepalive(START, false)));
    }
    assert_eq!(names(&drain(&mut m)), ["server_has", "read_clock"]);
    // Not due yet: go on reading.
    m.handle(Event::Clock(t0 + SEC / 2));
    assert_eq!(names(&drain(&mut m)), ["read_more"]);
    for _ in 0..CLOCK_EVERY {
        m.handle(Event::AlsoReady(keepalive(START, false)));
        drain(&mut m);
    }
    // The status interval is due: the batch ends here.
    m.handle(Event::Clock(t0 + 2 * SEC));
    assert_eq!(names(&drain(&mut m)), ["sync"]);
}

#[test]
fn a_batch_is_cut_at_its_size_limit() {
    let t0 = Instant::now();
    let mut f = feedback(t0, None);
    let mut m = started(&mut f, t0);
    let big = vec![0u8; MAX_BATCH_BYTES];
    m.handle(Event::Arrived {
        msg: xlogdata(START, &big),
        at: t0,
    });
    drain(&mut m);
    m.handle(Event::Wrote {
        n: MAX_BATCH_BYTES,
        filled: None,
    });
    assert_eq!(names(&drain(&mut m)), ["sync"]);
}

#[test]
fn an_empty_xlogdata_writes_nothing() {
    let t0 = Instant::now();
    let mut f = feedback(t0, None);
    let mut m = started(&mut f, t0);
    m.handle(Event::Arrived {
        msg: xlogdata(START, &[]),
        at: t0,
    });
    assert_eq!(
        names(&drain(&mut m)),
        ["server_has", "received", "read_more"]
    );
    assert!(!m.streamed());
}

#[test]
fn a_malformed_message_fails() {
    let t0 = Instant::now();
    let mut f = feedback(t0, None);
    let mut m = started(&mut f, t0);
    m.handle(Event::Arrived {
        msg: BackendMessage::CopyData(Bytes::from_static(b"w12")),
        at: t0,
    });
    assert!(matches!(
        drain(&mut m)[..],
        [Action::Fail(ReceiverError::Stream(_))]
    ));
}

/// Writes `len` bytes of a record begun at START (whose end never comes),
/// then for up to three patiences answers, once a second, the server's
/// keepalives (it has sent everything: its `walEnd` is what was received,
/// and it asks for replies) and the timer. The failure the stream ends with,
/// and how long after the write; `None` if it never ends.
fn idle_inside_a_record(len: usize) -> Option<(Duration, ReceiverError)> {
    use crate::receiver::session::incomplete::PATIENCE;
    let t0 = Instant::now();
    let mut f = feedback(t0, Some(SEC));
    let mut m = started(&mut f, t0);
    m.handle(Event::Arrived {
        msg: xlogdata(START, &vec![7; len]),
        at: t0,
    });
    drain(&mut m);
    m.handle(Event::Wrote {
        n: len,
        filled: None,
    });
    m.handle(Event::Drained);
    drain(&mut m);
    let received = Lsn(START.0 + len as u64);
    let mut now = t0;
    while now < t0 + 3 * PATIENCE {
        m.handle(Event::Arrived {
            msg: keepalive(received, true),
            at: now,
        });
        m.handle(Event::Drained);
        drain(&mut m);
        now += SEC;
        m.handle(Event::Timer {
            now,
            // The keepalives: the server is alive.
            bytes_arrived: true,
            positions: pos(START, START),
            record_in_progress: Some(START),
        });
        if let Some(Action::Fail(e)) = drain(&mut m).pop() {
            return Some((now - t0, e));
        }
    }
    None
}

/// Torture seed 305: a flipped bit in `xl_tot_len` made a record claim 2 MiB
/// while the synchronous primary, waiting for walrcv, had no more WAL to
/// send. The server stays alive (keepalives asking for replies), so no
/// timeout fires: the stream ends once the record has been incomplete where
/// the server's WAL ends, off a page boundary, for the patience.
#[test]
fn a_record_that_cannot_complete_with_what_the_server_has_ends_the_stream() {
    use crate::receiver::session::incomplete::PATIENCE;
    let (after, e) = idle_inside_a_record(100).expect("the stream ends");
    assert_eq!(after, SEC + PATIENCE, "after the patience, not before");
    match e {
        ReceiverError::IncompleteRecord {
            record, received, ..
        } => assert_eq!((record, received), (START, Lsn(START.0 + 100))),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_record_stopped_at_a_page_boundary_waits_for_the_server() {
    // START is on a page boundary: 8192 bytes end on the next one.
    let ended = idle_inside_a_record(8192);
    assert!(ended.is_none(), "{ended:?}");
}
