use super::*;
use crate::archive::compression::decompress;

const SEG: u64 = 1 << 20;

fn spec(s: &str) -> CompressionSpec {
    CompressionSpec::parse(s).unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn wal(len: u64) -> Vec<u8> {
    // Compressible but not trivial: WAL-like repetition with a counter.
    (0..len)
        .map(|i| ((i / 7) % 253) as u8 ^ (i % 3) as u8)
        .collect()
}

fn decoded(c: Compression, path: &Path) -> (Vec<u8>, bool) {
    let d = decompress(c, &std::fs::read(path).unwrap(), SEG).unwrap();
    (d.bytes, d.finished)
}

const METHODS: [(&str, Compression, &str); 3] = [
    ("gzip", Compression::Gzip, ".gz"),
    ("lz4", Compression::Lz4, ".lz4"),
    ("zstd", Compression::Zstd, ".zst"),
];

#[test]
fn a_complete_segment_is_renamed_with_its_trailer() {
    for (z, c, sfx) in METHODS {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = CompressedWriter::open(tmp.path(), 1, 3, SEG, true, spec(z)).unwrap();
        let name = wal_file_name(1, 3, SEG);
        assert_eq!(names(tmp.path()), [format!("{name}{sfx}.partial")]);
        let data = wal(SEG);
        for (i, piece) in data.chunks(100_000).enumerate() {
            w.write_at((i * 100_000) as u64, piece).unwrap();
            if i % 3 == 0 {
                w.sync().unwrap();
            }
        }
        let done = w.complete().unwrap();
        assert_eq!(names(tmp.path()), [format!("{name}{sfx}")]);
        assert_eq!(decoded(c, &done), (data, true), "{z}");
        assert!(std::fs::metadata(&done).unwrap().len() < SEG / 2, "{z}");
    }
}

#[test]
fn the_flush_rule_puts_every_written_byte_in_the_file() {
    for (z, c, _) in METHODS {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = CompressedWriter::open(tmp.path(), 1, 3, SEG, true, spec(z)).unwrap();
        let data = wal(300_000);
        w.write_at(0, &data[..123_457]).unwrap();
        w.sync().unwrap();
        // What sync covered decodes from the file alone, before any trailer.
        let (bytes, finished) = decoded(c, w.path());
        assert_eq!(
            (bytes.as_slice(), finished),
            (&data[..123_457], false),
            "{z}"
        );
        w.write_at(123_457, &data[123_457..]).unwrap();
        w.sync().unwrap();
        assert_eq!(decoded(c, w.path()).0, data, "{z}");
        // Closed early: a finished stream of what was written, still .partial.
        let path = w.path().to_path_buf();
        w.close_partial().unwrap();
        assert_eq!(decoded(c, &path), (data, true), "{z}");
    }
}

/// A first session that streamed `len` bytes of `data` into segment 4 and
/// was killed (no trailer): the `.partial` it leaves, and its bytes.
fn killed_session(dir: &Path, z: &str, data: &[u8]) -> (PathBuf, Vec<u8>) {
    let mut first = CompressedWriter::open(dir, 1, 4, SEG, true, spec(z)).unwrap();
    first.write_at(0, data).unwrap();
    first.sync().unwrap();
    let partial = first.path().to_path_buf();
    drop(first);
    let old = std::fs::read(&partial).unwrap();
    (partial, old)
}

/// Issue 17: a session that resumed an existing compressed `.partial` and
/// received less than it held (stopped by `-E`, a signal, a timeline
/// switch) rewrote the file with only what it received: WAL acknowledged
/// by the earlier session was gone. The new stream is written aside and
/// dropped when it ends shorter; the old file is never touched.
#[test]
fn a_resumed_partial_is_kept_when_the_new_stream_ends_shorter() {
    for (z, c, sfx) in METHODS {
        let tmp = tempfile::tempdir().unwrap();
        let name = wal_file_name(1, 4, SEG);
        let data = wal(SEG);
        let (partial, old) = killed_session(tmp.path(), z, &data[..500_000]);
        assert_eq!(decoded(c, &partial).0.len(), 500_000, "{z}");

        let mut w = CompressedWriter::open(tmp.path(), 1, 4, SEG, true, spec(z)).unwrap();
        w.write_at(0, &data[..131_072]).unwrap();
        w.sync().unwrap();
        assert!(
            std::fs::read(&partial).unwrap() == old,
            "{z}: the WAL name changed"
        );
        assert_eq!(
            names(tmp.path()),
            [
                format!("{name}{sfx}.partial"),
                format!("{name}{sfx}.partial.tmp")
            ],
            "{z}: the new stream goes under a temporary name"
        );
        w.close_partial().unwrap();
        assert!(
            std::fs::read(&partial).unwrap() == old,
            "{z}: the WAL name changed"
        );
        assert_eq!(names(tmp.path()), [format!("{name}{sfx}.partial")], "{z}");

        // Opened and closed without WAL: the file stays as it was too.
        let w = CompressedWriter::open(tmp.path(), 1, 4, SEG, true, spec(z)).unwrap();
        w.close_partial().unwrap();
        assert!(
            std::fs::read(&partial).unwrap() == old,
            "{z}: the WAL name changed"
        );
        assert_eq!(names(tmp.path()), [format!("{name}{sfx}.partial")], "{z}");
    }
}

/// Killed while the new stream is still shorter (kill -9 at any instant):
/// the WAL name holds the old file whole, and the aside file is a `.tmp`
/// that the next start removes.
#[test]
fn a_crash_while_the_new_stream_is_shorter_leaves_the_old_file() {
    for (z, c, sfx) in METHODS {
        let tmp = tempfile::tempdir().unwrap();
        let name = wal_file_name(1, 4, SEG);
        let data = wal(SEG);
        let (partial, old) = killed_session(tmp.path(), z, &data[..500_000]);
        let mut w = CompressedWriter::open(tmp.path(), 1, 4, SEG, true, spec(z)).unwrap();
        w.write_at(0, &data[..131_072]).unwrap();
        w.sync().unwrap();
        std::mem::forget(w); // as kill -9: no destructor, no close
        assert!(
            std::fs::read(&partial).unwrap() == old,
            "{z}: the WAL name changed"
        );
        assert!(decoded(c, &partial).0 == data[..500_000], "{z}");
        let aside = format!("{name}{sfx}.partial.tmp");
        assert!(names(tmp.path()).contains(&aside), "{z}");
        // A temporary of ours, which the next start removes (`ArchiveDir::open`;
        // scan.rs `open_removes_only_our_stale_temporaries`). Not opened here:
        // the writer's tests do not depend on the scan, which depends on them.
        let base = aside.strip_suffix(TMP_SUFFIX).unwrap();
        assert!(
            matches!(
                crate::archive::names::ArchiveName::classify(base),
                crate::archive::names::ArchiveName::Segment { partial: true, .. }
            ),
            "{z}: {aside}"
        );
    }
}

/// The new stream replaces the old file at the first sync where it holds at
/// least as much (then the WAL name decodes to the new stream, with no stale
/// bytes after it), and completes normally; at no sync in between does the
/// WAL name decode to less than the old file held.
#[test]
fn a_resumed_partial_is_replaced_once_the_new_stream_holds_as_much() {
    for (z, c, sfx) in METHODS {
        let tmp = tempfile::tempdir().unwrap();
        let name = wal_file_name(1, 4, SEG);
        let data = wal(SEG);
        let (partial, _) = killed_session(tmp.path(), z, &data[..500_000]);
        let mut w = CompressedWriter::open(tmp.path(), 1, 4, SEG, true, spec(z)).unwrap();
        let mut written = 0;
        for piece in data[..700_000].chunks(100_000) {
            w.write_at(written as u64, piece).unwrap();
            written += piece.len();
            w.sync().unwrap();
            let (bytes, _) = decoded(c, &partial);
            assert!(
                bytes.len() >= 500_000,
                "{z}: {} after {written}",
                bytes.len()
            );
            if written >= 500_000 {
                assert!(bytes == data[..written], "{z}: not the new stream");
                assert_eq!(names(tmp.path()), [format!("{name}{sfx}.partial")], "{z}");
            } else {
                assert!(bytes == data[..500_000], "{z}: not the old file");
            }
        }
        w.write_at(written as u64, &data[written..]).unwrap();
        let done = w.complete().unwrap();
        assert_eq!(names(tmp.path()), [format!("{name}{sfx}")], "{z}");
        assert_eq!(decoded(c, &done), (data, true), "{z}");
    }
}

/// A catch-up that fills the segment without a sync in between (the sink
/// syncs a compressed segment the server has whole only at its completion)
/// replaces the old file on the way to its final name.
#[test]
fn a_resumed_partial_completed_in_one_go_leaves_only_the_segment() {
    for (z, c, sfx) in METHODS {
        let tmp = tempfile::tempdir().unwrap();
        let name = wal_file_name(1, 4, SEG);
        let data = wal(SEG);
        killed_session(tmp.path(), z, &data[..500_000]);
        let mut w = CompressedWriter::open(tmp.path(), 1, 4, SEG, true, spec(z)).unwrap();
        w.write_at(0, &data).unwrap();
        let done = w.complete().unwrap();
        assert_eq!(names(tmp.path()), [format!("{name}{sfx}")], "{z}");
        assert_eq!(decoded(c, &done), (data, true), "{z}");
    }
}

#[test]
fn a_segment_complete_under_any_compression_is_not_reopened() {
    let tmp = tempfile::tempdir().unwrap();
    let name = wal_file_name(1, 5, SEG);
    for sfx in ["", ".gz", ".lz4", ".zst"] {
        let done = tmp.path().join(format!("{name}{sfx}"));
        std::fs::write(&done, b"x").unwrap();
        let err = CompressedWriter::open(tmp.path(), 1, 5, SEG, true, spec("lz4")).unwrap_err();
        assert!(
            matches!(&err, ArchiveError::AlreadyComplete { path } if *path == done),
            "{err}"
        );
        std::fs::remove_file(&done).unwrap();
    }
    assert!(names(tmp.path()).is_empty());
}

#[test]
fn writes_must_be_in_order_and_complete_needs_the_whole_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = CompressedWriter::open(tmp.path(), 1, 1, SEG, false, spec("gzip:1")).unwrap();
    w.write_at(0, &[1u8; 100]).unwrap();
    assert!(matches!(
        w.write_at(200, &[1u8; 10]),
        Err(ArchiveError::NotSequential { written: 100, .. })
    ));
    assert!(matches!(
        w.write_at(100, &vec![0u8; SEG as usize]),
        Err(ArchiveError::OutOfSegment { .. })
    ));
    assert!(!w.is_poisoned(), "a refused call writes nothing");
    assert_eq!(w.written(), 100);
    let err = w.complete().unwrap_err();
    assert!(
        matches!(err, ArchiveError::IncompleteSegment { written: 100, .. }),
        "{err}"
    );
    assert!(CompressedWriter::open(tmp.path(), 1, 1, SEG, true, CompressionSpec::NONE).is_err());
}

