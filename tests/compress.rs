//! `-Z/--compress` against real servers: the spec's wording against Debian's
//! pg_receivewal 15, compressed streaming with each method (files decompress
//! to exactly the server's segments), `--synchronous -Z lz4` as the
//! synchronous standby (a commit returns only once its WAL is in the
//! compressed file), resume after SIGINT and SIGKILL for each method, a mixed
//! archive (with and without `-Z`), and cross-compatibility with
//! pg_receivewal 15 both ways for gzip and lz4.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use walrcv::archive::compression::decompress;
use walrcv::archive::names::{ArchiveName, Compression};

use crate::support::{
    debian_bin, format_lsn, parse_wal_file_name, wait_until, walrcv_run, walrcv_spawn,
    BackgroundProcess, PgServer,
};

const LIMIT: Duration = Duration::from_secs(60);
const APP: &str = "walrcv_z";

/// A server with 1 MB segments.
fn server() -> PgServer {
    PgServer::builder().major(15).wal_segsize_mb(1).start()
}

fn spawn_walrcv(pg: &PgServer, dir: &Path, extra: &[&str]) -> BackgroundProcess {
    let conn = format!("{} application_name={APP}", pg.conninfo());
    let mut args = vec!["stream", "-D", dir.to_str().unwrap(), "-d", &conn, "-v"];
    args.extend_from_slice(extra);
    let mut rcv = walrcv_spawn(&args);
    pg.wait_streaming(APP, Some(&mut rcv), LIMIT);
    rcv
}

fn spawn_pg_receivewal(pg: &PgServer, dir: &Path, z: &str) -> BackgroundProcess {
    let mut cmd = Command::new(debian_bin("pg_receivewal"));
    cmd.arg("-D").arg(dir).args([
        "-d",
        &format!("{} application_name=pg_receivewal", pg.conninfo()),
        "--synchronous",
        "-v",
        "-Z",
        z,
    ]);
    let mut rcv = BackgroundProcess::spawn(cmd);
    pg.wait_streaming("pg_receivewal", Some(&mut rcv), LIMIT);
    rcv
}

/// Some WAL, then a switch: returns the segment boundary after it.
fn produce_segments(pg: &PgServer, n: usize) -> u64 {
    let mut boundary = 0;
    for i in 0..n {
        pg.psql(&format!(
            "CREATE TABLE IF NOT EXISTS z (i int, t text); \
             INSERT INTO z SELECT g, repeat('x', 100) FROM generate_series(1, {}) g",
            2000 + i
        ));
        boundary = pg.force_switch_wal();
    }
    boundary
}

/// Where a receiver that resumes from the archive in `dir` starts: the start
/// of the segment of its `.partial`, or else the end of its last complete
/// segment (walrcv's and pg_receivewal's FindStreamingStart).
fn resume_point(dir: &Path, seg: u64) -> u64 {
    crate::support::file_names(dir)
        .iter()
        .filter_map(|n| {
            let (_, start) = crate::support::parse_wal_file_name(n.get(..24)?, seg)?;
            Some(if n.contains(".partial") {
                start
            } else {
                start + seg
            })
        })
        .max()
        .unwrap_or_else(|| panic!("no WAL file in {}", dir.display()))
}

/// The LSN in a receiver's first "starting log streaming at X (timeline N)"
/// (walrcv's and pg_receivewal's `-v` line).
fn streaming_started_at(stderr: &str) -> u64 {
    let rest = stderr
        .split("starting log streaming at ")
        .nth(1)
        .unwrap_or_else(|| panic!("no \"starting log streaming at\":\n{stderr}"));
    crate::support::parse_lsn(rest.split_whitespace().next().unwrap_or_default())
}

/// The slot's restart_lsn: where a receiver with no archive to resume from
/// would start.
fn slot_restart_lsn(pg: &PgServer, slot: &str) -> u64 {
    crate::support::parse_lsn(&pg.psql(&format!(
        "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
    )))
}

/// The uncompressed bytes of an archive file, and whether its stream was finished.
fn decode(path: &Path, compression: Compression, segment_size: u64) -> (Vec<u8>, bool) {
    let data = std::fs::read(path).unwrap();
    let d = decompress(compression, &data, segment_size)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (d.bytes, d.finished)
}

/// Every complete segment in `dir` (any compression) decompresses to exactly
/// the primary's file of that name; the segments are contiguous. Returns
/// (name, compression) in order.
fn assert_archive_identical(dir: &Path, pg: &PgServer) -> Vec<(String, Compression)> {
    assert_identical_on(dir, pg, "")
}

