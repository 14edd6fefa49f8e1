//! `walrcv status` against real servers: OK on a current archive (while
//! `walrcv stream` runs on it), WARNING then CRITICAL when the receiver stops
//! and the primary moves on, a gap named, slots missing and invalidated,
//! UNKNOWN when the server cannot be reached, the JSON document, and the live
//! state read from a (fixed, in-test) metrics endpoint.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    archive_dir, free_port, parse_lsn, wait_until, walrcv_run, walrcv_spawn, PgServer, RunOutput,
};

const MB: u64 = 1 << 20;
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// `walrcv status -D dir -d conn EXTRA...`.
fn status(dir: &Path, conn: &str, extra: &[&str]) -> RunOutput {
    let d = dir.to_str().unwrap();
    let mut args = vec!["status", "-D", d, "-d", conn];
    args.extend_from_slice(extra);
    let out = walrcv_run(&args, RUN_LIMIT);
    eprintln!("walrcv {args:?} -> {:?}\n{}", out.code(), out.text());
    out
}

/// `status --json`: exit status and the parsed document.
fn status_json(dir: &Path, conn: &str, extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let out = status(dir, conn, &args);
    let doc: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{}", out.stdout));
    (out.code(), doc)
}

fn problem_kinds(doc: &Value) -> Vec<(String, String)> {
    doc["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                p["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// About `mb` MiB of WAL in one committed transaction (so it is flushed, and
/// IDENTIFY_SYSTEM's position, the flush position, covers it).
fn generate_wal(pg: &PgServer, mb: u64) {
    for _ in 0..mb {
        pg.psql("SELECT pg_logical_emit_message(true, 'walrcv_status', repeat('x', 1000000))");
    }
}

/// A one-thread HTTP server answering every request with `body` as a
/// Prometheus exposition; returns its URL. The thread ends with the process.
fn serve_metrics(body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}/metrics")
}

const LIVE_CONNECTED: &str = "# HELP walrcv_connected 1 while a replication stream is open\n\
# TYPE walrcv_connected gauge\n\
walrcv_build_info{version=\"0.1.0\",server_majors=\"13-18\"} 1\n\
walrcv_connected 1\n\
walrcv_server_timeline 1\n\
walrcv_flushed_lsn 50331648\n\
walrcv_lag_bytes 0\n\
walrcv_reconnects_total 0\n\
walrcv_verification_failures_total 0\n";

const LIVE_DISCONNECTED: &str = "walrcv_connected 0\n\
walrcv_reconnects_total 4\n\
walrcv_last_disconnect_reason{kind=\"network\"} 1\n\
walrcv_last_disconnect_reason{kind=\"server\"} 0\n";

/// OK while walrcv streams (status takes no lock: both run at once), the
/// documented JSON fields, the live state from metrics; then, the receiver
/// stopped and the primary moving on, WARNING and CRITICAL on the byte lag,
/// WARNING on the time lag, and CRITICAL for a missing slot.
#[test]
fn ok_while_streaming_then_warning_and_critical_when_stopped() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let conn = pg.conninfo();
    let dir = archive_dir();
    let d = dir.path().to_str().unwrap();
    walrcv_run(
        &["stream", "-d", &conn, "--create-slot", "-S", "arch"],
        RUN_LIMIT,
    )
    .assert_success();
    let mut receiver = walrcv_spawn(&["stream", "-D", d, "-d", &conn, "-S", "arch"]);
    generate_wal(&pg, 2);
    pg.wait_for_flush("walrcv", pg.flush_lsn(), Duration::from_secs(30));

    let (code, doc) = status_json(dir.path(), &conn, &["-S", "arch"]);
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(doc["state"], "OK");
    assert!(problem_kinds(&doc).is_empty(), "{doc:#}");
    assert_eq!(doc["server"]["timeline"], 1);
    assert_eq!(
        doc["server"]["system_identifier"],
        pg.system_identifier().to_string()
    );
    assert_eq!(doc["archive"]["wal_segment_size"], MB);
    assert_eq!(doc["archive"]["timelines"][0]["timeline"], 1);
    assert_eq!(doc["archive"]["timelines"][0]["newest_partial"], true);
    assert!(doc["archive"]["gaps"].as_array().unwrap().is_empty());
    let lag = doc["lag"]["bytes"].as_u64().unwrap();
    assert!(lag < 64 * 1024, "lag {lag} while streaming");
    assert_eq!(doc["slot"]["exists"], true);
    assert_eq!(doc["slot"]["wal_status"], "reserved");
    assert_eq!(doc["slot"]["active"], true);
    assert!(doc["slot"]["restart_lsn"].is_string());
    assert_eq!(doc["thresholds"]["warning_lag_bytes"], 16 * MB);
    assert!(receiver.is_running(), "status disturbed the receiver");

    // The human output: the Nagios line first, with performance data.
    let human = status(dir.path(), &conn, &["-S", "arch"]);
    assert_eq!(human.code(), Some(0));
    let first = human.stdout.lines().next().unwrap();
    assert!(
        first.starts_with("WALRCV OK - archive current on timeline 1"),
        "{first}"
    );
    assert!(first.contains(" | lag_bytes="), "{first}");

    // The live state from a metrics endpoint.
    let url = serve_metrics(LIVE_CONNECTED);
    let (code, doc) = status_json(dir.path(), &conn, &["--metrics-url", &url]);
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(doc["walrcv"]["connected"], true);
    assert_eq!(doc["walrcv"]["version"], "0.1.0");
    assert_eq!(doc["walrcv"]["flushed_lsn"], "0/3000000");
    let url = serve_metrics(LIVE_DISCONNECTED);
    let (code, doc) = status_json(dir.path(), &conn, &["--metrics-url", &url]);
    assert_eq!(code, Some(1), "{doc:#}");
    assert_eq!(
        problem_kinds(&doc),
        [("receiver_disconnected".into(), "WARNING".into())]
    );
    assert_eq!(doc["walrcv"]["last_disconnect_kind"], "network");
    let closed = format!("127.0.0.1:{}", free_port());
    let (code, doc) = status_json(dir.path(), &conn, &["--metrics-url", &closed]);
    assert_eq!(code, Some(1), "{doc:#}");
    assert_eq!(
        problem_kinds(&doc),
        [("metrics_unreachable".into(), "WARNING".into())]
    );

    // The receiver stops; the primary moves on.
    receiver.signal(libc::SIGTERM);
    assert!(receiver.wait_timeout(Duration::from_secs(30)).is_some());
    let limits = ["--warning-lag-bytes", "2MB", "--critical-lag-bytes", "6MB"];
    generate_wal(&pg, 3);
    let (code, doc) = status_json(dir.path(), &conn, &limits);
    assert_eq!(code, Some(1), "{doc:#}");
    assert_eq!(doc["state"], "WARNING");
    assert_eq!(
        problem_kinds(&doc),
        [("lag_bytes".into(), "WARNING".into())]
    );
    let lag = doc["lag"]["bytes"].as_u64().unwrap();
    assert!((2 * MB..6 * MB).contains(&lag), "lag {lag}");
    generate_wal(&pg, 4);
    let out = status(dir.path(), &conn, &limits);
    assert_eq!(out.code(), Some(2));
    assert!(
        out.stdout.starts_with("WALRCV CRITICAL - the archive is "),
        "{}",
        out.stdout
    );

    // Behind for a while: the time lag, with the byte limits out of the way.
    std::thread::sleep(Duration::from_millis(2100));
    let (code, doc) = status_json(
        dir.path(),
        &conn,
        &[
            "--critical-lag-bytes",
            "1GB",
            "--warning-lag-bytes",
            "1GB",
            "--warning-lag-seconds",
            "2",
            "--critical-lag-seconds",
            "3600",
        ],
    );
    assert_eq!(code, Some(1), "{doc:#}");
    assert_eq!(
        problem_kinds(&doc),
        [("lag_seconds".into(), "WARNING".into())]
    );
    assert!(doc["lag"]["seconds"].as_u64().unwrap() >= 2);

    // A slot that does not exist.
    let (code, doc) = status_json(
        dir.path(),
        &conn,
        &[
            "-S",
            "nosuch",
            "--warning-lag-bytes",
            "1GB",
            "--critical-lag-bytes",
            "1GB",
        ],
    );
    assert_eq!(code, Some(2), "{doc:#}");
    assert_eq!(
        problem_kinds(&doc),
        [("slot_missing".into(), "CRITICAL".into())]
    );
}

