//! The verifier and `walrcv verify` on real WAL (testdata/wal, made by
//! scripts/make-testdata.sh): record counts against pg_waldump / pg_walinspect,
//! chunking independence (proptest), and every required corruption detected at
//! the right LSN.

use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use walrcv::lsn::Lsn;
use walrcv::tools::verify::{verify_archive, ProblemKind, Severity, VerifyOptions, VerifyReport};
use walrcv::wal::{Check, Verifier, VerifierConfig};

const SEG: u64 = 1 << 20;
const BLK: u64 = 8192;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn pg15() -> PathBuf {
    testdata().join("wal/pg15")
}

/// `testdata/counts.txt`: "pgNN key values...".
fn counts(key: &str) -> Vec<String> {
    let text = fs::read_to_string(testdata().join("counts.txt")).unwrap();
    text.lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .find(|f| f.len() > 1 && format!("{} {}", f[0], f[1]) == key || f[0] == key)
        .unwrap_or_else(|| panic!("{key} not in counts.txt"))
}

fn config(tli: u32, major: u32) -> VerifierConfig {
    VerifierConfig {
        segment_size: SEG,
        block_size: BLK as u32,
        system_id: None,
        timeline: tli,
        server_major: Some(major),
    }
}

fn seg_bytes(dir: &Path, names: &[&str]) -> Vec<u8> {
    names
        .iter()
        .flat_map(|n| fs::read(dir.join(n)).unwrap())
        .collect()
}

const TLI1: [&str; 4] = [
    "000000010000000000000008",
    "000000010000000000000009",
    "00000001000000000000000A",
    "00000001000000000000000B",
];

fn tli1_bytes() -> Vec<u8> {
    seg_bytes(&pg15(), &TLI1)
}

#[test]
fn pg15_record_counts_match_pg_waldump() {
    let c = counts("pg15 tli1");
    assert_eq!(c[2], TLI1[0]);
    assert_eq!(c[3], TLI1[3]);
    let expected: u64 = c[4].parse().unwrap();
    let mut v = Verifier::at_segment_start(config(1, 15), Lsn(8 * SEG));
    v.feed(&tli1_bytes()).unwrap();
    assert_eq!(v.records(), expected);

    let c = counts("pg15 tli2");
    let expected: u64 = c[4].parse().unwrap();
    let data = seg_bytes(&pg15(), &["00000002000000000000000C"]);
    let mut v = Verifier::at_segment_start(config(2, 15), Lsn(0xC * SEG));
    v.feed(&data).unwrap();
    assert_eq!(v.records(), expected);
}

#[test]
fn pg17_record_count_matches_pg_walinspect() {
    let c = counts("pg17");
    let dir = testdata().join("wal/pg17");
    let name = c[1].clone();
    let expected: u64 = c[3].parse().unwrap();
    let segno = u64::from_str_radix(&name[16..], 16).unwrap();
    let mut v = Verifier::at_segment_start(config(1, 17), Lsn(segno * SEG));
    v.feed(&fs::read(dir.join(&name)).unwrap()).unwrap();
    assert_eq!(v.records(), expected);
    assert_eq!(v.server_major(), Some(17));
    // The segment ends with a switch: verified to the segment end.
    assert_eq!(v.verified_end(), Lsn((segno + 1) * SEG));
}