/// [`assert_archive_identical`] for the segments whose name starts with
/// `prefix` (a timeline).
fn assert_identical_on(dir: &Path, pg: &PgServer, prefix: &str) -> Vec<(String, Compression)> {
    let seg = pg.wal_segment_size();
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let ArchiveName::Segment {
            name: s,
            compression,
            partial: false,
        } = ArchiveName::classify(&name)
        {
            if !name.starts_with(prefix) {
                continue;
            }
            let (bytes, finished) = decode(&dir.join(&name), compression, seg);
            let theirs = std::fs::read(pg.wal_dir().join(s.as_str()))
                .unwrap_or_else(|e| panic!("{}: no longer in pg_wal: {e}", s.as_str()));
            assert!(finished, "{name}: unfinished stream under a complete name");
            assert!(bytes == theirs, "{name} differs from the primary's segment");
            found.push((s.as_str().to_owned(), compression));
        }
    }
    found.sort();
    let segnos: Vec<u64> = (found.iter())
        .map(|(n, _)| parse_wal_file_name(n, seg).unwrap().1 / seg)
        .collect();
    for w in segnos.windows(2) {
        assert_eq!(w[1], w[0] + 1, "a gap in the archive: {found:?}");
    }
    found
}

/// The `.partial` (of compression `c`) holding `upto` decodes to the
/// primary's bytes up to it at least.
fn assert_partial_covers(dir: &Path, pg: &PgServer, c: Compression, upto: u64) {
    let seg = pg.wal_segment_size();
    let name = crate::support::wal_file_name(pg.timeline(), upto, seg);
    let path = dir.join(format!("{name}{}.partial", c.suffix()));
    let (bytes, _) = decode(&path, c, seg);
    let need = (upto % seg) as usize;
    assert!(
        bytes.len() >= need,
        "{} decodes to {} bytes, the reported flush {} needs {need}",
        path.display(),
        bytes.len(),
        format_lsn(upto)
    );
    let theirs = std::fs::read(pg.wal_dir().join(&name)).unwrap();
    assert!(
        bytes[..need] == theirs[..need],
        "{name}: differs before the flush position"
    );
}

const METHODS: [(&str, Compression); 3] = [
    ("gzip", Compression::Gzip),
    ("lz4", Compression::Lz4),
    ("zstd", Compression::Zstd),
];

/// Every spec pg_receivewal refuses is refused by walrcv with the same
/// message (pg_receivewal checks `-Z` before connecting).
#[test]
fn compress_spec_wording_matches_pg_receivewal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for spec in [
        "none:1",
        "none:level=1",
        "none:workers=1",
        "x",
        "GZIP",
        "gzip:10",
        "gzip:0",
        "10",
        "2147483648",
        "lz4:13",
        "gzip:level=x",
        "gzip:level=",
        "gzip:level",
        "gzip:workers",
        "gzip:workers=2",
        "lz4:level=3,workers=1",
        "gzip:workers=x",
        "lz4:long",
        "gzip:foo=1",
        "gzip:",
        "gzip:level=3,",
        "gzip:,",
    ] {
        let pg = Command::new(debian_bin("pg_receivewal"))
            .args(["-Z", spec, "-D", d, "-h", "/nonexistent"])
            .output()
            .unwrap();
        let ours = walrcv_run(&["stream", "-Z", spec, "-D", d], LIMIT);
        let theirs = String::from_utf8_lossy(&pg.stderr);
        let theirs = theirs.lines().next().unwrap_or_default();
        let theirs = theirs
            .strip_prefix("pg_receivewal: error: ")
            .unwrap_or_else(|| panic!("{spec}: pg_receivewal said {theirs:?}"));
        assert!(!ours.success(), "{spec}: walrcv accepted it");
        let text = ours.text();
        assert!(
            text.contains(&format!("error: {theirs}\n")),
            "{spec}: pg_receivewal says {theirs:?}, walrcv said:\n{text}"
        );
    }
}