/// A segment removed from the middle of the archive is named, CRITICAL.
#[test]
fn gap_is_named_when_a_segment_is_removed() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let conn = pg.conninfo();
    let dir = archive_dir();
    let d = dir.path().to_str().unwrap();
    // The slot keeps the WAL from here, and streaming starts from it.
    walrcv_run(
        &["stream", "-d", &conn, "--create-slot", "-S", "gap"],
        RUN_LIMIT,
    )
    .assert_success();
    for _ in 0..4 {
        pg.force_switch_wal();
    }
    let end = crate::support::format_lsn(pg.flush_lsn());
    walrcv_run(
        &[
            "stream", "-D", d, "-d", &conn, "-S", "gap", "-E", &end, "-n",
        ],
        RUN_LIMIT,
    )
    .assert_success();
    let (code, doc) = status_json(dir.path(), &conn, &[]);
    assert_eq!(code, Some(0), "{doc:#}");

    let mut complete: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    complete.sort();
    assert!(complete.len() >= 3, "{complete:?}");
    let removed = complete[1].clone();
    std::fs::remove_file(dir.path().join(&removed)).unwrap();

    let (code, doc) = status_json(dir.path(), &conn, &[]);
    assert_eq!(code, Some(2), "{doc:#}");
    assert_eq!(problem_kinds(&doc), [("gap".into(), "CRITICAL".into())]);
    assert_eq!(doc["archive"]["gaps"][0]["first_missing"], removed.as_str());
    assert_eq!(doc["archive"]["gaps"][0]["segments"], 1);
    let out = status(dir.path(), &conn, &[]);
    assert_eq!(out.code(), Some(2));
    assert!(
        out.stdout.starts_with(&format!(
            "WALRCV CRITICAL - gap in the archive: segment {removed} is missing"
        )),
        "{}",
        out.stdout
    );
}