/// Runs the installed pg_waldump (when present) and compares with the verifier.
#[test]
fn pg15_live_pg_waldump_comparison() {
    let waldump = Path::new("/usr/lib/postgresql/15/bin/pg_waldump");
    assert!(
        waldump.is_file(),
        "{} not installed: run scripts/install-deps.sh (tests never skip)",
        waldump.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    for n in TLI1 {
        fs::copy(pg15().join(n), tmp.path().join(n)).unwrap();
    }
    let out = std::process::Command::new(waldump)
        .arg("-p")
        .arg(tmp.path())
        .arg(TLI1[0])
        .arg(TLI1[3])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // pg_waldump read all four segments to their end (the last one ends with
    // an XLOG_SWITCH): no error, and so a count of every record.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "pg_waldump {}:\n{stderr}",
        out.status
    );
    let n = stdout.lines().filter(|l| l.starts_with("rmgr:")).count() as u64;
    assert!(n > 0, "pg_waldump listed no record:\n{stdout}");
    let mut v = Verifier::at_segment_start(config(1, 15), Lsn(8 * SEG));
    v.feed(&tli1_bytes()).unwrap();
    assert_eq!(v.records(), n);
    // The first record pg_waldump lists is the verifier's first record.
    let first = stdout.lines().next().unwrap();
    let lsn_text = first
        .split("lsn: ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    assert_eq!(
        v.first_record_start(),
        Some(lsn_text.parse::<Lsn>().unwrap())
    );
}

#[test]
fn good_archive_verifies_clean() {
    let r = verify_archive(
        &pg15(),
        &VerifyOptions {
            progress: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.ok, "{}", walrcv::tools::verify::render_human(&r));
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.exit_code(), 0);
    assert_eq!(r.segment_size, Some(SEG));
    assert_eq!(r.server_major, Some(15));
    assert_eq!(r.timelines.len(), 2);
    let t2 = &r.timelines[1];
    let sp: Lsn = counts("pg15 switchpoint")[2].parse().unwrap();
    assert_eq!((t2.parent, t2.switchpoint), (Some(1), Some(sp)));
    // The TLI-1 .partial at the switch segment ends at (or after) the switch point,
    // followed by zeros.
    let p = r
        .files
        .iter()
        .find(|f| f.name == "00000001000000000000000C.partial")
        .unwrap();
    assert!(!p.in_sequence);
    assert!(p.valid_end.unwrap() >= sp);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["timelines"][1]["switchpoint"], sp.to_string());
    let text = walrcv::tools::verify::render_human(&r);
    assert!(text.contains("timeline 2 (from timeline 1 at"), "{text}");
}

fn copy_archive() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in fs::read_dir(pg15()).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    tmp
}

fn verify(dir: &Path) -> VerifyReport {
    verify_archive(
        dir,
        &VerifyOptions {
            progress: false,
            ..Default::default()
        },
    )
    .unwrap()
}

fn the_error(r: &VerifyReport) -> &walrcv::tools::verify::Problem {
    let errors: Vec<_> = r.errors().collect();
    assert!(!r.ok);
    assert_eq!(r.exit_code(), 1);
    assert_eq!(
        errors.len(),
        1,
        "{}",
        walrcv::tools::verify::render_human(r)
    );
    errors[0]
}

/// A record of segment `name` lying inside one page, with at least 100 bytes.
fn find_record(dir: &Path, name: &str, segno: u64, from: usize) -> (Lsn, u32) {
    let data = fs::read(dir.join(name)).unwrap();
    let mut v = Verifier::at_segment_start(config(1, 15), Lsn(segno * SEG));
    let mut off = 0;
    let mut seen = None;
    while off < data.len() {
        v.feed(&data[off..off + 1]).unwrap();
        off += 1;
        if off < from {
            continue;
        }
        if let Some(s) = v.current_record_start() {
            if seen != Some(s) {
                seen = Some(s);
                let o = (s.0 % SEG) as usize;
                let tot = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
                if tot >= 100 && (s.0 % BLK) + u64::from(tot) < BLK {
                    return (s, tot);
                }
            }
        }
    }
    panic!("no suitable record");
}

#[test]
fn corruption_flipped_bit_in_record() {
    let tmp = copy_archive();
    let name = "000000010000000000000008";
    let (rec, _) = find_record(tmp.path(), name, 8, 100_000);
    let path = tmp.path().join(name);
    let mut data = fs::read(&path).unwrap();
    data[(rec.0 % SEG) as usize + 60] ^= 0x04;
    fs::write(&path, data).unwrap();
    let r = verify(tmp.path());
    let p = the_error(&r);
    assert_eq!(
        (p.kind, p.check, p.lsn),
        (ProblemKind::Corrupt, Some(Check::Crc), Some(rec))
    );
    assert_eq!(p.file, name);
    assert_eq!(p.offset, Some(rec.0 % SEG));
}

