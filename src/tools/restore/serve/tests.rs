//! The IO shell over temporary directories holding the real WAL of
//! `testdata/wal/pg15` (1 MB segments), stored plain and compressed.

use std::io::Write as _;

use super::*;

const SEG: usize = 1 << 20;

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/wal/pg15")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn compress(c: Compression, data: &[u8], finish: bool) -> Vec<u8> {
    match c {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            w.write_all(data).unwrap();
            w.flush().unwrap();
            if finish {
                w.finish().unwrap()
            } else {
                w.get_ref().clone()
            }
        }
        Compression::Lz4 => {
            let mut w = lz4_flex::frame::FrameEncoder::new(Vec::new());
            w.write_all(data).unwrap();
            w.flush().unwrap();
            if finish {
                w.finish().unwrap()
            } else {
                w.get_ref().clone()
            }
        }
        Compression::Zstd => {
            let mut w = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
            w.write_all(data).unwrap();
            w.flush().unwrap();
            if finish {
                w.finish().unwrap()
            } else {
                w.get_ref().clone()
            }
        }
    }
}

struct Dirs {
    _tmp: tempfile::TempDir,
    archive: PathBuf,
    pg_wal: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    let pg_wal = tmp.path().join("pg_wal");
    std::fs::create_dir(&archive).unwrap();
    std::fs::create_dir(&pg_wal).unwrap();
    Dirs {
        _tmp: tmp,
        archive,
        pg_wal,
    }
}

