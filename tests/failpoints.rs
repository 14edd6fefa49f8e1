//! Faults injected into the real `walrcv` binary through its failpoints
//! (cargo feature `failpoints`, `$FAILPOINTS`; see `src/archive/failpoints.rs`):
//! one test per site of the archive's durable IO.
//!
//! Each test streams the real WAL of `testdata/wal/pg15` from the scripted fake
//! primary in 64 kB chunks, waiting for each to be acknowledged, until the
//! injected fault ends the session. It then checks, from the wire:
//!
//! - the session ended (the connection was closed by walrcv): the failed
//!   operation was not retried on the same descriptor, or the WAL it concerned
//!   would have been acknowledged;
//! - no flush position past the last durable and verified byte was ever sent;
//! - the next session starts at or before that point (it re-streams), and once
//!   the rest is streamed the archive is byte-identical to the fixture, with
//!   no gap and no stray file.
//!
//! The history-file site needs a timeline switch, so it runs against real
//! servers (a standby promoted while walrcv streams from it).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::fake_primary::{
    assert_archive_matches, check_invariants_after, describe, Wal, SEG, START,
};
use crate::stream::{
    assert_complete_segments_identical, assert_only_barman_names, stream_through_a_promotion,
    Promoted,
};
use crate::support::fake_walsender::{FakeConfig, FakeWalsender, ReplicationStream, ServerMsg};
use crate::support::{format_lsn, BackgroundProcess, Walrcv};

/// Chunk of WAL sent per XLogData message (one batch, one fdatasync each).
const CHUNK: usize = 64 * 1024;
/// The fixture's end (segments 8, 9 and A complete).
const END: u64 = START + 3 * SEG;

/// `walrcv stream` against `conninfo`, synchronous, with `$FAILPOINTS`.
fn spawn_walrcv(archive: &Path, conninfo: &str, failpoints: &str) -> BackgroundProcess {
    Walrcv::new(["stream", "-D"])
        .arg(archive)
        .args(["-d", conninfo])
        .args(["--synchronous", "--status-interval", "10", "-v"])
        .env("FAILPOINTS", failpoints)
        .spawn()
}

/// [`spawn_walrcv`] against the fake primary on `port`.
fn spawn_against_fake(archive: &Path, port: u16, failpoints: &str) -> BackgroundProcess {
    let conninfo = format!("host=127.0.0.1 port={port} user=postgres sslmode=disable");
    spawn_walrcv(archive, &conninfo, failpoints)
}

/// SIGTERM; walrcv must exit 0.
fn stop(mut walrcv: BackgroundProcess) {
    let status = walrcv.terminate();
    assert!(
        status.success(),
        "walrcv exited with {status}\n{}",
        walrcv.stderr()
    );
}

/// What the first session did before the fault ended it.
struct FirstSession {
    /// The WAL sent on it.
    wal: Wal,
    /// Sent end before the chunk during which the session ended.
    acked_before_fault: u64,
    /// Highest flush position walrcv reported on it.
    max_flush: u64,
}

/// Streams the fixture chunk by chunk until the session ends.
async fn run_until_fault(
    stream: &mut ReplicationStream,
    walrcv: &BackgroundProcess,
    t0: Instant,
) -> FirstSession {
    let mut wal = Wal::new();
    loop {
        assert!(
            wal.remaining() > 0,
            "the whole fixture was acknowledged: the fault never ended the session\n{}\n{}",
            describe(&stream.status_updates(), t0),
            walrcv.stderr()
        );
        let before = wal.pos();
        let (start, data) = wal.next(CHUNK);
        if stream.send(&[ServerMsg::xlog(start, &data)]).await.is_err() {
            return first_session(stream, wal, before);
        }
        let target = wal.verified_end();
        let acked = stream
            .wait_for_status(Duration::from_secs(10), |s| s.flush >= target)
            .await;
        if acked.is_none() {
            let closed = stream.wait_closed(Duration::from_secs(10)).await;
            assert!(
                closed.is_some(),
                "chunk ending at {} neither acknowledged nor the session ended\n{}\n{}",
                format_lsn(wal.pos()),
                describe(&stream.status_updates(), t0),
                walrcv.stderr()
            );
            return first_session(stream, wal, before);
        }
    }
}

