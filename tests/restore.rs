//! `walrcv restore` as PostgreSQL's restore_command, against real servers:
//! point-in-time recovery from a base backup and an archive written by a
//! synchronous walrcv (uncompressed, `-Z gzip`, `-Z lz4`, `-Z zstd`) or by
//! Debian's pg_receivewal 15 (`-Z gzip`, `-Z lz4`),
//! with every acknowledged commit back, the last ones only in the newest
//! `.partial`; a corrupted segment stops recovery with walrcv's error in the
//! server log; a missing one ends recovery where PostgreSQL expects.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use walrcv::archive::names::{ArchiveName, Compression};
use walrcv::lsn::Lsn;
use walrcv::wal::{Verifier, VerifierConfig};

use crate::support::{
    debian_bin, file_names, give_to_server_user, parse_lsn, wait_until, wal_file_name,
    walrcv_recovery_settings, walrcv_run, walrcv_spawn, BackgroundProcess, BaseBackup, PgServer,
    Recovery,
};

/// application_name of the receiver, named in synchronous_standby_names.
const APP: &str = "walrcv";
/// Commits with filler: about 100 kB of WAL each, so 30 of them cross
/// several 1 MB segments.
const BIG_COMMITS: u32 = 30;
const RECOVERY_LIMIT: Duration = Duration::from_secs(120);