/// Each method: the stream's files decompress to exactly the server's
/// segments, the `.partial` covers what was reported flushed, and nothing
/// but compressed names appears.
#[test]
fn compress_streams_each_method_identically() {
    let pg = server();
    for (z, c) in METHODS {
        let dir = tempfile::tempdir().unwrap();
        let mut rcv = spawn_walrcv(&pg, dir.path(), &["-Z", z, "--synchronous"]);
        let boundary = produce_segments(&pg, 3);
        pg.wait_for_flush(APP, boundary, LIMIT);
        pg.psql("INSERT INTO z VALUES (0, 'tail')");
        let flushed = pg.wait_for_flush(APP, pg.current_lsn(), LIMIT);
        assert!(rcv.interrupt().success(), "{}", rcv.stderr());
        let found = assert_archive_identical(dir.path(), &pg);
        assert!(found.len() >= 2, "{z}: {found:?}");
        assert!(found.iter().all(|(_, fc)| *fc == c), "{z}: {found:?}");
        assert_partial_covers(dir.path(), &pg, c, flushed);
        for n in crate::support::file_names(dir.path()) {
            assert!(n.contains(c.suffix()), "{z}: unexpected file {n}");
        }
    }
}

/// `--synchronous -Z lz4` as the synchronous standby: each commit returns
/// only once the primary got a flush position covering it, and at that
/// moment the compressed `.partial` alone decodes to the primary's WAL up to
/// that position (the encoder was flushed into the file before the flush
/// was reported).
#[test]
fn compress_synchronous_lz4_commits_wait_for_the_compressed_file() {
    let pg = server();
    pg.psql("CREATE TABLE s (i int)");
    let dir = tempfile::tempdir().unwrap();
    let mut rcv = spawn_walrcv(&pg, dir.path(), &["-Z", "lz4", "--synchronous"]);
    pg.make_synchronous(APP, Some(&mut rcv), LIMIT);
    let mut compared = 0;
    for i in 0..20 {
        let lsn = crate::support::parse_lsn(&pg.psql(&format!(
            "INSERT INTO s VALUES ({i}); SELECT pg_current_wal_insert_lsn()"
        )));
        let flush = pg
            .replication_flush_lsn(APP)
            .expect("walrcv in pg_stat_replication");
        assert!(
            flush >= lsn,
            "commit {i} returned before {}",
            format_lsn(lsn)
        );
        if flush / pg.wal_segment_size() == lsn / pg.wal_segment_size() {
            assert_partial_covers(dir.path(), &pg, Compression::Lz4, flush);
            compared += 1;
        }
    }
    // Small commits: only one that crosses into a new segment is not
    // compared (its .partial may be the next segment's).
    assert!(compared >= 18, "only {compared} of 20 commits compared");
    pg.psql("ALTER SYSTEM RESET synchronous_standby_names");
    pg.psql("SELECT pg_reload_conf()");
    assert!(rcv.interrupt().success(), "{}", rcv.stderr());
    assert_archive_identical(dir.path(), &pg);
}

/// For each method: stopped with SIGINT, then killed with SIGKILL in the
/// middle of a segment, walrcv resumes where it stopped: the archive ends up
/// contiguous and identical to the server's WAL.
#[test]
fn compress_resume_after_sigint_and_sigkill() {
    let pg = server();
    pg.create_physical_slot("z");
    for (z, c) in METHODS {
        let dir = tempfile::tempdir().unwrap();
        let args = ["-Z", z, "--synchronous", "-S", "z"];
        let mut rcv = spawn_walrcv(&pg, dir.path(), &args);
        let boundary = produce_segments(&pg, 2);
        pg.wait_for_flush(APP, boundary, LIMIT);
        assert!(rcv.interrupt().success(), "{}", rcv.stderr());
        let first = assert_archive_identical(dir.path(), &pg);

        produce_segments(&pg, 1);
        let mut rcv = spawn_walrcv(&pg, dir.path(), &args);
        pg.psql("INSERT INTO z SELECT g, 'mid' FROM generate_series(1, 3000) g");
        let mid = pg.current_lsn();
        pg.wait_for_flush(APP, mid, LIMIT);
        assert!(mid % pg.wal_segment_size() != 0);
        rcv.kill9();
        assert_partial_covers(dir.path(), &pg, c, mid);

        let mut rcv = spawn_walrcv(&pg, dir.path(), &args);
        let boundary = produce_segments(&pg, 2);
        pg.wait_for_flush(APP, boundary, LIMIT);
        assert!(rcv.interrupt().success(), "{}", rcv.stderr());
        let all = assert_archive_identical(dir.path(), &pg);
        assert!(all.len() >= first.len() + 3, "{z}: {first:?} then {all:?}");
        assert!(
            rcv.stderr().contains("resuming"),
            "{z}: did not resume from the archive:\n{}",
            rcv.stderr()
        );
    }
    pg.psql("SELECT pg_drop_replication_slot('z')");
}

