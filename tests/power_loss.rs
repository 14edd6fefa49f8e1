//! Power loss under the real walrcv binary: the archive is a LazyFs mount
//! (tests/support/lazyfs.rs), which keeps only what was fsynced. walrcv
//! streams as the synchronous standby while a client commits; then walrcv is
//! SIGKILLed and the power is cut (everything not fsynced, file data and
//! directory entries, is dropped). Acknowledged means kept: the archive's
//! valid WAL must still reach every flush position the primary saw from
//! walrcv, and at the end a server restored from a base backup plus the
//! archive (`walrcv restore`) must hold every acknowledged commit.
//!
//! One test per `-Z` method; each does the [`ROUNDS`] of kill + power loss on
//! the same archive, walrcv restarting on what survived.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::support::lazyfs::LazyFs;
use crate::support::{
    format_lsn, give_to_server_user, parse_lsn, wait_until, walrcv_recovery_settings, walrcv_run,
    walrcv_spawn, BackgroundProcess, PgServer, Recovery,
};

const APP: &str = "walrcv_powerloss";
const SLOT: &str = "powerloss";
const LIMIT: Duration = Duration::from_secs(60);
/// Kill + power-loss cycles per test, on the same archive.
#[derive(Debug, Clone, Copy)]
enum Round {
    /// walrcv is the synchronous standby under load for this long.
    Load(Duration),
    /// As `Load`, then on until the flush position is at least this far into
    /// its segment: a restart then has more than one message (128 kB) of the
    /// segment to stream again.
    LoadToMidSegment(Duration, u64),
    /// walrcv is killed this soon after its start, likely before it has
    /// caught up (a restarted segment not yet rewritten whole).
    Early(Duration),
    /// walrcv is killed right after its first fsync that changes a
    /// `.partial` on disk (lazyfs holds that fsync until the SIGKILL):
    /// deterministic, where `Early` is a matter of luck.
    AtFirstSync,
}

const ROUNDS: &[Round] = &[
    Round::LoadToMidSegment(Duration::from_millis(1500), 400 << 10),
    Round::AtFirstSync,
    Round::Load(Duration::from_millis(900)),
    Round::Early(Duration::from_millis(150)),
    Round::Load(Duration::from_millis(900)),
    Round::Early(Duration::from_millis(400)),
    Round::LoadToMidSegment(Duration::from_millis(2200), 400 << 10),
    Round::AtFirstSync,
];

#[test]
fn power_loss_keeps_acknowledged_wal_plain() {
    power_loss_keeps_acknowledged_wal(&[]);
}

#[test]
fn power_loss_keeps_acknowledged_wal_gzip() {
    power_loss_keeps_acknowledged_wal(&["-Z", "gzip"]);
}

#[test]
fn power_loss_keeps_acknowledged_wal_lz4() {
    power_loss_keeps_acknowledged_wal(&["-Z", "lz4"]);
}

#[test]
fn power_loss_keeps_acknowledged_wal_zstd() {
    power_loss_keeps_acknowledged_wal(&["-Z", "zstd"]);
}