/// A slot past `max_slot_wal_keep_size` whose WAL was removed: CRITICAL, with
/// wal_status `lost` (and the reason on 17+); before that, a small
/// safe_wal_size is a WARNING. On every major: READ_REPLICATION_SLOT exists
/// from 15, `invalidation_reason` from 17; before 15 the slot is seen only
/// through the normal connection.
#[test]
fn slot_near_and_past_invalidation() {
    for major in crate::support::test_majors() {
        eprintln!("--- PostgreSQL {major}");
        slot_near_and_past_invalidation_on(major);
    }
}

fn slot_near_and_past_invalidation_on(major: u32) {
    let pg = PgServer::builder()
        .major(major)
        .wal_segsize_mb(1)
        .conf("max_slot_wal_keep_size = '8MB'")
        .conf("max_wal_size = '32MB'")
        .conf("wal_keep_size = 0")
        .start();
    let conn = pg.conninfo();
    let dir = archive_dir();
    let d = dir.path().to_str().unwrap();
    walrcv_run(
        &["stream", "-d", &conn, "--create-slot", "-S", "keep"],
        RUN_LIMIT,
    )
    .assert_success();
    let end = crate::support::format_lsn(pg.flush_lsn());
    walrcv_run(
        &[
            "stream", "-D", d, "-d", &conn, "-S", "keep", "-E", &end, "-n",
        ],
        RUN_LIMIT,
    )
    .assert_success();
    let relaxed = [
        "-S",
        "keep",
        "--warning-lag-bytes",
        "1GB",
        "--critical-lag-bytes",
        "1GB",
        "--critical-safe-wal-size",
        "1MB",
    ];
    let (code, doc) = status_json(dir.path(), &conn, &relaxed);
    assert_eq!(doc["slot"]["wal_status"], "reserved", "{doc:#}");
    let safe = doc["slot"]["safe_wal_size"].as_i64().unwrap();
    assert!(
        safe > MB as i64 && safe <= 9 * MB as i64,
        "safe_wal_size {safe}"
    );
    // Under the default 1GB warning limit, above the 1MB critical one.
    assert_eq!(code, Some(1), "{doc:#}");
    assert_eq!(
        problem_kinds(&doc),
        [("slot_safe_wal_size".into(), "WARNING".into())]
    );

    generate_wal(&pg, 12);
    pg.psql("CHECKPOINT");
    wait_until(Duration::from_secs(30), "the slot to lose its WAL", || {
        pg.psql("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'keep'") == "lost"
    });
    let (code, doc) = status_json(dir.path(), &conn, &relaxed);
    assert_eq!(code, Some(2), "{doc:#}");
    assert_eq!(doc["slot"]["wal_status"], "lost");
    let kinds = problem_kinds(&doc);
    assert!(
        kinds.contains(&("slot_invalidated".into(), "CRITICAL".into())),
        "{kinds:?}"
    );
    if pg.major() >= 17 {
        assert_eq!(doc["slot"]["invalidation_reason"], "wal_removed");
    }
}