/// Issue 17, by hand, for each method: `--synchronous -Z` until the primary
/// acknowledged a position well inside a segment, SIGINT; then a session on
/// the same archive with `-E` just past that segment's start (`-n`). It
/// streams the segment again from its start and stops after about 128 kB:
/// the segment's `.partial` must still decode to at least what was
/// acknowledged (it was rewritten with those 128 kB alone), nothing under a
/// `.tmp` name is left, and a later session completes the segment
/// identical to the primary's.
#[test]
fn compress_a_shorter_session_never_loses_acknowledged_wal() {
    let pg = server();
    pg.psql("CREATE TABLE IF NOT EXISTS z (i int, t text)");
    let seg = pg.wal_segment_size();
    for (z, c) in METHODS {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let mut rcv = spawn_walrcv(&pg, dir.path(), &["-Z", z, "--synchronous"]);
        let boundary = pg.force_switch_wal();
        pg.psql("INSERT INTO z SELECT g, repeat('x', 100) FROM generate_series(1, 3000) g");
        let acked = pg.wait_for_flush(APP, pg.current_lsn(), LIMIT);
        assert!(
            acked / seg == boundary / seg && acked % seg > 256 * 1024,
            "{z}: acknowledged {} for the segment at {}",
            format_lsn(acked),
            format_lsn(boundary)
        );
        assert!(rcv.interrupt().success(), "{}", rcv.stderr());
        assert_partial_covers(dir.path(), &pg, c, acked);

        let conn = format!("{} application_name={APP}", pg.conninfo());
        let endpos = format_lsn(boundary + 0x2000);
        let args = [
            "stream", "-D", d, "-d", &conn, "-v", "-Z", z, "-E", &endpos, "-n",
        ];
        let out = walrcv_run(&args, LIMIT);
        assert!(out.success(), "{z}: {}", out.text());
        assert_partial_covers(dir.path(), &pg, c, acked);
        let names = crate::support::file_names(dir.path());
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{z}: {names:?}");

        let mut rcv = spawn_walrcv(&pg, dir.path(), &["-Z", z, "--synchronous"]);
        let next = pg.force_switch_wal();
        pg.wait_for_flush(APP, next, LIMIT);
        assert!(rcv.interrupt().success(), "{}", rcv.stderr());
        let found = assert_archive_identical(dir.path(), &pg);
        let name = crate::support::wal_file_name(pg.timeline(), boundary, seg);
        assert!(found.iter().any(|(n, _)| *n == name), "{z}: {found:?}");
    }
}

/// The rename that puts the new stream in the old `.partial`'s place fails
/// (EIO injected into the real binary, `install-rename`): the session ends
/// with the error, the `.partial` still decodes to what the earlier session
/// had acknowledged, no `.tmp` is left, and a session without the fault
/// completes the segment identical to the primary's.
#[test]
#[cfg(feature = "failpoints")]
fn compress_a_failed_replacing_rename_keeps_the_acknowledged_partial() {
    let pg = server();
    pg.psql("CREATE TABLE IF NOT EXISTS z (i int, t text)");
    let (z, c) = ("lz4", Compression::Lz4);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut rcv = spawn_walrcv(&pg, dir.path(), &["-Z", z, "--synchronous"]);
    let boundary = pg.force_switch_wal();
    pg.psql("INSERT INTO z SELECT g, repeat('x', 100) FROM generate_series(1, 2000) g");
    let acked = pg.wait_for_flush(APP, pg.current_lsn(), LIMIT);
    assert!(rcv.interrupt().success(), "{}", rcv.stderr());
    // More WAL in the same segment: the new stream passes the old file.
    pg.psql("INSERT INTO z SELECT g, 'more' FROM generate_series(1, 1000) g");
    let endpos = pg.current_lsn();
    assert_eq!(
        endpos / pg.wal_segment_size(),
        boundary / pg.wal_segment_size()
    );
    let endpos = format_lsn(endpos);

    let conn = format!("{} application_name={APP}", pg.conninfo());
    let out = crate::support::Walrcv::new([
        "stream", "-D", d, "-d", &conn, "-v", "-Z", z, "-E", &endpos, "-n",
    ])
    .env("FAILPOINTS", "install-rename=return")
    .timeout(LIMIT)
    .run();
    let text = out.text();
    assert!(!out.success(), "{text}");
    assert!(text.contains("could not rename"), "{text}");
    assert_partial_covers(dir.path(), &pg, c, acked);
    let names = crate::support::file_names(dir.path());
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");

    let mut rcv = spawn_walrcv(&pg, dir.path(), &["-Z", z, "--synchronous"]);
    let next = pg.force_switch_wal();
    pg.wait_for_flush(APP, next, LIMIT);
    assert!(rcv.interrupt().success(), "{}", rcv.stderr());
    let found = assert_archive_identical(dir.path(), &pg);
    let name = crate::support::wal_file_name(pg.timeline(), boundary, pg.wal_segment_size());
    assert!(found.iter().any(|(n, _)| *n == name), "{found:?}");
}

