//! `check_segment` over the real WAL in `testdata/wal/pg15` (1 MB segments)
//! and variants of it damaged or cut here.

use std::path::PathBuf;

use super::*;
use crate::wal::verifier::Check;

const SEG: u64 = 1 << 20;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/wal/pg15")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn name(s: &str) -> SegmentName {
    SegmentName::parse(s).unwrap()
}

/// Offset of the start of the `n`-th record of a segment (via the verifier).
fn record_boundaries(bytes: &[u8], segment: &str, tli: TimeLineId) -> Vec<u64> {
    let (_, segno) = name(segment).segno(SEG).unwrap();
    let start = segno * SEG;
    let config = VerifierConfig {
        segment_size: SEG,
        block_size: 8192,
        system_id: None,
        timeline: tli,
        server_major: None,
    };
    let mut v = Verifier::at_segment_start(config, Lsn(start));
    let mut out = Vec::new();
    for chunk in bytes.chunks(64) {
        v.feed(chunk).unwrap();
        if let Some(r) = v.last_record_start() {
            if out.last() != Some(&(r.0 - start)) {
                out.push(r.0 - start);
            }
        }
    }
    out
}

#[test]
fn complete_segments_verify_to_their_end() {
    for s in [
        "000000010000000000000008",
        "000000010000000000000009",
        "00000001000000000000000A",
        "00000001000000000000000B",
        "00000002000000000000000C",
    ] {
        let end = check_segment(&fixture(s), &name(s), Completeness::Complete).unwrap();
        assert_eq!(end.segment_size, SEG, "{s}");
        assert_eq!(end.valid_bytes, SEG, "{s}");
    }
}

#[test]
fn partials_end_at_their_last_valid_record() {
    let s = "00000001000000000000000C";
    let end = check_segment(
        &fixture(&format!("{s}.partial")),
        &name(s),
        Completeness::Partial,
    )
    .unwrap();
    assert_eq!(end.end, Lsn(0xC141F8));
    assert_eq!(end.valid_bytes, 0x141F8);
    let s = "00000002000000000000000D";
    let end = check_segment(
        &fixture(&format!("{s}.partial")),
        &name(s),
        Completeness::Partial,
    )
    .unwrap();
    assert_eq!(end.end, Lsn(0xD2B6A0));
}