/// Who writes the archive.
#[derive(Debug, Clone, Copy)]
enum Receiver {
    /// `walrcv stream`, with `-Z` when given.
    Walrcv(Option<&'static str>),
    /// Debian's `pg_receivewal` 15 `--synchronous -Z METHOD`.
    PgReceivewal(&'static str),
}

fn start_receiver(pg: &PgServer, dir: &Path, receiver: Receiver) -> BackgroundProcess {
    let conn = format!("{} application_name={APP}", pg.conninfo());
    let dir = dir.to_str().unwrap();
    let mut rcv = match receiver {
        Receiver::Walrcv(compress) => {
            let mut args = vec!["stream", "-D", dir, "-d", &conn, "-v"];
            if let Some(c) = compress {
                args.extend(["-Z", c]);
            }
            walrcv_spawn(&args)
        }
        Receiver::PgReceivewal(compress) => {
            let mut cmd = Command::new(debian_bin("pg_receivewal"));
            cmd.args([
                "-D",
                dir,
                "-d",
                &conn,
                "--synchronous",
                "-n",
                "-v",
                "-Z",
                compress,
            ]);
            BackgroundProcess::spawn(cmd)
        }
    };
    pg.make_synchronous_standby(APP, &mut rcv);
    rcv
}

/// A primary whose WAL an archive holds up to its crash, and base backups
/// taken before the commits.
struct Crashed {
    _primary: PgServer,
    archive: tempfile::TempDir,
    backups: Vec<BaseBackup>,
    /// Rows 1..=acknowledged were committed and acknowledged by the receiver.
    acknowledged: u32,
    /// WAL insert position just before the last commit record.
    last_commit_from: u64,
    /// Where the WAL stood when the commits began (after the backups).
    commits_from: u64,
    segment_size: u64,
}

/// Base backups, then commits acknowledged by the synchronous receiver, the
/// last one small (it stays in the newest `.partial`), then the primary is
/// stopped in immediate mode and the receiver stopped.
fn crash_after_commits(receiver: Receiver, backups: usize) -> Crashed {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    pg.psql("CREATE TABLE t (i int PRIMARY KEY, filler text)");
    let archive = tempfile::Builder::new()
        .prefix("walrcv-restore-archive-")
        .tempdir()
        .unwrap();
    let mut rcv = start_receiver(&pg, archive.path(), receiver);
    let backups = (0..backups).map(|_| pg.base_backup()).collect();
    let commits_from = pg.current_lsn();
    for i in 1..=BIG_COMMITS {
        commit(
            &pg,
            &rcv,
            &format!(
                "INSERT INTO t SELECT {i}, string_agg(md5(random()::text), '') \
                 FROM generate_series(1, 3000)"
            ),
        );
    }
    let last = BIG_COMMITS + 1;
    let out = commit(
        &pg,
        &rcv,
        &format!(
            "BEGIN; INSERT INTO t VALUES ({last}, 'last'); \
             SELECT pg_current_wal_insert_lsn(); COMMIT"
        ),
    );
    let last_commit_from = parse_lsn(out.trim());
    let mut primary = pg;
    primary.stop_immediate();
    let status = rcv.interrupt();
    assert!(
        status.success() || matches!(receiver, Receiver::PgReceivewal(_)),
        "receiver: {status:?}\n{}",
        rcv.stderr()
    );
    give_to_server_user(archive.path());
    let segment_size = primary.wal_segment_size();
    Crashed {
        _primary: primary,
        archive,
        backups,
        acknowledged: last,
        last_commit_from,
        commits_from,
        segment_size,
    }
}

/// One synchronous commit: it must be acknowledged within 30 s.
fn commit(pg: &PgServer, rcv: &BackgroundProcess, sql: &str) -> String {
    pg.try_psql_timeout(sql, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("commit {sql:?} failed: {e}\nreceiver:\n{}", rcv.stderr()))
}

fn rows(pg: &PgServer) -> (u32, u64) {
    let out = pg.psql("SELECT count(*), coalesce(sum(i), 0) FROM t");
    let (n, sum) = out.split_once('|').unwrap();
    (n.parse().unwrap(), sum.parse().unwrap())
}

/// The newest `.partial` of the archive: (segment name, file name).
fn newest_partial(archive: &Path) -> (String, String) {
    file_names(archive)
        .into_iter()
        .filter_map(|n| match ArchiveName::classify(&n) {
            ArchiveName::Segment {
                name,
                partial: true,
                ..
            } => Some((name.as_str().to_owned(), n)),
            _ => None,
        })
        .max()
        .unwrap_or_else(|| panic!("no .partial in {:?}", file_names(archive)))
}

/// PITR end to end for one receiver.
fn pitr(receiver: Receiver, stored_as: Compression) {
    let mut crashed = crash_after_commits(receiver, 1);
    let archive = crashed.archive.path().to_owned();
    let (segment, partial_file) = newest_partial(&archive);
    assert!(
        partial_file.ends_with(&format!("{}.partial", stored_as.suffix())),
        "{partial_file}"
    );
    // The test needs the .partial: the last commit record lies in it, and
    // no complete file of that segment exists.
    let partial_start = walrcv::lsn::parse_wal_file_name(&segment, crashed.segment_size)
        .map(|(_, segno)| segno * crashed.segment_size)
        .unwrap();
    assert!(
        crashed.last_commit_from >= partial_start,
        "last commit at {:X}, before {partial_file}",
        crashed.last_commit_from
    );
    let names = file_names(&archive);
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with(&segment) && !n.ends_with(".partial")),
        "{names:?}"
    );
    let backup = crashed.backups.pop().unwrap();
    let server = match backup.start_recovery(&walrcv_recovery_settings(&archive)) {
        Recovery::Started(s) => s,
        Recovery::Failed { log } => panic!("recovery failed:\n{log}"),
    };
    server.wait_for_promotion(RECOVERY_LIMIT);
    let n = crashed.acknowledged;
    assert_eq!(
        rows(&server),
        (n, u64::from(n) * u64::from(n + 1) / 2),
        "every acknowledged row"
    );
    assert_eq!(
        server.psql(&format!("SELECT filler FROM t WHERE i = {n}")),
        "last"
    );
    let log = server.full_log();
    assert!(
        log.contains(&format!("restored log file \"{segment}\" from archive")),
        "{segment} not restored:\n{log}"
    );
    assert_eq!(server.timeline(), 2, "promoted at the end of the archive");
    // The archive is untouched: no file renamed or written by restore.
    assert_eq!(file_names(&archive), names);
}

#[test]
fn restore_pitr_walrcv_uncompressed() {
    pitr(Receiver::Walrcv(None), Compression::None);
}

#[test]
fn restore_pitr_walrcv_gzip() {
    pitr(Receiver::Walrcv(Some("gzip")), Compression::Gzip);
}

#[test]
fn restore_pitr_walrcv_lz4() {
    pitr(Receiver::Walrcv(Some("lz4")), Compression::Lz4);
}

#[test]
fn restore_pitr_walrcv_zstd() {
    pitr(Receiver::Walrcv(Some("zstd")), Compression::Zstd);
}

#[test]
fn restore_pitr_pg_receivewal_gzip() {
    pitr(Receiver::PgReceivewal("gzip"), Compression::Gzip);
}

#[test]
fn restore_pitr_pg_receivewal_lz4() {
    pitr(Receiver::PgReceivewal("lz4"), Compression::Lz4);
}