/// No server listening: UNKNOWN (3); the archive is still read.
#[test]
fn unknown_when_the_server_is_unreachable() {
    let dir = archive_dir();
    // One complete (sparse) segment, so the archive itself is fine.
    let f = std::fs::File::create(dir.path().join("000000010000000000000001")).unwrap();
    f.set_len(16 * MB).unwrap();
    let conn = format!("host=127.0.0.1 port={} user=postgres", free_port());
    let out = status(dir.path(), &conn, &["--timeout", "5"]);
    assert_eq!(out.code(), Some(3));
    assert!(
        out.stdout
            .starts_with("WALRCV UNKNOWN - could not query the server"),
        "{}",
        out.stdout
    );
    let (code, doc) = status_json(dir.path(), &conn, &["--timeout", "5"]);
    assert_eq!(code, Some(3));
    assert_eq!(doc["state"], "UNKNOWN");
    assert!(doc["server"].is_null());
    assert_eq!(
        problem_kinds(&doc),
        [("server_unreachable".into(), "UNKNOWN".into())]
    );
    assert_eq!(
        doc["archive"]["timelines"][0]["newest"],
        "000000010000000000000001"
    );

    // Invalid flags are UNKNOWN too (not clap's 2, which would read CRITICAL).
    let out = status(dir.path(), &conn, &["--warning-lag-bytes", "lots"]);
    assert_eq!(out.code(), Some(3));
    assert!(
        out.stdout.starts_with("WALRCV UNKNOWN - "),
        "{}",
        out.stdout
    );
    // And a missing archive directory.
    let out = status(&dir.path().join("nope"), &conn, &["--timeout", "5"]);
    assert_eq!(out.code(), Some(3));
}

fn has_segment_of(dir: &Path, timeline_prefix: &str) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        n.len() == 24 && n.starts_with(timeline_prefix)
    })
}