fn power_loss_keeps_acknowledged_wal(z: &[&str]) {
    let pg = PgServer::builder().major(15).wal_segsize_mb(1).start();
    pg.psql("CREATE TABLE acked (n int, pad text)");
    pg.create_physical_slot(SLOT);
    let backup = pg.base_backup();
    let archive = tempfile::tempdir().unwrap();
    let lazy = LazyFs::mount(archive.path()).expect("mount lazyfs (needs root and /dev/fuse)");
    pg.psql(&format!(
        "ALTER SYSTEM SET synchronous_standby_names = '{APP}'"
    ));
    pg.psql("SELECT pg_reload_conf()");

    let acked = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let client_error = Mutex::new(None);
    let mut rcv = None;
    std::thread::scope(|scope| {
        scope.spawn(|| commit_until_stopped(&pg, &acked, &stop, &client_error));
        // Also on a failed assertion: the client must not wait for walrcv
        // (the scope joins it before the panic goes on).
        let _end = EndOfLoad {
            pg: &pg,
            stop: &stop,
        };
        // Acknowledged stays acknowledged: the highest flush position the
        // primary ever saw from walrcv, over all rounds.
        let mut flushed = 0;
        for (round, kind) in ROUNDS.iter().enumerate() {
            if let Round::AtFirstSync = kind {
                lazy.pause_at_next_sync(".partial");
            }
            let mut walrcv = spawn_walrcv(&pg, lazy.path(), z);
            match *kind {
                Round::Load(load) => {
                    wait_synchronous(&pg, &mut walrcv);
                    flushed = flushed.max(max_flush_during(&pg, load));
                }
                Round::LoadToMidSegment(load, offset) => {
                    wait_synchronous(&pg, &mut walrcv);
                    flushed = flushed.max(max_flush_during(&pg, load));
                    let segment = pg.wal_segment_size();
                    wait_until(LIMIT, "a flush position in the middle of a segment", || {
                        let f = pg.replication_flush_lsn(APP).unwrap_or(0);
                        flushed = flushed.max(f);
                        f % segment >= offset
                    });
                }
                Round::Early(after) => std::thread::sleep(after),
                Round::AtFirstSync => {
                    let held = lazy.wait_paused(LIMIT);
                    assert!(
                        held.is_some(),
                        "{z:?}: no fsync of a .partial within {LIMIT:?}:\n{}",
                        walrcv.stderr()
                    );
                    // SIGKILL first: walrcv dies as its fsync returns.
                    walrcv.signal(libc::SIGKILL);
                    lazy.release_pause();
                    eprintln!("{z:?} round {round}: killed at its first sync of {held:?}");
                }
            }
            walrcv.kill9();
            let report = lazy.power_loss();
            let end = archive_wal_end(lazy.path());
            eprintln!(
                "{z:?} round {round} ({kind:?}): flush seen {}, archive end after power loss {}, {report:?}, {} commits acknowledged",
                format_lsn(flushed),
                format_lsn(end),
                acked.load(Ordering::SeqCst)
            );
            assert!(
                end >= flushed,
                "{z:?} round {round}: the primary saw walrcv flush {} but after a power loss the archive's WAL ends at {}\n{}",
                format_lsn(flushed),
                format_lsn(end),
                walrcv.stderr()
            );
            rcv = Some(walrcv);
        }
        // `_end`: the primary crashes while the last commits wait for
        // walrcv: they fail and are not acknowledged.
    });
    drop(rcv);
    let acked = acked.load(Ordering::SeqCst);
    assert!(
        acked > 0,
        "no commit acknowledged: {:?}",
        client_error.lock().unwrap()
    );

    give_to_server_user(lazy.path());
    let restored = match backup.start_recovery(&walrcv_recovery_settings(lazy.path())) {
        Recovery::Started(s) => s,
        Recovery::Failed { log } => panic!("{z:?}: recovery failed:\n{log}"),
    };
    restored.wait_for_promotion(LIMIT);
    let missing = restored.psql(&format!(
        "SELECT count(*) FROM generate_series(1, {acked}) n \
         WHERE NOT EXISTS (SELECT FROM acked a WHERE a.n = n.n)"
    ));
    assert_eq!(
        missing, "0",
        "{z:?}: {missing} of {acked} acknowledged commits missing after restore"
    );
    eprintln!(
        "{z:?}: all {acked} acknowledged commits restored; {:?}",
        lazy.stats()
    );
}