/// An archive holding only gzip segments is not empty: restarted without
/// `-Z`, walrcv continues after it (plain files), and with `-Z gzip` again
/// after that; no gap anywhere.
#[test]
fn compress_mixed_archive_resumes_with_and_without_z() {
    let pg = server();
    pg.create_physical_slot("m");
    let dir = tempfile::tempdir().unwrap();
    let seg = pg.wal_segment_size();
    for (run, extra) in [&["-Z", "gzip"][..], &[], &["-Z", "gzip"]]
        .into_iter()
        .enumerate()
    {
        let mut args = vec!["--synchronous", "-S", "m"];
        args.extend_from_slice(extra);
        // From the second run on, where the archive says, which is not the
        // segment the slot says (it was advanced past the archive's end).
        let resume = (run > 0).then(|| {
            let (archive, slot) = (resume_point(dir.path(), seg), slot_restart_lsn(&pg, "m"));
            assert_ne!(
                archive / seg,
                slot / seg,
                "run {run}: the archive and the slot agree"
            );
            archive
        });
        let mut rcv = spawn_walrcv(&pg, dir.path(), &args);
        let boundary = produce_segments(&pg, 2);
        pg.wait_for_flush(APP, boundary, LIMIT);
        // Stop mid-segment, leaving a .partial.
        pg.psql("INSERT INTO z VALUES (0, 'mid-segment')");
        pg.wait_for_flush(APP, pg.current_lsn(), LIMIT);
        let status = rcv.interrupt();
        assert!(status.success(), "{status}: {}", rcv.stderr());
        if let Some(resume) = resume {
            let started = streaming_started_at(&rcv.stderr());
            assert_eq!(
                started,
                resume,
                "run {run} ({extra:?}) started at {}, not at the archive's end {}:\n{}",
                format_lsn(started),
                format_lsn(resume),
                rcv.stderr()
            );
        }
        produce_segments(&pg, 1);
        // The slot moves on past the archive's end (a receiver that started
        // at the slot would skip a segment, which the archive identity below
        // would catch too); the server keeps the WAL until a checkpoint.
        pg.psql("SELECT pg_replication_slot_advance('m', pg_current_wal_lsn())");
    }
    let found = assert_archive_identical(dir.path(), &pg);
    let kinds: Vec<Compression> = found.iter().map(|(_, c)| *c).collect();
    assert!(kinds.contains(&Compression::None) && kinds.contains(&Compression::Gzip));
    assert!(found.len() >= 8, "{found:?}");
    pg.psql("SELECT pg_drop_replication_slot('m')");
}

