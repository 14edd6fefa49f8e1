//! The tools on an archive holding files set aside after a failover
//! (`NAME[.gz][.partial].divergent.tmp`), built from real WAL (the pg15
//! fixture: timeline 1 to 0/C141F8, then timeline 2) renamed to its set-aside
//! names, with a `00000002.history` whose switch point lies in the files set
//! aside:
//!
//! - `walrcv verify` reports them as one warning per tail, with the range
//!   (switch point to where the data ends, in bytes), counts them in the
//!   summary line and the JSON, and exits as it does without them; a file
//!   holding nothing past the switch point, and a tail with no history, are
//!   reported as such;
//! - `walrcv restore` answers "not found" for the original name of each form
//!   (complete, `.partial`, plain, gzip) that it serves without the suffix,
//!   and serves the new timeline's file of the same segment;
//! - `walrcv cleanup` (dry run and real) never lists or removes them, with a
//!   cut-off past them, and refuses one as a cut-off;
//! - `walrcv status` shows their count and size (human and JSON).
//!
//! Then the same tools on a tail left by a real unplanned failover (a lagging
//! standby promoted after the primary crashed, walrcv reconnecting to it),
//! plain and `-Z gzip`.
//!
//! The expected figures are computed here from the files' bytes, not with
//! walrcv's code.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    file_names, format_lsn, free_port, parse_lsn, walrcv_run, PgServer, RunOutput,
};

const MB: u64 = 1 << 20;
const LIMIT: Duration = Duration::from_secs(60);
const TL1_0B: &str = "00000001000000000000000B";
const TL1_0C_PARTIAL: &str = "00000001000000000000000C.partial";
/// Where timeline 1 ends in the fixture's history (00000002.history).
const FIXTURE_SWITCH: u64 = 0xC1_41F8;
/// A switch point inside 00000001000000000000000B, for a tail of two files.
const SWITCH_IN_0B: u64 = 0xB1_0000;

fn pg15() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/wal/pg15")
}

fn fixture(name: &str) -> Vec<u8> {
    fs::read(pg15().join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// An archive holding the fixture files `names` under the same names.
fn archive_of(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("walrcv-divergent-")
        .tempdir()
        .unwrap();
    for n in names {
        fs::copy(pg15().join(n), dir.path().join(n)).unwrap();
    }
    dir
}

fn set_aside(dir: &Path, name: &str) -> String {
    let aside = format!("{name}.divergent.tmp");
    fs::rename(dir.join(name), dir.join(&aside)).unwrap();
    aside
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Offset just past the last non-zero byte.
fn data_len(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i as u64 + 1)
}

fn history(dir: &Path, switch: u64) {
    let line = format!(
        "1\t{:X}/{:X}\tno recovery target specified\n",
        switch >> 32,
        switch & 0xFFFF_FFFF
    );
    fs::write(dir.join("00000002.history"), line).unwrap();
}

fn lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xFFFF_FFFF)
}

fn verify(dir: &Path, json: bool) -> RunOutput {
    let d = dir.to_str().unwrap();
    let mut args = vec!["verify", d, "--no-progress"];
    if json {
        args.push("--json");
    }
    let out = walrcv_run(&args, LIMIT);
    eprintln!("walrcv {args:?} -> {:?}\n{}", out.code(), out.text());
    out
}

fn verify_json(dir: &Path) -> (Option<i32>, Value) {
    let out = verify(dir, true);
    let doc = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("verify --json is not JSON ({e}):\n{}", out.text()));
    (out.code(), doc)
}

/// (severity, kind, file) of every problem.
fn problems(doc: &Value) -> Vec<(String, String, String)> {
    doc["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
            (s("severity"), s("kind"), s("file"))
        })
        .collect()
}