/// A standby promoted while the receiver is stopped: the server's timeline 2
/// is missing from the archive (CRITICAL); once walrcv runs again and follows
/// the switch, the archive is OK, with no gap across it.
#[test]
fn timeline_missing_then_followed() {
    let primary = PgServer::builder().wal_segsize_mb(1).start();
    primary.psql("CREATE TABLE t(x int)");
    let standby = primary.create_standby();
    let conn = standby.conninfo();
    let dir = archive_dir();
    let d = dir.path().to_str().unwrap();
    let mut receiver = walrcv_spawn(&["stream", "-D", d, "-d", &conn]);
    primary.psql("INSERT INTO t SELECT generate_series(1, 20000)");
    primary.psql("SELECT pg_switch_wal()");
    wait_until(
        Duration::from_secs(30),
        "walrcv archived timeline 1",
        || has_segment_of(dir.path(), "00000001"),
    );
    receiver.signal(libc::SIGTERM);
    assert!(receiver.wait_timeout(Duration::from_secs(30)).is_some());

    standby.promote();
    standby.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    let relaxed = ["--warning-lag-bytes", "1GB", "--critical-lag-bytes", "1GB"];
    let (code, doc) = status_json(dir.path(), &conn, &relaxed);
    assert_eq!(code, Some(2), "{doc:#}");
    assert_eq!(doc["server"]["timeline"], 2);
    assert_eq!(
        problem_kinds(&doc),
        [("timeline_missing".into(), "CRITICAL".into())]
    );
    assert!(
        doc["summary"]
            .as_str()
            .unwrap()
            .starts_with("the server is on timeline 2, but the archive has no WAL of it"),
        "{doc:#}"
    );

    let _receiver = walrcv_spawn(&["stream", "-D", d, "-d", &conn]);
    standby.psql("SELECT pg_switch_wal()");
    wait_until(
        Duration::from_secs(30),
        "walrcv followed onto timeline 2",
        || has_segment_of(dir.path(), "00000002"),
    );
    standby.wait_for_flush("walrcv", standby.flush_lsn(), Duration::from_secs(30));
    let (code, doc) = status_json(dir.path(), &conn, &[]);
    assert_eq!(code, Some(0), "{doc:#}");
    let timelines: Vec<u64> = doc["archive"]["timelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["timeline"].as_u64().unwrap())
        .collect();
    assert_eq!(timelines, [1, 2]);
    assert_eq!(doc["archive"]["histories"], serde_json::json!([2]));
    assert!(doc["archive"]["gaps"].as_array().unwrap().is_empty());
}

/// A role limited to replication (pg_hba rejects its normal connections): on
/// 15+ the slot is still seen through READ_REPLICATION_SLOT and the missing
/// details are a note, not a problem; before 15 the slot's state cannot be
/// told at all, a WARNING.
#[test]
fn replication_only_role() {
    for major in [15, 13] {
        let pg = PgServer::builder()
            .major(major)
            .wal_segsize_mb(1)
            .hba("host all reponly 127.0.0.1/32 reject")
            .start();
        pg.create_role("reponly", None, true);
        let conn = format!("host=127.0.0.1 port={} user=reponly", pg.port());
        let dir = archive_dir();
        let d = dir.path().to_str().unwrap();
        walrcv_run(
            &["stream", "-d", &conn, "--create-slot", "-S", "rep"],
            RUN_LIMIT,
        )
        .assert_success();
        let end = crate::support::format_lsn(pg.flush_lsn());
        walrcv_run(
            &[
                "stream", "-D", d, "-d", &conn, "-S", "rep", "-E", &end, "-n",
            ],
            RUN_LIMIT,
        )
        .assert_success();
        let (code, doc) = status_json(dir.path(), &conn, &["-S", "rep"]);
        let why = doc["slot"]["details_unavailable"].as_str().unwrap_or("");
        assert!(why.contains("reponly"), "PostgreSQL {major}: {doc:#}");
        assert!(doc["slot"]["wal_status"].is_null());
        if major >= 15 {
            assert_eq!(code, Some(0), "{doc:#}");
            assert_eq!(doc["slot"]["exists"], true);
            assert!(doc["slot"]["restart_lsn"].is_string());
        } else {
            assert_eq!(code, Some(1), "{doc:#}");
            assert!(doc["slot"]["exists"].is_null());
            assert_eq!(
                problem_kinds(&doc),
                [("slot_unknown".into(), "WARNING".into())]
            );
        }
    }
}

/// `--metrics-url` pointed at a real `walrcv stream --metrics-address`: the
/// live state reported is the receiver's own (connected, and the flush
/// position the primary shows for it).
#[test]
fn live_state_from_a_running_receiver() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let conn = pg.conninfo();
    let dir = archive_dir();
    let d = dir.path().to_str().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let mut receiver = walrcv_spawn(&[
        "stream",
        "-D",
        d,
        "-d",
        &conn,
        "--metrics-address",
        &address,
        "--status-interval",
        "1",
    ]);
    generate_wal(&pg, 1);
    let flushed = pg.wait_for_flush("walrcv", pg.flush_lsn(), Duration::from_secs(30));
    let url = format!("http://{address}/metrics");
    let mut last = Value::Null;
    wait_until(
        Duration::from_secs(20),
        "status reports the receiver connected, flushed to the primary's view",
        || {
            let (code, doc) = status_json(dir.path(), &conn, &["--metrics-url", &url]);
            let live = &doc["walrcv"];
            let ok = code == Some(0)
                && live["connected"] == true
                && live["flushed_lsn"]
                    .as_str()
                    .is_some_and(|l| parse_lsn(l) >= flushed);
            last = doc;
            ok
        },
    );
    assert_eq!(
        last["walrcv"]["version"],
        env!("CARGO_PKG_VERSION"),
        "{last:#}"
    );
    assert!(receiver.is_running());
    let status = receiver.terminate();
    assert!(status.success(), "{}", receiver.stderr());
}