/// An fsync EIO as Linux reports it (once; the dirty pages dropped, still
/// readable, never written; the next fsync returns 0) on the `.partial`
/// while walrcv is the synchronous standby under load. Whatever walrcv does
/// next (end the session, reconnect, fsync again), after a power loss the
/// archive must still reach every flush position the primary saw.
#[test]
fn power_loss_after_fsync_eio_keeps_acknowledged_wal() {
    let pg = PgServer::builder().major(15).wal_segsize_mb(1).start();
    pg.psql("CREATE TABLE acked (n int, pad text)");
    pg.create_physical_slot(SLOT);
    let archive = tempfile::tempdir().unwrap();
    let lazy = LazyFs::mount(archive.path()).expect("mount lazyfs (needs root and /dev/fuse)");
    pg.psql(&format!(
        "ALTER SYSTEM SET synchronous_standby_names = '{APP}'"
    ));
    pg.psql("SELECT pg_reload_conf()");
    let acked = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let client_error = Mutex::new(None);
    std::thread::scope(|scope| {
        scope.spawn(|| commit_until_stopped(&pg, &acked, &stop, &client_error));
        let _end = EndOfLoad {
            pg: &pg,
            stop: &stop,
        };
        let mut walrcv = spawn_walrcv(&pg, lazy.path(), &[]);
        wait_synchronous(&pg, &mut walrcv);
        let mut flushed = max_flush_during(&pg, Duration::from_millis(800));
        lazy.fail_next_fsync(".partial");
        wait_until(LIMIT, "the injected fsync EIO", || {
            !lazy.fsync_fault_pending()
        });
        // walrcv's answer to the error, then more load (and flush reports).
        flushed = flushed.max(max_flush_during(&pg, Duration::from_millis(2500)));
        walrcv.kill9();
        let report = lazy.power_loss();
        let end = archive_wal_end(lazy.path());
        eprintln!(
            "after an fsync EIO: flush seen {}, archive end after power loss {}, {report:?}, {} commits acknowledged; walrcv said:\n{}",
            format_lsn(flushed),
            format_lsn(end),
            acked.load(Ordering::SeqCst),
            walrcv
                .stderr()
                .lines()
                .filter(|l| !l.contains(" DEBUG ") && !l.contains(" TRACE "))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(
            end >= flushed,
            "after an fsync EIO the primary saw walrcv flush {} but after a power loss the archive's WAL ends at {}\n{}",
            format_lsn(flushed),
            format_lsn(end),
            walrcv.stderr()
        );
    });
}

fn spawn_walrcv(pg: &PgServer, dir: &Path, z: &[&str]) -> BackgroundProcess {
    let conn = format!("{} application_name={APP}", pg.conninfo());
    let mut args = vec![
        "stream",
        "-D",
        dir.to_str().unwrap(),
        "-d",
        &conn,
        "-S",
        SLOT,
        "--synchronous",
        "-v",
    ];
    args.extend_from_slice(z);
    walrcv_spawn(&args)
}

fn wait_synchronous(pg: &PgServer, rcv: &mut BackgroundProcess) {
    wait_until(LIMIT, "walrcv to be the synchronous standby", || {
        assert!(rcv.is_running(), "walrcv exited:\n{}", rcv.stderr());
        pg.psql(&format!(
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = '{APP}' AND state = 'streaming'"
        )) == "sync"
    });
}

/// One client committing numbered transactions (each about 60 kB of WAL, so
/// segments complete every few commits); `acked` is the highest number whose
/// commit returned.
fn commit_until_stopped(
    pg: &PgServer,
    acked: &AtomicU64,
    stop: &AtomicBool,
    error: &Mutex<Option<String>>,
) {
    let mut n = 1;
    while !stop.load(Ordering::SeqCst) {
        let sql =
            format!("INSERT INTO acked SELECT {n}, repeat('x', 1000) FROM generate_series(1, 50)");
        match pg.try_psql_timeout(&sql, Duration::from_secs(120)) {
            Ok(_) => {
                acked.store(n, Ordering::SeqCst);
                n += 1;
            }
            Err(e) => {
                *error.lock().unwrap() = Some(e);
                return;
            }
        }
    }
}

/// The highest flush position of walrcv in pg_stat_replication over `load`.
fn max_flush_during(pg: &PgServer, load: Duration) -> u64 {
    let start = Instant::now();
    let mut max = 0;
    while start.elapsed() < load {
        if let Some(f) = pg.replication_flush_lsn(APP) {
            max = max.max(f);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    max
}

/// Where the archive's valid WAL ends, from `walrcv verify` (which must pass).
fn archive_wal_end(dir: &Path) -> u64 {
    let out = walrcv_run(&["verify", dir.to_str().unwrap()], LIMIT);
    let text = out.text();
    assert!(
        out.success(),
        "walrcv verify failed after a power loss:\n{text}"
    );
    text.lines()
        .filter(|l| l.starts_with("timeline "))
        .filter_map(|l| l.split(" .. ").nth(1))
        .filter_map(|rest| rest.split(',').next())
        .map(parse_lsn)
        .max()
        .unwrap_or_else(|| panic!("no timeline line in:\n{text}"))
}

/// Stops the client and crashes the primary when dropped.
struct EndOfLoad<'a> {
    pg: &'a PgServer,
    stop: &'a AtomicBool,
}

impl Drop for EndOfLoad<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        crash(self.pg);
    }
}

/// The primary's immediate stop (SIGQUIT to the postmaster), from a shared
/// reference (the client thread still uses the server).
fn crash(pg: &PgServer) {
    let pid = std::fs::read_to_string(pg.data_dir().join("postmaster.pid")).unwrap_or_default();
    if let Some(pid) = pid
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    {
        // SAFETY: a signal to the postmaster this test started.
        unsafe { libc::kill(pid, libc::SIGQUIT) };
    }
}
