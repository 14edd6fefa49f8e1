//! The synchronous commit path against real PostgreSQL servers: walrcv as the
//! only synchronous standby holds commits exactly while it cannot flush (SIGSTOP)
//! and releases them at once when it can again (SIGCONT); and a fast shutdown of
//! the primary, which waits for the receiver to flush and acknowledge
//! everything sent (the shutdown checkpoint included), completes promptly.
//!
//! Every wait here is bounded: commits that may block run in a background psql
//! killed at the end of the test, `pg_ctl stop` has a time limit, and a stopped
//! walrcv is always sent SIGCONT again (a guard), also when the test fails.

use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::support::{
    archive_dir, assert_partial_matches, assert_segments_identical, complete_segments, format_lsn,
    parse_lsn, wait_until, wal_file_name, walrcv_run, walrcv_spawn, BackgroundProcess, PgServer,
};

/// The application_name walrcv connects with, named in synchronous_standby_names.
const APP: &str = "walrcv";
/// One commit with walrcv flushing normally must not take longer than this.
const COMMIT_LIMIT: Duration = Duration::from_secs(5);
/// A commit released by SIGCONT must complete within this.
const RELEASE_LIMIT: Duration = Duration::from_secs(5);
/// How long a commit must stay blocked while walrcv is stopped.
const BLOCKED_FOR: Duration = Duration::from_secs(3);
/// A fast shutdown must complete within this...
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);
/// ...and `pg_ctl stop` gives up (the test fails) after this.
const SHUTDOWN_GIVE_UP: Duration = Duration::from_secs(20);
/// How long walrcv is stopped while the primary shuts down (paused variant).
const PAUSE: Duration = Duration::from_secs(2);

/// Sends SIGCONT to the process when dropped: a walrcv stopped by the test is
/// never left stopped, whatever happens after the SIGSTOP.
struct ContGuard(libc::pid_t);

impl ContGuard {
    /// SIGSTOP now, SIGCONT on drop (or on [`resume`](Self::resume)).
    fn stop(p: &mut BackgroundProcess) -> ContGuard {
        assert!(
            p.is_running(),
            "walrcv exited before SIGSTOP:\n{}",
            p.stderr()
        );
        ContGuard::stop_pid(p.pid() as libc::pid_t)
    }

    /// The same for any process (e.g. a server's walsender).
    fn stop_pid(pid: libc::pid_t) -> ContGuard {
        // SAFETY: plain kill(2); a child of ours is still running (not reaped).
        let r = unsafe { libc::kill(pid, libc::SIGSTOP) };
        assert_eq!(r, 0, "SIGSTOP {pid}: {}", std::io::Error::last_os_error());
        ContGuard(pid)
    }

    fn resume(self) {}
}

impl Drop for ContGuard {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child; harmless if it has exited (it is
        // reaped only by its BackgroundProcess, which outlives this guard).
        unsafe {
            libc::kill(self.0, libc::SIGCONT);
        }
    }
}

/// walrcv streaming into `dir` as application_name `walrcv`, connected and
/// listed as streaming in pg_stat_replication.
fn start_walrcv(pg: &PgServer, dir: &Path) -> BackgroundProcess {
    let conn = format!("{} application_name={APP}", pg.conninfo());
    let mut rcv = walrcv_spawn(&["stream", "-D", dir.to_str().unwrap(), "-d", &conn, "-v"]);
    pg.wait_streaming(APP, Some(&mut rcv), Duration::from_secs(30));
    rcv
}

/// One synchronous commit, which must complete within [`COMMIT_LIMIT`]
/// (psql is killed after twice that); returns how long it took.
fn timed_commit(pg: &PgServer, rcv: &BackgroundProcess, sql: &str) -> Duration {
    let t = Instant::now();
    let r = pg.try_psql_timeout(sql, COMMIT_LIMIT * 2);
    let took = t.elapsed();
    if let Err(e) = r {
        panic!(
            "commit {sql:?} failed or hung ({took:?}): {e}\n\
             pg_stat_replication: {:?}\n--- walrcv stderr ---\n{}",
            pg.stat_replication(),
            rcv.stderr()
        );
    }
    assert!(
        took < COMMIT_LIMIT,
        "commit {sql:?} took {took:?} (limit {COMMIT_LIMIT:?}) with walrcv as synchronous \
         standby: pg_stat_replication {:?}",
        pg.stat_replication()
    );
    took
}