#[test]
fn history_content_compresses_and_decodes() {
    for (z, c, _) in METHODS {
        let content = b"1\t0/3000000\tno recovery target specified\n";
        let packed = compress_all(spec(z), content).unwrap();
        let d = decompress(c, &packed, 1 << 20).unwrap();
        assert_eq!((d.bytes.as_slice(), d.finished), (&content[..], true));
    }
}

#[test]
fn the_sink_segment_reports_buffering_and_directness() {
    let tmp = tempfile::tempdir().unwrap();
    let c = CompressedWriter::open(tmp.path(), 1, 1, SEG, true, spec("zstd")).unwrap();
    let s = SegmentSink::Compressed(Box::new(c));
    assert!(s.buffers() && !s.is_direct() && !s.is_poisoned());
    assert_eq!((s.start_lsn(), s.segment_size()), (Lsn(SEG), SEG));
    let p = SegmentWriter::open(tmp.path(), 1, 2, SEG, true).unwrap();
    let s = SegmentSink::Plain(p);
    assert!(!s.buffers() && !s.is_direct());
}

#[cfg(feature = "failpoints")]
use crate::archive::failpoints::ScopedFailpoint;

#[test]
#[cfg(feature = "failpoints")]
fn a_failed_fdatasync_poisons_the_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = CompressedWriter::open(tmp.path(), 1, 1, SEG, true, spec("lz4")).unwrap();
    w.write_at(0, b"abc").unwrap();
    let fault = ScopedFailpoint::new("wal-fdatasync", "EIO", tmp.path());
    let err = w.sync().unwrap_err();
    drop(fault);
    assert!(matches!(err, ArchiveError::Fsync { .. }), "{err}");
    assert!(w.is_poisoned());
    assert!(matches!(w.sync(), Err(ArchiveError::Poisoned { .. })));
    assert!(matches!(
        w.write_at(3, b"d"),
        Err(ArchiveError::Poisoned { .. })
    ));
    assert!(matches!(
        w.close_partial(),
        Err(ArchiveError::Poisoned { .. })
    ));
}