#[test]
fn corruption_wrong_page_address() {
    let tmp = copy_archive();
    let name = "00000001000000000000000A";
    let page = 0xA * SEG + 5 * BLK;
    let path = tmp.path().join(name);
    let mut data = fs::read(&path).unwrap();
    let o = (5 * BLK) as usize;
    data[o + 8..o + 16].copy_from_slice(&(page + BLK).to_le_bytes());
    fs::write(&path, data).unwrap();
    let r = verify(tmp.path());
    let p = the_error(&r);
    assert_eq!(
        (p.check, p.lsn, p.offset),
        (Some(Check::PageAddress), Some(Lsn(page)), Some(5 * BLK))
    );
}

#[test]
fn corruption_wrong_magic() {
    let tmp = copy_archive();
    let name = "000000010000000000000009";
    let page = 9 * SEG + 7 * BLK;
    let path = tmp.path().join(name);
    let mut data = fs::read(&path).unwrap();
    let o = (7 * BLK) as usize;
    data[o..o + 2].copy_from_slice(&0xD111u16.to_le_bytes());
    fs::write(&path, data).unwrap();
    let r = verify(tmp.path());
    let p = the_error(&r);
    assert_eq!((p.check, p.lsn), (Some(Check::PageMagic), Some(Lsn(page))));
    assert_eq!(p.file, name);
}

#[test]
fn corruption_truncated_segment() {
    let tmp = copy_archive();
    let name = "00000001000000000000000A";
    let path = tmp.path().join(name);
    let data = fs::read(&path).unwrap();
    fs::write(&path, &data[..300_000]).unwrap();
    let r = verify(tmp.path());
    let p = the_error(&r);
    assert_eq!(
        (p.kind, p.lsn, p.offset),
        (
            ProblemKind::WrongSize,
            Some(Lsn(0xA * SEG + 300_000)),
            Some(300_000)
        )
    );
}

#[test]
fn corruption_missing_segment() {
    let tmp = copy_archive();
    fs::remove_file(tmp.path().join("000000010000000000000009")).unwrap();
    let r = verify(tmp.path());
    let p = the_error(&r);
    assert_eq!((p.kind, p.lsn), (ProblemKind::Gap, Some(Lsn(9 * SEG))));
    assert_eq!(p.file, "000000010000000000000009");
}

#[test]
fn corruption_segment_of_another_cluster() {
    let tmp = copy_archive();
    let other = testdata().join("wal/other-cluster/000000010000000000000007");
    fs::copy(other, tmp.path().join("00000001000000000000000A")).unwrap();
    let r = verify(tmp.path());
    let p = r
        .errors()
        .find(|p| p.kind == ProblemKind::SystemId)
        .unwrap();
    assert_eq!(
        (p.check, p.lsn),
        (Some(Check::SystemId), Some(Lsn(0xA * SEG)))
    );
    assert_eq!(p.file, "00000001000000000000000A");
    assert!(!r.ok);
}