fn put(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn complete_segments_in_every_compression_are_served_whole() {
    let s = "00000002000000000000000C";
    let plain = fixture(s);
    for c in Compression::ALL {
        let d = dirs();
        put(
            &d.archive,
            &format!("{s}{}", c.suffix()),
            &compress(c, &plain, true),
        );
        let target = d.pg_wal.join("RECOVERYXLOG");
        let served = restore(&d.archive, s, &target).unwrap();
        assert!(
            matches!(served, Served::File { partial: false, .. }),
            "{c:?}"
        );
        assert!(std::fs::read(&target).unwrap() == plain, "{c:?}");
        assert_eq!(entries(&d.pg_wal), ["RECOVERYXLOG"], "no temporary left");
    }
}

#[test]
fn the_newest_partial_is_served_under_the_requested_name_padded() {
    let s = "00000002000000000000000D";
    let partial = fixture(&format!("{s}.partial"));
    let valid = 0x2B6A0;
    for c in Compression::ALL {
        let d = dirs();
        put(
            &d.archive,
            "00000002000000000000000C",
            &fixture("00000002000000000000000C"),
        );
        // A compressed .partial is a flushed, unfinished stream of what was written.
        let stored = if c == Compression::None {
            partial.clone()
        } else {
            compress(c, &partial[..valid + 100], false)
        };
        put(&d.archive, &format!("{s}{}.partial", c.suffix()), &stored);
        let target = d.pg_wal.join("RECOVERYXLOG");
        let served = restore(&d.archive, s, &target).unwrap();
        assert_eq!(
            served,
            Served::File {
                from: format!("{s}{}.partial", c.suffix()),
                valid_end: Some(Lsn(0xD2B6A0)),
                partial: true
            }
        );
        let out = std::fs::read(&target).unwrap();
        assert_eq!(out.len(), SEG, "{c:?}");
        assert!(out[..valid] == partial[..valid], "{c:?}");
        assert!(out[valid..].iter().all(|&b| b == 0), "{c:?}");
    }
}

#[test]
fn a_corrupt_segment_is_refused_and_nothing_is_written() {
    let s = "00000002000000000000000C";
    let mut bytes = fixture(s);
    bytes[0x8000 + 200] ^= 0x10;
    for c in Compression::ALL {
        let d = dirs();
        put(
            &d.archive,
            &format!("{s}{}", c.suffix()),
            &compress(c, &bytes, true),
        );
        let err = restore(&d.archive, s, &d.pg_wal.join("RECOVERYXLOG")).unwrap_err();
        assert!(
            matches!(
                err,
                RestoreError::Check {
                    problem: FileProblem::Corrupt { .. },
                    ..
                }
            ),
            "{c:?}: {err}"
        );
        assert!(err.to_string().contains("CRC check"), "{err}");
        assert!(entries(&d.pg_wal).is_empty(), "{c:?}");
    }
}

#[test]
fn a_damaged_copy_gives_way_to_a_good_one() {
    let s = "00000002000000000000000C";
    let good = fixture(s);
    let mut bad = good.clone();
    bad[0x8000 + 200] ^= 0x10;
    let d = dirs();
    put(&d.archive, s, &bad);
    put(
        &d.archive,
        &format!("{s}.zst"),
        &compress(Compression::Zstd, &good, true),
    );
    let target = d.pg_wal.join("RECOVERYXLOG");
    restore(&d.archive, s, &target).unwrap();
    assert!(std::fs::read(&target).unwrap() == good);
}

#[test]
fn a_truncated_gz_and_an_lz4_of_the_wrong_size_are_refused() {
    let s = "00000002000000000000000C";
    let plain = fixture(s);
    let d = dirs();
    let gz = compress(Compression::Gzip, &plain, true);
    put(&d.archive, &format!("{s}.gz"), &gz[..gz.len() - 100]);
    let err = restore(&d.archive, s, &d.pg_wal.join("RECOVERYXLOG")).unwrap_err();
    assert!(matches!(err, RestoreError::Unfinished { .. }), "{err}");
    let d = dirs();
    put(
        &d.archive,
        &format!("{s}.lz4"),
        &compress(Compression::Lz4, &plain[..SEG - 8192], true),
    );
    let err = restore(&d.archive, s, &d.pg_wal.join("RECOVERYXLOG")).unwrap_err();
    assert!(
        matches!(
            err,
            RestoreError::Check {
                problem: FileProblem::WrongSize { .. },
                ..
            }
        ),
        "{err}"
    );
    let mut long = plain.clone();
    long.extend_from_slice(&[0; 8192]);
    std::fs::remove_file(d.archive.join(format!("{s}.lz4"))).unwrap();
    put(
        &d.archive,
        &format!("{s}.lz4"),
        &compress(Compression::Lz4, &long, true),
    );
    let err = restore(&d.archive, s, &d.pg_wal.join("RECOVERYXLOG")).unwrap_err();
    assert!(
        matches!(
            err,
            RestoreError::Check {
                problem: FileProblem::WrongSize { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(entries(&d.pg_wal).is_empty());
}

#[test]
fn missing_files_and_bad_requests() {
    let d = dirs();
    put(&d.archive, "00000002.history", &fixture("00000002.history"));
    let target = d.pg_wal.join("RECOVERYXLOG");
    assert_eq!(
        restore(&d.archive, "000000010000000000000001", &target).unwrap(),
        Served::NotFound
    );
    assert_eq!(
        restore(&d.archive, "00000003.history", &target).unwrap(),
        Served::NotFound
    );
    assert!(matches!(
        restore(&d.archive, "pg_wal/RECOVERYXLOG", &target),
        Err(RestoreError::InvalidRequest { .. })
    ));
    assert!(matches!(
        restore(
            &d.archive,
            "00000002.history",
            &d.pg_wal.join("nowhere/RECOVERYHISTORY")
        ),
        Err(RestoreError::TargetDirMissing { .. })
    ));
    assert!(matches!(
        restore(&d.archive.join("gone"), "00000002.history", &target),
        Err(RestoreError::ArchiveUnreadable { .. })
    ));
    assert!(entries(&d.pg_wal).is_empty());
}

#[test]
fn history_files_are_parsed_before_serving() {
    for c in Compression::ALL {
        let d = dirs();
        let h = fixture("00000002.history");
        put(
            &d.archive,
            &format!("00000002.history{}", c.suffix()),
            &compress(c, &h, true),
        );
        let target = d.pg_wal.join("RECOVERYHISTORY");
        restore(&d.archive, "00000002.history", &target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), h);
    }
    let d = dirs();
    put(&d.archive, "00000002.history", b"2\t0/1000000\tloop\n");
    assert!(matches!(
        restore(
            &d.archive,
            "00000002.history",
            &d.pg_wal.join("RECOVERYHISTORY")
        ),
        Err(RestoreError::Check {
            problem: FileProblem::BadHistory { .. },
            ..
        })
    ));
}

#[test]
fn an_all_zero_newest_partial_is_not_found() {
    let d = dirs();
    put(
        &d.archive,
        "00000001000000000000000E.partial",
        &vec![0; SEG],
    );
    assert_eq!(
        restore(
            &d.archive,
            "00000001000000000000000E",
            &d.pg_wal.join("RECOVERYXLOG")
        )
        .unwrap(),
        Served::NotFound
    );
    assert!(entries(&d.pg_wal).is_empty());
}

#[test]
fn a_partial_followed_by_its_timeline_is_a_hole() {
    let d = dirs();
    put(
        &d.archive,
        "00000002000000000000000C.partial",
        &fixture("00000002000000000000000C"),
    );
    put(&d.archive, "00000002000000000000000D", &[0; 10]);
    assert!(matches!(
        restore(
            &d.archive,
            "00000002000000000000000C",
            &d.pg_wal.join("RECOVERYXLOG")
        ),
        Err(RestoreError::Hole { .. })
    ));
}

#[test]
fn an_existing_target_is_replaced_whole() {
    let s = "000000010000000000000008";
    let d = dirs();
    put(&d.archive, s, &fixture(s));
    let target = d.pg_wal.join("RECOVERYXLOG");
    std::fs::write(&target, b"old").unwrap();
    restore(&d.archive, s, &target).unwrap();
    assert!(std::fs::read(&target).unwrap() == fixture(s));
}

/// The fixture's switch: timeline 2 begins at 0/C141F8 (`00000002.history`).
const SWITCH: usize = 0x141F8;

/// An archive after a switchover at 0/C141F8 whose timeline-2 `.partial` of
/// segment C was cut at 0x8000 (a `walrcv stream` killed while streaming
/// timeline 2 from the segment's start): its valid WAL ends before the switch
/// point. Returns the archive and where the cut copy's valid WAL ends.
fn cut_switch_segment(c: Compression, parent: &[u8], with_history: bool) -> (Dirs, Lsn) {
    let d = dirs();
    let mut cut = fixture("00000002000000000000000C");
    cut.truncate(0x8000);
    let name = SegmentName::parse("00000002000000000000000C").unwrap();
    let end = check_segment(&cut, &name, Completeness::Partial)
        .unwrap()
        .end;
    assert!(end.0 < 0xC0_0000 + SWITCH as u64 && end.0 > 0xC0_0000);
    put(
        &d.archive,
        &format!("00000002000000000000000C{}.partial", c.suffix()),
        &compress(c, &cut, false),
    );
    put(
        &d.archive,
        &format!("00000001000000000000000C{}.partial", c.suffix()),
        &compress(c, parent, false),
    );
    put(
        &d.archive,
        "00000001000000000000000B",
        &fixture("00000001000000000000000B"),
    );
    if with_history {
        put(&d.archive, "00000002.history", &fixture("00000002.history"));
    }
    (d, end)
}

#[test]
fn a_switch_segment_cut_before_the_switch_point_is_served_from_the_parent_up_to_it() {
    let parent = fixture("00000001000000000000000C.partial");
    for c in Compression::ALL {
        let (d, _) = cut_switch_segment(c, &parent, true);
        let target = d.pg_wal.join("RECOVERYXLOG");
        let served = restore(&d.archive, "00000002000000000000000C", &target).unwrap();
        assert_eq!(
            served,
            Served::File {
                from: format!("00000001000000000000000C{}.partial", c.suffix()),
                valid_end: Some(Lsn(0xC0_0000 + SWITCH as u64)),
                partial: true
            },
            "{c:?}"
        );
        let out = std::fs::read(&target).unwrap();
        assert_eq!(out.len(), SEG, "{c:?}");
        assert!(out[..SWITCH] == parent[..SWITCH], "{c:?}");
        assert!(
            out[SWITCH..].iter().all(|&b| b == 0),
            "{c:?}: zeros after S"
        );
    }
}

#[test]
fn a_switch_segment_cut_before_the_switch_point_is_served_as_it_is_without_a_verified_parent() {
    let name = "00000002000000000000000C";
    let good = fixture("00000001000000000000000C.partial");
    // The parent damaged before the switch point (after the cut copy's end).
    let mut damaged = good.clone();
    damaged[0x10000 + 100] ^= 0xFF;
    // The parent itself cut before the switch point.
    let mut short = good.clone();
    short[0x10000..].fill(0);
    for (parent, with_history) in [(&damaged, true), (&short, true), (&good, false)] {
        let (d, cut_end) = cut_switch_segment(Compression::None, parent, with_history);
        let target = d.pg_wal.join("RECOVERYXLOG");
        let served = restore(&d.archive, name, &target).unwrap();
        assert_eq!(
            served,
            Served::File {
                from: format!("{name}.partial"),
                valid_end: Some(cut_end),
                partial: true
            },
            "history: {with_history}"
        );
    }
}

/// Writes `bytes[from..to]` of `segment` into the file at `path` in place,
/// as the segment writer's `pwrite` does (same inode, same length).
fn write_in_place(path: &Path, segment: &[u8], from: usize, to: usize) {
    use std::os::unix::fs::FileExt as _;
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&segment[from..to], from as u64).unwrap();
}

/// The valid length `read_segment` gives for `name` now.
fn full_read(dir: &Path, name: &SegmentName) -> Option<usize> {
    read_segment(dir, name)
        .unwrap()
        .map(|bytes| bytes.valid().len())
}

#[test]
fn a_growing_partial_is_refreshed_in_place_as_a_full_read_would_end_it() {
    let s = "00000002000000000000000C";
    let segment = fixture(s);
    let d = dirs();
    let path = d.archive.join(format!("{s}.partial"));
    let mut padded = vec![0; SEG];
    padded[..5000].copy_from_slice(&segment[..5000]);
    put(&d.archive, &format!("{s}.partial"), &padded);
    let name = SegmentName::parse(s).unwrap();
    let mut bytes = read_segment(&d.archive, &name).unwrap().unwrap();
    let mut written = 5000;
    // Appends across record and page boundaries, some ending mid-record.
    for to in [
        5001, 8191, 8192, 8200, 8217, 30_000, 30_001, 100_000, 400_003,
    ] {
        write_in_place(&path, &segment, written, to);
        written = to;
        assert!(bytes.refresh(), "refreshed at {to}");
        assert_eq!(
            Some(bytes.valid().len()),
            full_read(&d.archive, &name),
            "{to}"
        );
        assert_eq!(bytes.valid(), &segment[..bytes.valid().len()]);
    }
}

#[test]
fn a_garbage_tail_is_never_taken_in_by_a_refresh() {
    let s = "00000002000000000000000C";
    let segment = fixture(s);
    let d = dirs();
    let path = d.archive.join(format!("{s}.partial"));
    let mut padded = vec![0; SEG];
    padded[..100_000].copy_from_slice(&segment[..100_000]);
    put(&d.archive, &format!("{s}.partial"), &padded);
    let name = SegmentName::parse(s).unwrap();
    let mut bytes = read_segment(&d.archive, &name).unwrap().unwrap();
    let end = bytes.valid().len();
    // Garbage where the next record's header goes.
    let garbage = [0xABu8; 64];
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &garbage, end as u64))
        .unwrap();
    assert!(!bytes.refresh());
    assert_eq!(bytes.valid().len(), end, "unchanged when not refreshed");
    // The full read the caller falls back to refuses the file, as before.
    assert!(read_segment(&d.archive, &name).is_err());
}

#[test]
fn a_partial_renamed_or_replaced_is_not_refreshed() {
    let s = "00000002000000000000000C";
    let segment = fixture(s);
    let name = SegmentName::parse(s).unwrap();
    let mut padded = vec![0; SEG];
    padded[..50_000].copy_from_slice(&segment[..50_000]);
    // Replaced under its name by another file (a divergent tail set aside,
    // then the segment written again), even with the same bytes.
    let d = dirs();
    put(&d.archive, &format!("{s}.partial"), &padded);
    let mut bytes = read_segment(&d.archive, &name).unwrap().unwrap();
    put(&d.archive, "replacement", &padded);
    std::fs::rename(
        d.archive.join("replacement"),
        d.archive.join(format!("{s}.partial")),
    )
    .unwrap();
    assert!(!bytes.refresh());
    // Renamed to the segment's name with WAL only to 50 000 (zeros after):
    // not a complete segment, so not vouched for.
    let d = dirs();
    put(&d.archive, &format!("{s}.partial"), &padded);
    let mut bytes = read_segment(&d.archive, &name).unwrap().unwrap();
    std::fs::rename(d.archive.join(format!("{s}.partial")), d.archive.join(s)).unwrap();
    assert!(!bytes.refresh());
    // Set aside (renamed away, nothing under the name).
    let d = dirs();
    put(&d.archive, &format!("{s}.partial"), &padded);
    let mut bytes = read_segment(&d.archive, &name).unwrap().unwrap();
    std::fs::rename(
        d.archive.join(format!("{s}.partial")),
        d.archive.join(format!("{s}.partial.divergent")),
    )
    .unwrap();
    assert!(!bytes.refresh());
}

#[test]
fn compressed_partials_and_complete_segments_are_not_refreshed() {
    let s = "00000002000000000000000C";
    let segment = fixture(s);
    let name = SegmentName::parse(s).unwrap();
    let d = dirs();
    put(
        &d.archive,
        &format!("{s}{}.partial", Compression::Gzip.suffix()),
        &compress(Compression::Gzip, &segment[..50_000], false),
    );
    let mut bytes = read_segment(&d.archive, &name).unwrap().unwrap();
    assert!(!bytes.refresh());
    let d = dirs();
    put(&d.archive, s, &segment);
    let mut bytes = read_segment(&d.archive, &name).unwrap().unwrap();
    assert!(!bytes.refresh());
}

/// A `.partial` held at `n` bytes written, then written to its end in
/// place; `rename`: renamed to the segment's own name as its writer does.
fn completed_in_place(d: &Dirs, s: &str, n: usize, rename: bool) -> SegmentBytes {
    let segment = fixture(s);
    let path = d.archive.join(format!("{s}.partial"));
    let mut padded = vec![0; SEG];
    padded[..n].copy_from_slice(&segment[..n]);
    put(&d.archive, &format!("{s}.partial"), &padded);
    let name = SegmentName::parse(s).unwrap();
    let bytes = read_segment(&d.archive, &name).unwrap().unwrap();
    assert!(bytes.from_partial());
    write_in_place(&path, &segment, n, SEG);
    if rename {
        std::fs::rename(&path, d.archive.join(s)).unwrap();
    }
    bytes
}

#[test]
fn a_partial_completed_in_place_is_checked_on_as_a_complete_segment() {
    let s = "00000002000000000000000C";
    let segment = fixture(s);
    let name = SegmentName::parse(s).unwrap();
    for n in [5000, 400_003, SEG - 100] {
        let d = dirs();
        let mut bytes = completed_in_place(&d, s, n, true);
        assert!(bytes.refresh(), "after {n}");
        assert!(!bytes.from_partial(), "complete after {n}");
        assert_eq!(bytes.valid(), &segment[..], "after {n}");
        let full = read_segment(&d.archive, &name).unwrap().unwrap();
        assert_eq!(bytes.valid(), full.valid());
        assert!(!full.from_partial());
        // Complete: nothing more to refresh; a new load reads it.
        assert!(!bytes.refresh());
    }
    // Written to its end but not yet renamed: still a `.partial`.
    let d = dirs();
    let mut bytes = completed_in_place(&d, s, 5000, false);
    assert!(bytes.refresh());
    assert!(bytes.from_partial());
}

#[test]
fn a_completed_segment_damaged_past_the_checked_bytes_is_not_vouched_for() {
    use std::os::unix::fs::FileExt as _;
    let s = "00000002000000000000000C";
    let name = SegmentName::parse(s).unwrap();
    // (The segment's last record goes on in the next one, from 1 047 608:
    // its bytes here are checked with it.)
    for at in [5100, 600_000, 1_047_000] {
        let d = dirs();
        let mut bytes = completed_in_place(&d, s, 5000, true);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(d.archive.join(s))
            .unwrap();
        let mut b = [0u8];
        file.read_exact_at(&mut b, at as u64).unwrap();
        file.write_all_at(&[b[0] ^ 0x01], at as u64).unwrap();
        assert!(!bytes.refresh(), "flip at {at}");
        assert!(bytes.from_partial(), "unchanged: flip at {at}");
        assert!(read_segment(&d.archive, &name).is_err(), "flip at {at}");
    }
}

#[test]
fn a_completed_segment_under_another_file_or_compressed_is_not_vouched_for() {
    let s = "00000002000000000000000C";
    let segment = fixture(s);
    // Another file (a copy: another inode) under the segment's name, the
    // `.partial` gone.
    let d = dirs();
    let mut bytes = completed_in_place(&d, s, 5000, false);
    put(&d.archive, s, &segment);
    std::fs::remove_file(d.archive.join(format!("{s}.partial"))).unwrap();
    assert!(!bytes.refresh());
    // Completed compressed (the `.partial` gone, a .gz in its place).
    let d = dirs();
    let mut bytes = completed_in_place(&d, s, 5000, false);
    let gz = format!("{s}{}", Compression::Gzip.suffix());
    put(
        &d.archive,
        &gz,
        &compress(Compression::Gzip, &segment, true),
    );
    std::fs::remove_file(d.archive.join(format!("{s}.partial"))).unwrap();
    assert!(!bytes.refresh());
    // A symbolic link to the same file under the segment's name.
    let d = dirs();
    let mut bytes = completed_in_place(&d, s, 5000, false);
    std::os::unix::fs::symlink(d.archive.join(format!("{s}.partial")), d.archive.join(s)).unwrap();
    std::fs::rename(
        d.archive.join(format!("{s}.partial")),
        d.archive.join(format!("{s}.partial.divergent")),
    )
    .unwrap();
    assert!(!bytes.refresh());
}