/// Runs SQL that may wait for walrcv (a synchronous commit): fails the test,
/// with walrcv's log, if it does not complete within 30 s.
fn bounded_sql(pg: &PgServer, rcv: &BackgroundProcess, sql: &str) -> String {
    pg.try_psql_timeout(sql, Duration::from_secs(30))
        .unwrap_or_else(|e| {
            panic!(
                "{sql:?} failed or hung: {e}\npg_stat_replication: {:?}\n\
                 --- walrcv stderr ---\n{}",
                pg.stat_replication(),
                rcv.stderr()
            )
        })
}

/// How many backends wait for a synchronous standby (wait_event SyncRep).
fn syncrep_waiters(pg: &PgServer) -> u32 {
    pg.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
        .parse()
        .unwrap()
}

/// The archive holds the primary's WAL of `timeline` up to `upto` (works
/// with the server stopped): every complete segment is
/// identical to the primary's, and the segment holding the byte before `upto`
/// is either complete or a `.partial` whose bytes up to `upto` are the primary's.
fn assert_archive_holds(archive: &Path, pg: &PgServer, timeline: u32, upto: u64) {
    assert_segments_identical(archive, pg);
    let seg = wal_file_name(timeline, upto - 1, pg.wal_segment_size());
    if complete_segments(archive).contains(&seg) {
        return;
    }
    let partial = format!("{seg}.partial");
    assert!(
        archive.join(&partial).is_file(),
        "the archive has neither {seg} nor {partial} (WAL up to {}): {:?}",
        format_lsn(upto),
        crate::support::file_names(archive)
    );
    assert_partial_matches(archive, pg, &partial, upto);
}

#[test]
fn sync_commit_waits_for_walrcv_and_is_released_by_it() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    pg.psql("CREATE TABLE t (i int)");
    let dir = archive_dir();
    let mut rcv = start_walrcv(&pg, dir.path());
    pg.make_synchronous(APP, Some(&mut rcv), Duration::from_secs(30));

    // 1. Commits complete while walrcv runs.
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        slowest = slowest.max(timed_commit(
            &pg,
            &rcv,
            &format!("INSERT INTO t VALUES ({i})"),
        ));
    }
    eprintln!("20 synchronous commits: slowest {slowest:?}");

    // 2. walrcv stopped: a commit started now waits for it.
    let guard = ContGuard::stop(&mut rcv);
    let mut commit = pg.psql_background(
        "BEGIN; INSERT INTO t VALUES (1000); SELECT pg_current_wal_insert_lsn(); COMMIT;",
    );
    wait_until(
        Duration::from_secs(10),
        "the commit to wait for the synchronous standby (wait_event SyncRep)",
        || {
            if let Some(s) = commit.try_wait() {
                panic!(
                    "the commit finished ({s}) while walrcv was stopped: {}{}",
                    commit.stdout(),
                    commit.stderr()
                );
            }
            syncrep_waiters(&pg) == 1
        },
    );
    // While it waits, the commit record is written locally: WAL up to here
    // includes it.
    let written_while_blocked = pg.current_lsn();
    if let Some(s) = commit.wait_timeout(BLOCKED_FOR) {
        panic!(
            "the commit finished ({s}) within {BLOCKED_FOR:?} while walrcv was stopped:\n{}{}",
            commit.stdout(),
            commit.stderr()
        );
    }
    assert_eq!(syncrep_waiters(&pg), 1, "the commit still waits (SyncRep)");

    // 3. walrcv resumed: the commit completes promptly.
    let t = Instant::now();
    guard.resume();
    let status: Option<ExitStatus> = commit.wait_timeout(RELEASE_LIMIT);
    let released_after = t.elapsed();
    assert!(
        status.is_some(),
        "the commit was not released within {RELEASE_LIMIT:?} of SIGCONT: \
         pg_stat_replication {:?}, SyncRep waiters {}\n--- walrcv stderr ---\n{}",
        pg.stat_replication(),
        syncrep_waiters(&pg),
        rcv.stderr()
    );
    assert!(
        status.unwrap().success(),
        "the blocked commit failed: {}",
        commit.stderr()
    );
    eprintln!("commit released {released_after:?} after SIGCONT");
    let before_commit = parse_lsn(commit.stdout().trim());

    // The flush position walrcv reported covers the commit record (which
    // starts at or after `before_commit`) ...
    let flushed = pg
        .replication_flush_lsn(APP)
        .expect("walrcv reports a flush position");
    assert!(
        flushed > before_commit,
        "walrcv's flush {} does not cover the commit (starting at or after {})",
        format_lsn(flushed),
        format_lsn(before_commit)
    );
    // ... and soon all the WAL written while the commit waited.
    let flushed = pg.wait_for_flush(APP, written_while_blocked, Duration::from_secs(10));

    // 4. Later commits complete too.
    for i in 0..5 {
        timed_commit(&pg, &rcv, &format!("INSERT INTO t VALUES ({})", 2000 + i));
    }
    assert!(rcv.is_running(), "walrcv still runs:\n{}", rcv.stderr());

    // 5. The archive holds what walrcv acknowledged, byte for byte.
    assert_archive_holds(dir.path(), &pg, 1, flushed);

    pg.psql("ALTER SYSTEM RESET synchronous_standby_names");
    pg.psql("SELECT pg_reload_conf()");
    assert!(rcv.interrupt().success(), "walrcv exits 0 on SIGINT");
}

