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

/// `bytes[..written]` in a zero-padded segment-sized file, as the segment
/// writer leaves a `.partial` after writing that much.
fn written(bytes: &[u8], written: usize) -> Vec<u8> {
    let mut file = vec![0; SEG as usize];
    file[..written].copy_from_slice(&bytes[..written]);
    file
}

/// Lengths a `.partial` of `bytes` passes through while being written:
/// record boundaries and a byte either side (the first records), inside
/// record and page headers, each side of page boundaries, and a stride
/// over the whole segment.
fn growth(bytes: &[u8], segment: &str, tli: TimeLineId) -> Vec<usize> {
    let mut at: Vec<usize> = Vec::new();
    for r in record_boundaries(bytes, segment, tli).into_iter().take(40) {
        let r = r as usize;
        at.extend([r - 1, r, r + 1, r + 10]);
    }
    for page in 1..5 {
        let p = page * 8192;
        at.extend([p - 1, p, p + 1, p + 10, p + 24, p + 30]);
    }
    at.extend((1..).map(|i| i * 9973).take_while(|&n| n < SEG as usize));
    at.push(SEG as usize);
    at.retain(|&n| n > 40 && n <= SEG as usize);
    at.sort_unstable();
    at.dedup();
    at
}

/// Grows a `.partial` of segment `s` through [`growth`], resuming at each
/// length, and compares with the full check.
fn resume_through_growth(s: &str, tli: TimeLineId) -> PartialCheck {
    let segment = fixture(s);
    let lengths = growth(&segment, s, tli);
    let first = written(&segment, lengths[0]);
    let (valid, check) = check_partial(&first, &name(s)).unwrap();
    assert_eq!(
        valid,
        check_segment(&first, &name(s), Completeness::Partial).unwrap()
    );
    let mut check = check.unwrap();
    for &n in &lengths[1..] {
        let file = written(&segment, n);
        let full = check_segment(&file, &name(s), Completeness::Partial).unwrap();
        check = check
            .resume(&file)
            .unwrap_or_else(|| panic!("{s}: no resume at {n}"));
        assert_eq!(check.valid(), full, "{s} written up to {n}");
        // The strict part never takes in the zeros after the written bytes
        // (a record may end in zeros: the valid end can pass `n`, as in
        // the full check).
        assert!(check.checked_len() as usize <= n, "{s}: {n}");
    }
    check
}

#[test]
fn a_resumed_check_answers_as_the_full_check_at_every_length() {
    // Many records, across record and page boundaries, to the segment end.
    // Its last record goes on in D: the valid end is where it starts.
    let check = resume_through_growth("00000002000000000000000C", 2);
    assert_eq!(check.valid().valid_bytes, 1_047_608);
    // Starting with the continuation of a record from the segment before.
    resume_through_growth("00000001000000000000000A", 1);
    // A record of 1.5 MB begun in it and not ended.
    resume_through_growth("000000010000000000000009", 1);
}

#[test]
fn a_resume_with_nothing_new_gives_the_same_answer() {
    let s = "00000002000000000000000C";
    let file = written(&fixture(s), 50_000);
    let (valid, check) = check_partial(&file, &name(s)).unwrap();
    let check = check.unwrap();
    let again = check.resume(&file).unwrap();
    assert_eq!(again.valid(), valid);
    assert_eq!(again.checked_len(), check.checked_len());
}

#[test]
fn a_torn_record_appended_is_not_counted_until_it_is_whole() {
    let s = "00000002000000000000000C";
    let segment = fixture(s);
    let bounds = record_boundaries(&segment, s, 2);
    let (r, next) = (bounds[20] as usize, bounds[21] as usize);
    let (_, check) = check_partial(&written(&segment, r), &name(s)).unwrap();
    let check = check.unwrap();
    let torn = check.resume(&written(&segment, next - 3)).unwrap();
    assert_eq!(torn.valid().valid_bytes as usize, r);
    let whole = torn.resume(&written(&segment, next)).unwrap();
    assert_eq!(whole.valid().valid_bytes as usize, next);
}

#[test]
fn garbage_appended_is_never_counted_and_asks_for_the_full_check() {
    let s = "00000002000000000000000C";
    let segment = fixture(s);
    let bounds = record_boundaries(&segment, s, 2);
    let (r, next) = (bounds[30] as usize, bounds[31] as usize);
    let (_, check) = check_partial(&written(&segment, r), &name(s)).unwrap();
    let check = check.unwrap();
    // Garbage where the next record should start.
    let mut garbage = written(&segment, r);
    garbage[r..r + 40].fill(0xAB);
    assert!(check.resume(&garbage).is_none());
    assert!(check_segment(&garbage, &name(s), Completeness::Partial).is_err());
    // A whole record appended, with a flipped byte in it (its CRC fails),
    // then more records: damage, not a torn end.
    let mut flipped = written(&segment, next + 2000);
    flipped[r + 30] ^= 0x01;
    assert!(check.resume(&flipped).is_none());
    assert!(check_segment(&flipped, &name(s), Completeness::Partial).is_err());
    // The record torn, then garbage a few bytes after it.
    let mut torn = written(&segment, next - 8);
    torn[next + 100] = 0x55;
    assert!(check.resume(&torn).is_none());
    assert!(check_segment(&torn, &name(s), Completeness::Partial).is_err());
}