#[test]
fn a_flipped_byte_in_a_record_is_corruption_in_complete_and_partial_files() {
    let s = "00000002000000000000000C";
    let mut bytes = fixture(s);
    let at = record_boundaries(&bytes, s, 2)[40] as usize + 30;
    bytes[at] ^= 0x01;
    match check_segment(&bytes, &name(s), Completeness::Complete) {
        Err(FileProblem::Corrupt { error, .. }) => assert_eq!(error.check, Check::Crc),
        other => panic!("{other:?}"),
    }
    // Served as a .partial, the damage is not mistaken for a torn end: valid
    // WAL follows it.
    match check_segment(&bytes, &name(s), Completeness::Partial) {
        Err(FileProblem::Corrupt { error, .. }) => assert_eq!(error.check, Check::Crc),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_torn_last_record_is_a_clean_end_for_a_partial_only() {
    let s = "00000002000000000000000C";
    let full = fixture(s);
    let records = record_boundaries(&full, s, 2);
    let last_kept = records[300];
    let next = records[301];
    // Cut inside record 301 (the beginning of it written, zeros after).
    let cut = (next + 30) as usize;
    let mut padded = full.clone();
    padded[cut..].fill(0);
    let end = check_segment(&padded, &name(s), Completeness::Partial).unwrap();
    assert_eq!(end.valid_bytes, next, "ends where record 301 starts");
    assert!(end.valid_bytes > last_kept);
    // A compressed .partial is not padded: the stream simply stops.
    let end = check_segment(&full[..cut], &name(s), Completeness::Partial).unwrap();
    assert_eq!(end.valid_bytes, next);
    // As a complete segment, the same bytes are refused.
    assert!(matches!(
        check_segment(&padded, &name(s), Completeness::Complete),
        Err(FileProblem::Corrupt { .. })
    ));
    assert!(matches!(
        check_segment(&full[..cut], &name(s), Completeness::Complete),
        Err(FileProblem::WrongSize { size, expected: SEG, .. }) if size == cut as u64
    ));
}

#[test]
fn a_partial_holding_only_the_end_of_a_record_keeps_it() {
    // Segment A begins with the last part of the 1.5 MB record from 9.
    let s = "00000001000000000000000A";
    let full = fixture(s);
    let first = record_boundaries(&full, s, 1)[0];
    let mut partial = full.clone();
    partial[first as usize..].fill(0);
    let end = check_segment(&partial, &name(s), Completeness::Partial).unwrap();
    assert_eq!(end.records, 0);
    assert_eq!(end.valid_bytes, first);
    // Cut inside the continuation: nothing complete to keep.
    partial[(first / 2) as usize..].fill(0);
    let end = check_segment(&partial, &name(s), Completeness::Partial).unwrap();
    assert_eq!(end.valid_bytes, 0);
}

#[test]
fn an_all_zero_partial_has_nothing_written() {
    let s = "00000002000000000000000E";
    assert!(matches!(
        check_segment(&vec![0; SEG as usize], &name(s), Completeness::Partial),
        Err(FileProblem::NothingWritten { .. })
    ));
    assert!(matches!(
        check_segment(&[], &name(s), Completeness::Partial),
        Err(FileProblem::NothingWritten { .. })
    ));
    assert!(matches!(
        check_segment(&[], &name(s), Completeness::Complete),
        Err(FileProblem::NoLongHeader { .. })
    ));
}

#[test]
fn a_segment_under_another_name_fails_the_page_address_check() {
    let bytes = fixture("000000010000000000000009");
    match check_segment(
        &bytes,
        &name("00000001000000000000000A"),
        Completeness::Complete,
    ) {
        Err(FileProblem::Corrupt { error, .. }) => assert_eq!(error.check, Check::PageAddress),
        res => panic!("{res:?}"),
    }
    // Timeline 2 pages are never in a timeline 1 file (the reverse is
    // normal: a switch segment holds pages of the parent).
    let tli2 = fixture("00000002000000000000000D.partial");
    match check_segment(
        &tli2,
        &name("00000001000000000000000D"),
        Completeness::Partial,
    ) {
        Err(FileProblem::Corrupt { error, .. }) => assert_eq!(error.check, Check::PageTimeline),
        res => panic!("{res:?}"),
    }
}

#[test]
fn a_name_invalid_for_the_segment_size_is_refused() {
    // 1 MB segments: 4096 per xlogid, so the low field stops at 0xFFF.
    let bytes = fixture("000000010000000000000008");
    assert!(matches!(
        check_segment(
            &bytes,
            &name("000000010000000000001000"),
            Completeness::Complete
        ),
        Err(FileProblem::NameForSize {
            segment_size: SEG,
            ..
        })
    ));
}

#[test]
fn history_files() {
    let h = check_history(&fixture("00000002.history"), "00000002.history", 2).unwrap();
    assert_eq!(h.len(), 1);
    assert!(check_history(b"1\t0/C141F8\tx\n", "00000001.history", 1).is_err());
    assert!(check_history(b"", "00000003.history", 3).is_err());
    assert!(check_history(b"garbage\n", "00000003.history", 3).is_err());
}

#[test]
fn continuation_lengths_cross_page_headers() {
    let block = 8192;
    assert_eq!(continuation_length(100, block), Some(140));
    assert_eq!(continuation_length(8152, block), Some(8192));
    assert_eq!(continuation_length(8153, block), Some(8192 + 24 + 1));
    // One full later page, ending at its end.
    assert_eq!(continuation_length(8152 + 8168, block), Some(2 * 8192));
    assert_eq!(
        continuation_length(8152 + 8168 + 5, block),
        Some(2 * 8192 + 24 + 5)
    );
}

#[test]
fn a_continuation_near_the_end_of_the_lsn_space_does_not_overflow() {
    // Found by the check_segment fuzz target: a long header whose page
    // address is near u64::MAX, starting with a continuation.
    let input: &[u8] = include_bytes!("../../../fuzz/seeds/check_segment/overflow-continuation");
    let (_, bytes) = input.split_first().unwrap();
    let header = PageHeader::parse(bytes).unwrap();
    let (segment_size, _) = sizes_of(bytes).unwrap();
    let segno = header.page_address.0 / segment_size;
    let name = SegmentName::parse(&crate::lsn::wal_file_name(1, segno, segment_size)).unwrap();
    let _ = check_segment(bytes, &name, Completeness::Partial);
    let _ = check_segment(bytes, &name, Completeness::Complete);
}