/// Record starts in a segment file (via the library's verifier).
fn record_starts(bytes: &[u8], segment: &str, segment_size: u64) -> Vec<u64> {
    let (tli, segno) = walrcv::lsn::parse_wal_file_name(segment, segment_size).unwrap();
    let start = segno * segment_size;
    let config = VerifierConfig {
        segment_size,
        block_size: 8192,
        system_id: None,
        timeline: tli,
        server_major: None,
    };
    let mut v = Verifier::at_segment_start(config, Lsn(start));
    let mut starts: Vec<u64> = Vec::new();
    for chunk in bytes.chunks(256) {
        v.feed(chunk).unwrap();
        if let Some(r) = v.last_record_start() {
            if starts.last() != Some(&(r.0 - start)) {
                starts.push(r.0 - start);
            }
        }
    }
    starts
}

/// The last complete segment, written after the commits began.
fn segment_recovery_needs(c: &Crashed) -> String {
    let first = wal_file_name(1, c.commits_from, c.segment_size);
    let seg = file_names(c.archive.path())
        .into_iter()
        .filter(|n| n.len() == 24 && n.as_str() > first.as_str())
        .max()
        .unwrap_or_else(|| panic!("no complete segment after {first}"));
    seg
}

#[test]
fn restore_corrupt_segment_stops_recovery_and_missing_segment_ends_it() {
    let mut crashed = crash_after_commits(Receiver::Walrcv(None), 2);
    let archive = crashed.archive.path().to_owned();
    let victim = segment_recovery_needs(&crashed);
    let path = archive.join(&victim);
    let original = std::fs::read(&path).unwrap();

    // 1. One flipped bit in the body of a record.
    let starts = record_starts(&original, &victim, crashed.segment_size);
    let at = starts
        .windows(2)
        .skip(starts.len() / 2)
        .find(|w| w[1] - w[0] > 64 && (w[0] + 40) % 8192 > 40 && (w[0] % 8192) < 8000)
        .map(|w| w[0] as usize + 32)
        .expect("a record with a body");
    let mut damaged = original.clone();
    damaged[at] ^= 0x04;
    std::fs::write(&path, &damaged).unwrap();
    let backup = crashed.backups.pop().unwrap();
    let log = match backup.start_recovery(&walrcv_recovery_settings(&archive)) {
        Recovery::Failed { log } => log,
        // Consistent before the damage: the startup process fails later.
        Recovery::Started(server) => {
            let failed = format!("could not restore file \"{victim}\"");
            wait_until(RECOVERY_LIMIT, "the startup process to fail", || {
                server.full_log().contains(&failed)
            });
            server.full_log()
        }
    };
    assert!(
        log.contains(&format!(
            "could not restore file \"{victim}\" from archive: child process exited with exit code 200"
        )),
        "{log}"
    );
    assert!(log.contains("walrcv restore: refusing"), "{log}");
    assert!(log.contains("CRC check"), "{log}");
    assert!(!log.contains("archive recovery complete"), "{log}");
    assert!(!log.contains("selected new timeline ID"), "{log}");

    // 2. The same segment missing: recovery ends before it and promotes.
    std::fs::remove_file(&path).unwrap();
    let backup = crashed.backups.pop().unwrap();
    let server = match backup.start_recovery(&walrcv_recovery_settings(&archive)) {
        Recovery::Started(s) => s,
        Recovery::Failed { log } => panic!("recovery failed:\n{log}"),
    };
    server.wait_for_promotion(RECOVERY_LIMIT);
    let (n, _) = rows(&server);
    assert!(
        n < crashed.acknowledged,
        "{n} rows: the later ones were after {victim}"
    );
    let log = server.full_log();
    assert!(!log.contains("walrcv restore: refusing"), "{log}");
    assert!(
        !log.contains(&format!("restored log file \"{victim}\"")),
        "{log}"
    );
    assert_eq!(server.timeline(), 2);
}

