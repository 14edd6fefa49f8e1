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

#[test]
fn an_existing_partial_restarts_truncated_at_the_first_write() {
    for (z, c, sfx) in METHODS {
        let tmp = tempfile::tempdir().unwrap();
        let name = wal_file_name(1, 4, SEG);
        let partial = tmp.path().join(format!("{name}{sfx}.partial"));
        let stale = compress_all(spec(z), &wal(500_000)).unwrap();
        std::fs::write(&partial, &stale).unwrap();
        // Opened and closed without WAL: the file stays as it was.
        let w = CompressedWriter::open(tmp.path(), 1, 4, SEG, true, spec(z)).unwrap();
        w.close_partial().unwrap();
        assert_eq!(std::fs::read(&partial).unwrap(), stale, "{z}");
        // A new session writes less than the old file held: no stale tail.
        let mut w = CompressedWriter::open(tmp.path(), 1, 4, SEG, true, spec(z)).unwrap();
        w.write_at(0, b"fresh").unwrap();
        w.sync().unwrap();
        assert_eq!(decoded(c, &partial).0, b"fresh", "{z}");
        w.close_partial().unwrap();
        assert_eq!(decoded(c, &partial), (b"fresh".to_vec(), true), "{z}");
        assert!(std::fs::metadata(&partial).unwrap().len() < stale.len() as u64);
        assert_eq!(names(tmp.path()), [format!("{name}{sfx}.partial")]);
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
