//! A full disk for real: the archive on a small tmpfs the test mounts (tests
//! run as root), filled by a filler file while walrcv streams as the
//! synchronous standby. walrcv must report ENOSPC clearly (file, LSN),
//! acknowledge nothing it could not write, retry with a growing delay, never
//! leave a short file under a WAL name, and resume by itself once space is
//! freed, ending with an archive identical to the primary's. A synchronous
//! commit made meanwhile waits, and completes once space is freed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{
    assert_partial_matches, assert_segments_identical, file_names, format_lsn, parse_wal_file_name,
    wait_until, walrcv_spawn, PgServer,
};

const APP: &str = "walrcv";

/// A tmpfs of `size_mb` mounted on a fresh temporary directory, unmounted on
/// drop (lazily, so even a panic with files still open unmounts it).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_mb: u32) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("walrcv-tmpfs-")
            .tempdir()
            .expect("mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mb}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs failed (the tests run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the file system of `dir` with a file until ENOSPC; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler.tmp");
    let mut f = std::fs::File::create(&path).expect("create the filler");
    let chunk = vec![0xAAu8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("write the filler: {e}"),
        }
    }
    // Whatever is left is less than a page or two.
    let _ = f.write(&chunk[..4096]);
    path
}

/// Every file under a WAL name (segment or `.partial`) is a whole segment;
/// anything else is a `.tmp`.
fn assert_no_short_wal_file(dir: &Path, seg_size: u64) {
    for name in file_names(dir) {
        let base = name.strip_suffix(".partial").unwrap_or(&name);
        if parse_wal_file_name(base, seg_size).is_some() {
            // A file may be renamed under us: only sizes of files still there count.
            if let Ok(meta) = std::fs::metadata(dir.join(&name)) {
                assert_eq!(
                    meta.len(),
                    seg_size,
                    "{name} is under a WAL name but is not a whole segment: {:?}",
                    file_names(dir)
                );
            }
        } else {
            assert!(
                name.ends_with(".tmp"),
                "unexpected file {name} in the archive: {:?}",
                file_names(dir)
            );
        }
    }
}

/// The archive holds the primary's WAL up to `flush`: the segment holding the
/// byte before it is complete (and identical) or a `.partial` whose bytes up
/// to `flush` are the primary's. What walrcv acknowledged is in the archive.
fn assert_archive_holds(dir: &Path, pg: &PgServer, flush: u64) {
    let seg = pg.wal_segment_size();
    let name = crate::support::wal_file_name(1, flush - 1, seg);
    // The .partial may be renamed between the two looks: look twice.
    for _ in 0..2 {
        if dir.join(&name).is_file() {
            assert_segments_identical(dir, pg);
            return;
        }
        let partial = format!("{name}.partial");
        if dir.join(&partial).is_file() {
            assert_partial_matches(dir, pg, &partial, flush);
            return;
        }
    }
    panic!(
        "walrcv acknowledged {} but the archive has no {name}: {:?}",
        format_lsn(flush),
        file_names(dir)
    );
}

/// The delays walrcv logged before its retries after archive write failures.
fn archive_failure_delays(stderr: &str) -> Vec<u64> {
    stderr
        .lines()
        .filter(|l| l.contains("(archive write failure,"))
        .filter_map(|l| {
            let after = l.split("waiting ").nth(1)?;
            after.split(' ').next()?.parse().ok()
        })
        .collect()
}

/// WAL for several segments arrives at once: walrcv is catching up and
/// writes whole segments direct, the first write of one hits ENOSPC.
#[test]
fn full_disk_during_catch_up_holds_commits_and_resumes_once_freed() {
    full_disk_scenario(Arrival::Bulk);
}

/// WAL trickles in small transactions: walrcv keeps up, and the preparation
/// of the next segment (padding it with zeros) hits ENOSPC.
#[test]
fn full_disk_at_segment_preparation_holds_commits_and_resumes_once_freed() {
    full_disk_scenario(Arrival::Trickle);
}

#[derive(Debug, Clone, Copy)]
enum Arrival {
    Bulk,
    Trickle,
}