/// Bad input from the command line: nothing is written to `%p`'s directory.
#[test]
fn restore_bad_input() {
    let archive = tempfile::tempdir().unwrap();
    let target = tempfile::tempdir().unwrap();
    let seg = "000000010000000000000003";
    let dir = archive.path().to_str().unwrap();
    let p = target.path().join("RECOVERYXLOG");
    let p = p.to_str().unwrap();
    let run = |args: &[&str]| walrcv_run(args, Duration::from_secs(30));

    // Not in the archive: an ordinary failure (recovery ends normally).
    let out = run(&["restore", seg, p, "-D", dir]);
    assert_eq!(out.code(), Some(1), "{}", out.text());

    // A truncated .gz.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &vec![7u8; 1 << 20]).unwrap();
    let gz = gz.finish().unwrap();
    std::fs::write(
        archive.path().join(format!("{seg}.gz")),
        &gz[..gz.len() / 2],
    )
    .unwrap();
    let out = run(&["restore", seg, p, "-D", dir]);
    assert_eq!(out.code(), Some(200), "{}", out.text());
    assert!(out.text().contains(".gz"), "{}", out.text());
    std::fs::remove_file(archive.path().join(format!("{seg}.gz"))).unwrap();

    // A .lz4 whose content is not a segment's size (half a real segment).
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/wal/pg15/000000010000000000000008");
    let real = std::fs::read(fixture).unwrap();
    let mut half = lz4_flex::frame::FrameEncoder::new(Vec::new());
    std::io::Write::write_all(&mut half, &real[..real.len() / 2]).unwrap();
    let lz4 = half.finish().unwrap();
    let seg8 = "000000010000000000000008";
    std::fs::write(archive.path().join(format!("{seg8}.lz4")), lz4).unwrap();
    let out = run(&["restore", seg8, p, "-D", dir]);
    assert_eq!(out.code(), Some(200), "{}", out.text());
    assert!(out.text().contains("expected 1048576"), "{}", out.text());

    // %p in a directory that does not exist.
    std::fs::write(archive.path().join(seg8), &real).unwrap();
    let missing = target.path().join("nowhere/RECOVERYXLOG");
    let out = run(&["restore", seg8, missing.to_str().unwrap(), "-D", dir]);
    assert_eq!(out.code(), Some(200), "{}", out.text());
    assert!(out.text().contains("does not exist"), "{}", out.text());

    // An unknown %f, and %f and %p swapped.
    for bad in [
        "RECOVERYXLOG",
        "pg_wal/RECOVERYXLOG",
        "000000010000000000000008.partial",
    ] {
        let out = run(&["restore", bad, p, "-D", dir]);
        assert_eq!(out.code(), Some(200), "{bad}: {}", out.text());
    }
    // A usage error must stop recovery too, not read as "not found".
    let out = run(&["restore", seg8, p]);
    assert_eq!(out.code(), Some(200), "{}", out.text());

    assert!(
        file_names(target.path()).is_empty(),
        "{:?}",
        file_names(target.path())
    );

    // And the good file is served.
    let out = run(&["restore", seg8, p, "-D", dir]);
    assert_eq!(out.code(), Some(0), "{}", out.text());
    assert_eq!(std::fs::read(p).unwrap(), real);
    assert_eq!(file_names(target.path()), ["RECOVERYXLOG"]);
}

/// What lies in the archive under a segment's name but is no regular file
/// (a FIFO, a symbolic link) is refused at once: opening a FIFO for reading
/// would wait for a writer forever, and recovery with it. A compressed file
/// larger than any compressed segment can be is refused before it is read
/// (here a sparse 1.2 GB `.gz`: nothing on disk, and nothing in memory).
#[test]
fn restore_refuses_what_is_not_a_regular_file_or_too_large_at_once() {
    let archive = tempfile::tempdir().unwrap();
    let target = tempfile::tempdir().unwrap();
    let dir = archive.path().to_str().unwrap();
    let p = target.path().join("RECOVERYXLOG");
    let p = p.to_str().unwrap();
    // Long enough for any honest refusal; a hang is killed and fails below.
    let run = |args: &[&str]| walrcv_run(args, Duration::from_secs(10));

    let fifo = "000000010000000000000003";
    nix::unistd::mkfifo(
        &archive.path().join(fifo),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = run(&["restore", fifo, p, "-D", dir]);
    assert_eq!(out.code(), Some(200), "{}", out.text());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(out.text().contains("not a regular file"), "{}", out.text());

    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/wal/pg15/000000010000000000000008");
    let link = "000000010000000000000008";
    std::os::unix::fs::symlink(&fixture, archive.path().join(link)).unwrap();
    let out = run(&["restore", link, p, "-D", dir]);
    assert_eq!(out.code(), Some(200), "{}", out.text());
    assert!(out.text().contains("symbolic link"), "{}", out.text());

    let big = "000000010000000000000005";
    let file = std::fs::File::create(archive.path().join(format!("{big}.gz"))).unwrap();
    file.set_len(1_200_000_000).unwrap();
    let started = std::time::Instant::now();
    let out = run(&["restore", big, p, "-D", dir]);
    assert_eq!(out.code(), Some(200), "{}", out.text());
    assert!(out.text().contains("larger than"), "{}", out.text());
    assert!(started.elapsed() < Duration::from_secs(5));

    assert!(file_names(target.path()).is_empty());
}
