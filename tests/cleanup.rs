//! `walrcv cleanup` on real WAL: an archive with two timelines (the pg15
//! fixture, from a real server promoted to timeline 2) and compressed files
//! removes exactly the expected set for each option, `--dry-run` removes
//! nothing, bad arguments fail clearly; and cleanup run in a loop beside a
//! streaming walrcv under pgbench load never disturbs the stream, leaving an
//! archive that `walrcv verify` finds without gaps.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::support::{file_name_set, wait_until, walrcv_run, walrcv_spawn, PgServer};

const LONG: Duration = Duration::from_secs(120);

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/wal/pg15")
}

fn compress(kind: &str, data: &[u8]) -> Vec<u8> {
    match kind {
        ".gz" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        ".lz4" => {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        ".zst" => zstd::encode_all(data, 3).unwrap(),
        _ => unreachable!(),
    }
}

/// The pg15 fixture with 08 as `.gz`, 0A as `.lz4`, 0B as `.zst`, timeline
/// 1's `.partial` as `.gz.partial`; plus a backup history file, a temporary
/// and a foreign file that must never go.
fn build_archive() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let compressed = [
        ("000000010000000000000008", ".gz"),
        ("00000001000000000000000A", ".lz4"),
        ("00000001000000000000000B", ".zst"),
    ];
    for e in fs::read_dir(fixture()).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let data = fs::read(e.path()).unwrap();
        let target = if let Some((_, sfx)) = compressed.iter().find(|(n, _)| *n == name) {
            fs::write(
                tmp.path().join(format!("{name}{sfx}")),
                compress(sfx, &data),
            )
            .unwrap();
            continue;
        } else if name == "00000001000000000000000C.partial" {
            let gz = compress(".gz", &data);
            fs::write(tmp.path().join("00000001000000000000000C.gz.partial"), gz).unwrap();
            continue;
        } else {
            name
        };
        fs::write(tmp.path().join(target), data).unwrap();
    }
    for extra in [
        "000000010000000000000009.00000028.backup",
        "00000002000000000000000D.partial.tmp",
        "README.txt",
    ] {
        fs::write(tmp.path().join(extra), b"x").unwrap();
    }
    tmp
}