fn first_session(stream: &ReplicationStream, wal: Wal, acked_before_fault: u64) -> FirstSession {
    let max_flush = stream
        .status_updates()
        .iter()
        .map(|s| s.flush)
        .max()
        .unwrap_or(0);
    FirstSession {
        wal,
        acked_before_fault,
        max_flush,
    }
}

/// The second session: it must start at a segment start at or before
/// `restart_by` (re-streaming what the fault left unsure), then receives the rest
/// of the fixture; walrcv is stopped and the archive compared. Returns
/// walrcv's log.
async fn finish(
    fake: &mut FakeWalsender,
    walrcv: BackgroundProcess,
    dir: &Path,
    restart_by: u64,
    t0: Instant,
) -> String {
    let mut stream = fake.next_stream(Duration::from_secs(20)).await;
    assert!(
        stream.start_lsn <= restart_by && stream.start_lsn >= START,
        "second session starts at {}, after {}\n{}",
        format_lsn(stream.start_lsn),
        format_lsn(restart_by),
        walrcv.stderr()
    );
    let mut wal = Wal::from_segment_start(stream.start_lsn);
    while wal.remaining() > 0 {
        let (start, data) = wal.next(4 * CHUNK);
        stream
            .send(&[ServerMsg::xlog(start, &data)])
            .await
            .unwrap_or_else(|e| panic!("send: {e}\n{}", walrcv.stderr()));
    }
    let done = stream
        .wait_for_status(Duration::from_secs(20), |s| s.flush == END)
        .await;
    assert!(
        done.is_some(),
        "flush never reached the end {}\n{}\n{}",
        format_lsn(END),
        describe(&stream.status_updates(), t0),
        walrcv.stderr()
    );
    check_invariants_after(&stream.status_updates(), &wal, t0, stream.start_lsn);
    let log = walrcv.stderr();
    stop(walrcv);
    assert_archive_matches(dir, END);
    log
}

/// What a fault leaves durable, from the sent end before the chunk during
/// which the session ended.
struct Expect {
    /// Highest flush walrcv may report on the faulty session.
    max_flush: fn(u64) -> u64,
    /// Latest start point of the next session.
    restart_by: fn(u64) -> u64,
}

/// One failpoint case against the fake primary.
async fn fault_case(failpoints: &str, expected_in_log: &str, expect: Expect) {
    let _serial = crate::fake_primary::SERIAL.lock().await;
    let t0 = Instant::now();
    let mut fake = FakeWalsender::start(FakeConfig::pg15_fixture()).await;
    let dir = tempfile::tempdir().expect("archive dir");
    let walrcv = spawn_against_fake(dir.path(), fake.port(), failpoints);
    let mut stream = fake.next_stream(Duration::from_secs(20)).await;
    assert_eq!(stream.start_lsn, START, "{}", walrcv.stderr());
    let first = run_until_fault(&mut stream, &walrcv, t0).await;
    let durable = (expect.max_flush)(first.acked_before_fault);
    assert!(
        first.max_flush <= durable,
        "flush {} reported past the last durable point {} after the fault\n{}\n{}",
        format_lsn(first.max_flush),
        format_lsn(durable),
        describe(&stream.status_updates(), t0),
        walrcv.stderr()
    );
    check_invariants_after(&stream.status_updates(), &first.wal, t0, START);
    drop(stream);
    let log = walrcv.stderr();
    assert!(
        log.contains("failpoint fired") && log.contains(expected_in_log),
        "the log does not show the injected fault ({expected_in_log:?}):\n{log}"
    );
    let restart_by = (expect.restart_by)(first.acked_before_fault);
    finish(&mut fake, walrcv, dir.path(), restart_by, t0).await;
}