#[test]
fn bad_input_files_are_problems_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    fs::copy(pg15().join(TLI1[0]), tmp.path().join(TLI1[0])).unwrap();
    fs::write(tmp.path().join(TLI1[1]), b"").unwrap();
    fs::write(tmp.path().join(TLI1[2]), vec![b'x'; 4096]).unwrap();
    fs::write(tmp.path().join(TLI1[3]), vec![0u8; SEG as usize]).unwrap();
    let r = verify(tmp.path());
    assert!(!r.ok);
    for n in &TLI1[1..] {
        assert!(
            r.errors().any(|p| &p.file == n),
            "{n}: {}",
            walrcv::tools::verify::render_human(&r)
        );
    }
    // An unreadable segment (a dangling symlink: root reads everything else): exit 2.
    std::os::unix::fs::symlink(
        "/nonexistent/walrcv-segment",
        tmp.path().join("00000001000000000000000F"),
    )
    .unwrap();
    let r = verify(tmp.path());
    assert!(r
        .errors()
        .any(|p| p.kind == ProblemKind::Unreadable && p.file == "00000001000000000000000F"));
    assert_eq!(r.exit_code(), 2);
    // Only non-WAL files.
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join(TLI1[0]), b"hello").unwrap();
    let r = verify(tmp.path());
    assert_eq!(r.errors().next().unwrap().kind, ProblemKind::NotWal);
    // Directory errors.
    assert!(verify_archive(Path::new("/nonexistent/walrcv"), &VerifyOptions::default()).is_err());
    assert!(verify_archive(&pg15().join(TLI1[0]), &VerifyOptions::default()).is_err());
    // A history file that does not parse.
    let tmp = copy_archive();
    fs::write(
        tmp.path().join("00000002.history"),
        b"1\tnot-an-lsn\treason\n",
    )
    .unwrap();
    let r = verify(tmp.path());
    let p = r.errors().find(|p| p.kind == ProblemKind::History).unwrap();
    assert!(p.message.contains("line 1"), "{}", p.message);
    assert!(r
        .problems
        .iter()
        .all(|p| p.severity == Severity::Error || p.severity == Severity::Warning));
}

