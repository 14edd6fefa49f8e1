//! `walrcv verify` on compressed archives written for real: Debian's
//! pg_receivewal 15 with `-Z gzip` and `-Z lz4`, walrcv with `-Z zstd`, all
//! against the same server. Each verifies clean (every file decompressed and
//! checked); a corrupted record inside a recompressed segment, a truncated
//! `.gz` and an `.lz4` whose decompressed size is wrong are each reported as
//! an error naming the file.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{debian_bin, run_with_timeout, walrcv_run, PgServer, RunOutput};

const LONG: Duration = Duration::from_secs(120);
const MB: usize = 1 << 20;
const PAGE: usize = 8192;

fn verify_json(dir: &Path) -> (RunOutput, serde_json::Value) {
    let out = walrcv_run(
        &["verify", dir.to_str().unwrap(), "--no-progress", "--json"],
        LONG,
    );
    let report = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", out.text()));
    (out, report)
}

fn with_suffix(dir: &Path, suffix: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .collect();
    v.sort();
    v
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Flips a byte in the middle of a record's continuation data on a page
/// after the first: covered by that record's CRC whatever the record is.
fn corrupt_a_record(segment: &mut [u8]) {
    for page in (2..segment.len() / PAGE).map(|p| p * PAGE) {
        let rem_len =
            u32::from_le_bytes(segment[page + 16..page + 20].try_into().unwrap()) as usize;
        if (16..PAGE - 24).contains(&rem_len) {
            segment[page + 24 + rem_len / 2] ^= 0x10;
            return;
        }
    }
    panic!("no page with a short continuation found");
}

#[test]
fn verify_reads_and_checks_compressed_archives_from_pg_receivewal_and_walrcv() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    for slot in ["gz", "lz4", "zst"] {
        pg.create_physical_slot(slot);
    }
    pg.pgbench_init(1);
    pg.pgbench(&["-n", "-c", "2", "-T", "3"]);
    pg.force_switch_wal();
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 20000) AS i");
    let end = crate::support::format_lsn(pg.current_lsn());
    let conn = pg.conninfo();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    for (dir, (slot, z)) in dirs.iter().zip([("gz", "gzip"), ("lz4", "lz4")]) {
        let mut cmd = Command::new(debian_bin("pg_receivewal"));
        cmd.args(["-D", dir.path().to_str().unwrap(), "-d", &conn, "-S", slot])
            .args(["-Z", z, "-E", &end, "-n"]);
        let out = run_with_timeout(cmd, LONG);
        assert!(out.success(), "pg_receivewal -Z {z}:\n{}", out.text());
    }
    let zst_dir = dirs[2].path().to_str().unwrap();
    let out = walrcv_run(
        &[
            "stream", "-D", zst_dir, "-d", &conn, "-S", "zst", "-Z", "zstd", "-E", &end, "-n",
        ],
        LONG,
    );
    assert!(out.success(), "walrcv -Z zstd:\n{}", out.text());

    for (dir, sfx) in dirs.iter().zip([".gz", ".lz4", ".zst"]) {
        let complete = with_suffix(dir.path(), sfx);
        assert!(complete.len() >= 3, "{sfx}: {complete:?}");
        let (out, report) = verify_json(dir.path());
        assert!(out.success(), "{sfx}:\n{}", out.text());
        assert_eq!(report["ok"], true);
        assert!(
            report["problems"].as_array().unwrap().is_empty(),
            "{}",
            out.text()
        );
        assert!(report["records"].as_u64().unwrap() > 1000, "{}", out.text());
        let files = report["files"].as_array().unwrap();
        for name in &complete {
            let f = files.iter().find(|f| f["name"] == name.as_str());
            let f = f.unwrap_or_else(|| panic!("{name} not verified:\n{}", out.text()));
            assert!(f["records"].as_u64().unwrap() > 0 || f["verified_end"].is_string());
        }
    }

    // A record corrupted inside a complete .gz (decompressed, flipped, recompressed).
    let gz_dir = dirs[0].path();
    let victim = with_suffix(gz_dir, ".gz")[1].clone();
    let mut segment = gunzip(&fs::read(gz_dir.join(&victim)).unwrap());
    assert_eq!(segment.len(), MB);
    let pristine = fs::read(gz_dir.join(&victim)).unwrap();
    corrupt_a_record(&mut segment);
    fs::write(gz_dir.join(&victim), gzip(&segment)).unwrap();
    let (out, report) = verify_json(gz_dir);
    assert_eq!(out.code(), Some(1), "{}", out.text());
    let corrupt: Vec<_> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "corrupt")
        .collect();
    assert!(!corrupt.is_empty(), "{}", out.text());
    assert_eq!(corrupt[0]["file"], victim.as_str(), "{}", out.text());
    assert!(corrupt[0]["lsn"].is_string(), "{}", out.text());

    // A truncated .gz: an error naming the file.
    let half = &pristine[..pristine.len() / 2];
    fs::write(gz_dir.join(&victim), half).unwrap();
    let (out, report) = verify_json(gz_dir);
    assert_eq!(out.code(), Some(1), "{}", out.text());
    let p = &report["problems"].as_array().unwrap()[0];
    assert_eq!(p["file"], victim.as_str(), "{}", out.text());
    assert_eq!(p["kind"], "wrong_size", "{}", out.text());
    assert!(out.stdout.contains("truncated segment"), "{}", out.text());

    // An .lz4 whose decompressed size is wrong (a page short).
    let lz4_dir = dirs[1].path();
    let victim = with_suffix(lz4_dir, ".lz4")[1].clone();
    let mut segment = Vec::new();
    lz4_flex::frame::FrameDecoder::new(&fs::read(lz4_dir.join(&victim)).unwrap()[..])
        .read_to_end(&mut segment)
        .unwrap();
    let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
    e.write_all(&segment[..MB - PAGE]).unwrap();
    fs::write(lz4_dir.join(&victim), e.finish().unwrap()).unwrap();
    let (out, report) = verify_json(lz4_dir);
    assert_eq!(out.code(), Some(1), "{}", out.text());
    let p = &report["problems"].as_array().unwrap()[0];
    assert_eq!(p["file"], victim.as_str(), "{}", out.text());
    assert_eq!(p["kind"], "wrong_size", "{}", out.text());
    let expected = format!("decompresses to {} bytes, expected {MB}", MB - PAGE);
    assert!(out.stdout.contains(&expected), "{}", out.text());
}