/// The WAL written before the failing chunk was acknowledged, nothing after:
/// the next session re-streams the `.partial` from its start.
const UP_TO_THE_FAILING_CHUNK: Expect = Expect {
    max_flush: |acked| acked,
    restart_by: |acked| acked,
};

/// Segment 8 was filled and fdatasynced, its rename failed: it is still
/// `.partial`, so flush stays one byte short of its end.
const SEGMENT_8_NOT_COMPLETE: Expect = Expect {
    max_flush: |_| START + SEG - 1,
    restart_by: |_| START,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failpoint_pwrite_of_wal() {
    fault_case(
        "wal-pwrite=5*off->1*return->off",
        "write to",
        UP_TO_THE_FAILING_CHUNK,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failpoint_fdatasync_of_wal() {
    fault_case(
        "wal-fdatasync=5*off->1*return->off",
        "could not fsync",
        UP_TO_THE_FAILING_CHUNK,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failpoint_rename_completing_a_segment() {
    fault_case(
        "complete-rename=1*return->off",
        "could not rename",
        SEGMENT_8_NOT_COMPLETE,
    )
    .await;
}

/// The rename happened but the directory fsync after it failed: nothing past
/// segment 8 was reported, and its complete name is of unknown durability
/// (a new fsync of the directory on a new descriptor proves nothing). The
/// next session renames it back to `.partial` and streams it again from its
/// start (the rename and the directory fsync after it make the name durable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failpoint_directory_fsync_after_completing_a_segment() {
    fault_case(
        "complete-fsync-dir=1*return->off",
        "could not fsync",
        Expect {
            max_flush: |_| START + SEG - 1,
            restart_by: |_| START,
        },
    )
    .await;
}

/// The first preparation is segment 8's, made inline when the stream starts;
/// the second is segment 9's, on the helper thread: it fails, and crossing
/// into segment 9 ends the session (segment 8 is complete by then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failpoint_preparation_of_the_next_segment() {
    fault_case(
        "prepare-pwrite=1*off->1*return(ENOSPC)->off",
        "No space left on device",
        Expect {
            max_flush: |_| START + SEG,
            restart_by: |_| START + SEG,
        },
    )
    .await;
}

/// The fsync of the files already in the archive fails at start (on segment
/// 8, the first one): that session ends before streaming. A new fsync on a
/// new descriptor would return 0 whether or not the pages reached the disk,
/// so the next session does not trust segment 8: it streams it again from
/// its start (and the `.partial` after it), never reporting it flushed before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failpoint_fsync_of_existing_files_at_start() {
    let _serial = crate::fake_primary::SERIAL.lock().await;
    let t0 = Instant::now();
    let mut fake = FakeWalsender::start(FakeConfig::pg15_fixture()).await;
    let dir = tempfile::tempdir().expect("archive dir");
    // A first run leaves segment 8 complete and segment 9 `.partial`.
    let walrcv = spawn_against_fake(dir.path(), fake.port(), "");
    let mut stream = fake.next_stream(Duration::from_secs(20)).await;
    let mut wal = Wal::new();
    let (start, data) = wal.next(SEG as usize + 100_000);
    stream
        .send(&[ServerMsg::xlog(start, &data)])
        .await
        .unwrap_or_else(|e| panic!("send: {e}\n{}", walrcv.stderr()));
    let target = wal.verified_end();
    let acked = stream
        .wait_for_status(Duration::from_secs(10), |s| s.flush >= target)
        .await;
    assert!(
        acked.is_some(),
        "first run: no flush to {}\n{}",
        format_lsn(target),
        walrcv.stderr()
    );
    stop(walrcv);
    drop(stream);
    assert_archive_matches(dir.path(), wal.pos());

    let walrcv = spawn_against_fake(dir.path(), fake.port(), "startup-fsync=1*return->off");
    let log = finish(&mut fake, walrcv, dir.path(), START, t0).await;
    assert!(
        log.contains("failpoint fired failpoint=startup-fsync"),
        "the startup fsync fault did not fire:\n{log}"
    );
}

/// The same fault on a segment that complete segments follow: walrcv cannot
/// stream it again without rewriting them, so it stops (exit 5) naming it,
/// and reports nothing flushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failpoint_fsync_failure_of_an_older_segment_stops_walrcv() {
    let _serial = crate::fake_primary::SERIAL.lock().await;
    let mut fake = FakeWalsender::start(FakeConfig::pg15_fixture()).await;
    let dir = tempfile::tempdir().expect("archive dir");
    // A first run leaves segments 8 and 9 complete and A `.partial`.
    let walrcv = spawn_against_fake(dir.path(), fake.port(), "");
    let mut stream = fake.next_stream(Duration::from_secs(20)).await;
    let mut wal = Wal::new();
    let (start, data) = wal.next(2 * SEG as usize + 100_000);
    stream
        .send(&[ServerMsg::xlog(start, &data)])
        .await
        .unwrap_or_else(|e| panic!("send: {e}\n{}", walrcv.stderr()));
    let target = wal.verified_end();
    let acked = stream
        .wait_for_status(Duration::from_secs(10), |s| s.flush >= target)
        .await;
    assert!(acked.is_some(), "first run: no flush\n{}", walrcv.stderr());
    stop(walrcv);
    drop(stream);

    let mut walrcv = spawn_against_fake(dir.path(), fake.port(), "startup-fsync=1*return->off");
    let status = tokio::task::block_in_place(|| walrcv.wait_timeout(Duration::from_secs(30)));
    let log = walrcv.stderr();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(5),
        "walrcv must stop with exit 5\n{log}"
    );
    assert!(
        log.contains("000000010000000000000008") && log.contains("unknown durability"),
        "{log}"
    );
    // No session after the fault streamed anything: nothing was reported.
    assert!(
        fake.try_next_stream(Duration::from_millis(200))
            .await
            .is_none(),
        "{log}"
    );
}