fn full_disk_scenario(arrival: Arrival) {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let seg = pg.wal_segment_size();
    pg.create_physical_slot("walrcv_slot");
    pg.psql("CREATE TABLE t(x int); CREATE TABLE probe(x int)");
    let tmpfs = Tmpfs::mount(6);
    let archive = tmpfs.path().join("archive");
    std::fs::create_dir(&archive).expect("archive directory");
    let conn = format!("{} application_name={APP}", pg.conninfo());
    let mut rcv = walrcv_spawn(&[
        "stream",
        "-D",
        archive.to_str().unwrap(),
        "-d",
        &conn,
        "-S",
        "walrcv_slot",
        "--synchronous",
        "-v",
    ]);
    pg.make_synchronous_standby(APP, &mut rcv);
    pg.psql("INSERT INTO t SELECT generate_series(1, 1000)");

    // The disk fills up, then WAL for several segments arrives (committed
    // locally only, so this session does not wait).
    let filler = fill(tmpfs.path());
    match arrival {
        Arrival::Bulk => {
            pg.psql(
                "SET synchronous_commit = local; INSERT INTO t SELECT generate_series(1, 60000)",
            );
            wait_until(
                Duration::from_secs(60),
                "walrcv to hit the full disk",
                || !archive_failure_delays(&rcv.stderr()).is_empty(),
            );
            // The first failure is the write of a segment written direct
            // (catch-up): it poisons its writer, and closing the session says so.
            let err = rcv.stderr();
            let first = &err[..err
                .find("(archive write failure, 1 in a row)")
                .unwrap_or(err.len())];
            assert!(
                first.contains("No space left on device") && first.contains("is poisoned"),
                "the write of a segment written direct hit ENOSPC:\n{err}"
            );
        }
        Arrival::Trickle => {
            // Slow enough that walrcv never falls a segment behind (so it
            // never writes one direct), until it fails.
            let start = Instant::now();
            while archive_failure_delays(&rcv.stderr()).is_empty() {
                assert!(
                    start.elapsed() < Duration::from_secs(120),
                    "walrcv never hit the full disk:\n{}",
                    rcv.stderr()
                );
                pg.psql(
                    "SET synchronous_commit = local; INSERT INTO t SELECT generate_series(1, 500)",
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            // The first failure is the preparation of the next segment (its
            // zeros under `.partial.tmp`), not the write of a segment written
            // direct: that one would have poisoned its writer, and closing
            // the session says so.
            let err = rcv.stderr();
            let first = &err[..err
                .find("(archive write failure, 1 in a row)")
                .unwrap_or(err.len())];
            assert!(
                first.contains("No space left on device")
                    && first.contains(".partial.tmp\" at offset 0")
                    && !first.contains("is poisoned"),
                "the preparation of the next segment hit ENOSPC:\n{err}"
            );
            pg.psql(
                "SET synchronous_commit = local; INSERT INTO t SELECT generate_series(1, 20000)",
            );
        }
    }
    let outage_start = pg.current_lsn();
    wait_until(
        Duration::from_secs(60),
        "walrcv to fail three times on the full disk",
        || archive_failure_delays(&rcv.stderr()).len() >= 3,
    );
    // A synchronous commit now waits for walrcv.
    let mut commit = pg.psql_background("INSERT INTO probe VALUES (42)");
    let outage = Instant::now();
    let mut flushes = Vec::new();
    while outage.elapsed() < Duration::from_secs(4) {
        // What walrcv acknowledged: its flush in pg_stat_replication while a
        // session is up, and the slot's restart_lsn, which follows it and
        // stays when walrcv is disconnected.
        let acknowledged = [
            pg.replication_flush_lsn(APP),
            pg.slot_restart_lsn("walrcv_slot"),
        ];
        for flush in acknowledged.into_iter().flatten().filter(|&f| f > 0) {
            assert_archive_holds(&archive, &pg, flush);
            flushes.push(flush);
        }
        assert_no_short_wal_file(&archive, seg);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        commit.is_running(),
        "the synchronous commit waits while the archive's disk is full:\n{}",
        rcv.stderr()
    );
    let max_flush = flushes.iter().copied().max().unwrap_or(0);
    assert!(!flushes.is_empty(), "the slot's restart_lsn was sampled");
    assert!(
        max_flush < outage_start,
        "walrcv acknowledged {} while the disk was full, but the WAL ends at {}",
        format_lsn(max_flush),
        format_lsn(outage_start)
    );
    assert!(rcv.is_running(), "walrcv keeps retrying:\n{}", rcv.stderr());
    let err = rcv.stderr();
    assert!(
        err.contains("No space left on device") && err.contains("is full (ENOSPC)"),
        "ENOSPC reported clearly:\n{err}"
    );
    assert!(
        err.contains("could not write the WAL at ") && err.contains(".partial.tmp"),
        "names the LSN and the file:\n{err}"
    );
    let delays = archive_failure_delays(&err);
    assert_eq!(
        &delays[..3],
        &[1, 2, 4],
        "the delay grows while the disk stays full:\n{err}"
    );

    // Space freed: walrcv resumes by itself, the commit completes.
    std::fs::remove_file(&filler).expect("remove the filler");
    let freed = Instant::now();
    let status = commit
        .wait_timeout(Duration::from_secs(60))
        .unwrap_or_else(|| {
            panic!(
                "the commit still waits after space was freed:\n{}",
                rcv.stderr()
            )
        });
    assert!(status.success(), "the commit failed: {}", commit.stderr());
    let resumed_after = freed.elapsed();
    assert_eq!(pg.psql("SELECT x FROM probe"), "42");
    let end = pg.force_switch_wal();
    pg.psql("INSERT INTO t VALUES (1)");
    let flush = pg.wait_for_flush(APP, end, Duration::from_secs(60));
    assert!(rcv.interrupt().success(), "{}", rcv.stderr());
    let names = crate::support::assert_only_wal_names(&archive);
    let segments = assert_segments_identical(&archive, &pg);
    assert!(
        flush >= end && end > outage_start,
        "archived the WAL written during the outage (up to {}, acknowledged {}): {names:?}",
        format_lsn(end),
        format_lsn(flush)
    );
    let partial = names
        .iter()
        .find(|n| n.ends_with(".partial"))
        .expect("a .partial");
    assert_partial_matches(&archive, &pg, partial, flush);
    eprintln!(
        "disk full ({arrival:?}): retry delays {delays:?}, acknowledged at most {} during the outage (WAL \
         written up to {}), commit released {resumed_after:?} after space was freed, {} \
         segments archived",
        format_lsn(max_flush),
        format_lsn(outage_start),
        segments.len()
    );
    eprintln!("--- walrcv stderr ---\n{}", rcv.stderr());
}