fn run_chunked(data: &[u8], chunks: &[usize], start: Lsn) -> (u64, Lsn, Lsn, Option<(Check, Lsn)>) {
    let mut v = Verifier::at_segment_start(config(1, 15), start);
    let mut off = 0;
    let mut i = 0;
    let mut err = None;
    while off < data.len() {
        let n = chunks[i % chunks.len()].min(data.len() - off);
        i += 1;
        if let Err(e) = v.feed(&data[off..off + n]) {
            err = Some((e.check, e.lsn));
            break;
        }
        off += n;
    }
    (
        v.records(),
        v.verified_end(),
        if err.is_some() { Lsn(0) } else { v.position() },
        err,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_chunk_sizes_give_identical_results(chunks in proptest::collection::vec(1usize..20000, 1..40)) {
        let data = tli1_bytes();
        let whole = run_chunked(&data, &[usize::MAX], Lsn(8 * SEG));
        let chunked = run_chunked(&data, &chunks, Lsn(8 * SEG));
        prop_assert_eq!(whole, chunked);
    }

    #[test]
    fn random_chunk_sizes_same_error(chunks in proptest::collection::vec(1usize..9000, 1..20), at in 0usize..(2 << 20)) {
        let mut data = tli1_bytes();
        data.truncate(2 << 20);
        // Within the checked bytes of the records that end in these 2 MB: a
        // bit of a record cut off at the end is never checked (its CRC is not
        // there), nor is the alignment padding that no CRC covers.
        static CHECKED: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
        let checked = CHECKED.get_or_init(|| checked_offsets(&data));
        let at = checked[at % checked.len()];
        data[at] ^= 0x20;
        let whole = run_chunked(&data, &[usize::MAX], Lsn(8 * SEG));
        prop_assert!(whole.3.is_some(), "the bit flipped at {} went unnoticed: {:?}", at, whole);
        let chunked = run_chunked(&data, &chunks, Lsn(8 * SEG));
        prop_assert_eq!(whole, chunked);
    }
}

/// How many bytes from the start of `data` (WAL from segment 8) the verifier
/// checks whole: up to the end of the last complete record.
fn verified_len(data: &[u8]) -> usize {
    let (_, verified_end, _, err) = run_chunked(data, &[usize::MAX], Lsn(8 * SEG));
    assert!(err.is_none(), "the clean fixture verifies: {err:?}");
    let len = (verified_end.0 - 8 * SEG) as usize;
    assert!(
        len >= 1 << 20,
        "at least a segment of complete records: {len}"
    );
    len
}

/// Offsets in `data` (WAL from segment 8) that a check covers: every byte of
/// the complete records and page headers, but not the alignment padding that
/// follows each record up to the next MAXALIGN boundary nor the 4 padding
/// bytes of each page header. PostgreSQL checks neither (it writes zeros there
/// and recovery never reads them), so neither does the verifier: refusing WAL
/// the server would replay would stall a synchronous primary for bytes that
/// carry nothing. Found by feeding the clean bytes one at a time: a record's
/// count goes up at its last byte.
fn checked_offsets(data: &[u8]) -> Vec<usize> {
    let len = verified_len(data);
    let mut v = Verifier::at_segment_start(config(1, 15), Lsn(8 * SEG));
    let mut unchecked = vec![false; len];
    for at in 0..len {
        let before = v.records();
        v.feed(&data[at..at + 1]).unwrap();
        if v.records() > before {
            let end = at + 1;
            unchecked[end..end.next_multiple_of(8).min(len)].fill(true);
        }
        if (20..24).contains(&(at % BLK as usize)) {
            unchecked[at] = true;
        }
    }
    (0..len).filter(|&at| !unchecked[at]).collect()
}

#[test]
fn checked_offsets_leave_out_only_the_padding() {
    let mut clean = tli1_bytes();
    clean.truncate(2 << 20);
    let checked = checked_offsets(&clean);
    let len = verified_len(&clean);
    // The Heap INSERT at 0/008433D0 is 82 bytes long: 6 bytes of padding
    // follow it (pg_waldump of the fixture).
    let record_end = 0x8433D0 + 82 - 8 * SEG as usize;
    assert!(checked.contains(&(record_end - 1)));
    assert!((record_end..record_end + 6).all(|at| checked.binary_search(&at).is_err()));
    assert!(checked.contains(&(record_end + 6)));
    assert!(checked.len() > len * 9 / 10, "{} of {len}", checked.len());
}

/// The premise of `random_chunk_sizes_same_error`: a bit flipped anywhere in
/// the complete records of its 2 MB is an error (so "no error" on both sides
/// can never make it pass), swept every 4099 bytes.
#[test]
fn a_flipped_bit_anywhere_in_the_fixture_is_an_error() {
    let mut clean = tli1_bytes();
    clean.truncate(2 << 20);
    let mut unnoticed = Vec::new();
    for &at in checked_offsets(&clean).iter().step_by(4099) {
        let mut data = clean.clone();
        data[at] ^= 0x20;
        if run_chunked(&data, &[usize::MAX], Lsn(8 * SEG)).3.is_none() {
            unnoticed.push(at);
        }
    }
    assert!(
        unnoticed.is_empty(),
        "flipped bits not noticed at {unnoticed:?}"
    );
}

#[test]
fn pg17_archive_verifies_clean() {
    let r = verify(&testdata().join("wal/pg17"));
    assert!(r.ok, "{}", walrcv::tools::verify::render_human(&r));
    assert_eq!(r.server_major, Some(17));
    assert_eq!(r.records, counts("pg17")[3].parse::<u64>().unwrap());
}

#[test]
fn verify_args_parse() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: walrcv::tools::verify::VerifyArgs,
    }
    let c = Cli::try_parse_from(["walrcv-verify", "/some/dir", "--json"]).unwrap();
    assert_eq!(c.args.dir, PathBuf::from("/some/dir"));
    assert!(c.args.json && !c.args.no_progress);
    assert!(Cli::try_parse_from(["walrcv-verify"]).is_err());
    // `run` on a missing directory: exit status 2.
    let a = walrcv::tools::verify::VerifyArgs {
        dir: "/nonexistent/walrcv".into(),
        json: false,
        no_progress: true,
    };
    assert_eq!(walrcv::tools::verify::run(&a), 2);
}

