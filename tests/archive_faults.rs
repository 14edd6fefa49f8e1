//! What the archive itself holds at start, against real servers: a start
//! point is reported flushed only when the archive holds the WAL before it
//! (not for a zero-byte `.partial` alone), and corrupt WAL before the start
//! point stops walrcv (exit 5) instead of a retry loop.

use std::path::Path;
use std::time::Duration;

use crate::support::proxy::FaultProxy;
use crate::support::{format_lsn, wait_until, walrcv_run, walrcv_spawn, PgServer};

const MB: u64 = 1 << 20;

/// The timeline 1 segment name holding `lsn` (1 MB segments).
fn seg_name(lsn: u64) -> String {
    let segno = lsn / MB;
    format!("00000001{:08X}{:08X}", segno / 0x1000, segno % 0x1000)
}

fn server() -> PgServer {
    PgServer::builder().major(15).wal_segsize_mb(1).start()
}

/// `barman receive-wal --reset` leaves a zero-byte `.partial` of the server's
/// current segment and nothing else: the archive holds no WAL before its
/// start, so the first status update must not report that start as flushed
/// (today it did, at once).
#[test]
fn a_zero_byte_partial_alone_is_not_reported_flushed() {
    let pg = server();
    pg.psql("CREATE TABLE reset_me AS SELECT 1 AS x");
    let current = pg.current_lsn();
    let dir = tempfile::Builder::new()
        .prefix("walrcv-reset-")
        .tempdir()
        .unwrap();
    let partial = dir.path().join(format!("{}.partial", seg_name(current)));
    std::fs::write(&partial, b"").unwrap();
    let proxy = FaultProxy::start(pg.port());
    let conn = format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable",
        proxy.port()
    );
    let d = dir.path().to_str().unwrap();
    let mut walrcv = walrcv_spawn(&["stream", "-D", d, "-d", &conn, "-v"]);
    wait_until(Duration::from_secs(30), "a first status update", || {
        !proxy.status_updates().is_empty()
    });
    let (write, flush) = proxy.status_updates()[0];
    let start = current / MB * MB;
    assert_eq!(
        (write, flush),
        (0, 0),
        "the first status update claims {}/{} with nothing before the start {} in the archive\n{}",
        format_lsn(write),
        format_lsn(flush),
        format_lsn(start),
        walrcv.stderr()
    );
    // Once the WAL from the start is durable, it is reported as usual.
    wait_until(Duration::from_secs(30), "the WAL reported flushed", || {
        proxy.status_updates().iter().any(|&(_, f)| f > start)
    });
    assert!(walrcv.terminate().success(), "{}", walrcv.stderr());
}

/// Small records only (no full-page image: a new table, fresh pages), over
/// a few segments; returns where they end.
fn write_small_records(pg: &PgServer) -> u64 {
    pg.psql("CREATE TABLE small (x int)");
    pg.psql("CHECKPOINT");
    pg.psql("INSERT INTO small SELECT generate_series(1, 40000)");
    pg.flush_lsn()
}

fn corrupt_last_page(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() - 8192 + 4000;
    for b in &mut bytes[at..at + 64] {
        *b ^= 0xFF;
    }
    std::fs::write(path, &bytes).unwrap();
}

/// A byte range of the archive's last complete segment, in records wholly
/// before the resume point, corrupted while walrcv was stopped: the resume
/// check finds it; walrcv stops with exit 5 naming the file (it used to fail
/// and retry for ever, every session reading the same bytes), and `walrcv
/// status` is CRITICAL.
#[test]
fn a_corrupted_complete_segment_before_the_resume_point_stops_walrcv() {
    let pg = server();
    pg.create_physical_slot("af");
    let end = write_small_records(&pg);
    let dir = tempfile::Builder::new()
        .prefix("walrcv-corrupt-")
        .tempdir()
        .unwrap();
    let d = dir.path().to_str().unwrap();
    let conn = pg.conninfo();
    let endpos = format_lsn(end);
    let first = walrcv_run(
        &[
            "stream", "-D", d, "-d", &conn, "-S", "af", "-E", &endpos, "-n",
        ],
        Duration::from_secs(60),
    );
    first.assert_success();
    let resume = end / MB * MB;
    let previous = dir.path().join(seg_name(resume - MB));
    assert!(previous.is_file(), "{}", first.text());
    corrupt_last_page(&previous);

    let mut walrcv = walrcv_spawn(&["stream", "-D", d, "-d", &conn, "-S", "af", "-v"]);
    let status = walrcv.wait_timeout(Duration::from_secs(60));
    let log = walrcv.stderr();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(5),
        "walrcv must stop with exit 5 on a corrupt archive\n{log}"
    );
    assert!(
        log.contains(&seg_name(resume - MB)) && log.contains("is corrupt"),
        "{log}"
    );
    assert_eq!(log.matches("is corrupt").count(), 1, "one attempt: {log}");

    let out = walrcv_run(&["status", "-D", d, "-d", &conn], Duration::from_secs(60));
    assert_eq!(out.code(), Some(2), "{}", out.text());
    assert!(out.text().contains("archive_corrupt"), "{}", out.text());
}

/// The record in progress at the resume point began in the archive's last
/// complete segment, and a byte of its archive part was corrupted while
/// walrcv was stopped: its CRC fails only once the stream brings its tail,
/// which could also be a bit flipped on the way, so one session is retried;
/// the same failure at the same record on the next session stops walrcv
/// (exit 5) naming the file, where it used to retry for ever.
#[test]
fn a_record_begun_in_a_corrupted_segment_stops_walrcv_at_the_second_failure() {
    let pg = server();
    pg.create_physical_slot("rs");
    let start = pg.insert_lsn();
    let end = crate::support::parse_lsn(
        &pg.psql("SELECT pg_logical_emit_message(false, 'walrcv-corrupt', repeat('w', 2500000))"),
    );
    pg.psql("SELECT pg_switch_wal()");
    // A segment start strictly inside the record.
    let mut resume = end / MB * MB;
    if end - resume < 64 {
        resume -= MB;
    }
    assert!(
        resume > start + 8192 && resume < end,
        "{start:X} {resume:X} {end:X}"
    );
    let dir = tempfile::Builder::new()
        .prefix("walrcv-corrupt-")
        .tempdir()
        .unwrap();
    let d = dir.path().to_str().unwrap();
    let conn = pg.conninfo();
    let first_end = format_lsn(resume + 32);
    walrcv_run(
        &[
            "stream", "-D", d, "-d", &conn, "-S", "rs", "-E", &first_end, "-n",
        ],
        Duration::from_secs(60),
    )
    .assert_success();
    let previous = dir.path().join(seg_name(resume - MB));
    let mut bytes = std::fs::read(&previous).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x01;
    std::fs::write(&previous, &bytes).unwrap();

    let mut walrcv = walrcv_spawn(&["stream", "-D", d, "-d", &conn, "-S", "rs", "-v"]);
    let status = walrcv.wait_timeout(Duration::from_secs(60));
    let log = walrcv.stderr();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(5),
        "walrcv must stop with exit 5\n{log}"
    );
    assert_eq!(
        log.matches("disconnected (WAL verification failure")
            .count(),
        1,
        "one retry: {log}"
    );
    assert!(
        log.contains("two sessions in a row")
            && log.contains(&format!(
                "which begins in \"{}",
                dir.path().join("0000000100000000").display()
            )),
        "{log}"
    );
    // Nothing past the record's start was ever acknowledged.
    let flushed = pg.slot_restart_lsn("rs").unwrap();
    assert!(flushed <= start, "{flushed:X} > record start {start:X}");
}