/// The tail of a failover whose switch point is inside 0B: timeline 1's
/// 08..0A kept, 0B (complete) and 0C (`.partial`) set aside, each plain or
/// gzip-compressed.
fn tail_archive(compressed: bool) -> (tempfile::TempDir, Vec<String>) {
    let dir = archive_of(&[
        "000000010000000000000008",
        "000000010000000000000009",
        "00000001000000000000000A",
    ]);
    history(dir.path(), SWITCH_IN_0B);
    let mut aside = Vec::new();
    for (name, base, partial) in [
        (TL1_0B, TL1_0B, ""),
        (TL1_0C_PARTIAL, "00000001000000000000000C", ".partial"),
    ] {
        let bytes = fixture(name);
        let file = if compressed {
            format!("{base}.gz{partial}.divergent.tmp")
        } else {
            format!("{base}{partial}.divergent.tmp")
        };
        let content = if compressed { gzip(&bytes) } else { bytes };
        fs::write(dir.path().join(&file), content).unwrap();
        aside.push(file);
    }
    (dir, aside)
}

#[test]
fn verify_reports_a_set_aside_tail_as_one_range_and_exits_as_without_it() {
    let end_0c = 0xC0_0000 + data_len(&fixture(TL1_0C_PARTIAL));
    assert!(end_0c > SWITCH_IN_0B);
    for compressed in [false, true] {
        let (dir, aside) = tail_archive(compressed);
        let (code, doc) = verify_json(dir.path());
        // The same archive without the set-aside files.
        let without = tempfile::tempdir().unwrap();
        for n in file_names(dir.path()) {
            if !n.ends_with(".divergent.tmp") {
                fs::copy(dir.path().join(&n), without.path().join(&n)).unwrap();
            }
        }
        let (code_without, doc_without) = verify_json(without.path());
        assert_eq!(code, code_without);
        assert_eq!(code, Some(0), "{doc}");
        let mut expected = problems(&doc_without);
        expected.push(("warning".into(), "divergent".into(), aside[0].clone()));
        assert_eq!(problems(&doc), expected, "{doc}");
        assert_eq!(doc["records"], doc_without["records"]);

        let ranges = doc["divergent"].as_array().unwrap();
        assert_eq!(ranges.len(), 1, "{doc}");
        let r = &ranges[0];
        assert_eq!(r["timeline"], 1);
        assert_eq!(r["history_of"], 2);
        assert_eq!(r["from"], lsn(SWITCH_IN_0B));
        assert_eq!(r["to"], lsn(end_0c));
        assert_eq!(r["bytes"], end_0c - SWITCH_IN_0B);
        let files: Vec<(&str, u64)> = r["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["name"].as_str().unwrap(),
                    f["divergent_bytes"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            files,
            [
                (aside[0].as_str(), 0xC0_0000 - SWITCH_IN_0B),
                (aside[1].as_str(), end_0c - 0xC0_0000)
            ]
        );
        assert_eq!(doc["divergent_files"], 2);
        assert_eq!(doc["divergent_bytes"], end_0c - SWITCH_IN_0B);
        // No file report, timeline summary or gap speaks of them.
        for f in doc["files"].as_array().unwrap() {
            assert!(!f["name"].as_str().unwrap().contains("divergent"), "{f}");
        }

        let text = verify(dir.path(), false).stdout;
        let warning = format!(
            "WARNING: {} LSN {}: divergent WAL of timeline 1 set aside (2 files, {} to {}): {} to {}, {} bytes past the switch point",
            aside[0],
            lsn(SWITCH_IN_0B),
            aside[0],
            aside[1],
            lsn(SWITCH_IN_0B),
            lsn(end_0c),
            end_0c - SWITCH_IN_0B
        );
        assert!(text.contains(&warning), "{text}");
        let summary = format!(
            ", 2 divergent files set aside ({} bytes of WAL past a switch point)",
            end_0c - SWITCH_IN_0B
        );
        let last = text.lines().last().unwrap();
        assert!(last.starts_with("OK: "), "{text}");
        assert!(last.ends_with(&summary), "{text}");
        assert!(
            text.contains(&format!(
                "  {}: set aside, timeline 1, data ends at {}, {} bytes past the switch point",
                aside[1],
                lsn(end_0c),
                end_0c - 0xC0_0000
            )),
            "{text}"
        );
    }
}

#[test]
fn verify_a_set_aside_file_with_nothing_past_the_switch_point_or_no_history() {
    // The fixture as a failover leaves it: timeline 1's .partial of the
    // switch segment ends before the switch point (a standby's receiver).
    let all: Vec<String> = file_names(&pg15());
    let names: Vec<&str> = all.iter().map(String::as_str).collect();
    let dir = archive_of(&names);
    let aside = set_aside(dir.path(), TL1_0C_PARTIAL);
    let end = 0xC0_0000 + data_len(&fixture(TL1_0C_PARTIAL));
    assert!(end <= FIXTURE_SWITCH);
    let (code, doc) = verify_json(dir.path());
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(
        problems(&doc),
        [("warning".into(), "divergent".into(), aside.clone())]
    );
    assert_eq!(doc["divergent_files"], 1);
    assert_eq!(doc["divergent_bytes"], 0);
    let text = verify(dir.path(), false).stdout;
    assert!(
        text.contains(&format!(
            "set aside ({aside}), holds no WAL past the switch point {} where timeline 2's history left timeline 1 (its data ends at {})",
            lsn(FIXTURE_SWITCH),
            lsn(end)
        )),
        "{text}"
    );
    assert!(
        text.ends_with(", 1 divergent file set aside (0 bytes of WAL past a switch point)\n"),
        "{text}"
    );

    // No history file says where timeline 1 was left: counted from the
    // segment start, and said so.
    let dir = archive_of(&[
        "000000010000000000000008",
        "000000010000000000000009",
        "00000001000000000000000A",
        TL1_0B,
    ]);
    let aside = set_aside(dir.path(), TL1_0B);
    let (code, doc) = verify_json(dir.path());
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(
        problems(&doc),
        [("warning".into(), "divergent".into(), aside)]
    );
    assert_eq!(doc["divergent"][0]["from"], "0/B00000");
    assert_eq!(doc["divergent"][0]["switchpoint"], Value::Null);
    assert_eq!(doc["divergent_bytes"], MB);
    let text = verify(dir.path(), false).stdout;
    assert!(
        text.contains(
            "counted from the segment start: no history file says where timeline 1 was left"
        ),
        "{text}"
    );
}

/// Everything set aside (the archive held nothing before the switch
/// segment): the sizes come from the set-aside files, and the range is
/// reported.
#[test]
fn verify_an_archive_holding_only_set_aside_files() {
    let dir = archive_of(&[TL1_0C_PARTIAL]);
    history(dir.path(), 0xC0_1000);
    let aside = set_aside(dir.path(), TL1_0C_PARTIAL);
    let end = 0xC0_0000 + data_len(&fixture(TL1_0C_PARTIAL));
    let (code, doc) = verify_json(dir.path());
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(doc["segment_size"], MB);
    assert_eq!(
        problems(&doc),
        [("warning".into(), "divergent".into(), aside)]
    );
    assert_eq!(doc["divergent"][0]["from"], "0/C01000");
    assert_eq!(doc["divergent_bytes"], end - 0xC0_1000);
}

/// Names that are set-aside names but odd for the archive: one not valid for
/// its segment size, the very last segment: warnings, no panic, exit 0.
#[test]
fn verify_odd_set_aside_names() {
    let dir = archive_of(&["000000010000000000000008"]);
    for name in [
        "00000001000000000000FFFF.divergent.tmp",
        "00000001FFFFFFFF00000FFF.divergent.tmp",
        "00000001FFFFFFFF00000FFF.zst.partial.divergent.tmp",
    ] {
        fs::write(dir.path().join(name), b"not even WAL").unwrap();
    }
    let (code, doc) = verify_json(dir.path());
    assert_eq!(code, Some(0), "{doc}");
    let warnings: Vec<_> = problems(&doc)
        .into_iter()
        .map(|(severity, kind, file)| {
            assert_eq!((severity.as_str(), kind.as_str()), ("warning", "divergent"));
            file
        })
        .collect();
    assert_eq!(warnings.len(), 3, "{doc}");
    let text = verify(dir.path(), false).stdout;
    assert!(
        text.contains("00000001000000000000FFFF.divergent.tmp: set aside, but not a valid segment name for 1048576 byte segments"),
        "{text}"
    );
    assert!(text.contains("cannot decompress"), "{text}");
    assert_eq!(doc["divergent"][0]["to"], "FFFFFFFF/FFFFFFFF");

    // Nothing tells the segment size: still listed, as warnings.
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("000000010000000000000003.divergent.tmp"),
        b"x",
    )
    .unwrap();
    let (code, doc) = verify_json(dir.path());
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(
        problems(&doc),
        [(
            "warning".into(),
            "divergent".into(),
            "000000010000000000000003.divergent.tmp".into()
        )]
    );
    assert_eq!(doc["divergent_files"], 1);
}