#[test]
fn missing_history_and_missing_child_switch_segment() {
    let tmp = copy_archive();
    fs::remove_file(tmp.path().join("00000002.history")).unwrap();
    let r = verify(tmp.path());
    let p = the_error(&r);
    assert_eq!(
        (p.kind, p.file.as_str()),
        (ProblemKind::History, "00000002.history")
    );

    // The TLI-2 copy of the switch segment missing, later TLI-2 WAL present: a gap, even
    // though the TLI-1 .partial of that segment is there.
    let tmp = copy_archive();
    fs::remove_file(tmp.path().join("00000002000000000000000C")).unwrap();
    let r = verify(tmp.path());
    let p = the_error(&r);
    assert_eq!((p.kind, p.lsn), (ProblemKind::Gap, Some(Lsn(0xC * SEG))));
    assert_eq!(p.file, "00000002000000000000000C");

    // The archive ending at the switch: TLI-1 .partial and the history only.
    let tmp = copy_archive();
    fs::remove_file(tmp.path().join("00000002000000000000000C")).unwrap();
    fs::remove_file(tmp.path().join("00000002000000000000000D.partial")).unwrap();
    let r = verify(tmp.path());
    assert!(r.ok, "{}", walrcv::tools::verify::render_human(&r));
    let f = r
        .files
        .iter()
        .find(|f| f.name == "00000001000000000000000C.partial")
        .unwrap();
    assert!(f.in_sequence);
}

#[test]
fn partial_with_garbage_after_valid_wal_is_a_problem() {
    let tmp = copy_archive();
    let path = tmp.path().join("00000002000000000000000D.partial");
    let mut data = fs::read(&path).unwrap();
    data[0x40000] = 0x11; // well after the valid end 0/D2B6A0
    fs::write(&path, data).unwrap();
    let r = verify(tmp.path());
    let p = the_error(&r);
    assert_eq!(p.kind, ProblemKind::TrailingGarbage);
    assert_eq!(p.file, "00000002000000000000000D.partial");
}

#[test]
fn record_spanning_several_segments() {
    // Segment 9 is entirely the inside of a 1.5 MB record that began in 8... the
    // verifier chains 8 -> 9 -> A without buffering: started at 9 it skips the
    // continuation into A.
    let data = tli1_bytes();
    let mut v = Verifier::at_segment_start(config(1, 15), Lsn(9 * SEG));
    v.feed(&data[SEG as usize..2 * SEG as usize]).unwrap();
    assert_eq!(v.records(), 0);
    assert!(v.in_record());
    v.feed(&data[2 * SEG as usize..3 * SEG as usize]).unwrap();
    assert!(v.records() > 0);
}

#[test]
fn far_apart_segments_give_one_gap_quickly() {
    let tmp = tempfile::tempdir().unwrap();
    fs::copy(pg15().join(TLI1[0]), tmp.path().join(TLI1[0])).unwrap();
    // A copy named far away: wrong page addresses, and one gap run, without iterating
    // over billions of segment numbers.
    fs::copy(
        pg15().join(TLI1[1]),
        tmp.path().join("0000000100000FFF00000FFF"),
    )
    .unwrap();
    fs::copy(pg15().join(TLI1[1]), tmp.path().join(TLI1[2])).unwrap();
    let r = verify(tmp.path());
    let gaps: Vec<_> = r.errors().filter(|p| p.kind == ProblemKind::Gap).collect();
    assert_eq!(gaps.len(), 2, "{}", walrcv::tools::verify::render_human(&r));
    assert_eq!(gaps[0].file, "000000010000000000000009");
    assert_eq!(gaps[1].file, "00000001000000000000000B");
    assert!(
        gaps[1].message.contains("0000000100000FFF00000FFE"),
        "{}",
        gaps[1].message
    );
    // The misnamed copy of 9 in A's place: wrong page address at A's start.
    assert!(r
        .errors()
        .any(|p| p.check == Some(Check::PageAddress) && p.lsn == Some(Lsn(0xA * SEG))));
}