/// Debian's pg_receivewal 15 resumes archives walrcv wrote with `-Z gzip`
/// and `-Z lz4` (continuing from the right segment), and walrcv resumes
/// archives pg_receivewal wrote with each (including its compressed
/// `.partial`): the archive stays complete and identical.
#[test]
fn compress_cross_compatible_with_pg_receivewal_15() {
    let pg = server();
    pg.create_physical_slot("x");
    for (z, _) in &METHODS[..2] {
        for walrcv_first in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let ours = ["-Z", z, "--synchronous", "-S", "x"];
            let mut first = if walrcv_first {
                spawn_walrcv(&pg, dir.path(), &ours)
            } else {
                spawn_pg_receivewal(&pg, dir.path(), z)
            };
            let app = if walrcv_first { APP } else { "pg_receivewal" };
            let boundary = produce_segments(&pg, 2);
            pg.wait_for_flush(app, boundary, LIMIT);
            pg.psql("INSERT INTO z VALUES (0, 'partial')");
            pg.wait_for_flush(app, pg.current_lsn(), LIMIT);
            let status = first.interrupt();
            assert!(status.success(), "{status}: {}", first.stderr());
            let before = assert_archive_identical(dir.path(), &pg);

            produce_segments(&pg, 1);
            // The second receiver must start where the archive ends, not in
            // the segment where it would start without the archive: the
            // server's current one for pg_receivewal (no slot), the slot's
            // (left behind in an earlier round) for walrcv.
            let seg = pg.wal_segment_size();
            let resume = resume_point(dir.path(), seg);
            let elsewhere = if walrcv_first {
                pg.current_lsn()
            } else {
                slot_restart_lsn(&pg, "x")
            };
            assert_ne!(
                resume / seg,
                elsewhere / seg,
                "{z} (walrcv first: {walrcv_first}): the archive's end and the start without it \
                 are in one segment"
            );
            let mut second = if walrcv_first {
                spawn_pg_receivewal(&pg, dir.path(), z)
            } else {
                spawn_walrcv(&pg, dir.path(), &ours)
            };
            let app = if walrcv_first { "pg_receivewal" } else { APP };
            let boundary = produce_segments(&pg, 2);
            pg.wait_for_flush(app, boundary, LIMIT);
            let status = second.interrupt();
            assert!(status.success(), "{status}: {}", second.stderr());
            let started = streaming_started_at(&second.stderr());
            assert_eq!(
                started,
                resume,
                "{z} (walrcv first: {walrcv_first}): the second receiver started at {}, not at \
                 the archive's end {}:\n{}",
                format_lsn(started),
                format_lsn(resume),
                second.stderr()
            );
            let after = assert_archive_identical(dir.path(), &pg);
            assert!(
                after.len() >= before.len() + 3 && after[..before.len()] == before[..],
                "{z} (walrcv first: {walrcv_first}): {before:?} then {after:?}"
            );
        }
    }
    pg.psql("SELECT pg_drop_replication_slot('x')");
}

/// A timeline switch under `-Z gzip`: the history file is stored compressed
/// (`00000002.history.gz`, as pg_receivewal stores it) with the server's
/// content, the new timeline's segments are compressed, and a restart finds
/// the compressed history file (it is not fetched and written again).
#[test]
fn compress_timeline_switch_stores_a_compressed_history_file() {
    let primary = server();
    primary.psql("CREATE TABLE t(x int)");
    let standby = primary.create_standby();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let conn = standby.conninfo();
    let args = ["stream", "-D", d, "-d", &conn, "-v", "-Z", "gzip"];
    let mut rcv = walrcv_spawn(&args);
    primary.psql("INSERT INTO t SELECT generate_series(1, 20000)");
    primary.psql("SELECT pg_switch_wal()");
    let has = |prefix: &str, suffix: &str| {
        crate::support::file_names(dir.path())
            .iter()
            .any(|n| n.starts_with(prefix) && n.ends_with(suffix) && n.len() == 27)
    };
    wait_until(LIMIT, "a gzip segment of timeline 1", || {
        has("00000001", ".gz")
    });
    standby.promote();
    standby.psql("INSERT INTO t SELECT generate_series(1, 50000)");
    standby.psql("SELECT pg_switch_wal()");
    wait_until(LIMIT, "a gzip segment of timeline 2", || {
        has("00000002", ".gz")
    });
    assert!(rcv.terminate().success(), "{}", rcv.stderr());

    let names = crate::support::file_names(dir.path());
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("00000002.history") && n != "00000002.history.gz"),
        "{names:?}"
    );
    let (history, finished) = decode(
        &dir.path().join("00000002.history.gz"),
        Compression::Gzip,
        1 << 20,
    );
    assert!(finished);
    assert_eq!(
        history,
        std::fs::read(standby.wal_dir().join("00000002.history")).unwrap()
    );
    assert!(!assert_identical_on(dir.path(), &standby, "00000002").is_empty());

    let mut again = walrcv_spawn(&args);
    standby.psql("INSERT INTO t SELECT generate_series(1, 50000)");
    let boundary = standby.force_switch_wal();
    standby.wait_for_flush("walrcv", boundary, LIMIT);
    assert!(again.terminate().success(), "{}", again.stderr());
    assert!(
        !again.stderr().contains("stored timeline history file"),
        "the compressed history file was not found:\n{}",
        again.stderr()
    );
    assert!(!assert_identical_on(dir.path(), &standby, "00000002").is_empty());
}