/// The position of the last checkpoint record (after a clean shutdown: the
/// shutdown checkpoint), from pg_controldata.
fn latest_checkpoint(pg: &PgServer) -> u64 {
    let out = Command::new(pg.bin("pg_controldata"))
        .arg(pg.data_dir())
        .env("LC_ALL", "C")
        .output()
        .expect("run pg_controldata");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("Latest checkpoint location:"))
        .unwrap_or_else(|| panic!("no checkpoint location in pg_controldata:\n{text}"));
    parse_lsn(line.rsplit(' ').next().unwrap())
}

/// Length of a shutdown checkpoint record: XLogRecord header (24), short
/// main-data header (2), CheckPoint (88) in PostgreSQL 13 to 18.
const CHECKPOINT_RECORD_LEN: u64 = 24 + 2 + 88;

/// With walrcv streaming (as the synchronous standby or not), a fast shutdown
/// of the primary completes within [`SHUTDOWN_LIMIT`], and the archive then
/// holds the shutdown checkpoint; after a restart walrcv reconnects and the
/// archive has no gap.
///
/// With `paused`, walrcv is stopped (SIGSTOP) from just before the shutdown
/// until [`PAUSE`] later: the walsender meanwhile sends the shutdown checkpoint
/// record and then a keepalive asking for a reply, so walrcv reads both at
/// once. Without a pause whether they come in one read is down to timing.
fn fast_shutdown_completes_promptly(synchronous: bool, paused: bool) {
    let mut pg = PgServer::builder().wal_segsize_mb(1).start();
    pg.psql("CREATE TABLE t (i int, pad text)");
    let dir = archive_dir();
    let d = dir.path().to_str().unwrap().to_string();
    let mut rcv = start_walrcv(&pg, dir.path());
    if synchronous {
        pg.make_synchronous(APP, Some(&mut rcv), Duration::from_secs(30));
    }
    // Some WAL, across a few segments, then a little more in small commits.
    bounded_sql(
        &pg,
        &rcv,
        "INSERT INTO t SELECT i, repeat('x', 200) FROM generate_series(1, 10000) i",
    );
    for i in 0..5 {
        bounded_sql(&pg, &rcv, &format!("INSERT INTO t VALUES ({i}, 'small')"));
    }
    let written = pg.current_lsn();
    pg.wait_for_flush(APP, written, Duration::from_secs(20));

    let stopped = if paused {
        let guard = ContGuard::stop(&mut rcv);
        std::thread::scope(|s| {
            s.spawn(move || {
                std::thread::sleep(PAUSE);
                guard.resume();
            });
            pg.try_stop("fast", SHUTDOWN_GIVE_UP)
        })
    } else {
        pg.try_stop("fast", SHUTDOWN_GIVE_UP)
    };
    let took = match &stopped {
        Ok(t) => *t,
        Err(_) => SHUTDOWN_GIVE_UP,
    };
    eprintln!(
        "fast shutdown with walrcv streaming (synchronous: {synchronous}, paused \
         {paused}): {took:?} ({})",
        if stopped.is_ok() {
            "stopped"
        } else {
            "gave up"
        }
    );
    if let Err(e) = stopped {
        panic!(
            "fast shutdown did not complete within {SHUTDOWN_GIVE_UP:?} with walrcv streaming \
             (synchronous: {synchronous}, paused {paused}): the walsender waits for walrcv \
             to flush and acknowledge all WAL sent, the shutdown checkpoint included.\n{e}\n--- walrcv stderr ---\n{}",
            rcv.stderr()
        );
    }
    assert!(
        took < SHUTDOWN_LIMIT,
        "fast shutdown took {took:?} (limit {SHUTDOWN_LIMIT:?}) with walrcv streaming \
         (synchronous: {synchronous}, paused {paused})\n--- walrcv stderr ---\n{}",
        rcv.stderr()
    );
    if paused {
        // The shutdown waited for the paused walrcv (the walsender exits
        // only once the standby flushed the shutdown checkpoint): it could
        // not end before walrcv was resumed. A lower bound: load only adds.
        assert!(
            took >= PAUSE - Duration::from_millis(300),
            "fast shutdown took {took:?}, less than the {PAUSE:?} walrcv was paused: it did not \
             wait for walrcv\n--- walrcv stderr ---\n{}",
            rcv.stderr()
        );
    }
    // The walsender exits only once walrcv has flushed everything it sent,
    // the shutdown checkpoint record included.
    let checkpoint = latest_checkpoint(&pg);
    assert_archive_holds(dir.path(), &pg, 1, checkpoint + CHECKPOINT_RECORD_LEN);
    assert!(
        rcv.is_running(),
        "walrcv keeps running (reconnecting) while the server is down:\n{}",
        rcv.stderr()
    );

    pg.start_again();
    let conn_wait = Instant::now();
    wait_until(
        Duration::from_secs(60),
        "walrcv to reconnect after the restart",
        || {
            assert!(rcv.is_running(), "walrcv exited:\n{}", rcv.stderr());
            pg.psql(&format!(
                "SELECT count(*) FROM pg_stat_replication \
                 WHERE application_name = '{APP}' AND state = 'streaming'"
            )) == "1"
        },
    );
    eprintln!(
        "walrcv reconnected {:?} after the restart",
        conn_wait.elapsed()
    );
    // New WAL after the restart, a segment switch, and everything flushed.
    bounded_sql(&pg, &rcv, "INSERT INTO t VALUES (-1, 'after restart')");
    let switched = bounded_sql(&pg, &rcv, "SELECT pg_switch_wal()");
    let seg_size = pg.wal_segment_size();
    let end = parse_lsn(&switched).div_ceil(seg_size) * seg_size;
    let flushed = pg.wait_for_flush(APP, end, Duration::from_secs(30));
    assert!(flushed > checkpoint);
    if synchronous {
        pg.psql("ALTER SYSTEM RESET synchronous_standby_names");
        pg.psql("SELECT pg_reload_conf()");
    }
    assert!(rcv.interrupt().success(), "walrcv exits 0 on SIGINT");

    // No gap: the segment holding the shutdown checkpoint is complete and every
    // complete segment equals the primary's; walrcv verify agrees.
    let ckpt_seg = wal_file_name(1, checkpoint, pg.wal_segment_size());
    let segs = assert_segments_identical(dir.path(), &pg);
    assert!(
        segs.contains(&ckpt_seg),
        "the segment {ckpt_seg} holding the shutdown checkpoint is not complete in the archive: \
         {segs:?}"
    );
    let verify = walrcv_run(&["verify", &d, "--no-progress"], Duration::from_secs(60));
    assert!(
        verify.success(),
        "walrcv verify reports a problem:\n{}",
        verify.text()
    );
}