fn cleanup(dir: &Path, args: &[&str]) -> crate::support::RunOutput {
    let mut all = vec!["cleanup", "-D", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    walrcv_run(&all, LONG)
}

/// The file names on stdout (one path per line).
fn listed(out: &crate::support::RunOutput) -> BTreeSet<String> {
    out.stdout
        .lines()
        .map(|l| {
            Path::new(l)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn size(dir: &Path, name: &str) -> u64 {
    fs::metadata(dir.join(name)).unwrap().len()
}

#[test]
fn cleanup_removes_exactly_the_expected_sets() {
    let archive = build_archive();
    let dir = archive.path();
    let everything = file_name_set(dir);

    // --before with a .partial name as the cut-off, dry run: listed, not removed.
    let out = cleanup(
        dir,
        &["--before", "00000002000000000000000C.partial", "--dry-run"],
    );
    out.assert_success();
    let first_four = set(&[
        "000000010000000000000008.gz",
        "000000010000000000000009",
        "00000001000000000000000A.lz4",
        "00000001000000000000000B.zst",
    ]);
    assert_eq!(listed(&out), first_four, "{}", out.text());
    assert!(
        out.stderr.contains("would remove 4 files"),
        "{}",
        out.text()
    );
    assert_eq!(
        file_name_set(dir),
        everything,
        "--dry-run removed something"
    );

    // Far past the end: each timeline's newest file stays, and timeline 1's
    // (the .partial at the switch) keeps what follows it, so no hole is made.
    let out = cleanup(dir, &["--before", "0000000200000000000000FF", "-n"]);
    assert_eq!(listed(&out), first_four, "{}", out.text());

    // --keep-size: the newest files up to the size stay.
    let keep: u64 = [
        "00000002000000000000000D.partial",
        "00000002000000000000000C",
        "00000001000000000000000C.gz.partial",
        "00000001000000000000000B.zst",
    ]
    .iter()
    .map(|n| size(dir, n))
    .sum();
    let out = cleanup(dir, &["--keep-size", &format!("{keep}B"), "--dry-run"]);
    assert_eq!(
        listed(&out),
        set(&[
            "000000010000000000000008.gz",
            "000000010000000000000009",
            "00000001000000000000000A.lz4"
        ]),
        "{}",
        out.text()
    );

    // --older-than: only 08 and 09 are old.
    let old = SystemTime::now() - Duration::from_secs(7200);
    for n in ["000000010000000000000008.gz", "000000010000000000000009"] {
        let f = fs::File::options().write(true).open(dir.join(n)).unwrap();
        f.set_modified(old).unwrap();
    }
    let out = cleanup(dir, &["--older-than", "1h", "--dry-run"]);
    assert_eq!(
        listed(&out),
        set(&["000000010000000000000008.gz", "000000010000000000000009"]),
        "{}",
        out.text()
    );
    // Combined, every rule must agree: --before 09 and older than 1h is 08 only.
    let out = cleanup(
        dir,
        &[
            "--older-than",
            "1h",
            "--before",
            "000000010000000000000009.00000028.backup",
            "-n",
        ],
    );
    assert_eq!(
        listed(&out),
        set(&["000000010000000000000008.gz"]),
        "{}",
        out.text()
    );
    assert_eq!(file_name_set(dir), everything);

    // For real: removed, reported, durable; what stays verifies clean.
    let out = cleanup(dir, &["--before", "00000002000000000000000B.zst"]);
    out.assert_success();
    let removed = set(&[
        "000000010000000000000008.gz",
        "000000010000000000000009",
        "00000001000000000000000A.lz4",
    ]);
    assert_eq!(listed(&out), removed, "{}", out.text());
    assert!(out.stderr.contains("removed 3 files"), "{}", out.text());
    let left: BTreeSet<String> = everything.difference(&removed).cloned().collect();
    assert_eq!(file_name_set(dir), left);
    let verify = walrcv_run(
        &["verify", dir.to_str().unwrap(), "--no-progress", "--json"],
        LONG,
    );
    let report: serde_json::Value = serde_json::from_str(&verify.stdout).unwrap();
    let gaps: Vec<_> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "gap" || p["severity"] == "error")
        .collect();
    assert!(gaps.is_empty(), "{}", verify.text());
    // Nothing left to do is success too.
    cleanup(dir, &["--before", "00000002000000000000000B"]).assert_success();
    assert_eq!(file_name_set(dir), left);
}

#[test]
fn cleanup_refuses_bad_arguments_and_removes_nothing() {
    let archive = build_archive();
    let dir = archive.path();
    let everything = file_name_set(dir);
    for (args, needle) in [
        (
            vec![],
            "give at least one of --before, --older-than, --keep-size",
        ),
        (vec!["--before", "00000002.history"], "is not a WAL segment"),
        (vec!["--older-than", "30"], "invalid duration \"30\""),
        (vec!["--keep-size", "lots"], "invalid size \"lots\""),
    ] {
        let out = cleanup(dir, &args);
        assert_eq!(out.code(), Some(2), "{}", out.text());
        assert!(out.stderr.contains(needle), "{}", out.text());
    }
    let out = walrcv_run(
        &["cleanup", "-D", "/nonexistent/walrcv", "--keep-size", "1GB"],
        LONG,
    );
    assert_eq!(out.code(), Some(2), "{}", out.text());
    assert!(out.stderr.contains("/nonexistent/walrcv"), "{}", out.text());
    assert_eq!(file_name_set(dir), everything);
}

/// Cleanup in a loop beside a streaming walrcv under pgbench load: the
/// stream never fails, and verify finds no gap in what stays.
#[test]
fn cleanup_beside_a_running_stream() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    pg.pgbench_init(1);
    let archive = tempfile::tempdir().unwrap();
    let dir = archive.path().to_str().unwrap().to_owned();
    let conn = pg.conninfo();
    let mut stream = walrcv_spawn(&["stream", "-D", &dir, "-d", &conn, "-v"]);
    stream.wait_for_stderr("starting log streaming", LONG);

    let load = {
        std::thread::scope(|s| {
            let load = s.spawn(|| pg.pgbench(&["-n", "-c", "2", "-T", "10"]));
            let mut removed = 0usize;
            let mut runs = 0usize;
            let deadline = std::time::Instant::now() + LONG;
            // Until the load ends and some segments went: a slow machine
            // writes few segments, so each round also switches to a new one.
            while !load.is_finished() || removed < 4 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{runs} runs removed {removed} files"
                );
                pg.psql("SELECT pg_switch_wal()");
                let out = cleanup(Path::new(&dir), &["--keep-size", "2MiB"]);
                assert!(
                    out.success(),
                    "cleanup failed beside the stream:\n{}",
                    out.text()
                );
                removed += out.stdout.lines().count();
                runs += 1;
                assert!(
                    stream.is_running(),
                    "the stream stopped:\n{}",
                    stream.stderr()
                );
            }
            load.join().unwrap();
            (removed, runs)
        })
    };
    let (removed, runs) = load;
    assert!(
        runs > 1 && removed > 0,
        "{runs} runs removed {removed} files"
    );
    // Everything the server has is in the archive, then stop the stream.
    pg.psql("SELECT pg_switch_wal()");
    let target = pg.walfile_name(pg.current_lsn());
    wait_until(LONG, "the stream reached the current segment", || {
        file_name_set(Path::new(&dir))
            .iter()
            .any(|n| n.starts_with(&target))
    });
    assert!(stream.is_running(), "{}", stream.stderr());
    let status = stream.terminate();
    assert!(status.success(), "{status:?}\n{}", stream.stderr());
    let verify = walrcv_run(&["verify", &dir, "--no-progress", "--json"], LONG);
    let report: serde_json::Value = serde_json::from_str(&verify.stdout).unwrap();
    assert_eq!(report["ok"], true, "{}", verify.text());
    let gaps = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "gap")
        .count();
    assert_eq!(gaps, 0, "{}", verify.text());
}

/// A removal that fails stops the run with exit status 1: what went before it
/// stays removed (still a prefix), nothing after it is touched.
#[cfg(feature = "failpoints")]
#[test]
fn cleanup_stops_at_a_failed_removal() {
    let archive = build_archive();
    let dir = archive.path();
    let everything = file_name_set(dir);
    let out = crate::support::Walrcv::new(["cleanup", "-D", dir.to_str().unwrap()])
        .args(["--before", "00000001000000000000000B"])
        .env("FAILPOINTS", "cleanup-unlink=1*off->1*return(EIO)->off")
        .timeout(LONG)
        .run();
    assert_eq!(out.code(), Some(1), "{}", out.text());
    assert_eq!(
        listed(&out),
        set(&["000000010000000000000008.gz"]),
        "{}",
        out.text()
    );
    assert!(out.stderr.contains("removed 1 files"), "{}", out.text());
    assert!(
        out.stderr.contains("000000010000000000000009"),
        "{}",
        out.text()
    );
    let mut left = everything.clone();
    left.remove("000000010000000000000008.gz");
    assert_eq!(file_name_set(dir), left);
}