#[test]
fn garbage_more_than_a_page_past_the_written_end_is_left_to_the_next_full_check() {
    // The one assumption of a resume (see `PartialCheck`): what the full
    // check refuses, a resume counts only up to the verified end.
    let s = "00000002000000000000000C";
    let segment = fixture(s);
    let bounds = record_boundaries(&segment, s, 2);
    let (r, next) = (bounds[30] as usize, bounds[31] as usize);
    let (_, check) = check_partial(&written(&segment, r), &name(s)).unwrap();
    let mut far = written(&segment, next);
    far[next + 3 * 8192] = 0x55;
    let resumed = check.unwrap().resume(&far).unwrap();
    assert_eq!(resumed.valid().valid_bytes as usize, next);
    assert!(check_segment(&far, &name(s), Completeness::Partial).is_err());
}

#[test]
fn a_file_of_another_length_is_not_resumed() {
    let s = "00000002000000000000000C";
    let segment = fixture(s);
    let (_, check) = check_partial(&written(&segment, 30_000), &name(s)).unwrap();
    let mut longer = written(&segment, 40_000);
    longer.push(0);
    assert!(check.unwrap().resume(&longer).is_none());
}

#[test]
fn written_window_is_a_page_past_the_stop() {
    assert_eq!(written_window(100, 500, 1 << 20, 8192), 500 + 8192);
    assert_eq!(written_window(100, 50, 1 << 20, 8192), 100 + 8192);
    assert_eq!(written_window(100, (1 << 20) - 10, 1 << 20, 8192), 1 << 20);
}

#[test]
fn written_len_finds_the_last_non_zero_byte() {
    assert_eq!(written_len(&[]), 0);
    assert_eq!(written_len(&[0; 200]), 0);
    for len in [1, 63, 64, 65, 130, 1000] {
        for at in [0, len / 2, len - 1] {
            let mut b = vec![0u8; len];
            b[at] = 7;
            assert_eq!(written_len(&b), at + 1, "{len} {at}");
            b[0] = 1;
            assert_eq!(written_len(&b), at + 1, "{len} {at}");
        }
    }
}

/// The `.partial` of `s` written up to `n`, checked; then the whole segment,
/// as its writer completes and renames it.
fn completed_after(s: &str, n: usize) -> (PartialCheck, Vec<u8>) {
    let segment = fixture(s);
    let (_, check) = check_partial(&written(&segment, n), &name(s)).unwrap();
    (check.unwrap(), segment)
}

#[test]
fn a_completed_segment_continues_the_check_as_the_full_check_answers() {
    for (s, tli) in [
        ("00000002000000000000000C", 2),
        ("00000001000000000000000A", 1),
        ("000000010000000000000009", 1),
        ("000000010000000000000008", 1),
    ] {
        let segment = fixture(s);
        let full = check_segment(&segment, &name(s), Completeness::Complete).unwrap();
        for n in growth(&segment, s, tli).into_iter().step_by(7) {
            let (check, segment) = completed_after(s, n);
            assert_eq!(check.complete(&segment), Some(full), "{s} after {n}");
        }
        // After resumes too, and with nothing left to check.
        let check = resume_through_growth(s, tli);
        assert_eq!(check.complete(&segment), Some(full), "{s} grown whole");
    }
}

#[test]
fn a_completed_segment_with_damage_past_the_checked_bytes_is_not_vouched_for() {
    let s = "00000002000000000000000C";
    let segment = fixture(s);
    let bounds = record_boundaries(&segment, s, 2);
    let r = bounds[30] as usize;
    let (check, _) = completed_after(s, r);
    // A flipped byte anywhere after the checked bytes: in the next record,
    // far out, in a page header, in the last record that ends in it (the
    // one after, from 1 047 608, goes on in the next segment).
    for at in [r + 30, r + 200_000, (r / 8192 + 2) * 8192 + 2, 1_047_000] {
        let mut damaged = segment.clone();
        damaged[at] ^= 0x01;
        assert!(check.complete(&damaged).is_none(), "flip at {at}");
        assert!(
            check_segment(&damaged, &name(s), Completeness::Complete).is_err(),
            "flip at {at}"
        );
    }
    // A byte of the record that goes on in the next segment: its CRC is
    // checked with that segment, by the full check as by this one.
    let mut last = segment.clone();
    last[SEG as usize - 1] ^= 0x01;
    assert_eq!(
        check.complete(&last),
        check_segment(&last, &name(s), Completeness::Complete).ok()
    );
    // WAL ending before the segment's end (zeros, no XLOG_SWITCH): a
    // `.partial`'s content is not a complete segment.
    let cut = written(&segment, bounds[40] as usize);
    assert!(check.complete(&cut).is_none());
    assert!(check_segment(&cut, &name(s), Completeness::Complete).is_err());
}

#[test]
fn a_completed_segment_of_another_length_is_not_vouched_for() {
    let s = "00000002000000000000000C";
    let (check, segment) = completed_after(s, 30_000);
    let mut longer = segment.clone();
    longer.push(0);
    assert!(check.complete(&longer).is_none());
    assert!(check.complete(&segment[..segment.len() - 1]).is_none());
}