fn restore(dir: &Path, file: &str) -> (Option<i32>, Option<Vec<u8>>) {
    let (code, served, _) = restore_logged(dir, file);
    (code, served)
}

/// `walrcv restore FILE %p -D dir`: exit status, what `%p` holds, the log.
fn restore_logged(dir: &Path, file: &str) -> (Option<i32>, Option<Vec<u8>>, String) {
    let target = tempfile::tempdir().unwrap();
    let p = target.path().join("RECOVERYXLOG");
    let out = walrcv_run(
        &[
            "restore",
            file,
            p.to_str().unwrap(),
            "-D",
            dir.to_str().unwrap(),
        ],
        LIMIT,
    );
    eprintln!("restore {file} -> {:?}\n{}", out.code(), out.text());
    (out.code(), fs::read(&p).ok(), out.text())
}

#[test]
fn restore_never_serves_a_set_aside_file() {
    // Each form, as it would be served without the suffix (the control),
    // then set aside: "not found" (1) and nothing written.
    let forms: [(&str, &str, bool); 4] = [
        (TL1_0B, TL1_0B, false),
        (TL1_0B, "00000001000000000000000B.gz", true),
        (TL1_0C_PARTIAL, TL1_0C_PARTIAL, false),
        (TL1_0C_PARTIAL, "00000001000000000000000C.gz.partial", true),
    ];
    for (source, file, compressed) in forms {
        let dir = archive_of(&[
            "000000010000000000000009",
            "00000001000000000000000A",
            "00000002.history",
            "00000002000000000000000C",
            "00000002000000000000000D.partial",
        ]);
        let bytes = fixture(source);
        let content = if compressed { gzip(&bytes) } else { bytes };
        fs::write(dir.path().join(file), content).unwrap();
        let wanted = &file[..24];
        let (code, served) = restore(dir.path(), wanted);
        assert_eq!(code, Some(0), "control: {file} is served as {wanted}");
        assert!(served.is_some());

        let aside = set_aside(dir.path(), file);
        let (code, served, log) = restore_logged(dir.path(), wanted);
        assert_eq!(code, Some(1), "{aside} must not answer {wanted}");
        assert_eq!(served, None);
        assert!(
            log.contains(&format!("only set-aside divergent copies exist ({aside})")),
            "{log}"
        );
        // Nor under its own name (not a name recovery asks for).
        let (code, served) = restore(dir.path(), &aside);
        assert_ne!(code, Some(0));
        assert_eq!(served, None);
        // The new timeline's file of the switch segment is served.
        let (code, served) = restore(dir.path(), "00000002000000000000000C");
        assert_eq!(code, Some(0));
        assert_eq!(served, Some(fixture("00000002000000000000000C")));
        assert!(dir.path().join(&aside).exists());
    }
}

