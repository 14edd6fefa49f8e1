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

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::fake_primary::{
    assert_archive_matches, check_invariants_after, describe, Wal, SEG, START,
};
use crate::support::fake_walsender::{FakeConfig, FakeWalsender, ReplicationStream, ServerMsg};
use crate::support::{format_lsn, walrcv_command};

/// Chunk of WAL sent per XLogData message (one batch, one fdatasync each).
const CHUNK: usize = 64 * 1024;
/// The fixture's end (segments 8, 9 and A complete).
const END: u64 = START + 3 * SEG;

/// The `walrcv stream` process under test, its stderr in a file.
struct Walrcv {
    child: Option<Child>,
    log: PathBuf,
    _logdir: TempDir,
}

impl Walrcv {
    fn start(archive: &Path, port: u16, failpoints: &str) -> Walrcv {
        let logdir = tempfile::tempdir().expect("log dir");
        let log = logdir.path().join("walrcv.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = walrcv_command()
            .args(["stream", "-D"])
            .arg(archive)
            .arg("-d")
            .arg(format!(
                "host=127.0.0.1 port={port} user=postgres sslmode=disable connect_timeout=5"
            ))
            .args(["--synchronous", "--status-interval", "10", "-v"])
            .env("FAILPOINTS", failpoints)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start walrcv");
        Walrcv {
            child: Some(child),
            log,
            _logdir: logdir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait (bounded) for exit status 0.
    fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "walrcv exited with {status}\n{}",
                    self.log()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "walrcv did not stop within 20 s of SIGTERM\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Walrcv {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
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
    walrcv: &Walrcv,
    t0: Instant,
) -> FirstSession {
    let mut wal = Wal::new();
    loop {
        assert!(
            wal.remaining() > 0,
            "the whole fixture was acknowledged: the fault never ended the session\n{}\n{}",
            describe(&stream.status_updates(), t0),
            walrcv.log()
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
                walrcv.log()
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
/// of the fixture; walrcv is stopped and the archive compared.
async fn finish(
    fake: &mut FakeWalsender,
    walrcv: Walrcv,
    dir: &Path,
    restart_by: u64,
    t0: Instant,
) {
    let mut stream = fake.next_stream(Duration::from_secs(20)).await;
    assert!(
        stream.start_lsn <= restart_by && stream.start_lsn >= START,
        "second session starts at {}, after {}\n{}",
        format_lsn(stream.start_lsn),
        format_lsn(restart_by),
        walrcv.log()
    );
    let mut wal = Wal::from_segment_start(stream.start_lsn);
    while wal.remaining() > 0 {
        let (start, data) = wal.next(4 * CHUNK);
        stream
            .send(&[ServerMsg::xlog(start, &data)])
            .await
            .unwrap_or_else(|e| panic!("send: {e}\n{}", walrcv.log()));
    }
    let done = stream
        .wait_for_status(Duration::from_secs(20), |s| s.flush == END)
        .await;
    assert!(
        done.is_some(),
        "flush never reached the end {}\n{}\n{}",
        format_lsn(END),
        describe(&stream.status_updates(), t0),
        walrcv.log()
    );
    check_invariants_after(&stream.status_updates(), &wal, t0, stream.start_lsn);
    walrcv.stop();
    assert_archive_matches(dir, END);
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
    let walrcv = Walrcv::start(dir.path(), fake.port(), failpoints);
    let mut stream = fake.next_stream(Duration::from_secs(20)).await;
    assert_eq!(stream.start_lsn, START, "{}", walrcv.log());
    let first = run_until_fault(&mut stream, &walrcv, t0).await;
    let durable = (expect.max_flush)(first.acked_before_fault);
    assert!(
        first.max_flush <= durable,
        "flush {} reported past the last durable point {} after the fault\n{}\n{}",
        format_lsn(first.max_flush),
        format_lsn(durable),
        describe(&stream.status_updates(), t0),
        walrcv.log()
    );
    check_invariants_after(&stream.status_updates(), &first.wal, t0, START);
    drop(stream);
    let log = walrcv.log();
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
/// segment 8 was reported. Its data was fdatasynced before the rename, so the
/// next session may keep it: it fsyncs the directory again (a new
/// descriptor, at start, before reporting anything) and starts after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failpoint_directory_fsync_after_completing_a_segment() {
    fault_case(
        "complete-fsync-dir=1*return->off",
        "could not fsync",
        Expect {
            max_flush: |_| START + SEG - 1,
            restart_by: |_| START + SEG,
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