#[test]
#[cfg(feature = "failpoints")]
fn a_failed_write_under_the_encoder_is_reported_and_poisons() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = CompressedWriter::open(tmp.path(), 1, 1, SEG, true, spec("gzip")).unwrap();
    w.write_at(0, &wal(10_000)).unwrap();
    let _fault = ScopedFailpoint::new("wal-pwrite", "ENOSPC", tmp.path());
    match w.sync().unwrap_err() {
        ArchiveError::Write { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::ENOSPC)),
        other => panic!("{other}"),
    }
    assert!(w.is_poisoned());
}

#[test]
#[cfg(feature = "failpoints")]
fn a_failed_fdatasync_at_completion_keeps_the_partial_name() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = CompressedWriter::open(tmp.path(), 1, 1, SEG, true, spec("zstd")).unwrap();
    w.write_at(0, &wal(SEG)).unwrap();
    let _fault = ScopedFailpoint::new("complete-fdatasync", "EIO", tmp.path());
    let err = w.complete().unwrap_err();
    assert!(matches!(err, ArchiveError::Fsync { .. }), "{err}");
    assert_eq!(
        names(tmp.path()),
        [format!("{}.zst.partial", wal_file_name(1, 1, SEG))]
    );
}

/// The rename that puts the new stream in the old file's place fails: the
/// writer is poisoned (nothing of it may be reported), the WAL name still
/// holds the old file, and the aside file is removed with the writer.
#[test]
#[cfg(feature = "failpoints")]
fn a_failed_replacing_rename_keeps_the_old_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = wal(SEG);
    let (partial, old) = killed_session(tmp.path(), "zstd", &data[..200_000]);
    let mut w = CompressedWriter::open(tmp.path(), 1, 4, SEG, true, spec("zstd")).unwrap();
    w.write_at(0, &data[..300_000]).unwrap();
    let fault = ScopedFailpoint::new("install-rename", "EIO", tmp.path());
    let err = w.sync().unwrap_err();
    drop(fault);
    assert!(matches!(err, ArchiveError::Rename { .. }), "{err}");
    assert!(w.is_poisoned());
    drop(w);
    assert!(
        std::fs::read(&partial).unwrap() == old,
        "the WAL name changed"
    );
    assert_eq!(
        names(tmp.path()),
        [format!("{}.zst.partial", wal_file_name(1, 4, SEG))]
    );
}