/// The history file of a new timeline cannot be stored: the session ends,
/// the next one fetches and stores it again and follows the new timeline,
/// ending with an archive identical to the promoted server's WAL.
#[test]
fn failpoint_history_file_write() {
    let Promoted {
        standby,
        dir,
        mut walrcv,
        ..
    } = stream_through_a_promotion(|conn, dir| {
        spawn_walrcv(dir, conn, "history-rename=1*return->off")
    });
    let log = walrcv.stderr();
    assert!(
        log.contains("failpoint fired failpoint=history-rename"),
        "the history fault did not fire:\n{log}"
    );
    let status = walrcv.terminate();
    assert!(status.success(), "SIGTERM exits 0: {}", walrcv.stderr());
    let history = std::fs::read(dir.path().join("00000002.history")).expect("history file");
    let expected = std::fs::read(standby.wal_dir().join("00000002.history")).expect("server's");
    assert_eq!(
        history, expected,
        "00000002.history differs from the server's"
    );
    assert!(assert_complete_segments_identical(dir.path(), &standby.wal_dir()) >= 1);
    assert_only_barman_names(dir.path());
}

/// The fsync of the archive directory fails at start: which names are in
/// doubt is not known one by one, so the next session stops (exit 5) rather
/// than trust a new fsync of the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failpoint_directory_fsync_at_start_stops_walrcv() {
    let _serial = crate::fake_primary::SERIAL.lock().await;
    let mut fake = FakeWalsender::start(FakeConfig::pg15_fixture()).await;
    let dir = tempfile::tempdir().expect("archive dir");
    let mut walrcv = spawn_against_fake(dir.path(), fake.port(), "startup-fsync-dir=1*return->off");
    let status = tokio::task::block_in_place(|| walrcv.wait_timeout(Duration::from_secs(30)));
    let log = walrcv.stderr();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(5),
        "walrcv must stop with exit 5\n{log}"
    );
    assert!(
        log.contains("failpoint fired failpoint=startup-fsync-dir")
            && log.contains("an fsync of the archive directory failed"),
        "{log}"
    );
    assert!(fake
        .try_next_stream(Duration::from_millis(200))
        .await
        .is_none());
}