#[test]
fn fast_shutdown_completes_promptly_with_walrcv_synchronous() {
    fast_shutdown_completes_promptly(true, false);
}

#[test]
fn fast_shutdown_completes_promptly_with_walrcv_paused_during_it() {
    fast_shutdown_completes_promptly(true, true);
}

#[test]
fn fast_shutdown_completes_promptly_with_walrcv_streaming_without_slot() {
    fast_shutdown_completes_promptly(false, false);
}

/// `--receive-timeout`: a server that sends nothing (its walsender stopped)
/// is given up after that many seconds, and walrcv reconnects.
#[test]
fn receive_timeout_drops_a_silent_server_and_reconnects() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let dir = archive_dir();
    let conn = format!("{} application_name={APP}", pg.conninfo());
    let mut rcv = walrcv_spawn(&[
        "stream",
        "-D",
        dir.path().to_str().unwrap(),
        "-d",
        &conn,
        "-v",
        "--receive-timeout=2",
    ]);
    let walsender = || {
        pg.psql(&format!(
            "SELECT pid FROM pg_stat_replication \
             WHERE application_name = '{APP}' AND state = 'streaming'"
        ))
    };
    wait_until(Duration::from_secs(30), "walrcv to be streaming", || {
        assert!(rcv.is_running(), "walrcv exited:\n{}", rcv.stderr());
        !walsender().is_empty()
    });
    let first: libc::pid_t = walsender().parse().unwrap();
    // While the server is idle walrcv pings it every second (half the
    // timeout) and the answer resets the clock: the last message came 0 to 1 s
    // before the stop, so the drop comes 1 to 2 s after it.
    let t = Instant::now();
    let guard = ContGuard::stop_pid(first);
    rcv.wait_for_stderr(
        "no message from the server for 2 s",
        Duration::from_secs(15),
    );
    let dropped_after = t.elapsed();
    eprintln!(
        "--receive-timeout=2: connection dropped {dropped_after:?} after the walsender stopped"
    );
    // Not before the timeout (1 s after the last answer at the earliest); how
    // late is bounded by the wait above, not asserted on a loaded machine's
    // clock (the policy's timing: src/receiver/feedback.rs).
    assert!(
        dropped_after >= Duration::from_millis(900),
        "dropped after {dropped_after:?} with --receive-timeout=2"
    );
    drop(guard);
    wait_until(Duration::from_secs(30), "walrcv to reconnect", || {
        assert!(rcv.is_running(), "walrcv exited:\n{}", rcv.stderr());
        walsender().parse::<libc::pid_t>().is_ok_and(|p| p != first)
    });
    assert!(rcv.interrupt().success(), "walrcv exits 0 on SIGINT");
}