fn cleanup(dir: &Path, extra: &[&str]) -> RunOutput {
    let mut args = vec!["cleanup", "-D", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = walrcv_run(&args, LIMIT);
    eprintln!("walrcv {args:?} -> {:?}\n{}", out.code(), out.text());
    out
}

#[test]
fn cleanup_never_removes_or_counts_a_set_aside_file() {
    let (dir, aside) = tail_archive(true);
    // Timeline 2's files after the switch (as the stream would write them).
    for n in [
        "00000002000000000000000C",
        "00000002000000000000000D.partial",
    ] {
        fs::copy(pg15().join(n), dir.path().join(n)).unwrap();
    }
    let before: Vec<(String, Vec<u8>)> = aside
        .iter()
        .map(|n| (n.clone(), fs::read(dir.path().join(n)).unwrap()))
        .collect();
    let d = dir.path().display().to_string();
    // Timeline 1 ends with a complete 0A (its later files are set aside):
    // nothing of it is protected, so cleanup goes on into timeline 2.
    let removable = vec![
        format!("{d}/000000010000000000000008"),
        format!("{d}/000000010000000000000009"),
        format!("{d}/00000001000000000000000A"),
        format!("{d}/00000002000000000000000C"),
    ];

    let out = cleanup(dir.path(), &["--before", "00000002000000000000000D", "-n"]);
    assert_eq!(out.code(), Some(0));
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), removable);
    let out = cleanup(dir.path(), &["--keep-size", "1B", "-n"]);
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), removable);
    // A set-aside file is no cut-off.
    let out = cleanup(dir.path(), &["--before", &aside[1], "-n"]);
    assert_eq!(out.code(), Some(2), "{}", out.text());

    let out = cleanup(dir.path(), &["--before", "00000002000000000000000D"]);
    assert_eq!(out.code(), Some(0));
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), removable);
    for (n, bytes) in &before {
        assert_eq!(&fs::read(dir.path().join(n)).unwrap(), bytes, "{n}");
    }
    assert_eq!(
        file_names(dir.path()),
        [
            aside[0].as_str(),
            aside[1].as_str(),
            "00000002.history",
            "00000002000000000000000D.partial",
        ]
    );
}