/// `--receive-timeout` counts only the server's silence, not the time walrcv
/// spends in its own fdatasync: with every WAL fdatasync taking 3 s (the
/// failpoint's sleep) and `--receive-timeout=2`, a server that streams
/// healthily keeps its connection. (End to end; the rule itself is
/// `Feedback::worked`, unit-tested. Here each batch also read bytes from the
/// socket, which restarts the clock after the fdatasync as well.)
#[cfg(feature = "failpoints")]
#[test]
fn a_slow_fdatasync_does_not_end_a_healthy_connection() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    pg.psql("CREATE TABLE slow_disk(x int)");
    let dir = archive_dir();
    let conn = format!("{} application_name={APP}", pg.conninfo());
    let mut rcv = crate::support::Walrcv::new(["stream", "-D", dir.path().to_str().unwrap()])
        .args(["-d", &conn, "-v", "--receive-timeout=2"])
        .env("FAILPOINTS", "wal-fdatasync=sleep(3000)")
        .spawn();
    let walsender = || {
        pg.psql(&format!(
            "SELECT pid FROM pg_stat_replication \
             WHERE application_name = '{APP}' AND state = 'streaming'"
        ))
    };
    wait_until(Duration::from_secs(30), "walrcv to be streaming", || {
        assert!(rcv.is_running(), "walrcv exited:\n{}", rcv.stderr());
        !walsender().is_empty()
    });
    let first = walsender();
    // WAL keeps coming for about 10 s: three or more slow fdatasyncs.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        pg.psql("INSERT INTO slow_disk SELECT generate_series(1, 100)");
        std::thread::sleep(Duration::from_millis(500));
    }
    // The fdatasyncs are slow indeed: one more row takes at least one of them.
    pg.psql("INSERT INTO slow_disk VALUES (0)");
    let target = pg.current_lsn();
    let t = Instant::now();
    pg.wait_for_flush(APP, target, Duration::from_secs(60));
    let took = t.elapsed();
    eprintln!("flushed {} after {took:?}", format_lsn(target));
    assert!(took >= Duration::from_millis(2500), "{took:?}");
    let log = rcv.stderr();
    assert!(
        !log.contains("no message from the server"),
        "the connection was dropped while walrcv was in its own fdatasync:\n{log}"
    );
    assert_eq!(walsender(), first, "walrcv reconnected:\n{log}");
    assert!(rcv.interrupt().success(), "walrcv exits 0 on SIGINT");
}