#[test]
fn status_shows_the_count_and_size_of_set_aside_files() {
    let (dir, aside) = tail_archive(false);
    let bytes: u64 = aside
        .iter()
        .map(|n| fs::metadata(dir.path().join(n)).unwrap().len())
        .sum();
    // The archive part does not need the server: an unreachable one is
    // UNKNOWN, and the archive is still read.
    let conn = format!("host=127.0.0.1 port={} connect_timeout=2", free_port());
    let d = dir.path().to_str().unwrap();
    let out = walrcv_run(&["status", "-D", d, "-d", &conn, "--json"], LIMIT);
    let doc: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{}", out.text()));
    assert_eq!(doc["archive"]["divergent_files"], 2, "{doc}");
    assert_eq!(doc["archive"]["divergent_bytes"], bytes, "{doc}");
    // Shown, not judged: only the unreachable server is a problem.
    let kinds: Vec<&str> = doc["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["server_unreachable"], "{doc}");
    assert_eq!(
        doc["archive"]["timelines"][0]["newest"],
        "00000001000000000000000A"
    );

    let out = walrcv_run(&["status", "-D", d, "-d", &conn], LIMIT);
    assert_eq!(out.code(), Some(3));
    assert!(
        out.stdout.contains(
            "  divergent: 2 files set aside after a failover (2.0 MiB), see walrcv verify\n"
        ),
        "{}",
        out.text()
    );
    // None: no line.
    let empty = archive_of(&["000000010000000000000008"]);
    let out = walrcv_run(
        &["status", "-D", empty.path().to_str().unwrap(), "-d", &conn],
        LIMIT,
    );
    assert!(!out.stdout.contains("  divergent:"), "{}", out.text());
}

/// Decompresses what a (possibly unfinished) gzip stream holds.
fn gunzip_prefix(data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    // A `.gz.partial` has no trailer yet: keep what decoded before the end.
    let _ = flate2::read::GzDecoder::new(data).read_to_end(&mut out);
    out
}

/// `(timeline, segno, partial)` of a set-aside name, parsed here.
fn aside_parts(name: &str) -> Option<(u32, u64, bool)> {
    let base = name.strip_suffix(".divergent.tmp")?;
    let (base, partial) = match base.strip_suffix(".partial") {
        Some(b) => (b, true),
        None => (base, false),
    };
    let base = base.strip_suffix(".gz").unwrap_or(base);
    let (tli, lsn) = crate::support::parse_wal_file_name(base, MB)?;
    Some((tli, lsn / MB, partial))
}

/// Where the history file of timeline 2 says timeline 1 was left.
fn switch_out_of_1(dir: &Path) -> u64 {
    let text =
        match fs::read(dir.join("00000002.history")) {
            Ok(b) => b,
            // Compressed like the segments (-Z).
            Err(_) => gunzip_prefix(&fs::read(dir.join("00000002.history.gz")).unwrap_or_else(
                |e| panic!("no history of timeline 2 ({e}): {:?}", file_names(dir)),
            )),
        };
    let text = String::from_utf8(text).unwrap();
    let line = text.lines().find(|l| l.starts_with("1\t")).unwrap();
    parse_lsn(line.split('\t').nth(1).unwrap())
}

/// P streams to walrcv and to an asynchronous standby S; S falls behind
/// (stopped) while P writes about 1.5 MB of WAL only walrcv gets; P crashes,
/// S is promoted and written to; walrcv, started again on S, sets the tail
/// aside. The archive is then what the tools are run on.
fn archive_after_an_unplanned_failover(compress: Option<&str>) -> (tempfile::TempDir, PgServer) {
    let mut p = PgServer::builder().wal_segsize_mb(1).start();
    p.psql("CREATE TABLE t(i int, what text)");
    let mut s = p.create_standby();
    let dir = tempfile::Builder::new()
        .prefix("walrcv-divergent-")
        .tempdir()
        .unwrap();
    let d = dir.path().to_str().unwrap().to_owned();
    let stream_to = |server: &PgServer, end: u64| {
        let conn = format!("{} application_name=walrcv", server.conninfo());
        let end = format_lsn(end);
        let mut args = vec!["stream", "-D", &d, "-d", &conn, "-E", &end, "-n"];
        if let Some(c) = compress {
            args.extend(["-Z", c]);
        }
        let out = walrcv_run(&args, Duration::from_secs(120));
        eprintln!("walrcv {args:?} -> {:?}\n{}", out.code(), out.text());
        out.assert_success();
    };
    p.psql("INSERT INTO t SELECT g, 'both' FROM generate_series(1, 1000) g");
    let both = p.current_lsn();
    p.wait_for_flush("walrcv_test_standby", both, Duration::from_secs(30));
    // The archive begins here (an empty archive starts at the server's position).
    stream_to(&p, both);
    s.stop();
    p.psql("INSERT INTO t SELECT g, repeat('lost', 10) FROM generate_series(1, 20000) g");
    let lost = p.current_lsn();
    stream_to(&p, lost);
    p.stop_immediate();
    s.start_again();
    s.promote();
    s.psql("INSERT INTO t SELECT g, 'new' FROM generate_series(1, 1000) g");
    stream_to(&s, s.current_lsn());
    (dir, s)
}

#[test]
fn the_tools_on_a_tail_left_by_a_real_unplanned_failover() {
    for compress in [None, Some("gzip")] {
        let (dir, s) = archive_after_an_unplanned_failover(compress);
        let d = dir.path().to_str().unwrap();
        let all = file_names(dir.path());
        let mut aside: Vec<(String, (u32, u64, bool))> = all
            .iter()
            .filter_map(|n| aside_parts(n).map(|p| (n.clone(), p)))
            .collect();
        aside.sort_by_key(|(_, p)| *p);
        assert!(aside.len() >= 2, "a tail of several files: {all:?}");
        let switch = switch_out_of_1(dir.path());
        let (newest, (_, newest_segno, newest_partial)) = aside.last().unwrap().clone();
        let to = if newest_partial {
            let raw = fs::read(dir.path().join(&newest)).unwrap();
            let bytes = if compress.is_some() {
                gunzip_prefix(&raw)
            } else {
                raw
            };
            newest_segno * MB + data_len(&bytes[..bytes.len().min(MB as usize)])
        } else {
            (newest_segno + 1) * MB
        };
        assert!(to > switch, "{newest} ends at {to:X}, switch at {switch:X}");

        // verify: one warning, the range, exit status as without the files.
        let (code, doc) = verify_json(dir.path());
        let without = tempfile::tempdir().unwrap();
        for n in all.iter().filter(|n| !n.ends_with(".divergent.tmp")) {
            fs::copy(dir.path().join(n), without.path().join(n)).unwrap();
        }
        let (code_without, doc_without) = verify_json(without.path());
        assert_eq!(code, Some(0), "{doc}");
        assert_eq!(code, code_without);
        let mut expected = problems(&doc_without);
        expected.push(("warning".into(), "divergent".into(), aside[0].0.clone()));
        assert_eq!(problems(&doc), expected, "{doc}");
        let r = &doc["divergent"][0];
        assert_eq!(doc["divergent"].as_array().unwrap().len(), 1, "{doc}");
        assert_eq!(r["from"], format_lsn(switch));
        assert_eq!(r["to"], format_lsn(to));
        assert_eq!(r["bytes"], to - switch);
        assert_eq!(doc["divergent_files"], aside.len());
        let text = verify(dir.path(), false).stdout;
        assert!(
            text.lines().last().unwrap().ends_with(&format!(
                ", {} divergent files set aside ({} bytes of WAL past a switch point)",
                aside.len(),
                to - switch
            )),
            "{text}"
        );

        // restore: no original name answers; timeline 2's switch segment does.
        for (name, _) in &aside {
            let (code, served) = restore(dir.path(), &name[..24]);
            assert_eq!((code, served), (Some(1), None), "{name}");
        }
        let tl2_switch = format!("00000002{}", &aside[0].0[8..24]);
        let (code, served) = restore(dir.path(), &tl2_switch);
        assert_eq!(code, Some(0), "{tl2_switch}");
        assert_eq!(served.map(|b| b.len() as u64), Some(MB));

        // cleanup past them: they stay, byte for byte, and are never listed.
        let kept: Vec<Vec<u8>> = aside
            .iter()
            .map(|(n, _)| fs::read(dir.path().join(n)).unwrap())
            .collect();
        let newest_tl2 = all
            .iter()
            .filter(|n| n.starts_with("00000002") && n.len() > 16)
            .max()
            .unwrap();
        let out = cleanup(dir.path(), &["--before", &newest_tl2[..24]]);
        assert_eq!(out.code(), Some(0));
        assert!(!out.stdout.contains(".divergent.tmp"), "{}", out.text());
        for ((n, _), bytes) in aside.iter().zip(&kept) {
            assert_eq!(&fs::read(dir.path().join(n)).unwrap(), bytes, "{n}");
        }
        // Nor do they hold cleanup back: timeline 1's WAL before the switch
        // segment went, as far as the cut-off asked.
        let left = file_names(dir.path());
        assert!(
            left.iter()
                .all(|n| !n.starts_with("00000001") || n.ends_with(".divergent.tmp")),
            "{left:?}"
        );

        // status: the count and the size on disk, beside the live server.
        let on_disk: u64 = aside
            .iter()
            .map(|(n, _)| fs::metadata(dir.path().join(n)).unwrap().len())
            .sum();
        let out = walrcv_run(&["status", "-D", d, "-d", &s.conninfo(), "--json"], LIMIT);
        let doc: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{}", out.text()));
        assert_eq!(doc["archive"]["divergent_files"], aside.len(), "{doc}");
        assert_eq!(doc["archive"]["divergent_bytes"], on_disk, "{doc}");
    }
}
