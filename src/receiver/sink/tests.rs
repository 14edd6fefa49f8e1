//! Unit tests of the sink over real WAL (testdata/wal/pg15, 1 MB segments).

use super::*;

const SEG: u64 = 1 << 20;
const SYSID: u64 = 7710430266889386786;

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/wal/pg15")
        .join(name);
    std::fs::read(path).unwrap()
}

fn config(dir: &std::path::Path, start: Lsn, start_is_durable: bool) -> SinkConfig {
    SinkConfig {
        directory: dir.to_path_buf(),
        timeline: 1,
        segment_size: SEG,
        sync: true,
        start,
        start_is_durable,
        verifier: VerifierConfig {
            segment_size: SEG,
            block_size: 8192,
            system_id: Some(SYSID),
            timeline: 1,
            server_major: Some(15),
        },
        primed: None,
        compression: crate::archive::compress_spec::CompressionSpec::NONE,
    }
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Writes `data` from `start` as the session does: piece by piece, completing
/// filled segments, with a sync after each chunk.
fn write_all(sink: &mut WalSink, start: Lsn, data: &[u8]) -> Result<(), SinkError> {
    let mut at = start;
    let mut rest = data;
    while !rest.is_empty() {
        let n = sink.write(at, rest)?;
        at = Lsn(at.0 + n as u64);
        rest = &rest[n..];
        if sink.has_filled_segment() {
            sink.complete_filled()?;
        }
    }
    sink.sync()
}

const NAMES: [&str; 3] = [
    "000000010000000000000008",
    "000000010000000000000009",
    "00000001000000000000000A",
];

/// Real WAL in odd-sized chunks that cross page and segment boundaries is
/// written byte for byte, filled segments are renamed, the next segment comes
/// from the prepared file, and flush is the verified end, never beyond.
#[test]
fn writes_real_wal_identically_and_reports_verified_flush() {
    let tmp = tempfile::tempdir().unwrap();
    let wal: Vec<u8> = NAMES.iter().flat_map(|n| fixture(n)).collect();
    let start = Lsn(8 * SEG);
    // Stop inside segment A, in the middle of whatever record is there.
    let stop = 2 * SEG as usize + 600_001;
    let mut sink = WalSink::new(config(tmp.path(), start, false));
    let mut pos = 0usize;
    let mut size = 1usize;
    let mut last = Positions::default();
    while pos < stop {
        let n = size.min(stop - pos);
        write_all(&mut sink, Lsn(start.0 + pos as u64), &wal[pos..pos + n]).unwrap();
        pos += n;
        size = (size * 7 + 13) % 200_000 + 1;
        let p = sink.positions();
        assert!(p.flush <= p.write && p.write.0 <= start.0 + pos as u64);
        assert!(
            p.flush >= last.flush && p.write >= last.write,
            "never backwards"
        );
        last = p;
    }
    let progress = sink.close().unwrap();
    for n in &NAMES[..2] {
        assert!(
            std::fs::read(tmp.path().join(n)).unwrap() == fixture(n),
            "{n} identical"
        );
    }
    assert_eq!(
        names(tmp.path()),
        [NAMES[0], NAMES[1], "00000001000000000000000A.partial"],
        "no prepared .tmp left behind"
    );
    let partial = std::fs::read(tmp.path().join("00000001000000000000000A.partial")).unwrap();
    let upto = stop - 2 * SEG as usize;
    assert_eq!(partial.len() as u64, SEG);
    assert!(partial[..upto] == fixture(NAMES[2])[..upto]);
    assert!(partial[upto..].iter().all(|&b| b == 0));
    // What a fresh verifier accepts over the same bytes bounds the flush.
    let mut v = Verifier::at_segment_start(config(tmp.path(), start, false).verifier, start);
    v.feed(&wal[..stop]).unwrap();
    assert_eq!(progress.flush, v.verified_end());
    assert_eq!(progress.write, v.verified_end());
    assert!(
        progress.flush > Lsn(10 * SEG + 0x7_0000),
        "flush advanced past the big record"
    );
}

/// Nothing is reported before it is known, unless the start is the archive's
/// own durable WAL; write moves before flush, flush after the fsync.
#[test]
fn positions_are_invalid_until_known_and_flush_follows_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = fixture(NAMES[0]);
    let start = Lsn(8 * SEG);
    let durable = WalSink::new(config(tmp.path(), start, true));
    assert_eq!(durable.positions().flush, start);
    drop(durable);

    let mut sink = WalSink::new(config(tmp.path(), start, false));
    assert_eq!(
        sink.positions(),
        Positions::default(),
        "0/0 before anything"
    );
    let n = sink.write(start, &wal[..65536]).unwrap();
    assert_eq!(n, 65536);
    let p = sink.positions();
    assert!(p.write > start, "written and verified: {}", p.write);
    assert_eq!(p.flush, Lsn::INVALID, "not fsynced yet");
    sink.sync().unwrap();
    assert_eq!(sink.positions().flush, p.write);
    sink.close().unwrap();
}

/// A flipped bit: the piece is not written, nothing past the last good
/// record is reported, and the error names the file and offset.
#[test]
fn corrupted_chunk_is_not_written_nor_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wal = fixture(NAMES[0]);
    let bad = 0x2_0100; // inside a record body on page 0x20000
    wal[bad] ^= 0x10;
    let start = Lsn(8 * SEG);
    let mut sink = WalSink::new(config(tmp.path(), start, false));
    let mut err = None;
    for (i, chunk) in wal.chunks(8192).enumerate() {
        if let Err(e) = write_all(&mut sink, Lsn(start.0 + (i * 8192) as u64), chunk) {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("verification fails");
    let msg = err.to_string();
    assert!(matches!(err, SinkError::Verify { .. }), "{msg}");
    assert!(msg.contains("000000010000000000000008"), "{msg}");
    let progress = sink.close().unwrap();
    assert!(
        progress.flush.0 <= start.0 + bad as u64,
        "flush {} past the bad byte",
        progress.flush
    );
    let partial = std::fs::read(tmp.path().join("000000010000000000000008.partial")).unwrap();
    assert!(
        partial[0x2_0000..].iter().all(|&b| b == 0),
        "bad page not written"
    );
    assert_eq!(names(tmp.path()), ["000000010000000000000008.partial"]);
}

#[test]
fn a_gap_in_the_stream_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = fixture(NAMES[0]);
    let start = Lsn(8 * SEG);
    let mut sink = WalSink::new(config(tmp.path(), start, false));
    sink.write(start, &wal[..8192]).unwrap();
    let err = sink
        .write(Lsn(start.0 + 16384), &wal[16384..24576])
        .unwrap_err();
    assert!(matches!(err, SinkError::Discontinuity { .. }), "{err}");
}

/// A filled segment is fdatasynced and reported as flushed while it still
/// carries its `.partial` name: the rename comes after.
#[test]
fn a_filled_segment_is_flushed_before_it_is_renamed() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = fixture(NAMES[0]);
    let start = Lsn(8 * SEG);
    let mut sink = WalSink::new(config(tmp.path(), start, false));
    assert_eq!(sink.write(start, &wal).unwrap(), SEG as usize);
    assert!(sink.has_filled_segment());
    let before = sink.positions().flush;
    assert!(before > start, "flushed before the rename");
    // Segment 8 ends with an XLOG_SWITCH: its WAL is verified to the segment
    // end, but a slot must not pass the segment before its rename.
    assert!(before < Lsn(9 * SEG), "{before}");
    assert_eq!(names(tmp.path())[0], "000000010000000000000008.partial");
    sink.complete_filled().unwrap();
    assert_eq!(names(tmp.path())[0], "000000010000000000000008");
    assert_eq!(
        sink.positions().flush,
        Lsn(9 * SEG),
        "the whole segment once renamed"
    );
    sink.close().unwrap();
    assert_eq!(names(tmp.path()), ["000000010000000000000008"]);
}

/// Catch-up: a segment the server already has whole is written direct (no
/// `.partial` until the end), nothing in it is reported before its rename,
/// and the bytes are the same.
#[test]
fn a_segment_the_server_has_whole_is_written_direct() {
    let tmp = tempfile::tempdir().unwrap();
    let wal: Vec<u8> = NAMES.iter().flat_map(|n| fixture(n)).collect();
    let start = Lsn(8 * SEG);
    let mut sink = WalSink::new(config(tmp.path(), start, false));
    sink.server_has(Lsn(start.0 + 2 * SEG + 4096));
    let half = SEG as usize / 2;
    sink.write(start, &wal[..half]).unwrap();
    sink.sync().unwrap();
    assert_eq!(
        names(tmp.path()),
        ["000000010000000000000008.partial.tmp"],
        "direct: no WAL name yet"
    );
    assert_eq!(sink.positions(), Positions::default(), "nothing reported");
    let n = sink
        .write(Lsn(start.0 + half as u64), &wal[half..])
        .unwrap();
    assert_eq!(n, half, "up to the segment end");
    assert_eq!(
        sink.positions().flush,
        Lsn::INVALID,
        "not before the rename"
    );
    sink.complete_filled().unwrap();
    let flushed = sink.positions().flush;
    assert!(flushed > start && flushed <= Lsn(9 * SEG), "{flushed}");
    assert_eq!(
        std::fs::read(tmp.path().join(NAMES[0])).unwrap(),
        fixture(NAMES[0])
    );
    // Segment 9 is direct too; the stream stops in it: it becomes a padded
    // `.partial`, and flush covers what was written.
    let part = 300_000usize;
    write_all(
        &mut sink,
        Lsn(9 * SEG),
        &wal[SEG as usize..SEG as usize + part],
    )
    .unwrap();
    assert!(sink.positions().flush <= Lsn(9 * SEG));
    let closed = sink.close().unwrap();
    assert_eq!(
        names(tmp.path()),
        [NAMES[0], "000000010000000000000009.partial"]
    );
    let partial = std::fs::read(tmp.path().join("000000010000000000000009.partial")).unwrap();
    assert_eq!(partial.len() as u64, SEG);
    assert!(partial[..part] == fixture(NAMES[1])[..part]);
    assert!(partial[part..].iter().all(|&b| b == 0));
    assert!(closed.flush >= flushed);
}

/// A direct segment whose completion fails was never under a WAL name:
/// neither write nor flush may cover it afterwards.
#[test]
fn a_direct_segment_that_fails_to_complete_is_never_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = fixture(NAMES[0]);
    let start = Lsn(8 * SEG);
    let mut sink = WalSink::new(config(tmp.path(), start, true));
    sink.server_has(Lsn(10 * SEG));
    assert_eq!(sink.write(start, &wal).unwrap(), SEG as usize);
    std::fs::remove_file(tmp.path().join("000000010000000000000008.partial.tmp")).unwrap();
    assert!(sink.complete_filled().is_err());
    let p = sink.positions();
    assert!(p.write <= start && p.flush <= start, "{p:?}");
}

/// A sink resuming at segment A, whose first record began in segment 9: primed
/// with the archive's segments 8 and 9 (segment 9 corrupted first when
/// `corrupt`), as the session does it.
fn resumed_sink(corrupt: bool) -> (tempfile::TempDir, WalSink, Lsn) {
    resumed_sink_with(|bytes| {
        if corrupt {
            let at = bytes.len() - 100;
            bytes[at] ^= 0x20;
        }
    })
}

/// [`resumed_sink`], with `damage` applied to segment 9 first.
fn resumed_sink_with(damage: impl Fn(&mut Vec<u8>)) -> (tempfile::TempDir, WalSink, Lsn) {
    let tmp = tempfile::tempdir().unwrap();
    for (name, bytes) in NAMES[..2].iter().map(|n| (n, fixture(n))) {
        let mut bytes = bytes;
        if *name == NAMES[1] {
            damage(&mut bytes);
        }
        std::fs::write(tmp.path().join(name), bytes).unwrap();
    }
    let start = Lsn(0xA * SEG);
    let archive = crate::archive::ArchiveDir::open(tmp.path()).unwrap();
    let mut config = config(tmp.path(), start, true);
    let resume = archive
        .resume_verifier(config.verifier.clone(), start)
        .unwrap();
    let crate::archive::Resume::Primed { verifier, .. } = resume else {
        panic!("{resume:?}");
    };
    let spanning = verifier
        .current_record_start()
        .unwrap_or(verifier.verified_end());
    config.primed = Some(*verifier);
    (tmp, WalSink::new(config), spanning)
}

/// Resumed inside a record, the sink reports nothing past the record's start
/// until its tail has arrived and checked out.
#[test]
fn resuming_inside_a_record_reports_it_only_once_checked() {
    let (_tmp, mut sink, spanning) = resumed_sink(false);
    let start = sink.position();
    assert!(sink.positions().flush <= spanning);
    let next = fixture(NAMES[2]);
    write_all(&mut sink, start, &next[..0x6EFA9 + 4096]).unwrap();
    assert!(sink.positions().flush > start);
}

/// A byte corrupted in the archive's part of the record in progress is found
/// when the stream brings its tail: nothing of that tail is written, nothing
/// past the record's start is reported.
#[test]
fn a_corrupted_earlier_part_of_the_record_in_progress_is_refused() {
    let (tmp, mut sink, spanning) = resumed_sink(true);
    let start = sink.position();
    let next = fixture(NAMES[2]);
    let err = write_all(&mut sink, start, &next).unwrap_err();
    match &err {
        SinkError::Verify {
            error, verified, ..
        } => {
            assert_eq!(error.lsn, spanning);
            assert!(*verified <= spanning);
        }
        other => panic!("{other}"),
    }
    assert!(sink.positions().flush <= spanning);
    assert!(sink.positions().write <= spanning);
    drop(sink);
    // Segment A was never written.
    assert_eq!(names(tmp.path()), &NAMES[..2]);
}

/// The archive's WAL before the resume point fails verification (here the
/// magic of the page where the record in progress began): the resume check
/// says which file and where, before anything is streamed (the session then
/// stops: exit 5, see `receiver::exit`).
#[test]
fn archive_wal_failing_verification_before_the_resume_point_is_reported_with_its_file() {
    let tmp = tempfile::tempdir().unwrap();
    for name in &NAMES[..2] {
        std::fs::write(tmp.path().join(name), fixture(name)).unwrap();
    }
    let archive = crate::archive::ArchiveDir::open(tmp.path()).unwrap();
    let verifier = config(tmp.path(), Lsn(0xA * SEG), true).verifier;
    let resume = archive
        .resume_verifier(verifier.clone(), Lsn(0xA * SEG))
        .unwrap();
    let crate::archive::Resume::Primed { from, .. } = resume else {
        panic!("{resume:?}");
    };
    // The page where the record that spans into segment A began.
    let page = (from.0 - 9 * SEG) as usize;
    let mut bytes = fixture(NAMES[1]);
    bytes[page] ^= 0xFF;
    std::fs::write(tmp.path().join(NAMES[1]), bytes).unwrap();
    let resume = archive.resume_verifier(verifier, Lsn(0xA * SEG)).unwrap();
    match resume {
        crate::archive::Resume::Corrupt { path, error } => {
            assert_eq!(path, tmp.path().join(NAMES[1]));
            assert_eq!(
                (error.check, error.lsn),
                (crate::wal::Check::PageMagic, from)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(names(tmp.path()), &NAMES[..2]);
}

/// A filled segment whose rename fails is still `.partial`: flush stays
/// below its end, in the final status too (a slot passing it could let the
/// server remove WAL the next session must stream again).
#[test]
#[cfg(feature = "failpoints")]
fn a_failed_rename_keeps_flush_below_the_segment_end() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = fixture(NAMES[0]);
    let start = Lsn(8 * SEG);
    let mut sink = WalSink::new(config(tmp.path(), start, false));
    assert_eq!(sink.write(start, &wal).unwrap(), SEG as usize);
    let fault =
        crate::archive::failpoints::ScopedFailpoint::new("complete-rename", "EIO", tmp.path());
    assert!(sink.complete_filled().is_err());
    drop(fault);
    assert!(sink.positions().flush < Lsn(9 * SEG));
    let closed = sink.close().unwrap();
    assert!(closed.flush < Lsn(9 * SEG), "{closed:?}");
    assert_eq!(names(tmp.path()), ["000000010000000000000008.partial"]);
}

/// `-Z`: every method writes segments that decompress to the server's bytes;
/// nothing written counts as written or flushed before the encoder was
/// flushed into the file and fdatasynced (the sync), and at that point the
/// `.partial` alone decodes to at least the flushed position.
#[test]
fn compressed_segments_decode_to_the_wal_and_flush_waits_for_the_encoder() {
    use crate::archive::compress_spec::CompressionSpec;
    use crate::archive::compression::decompress;
    for (z, c, sfx) in [
        ("gzip", Compression::Gzip, ".gz"),
        ("lz4", Compression::Lz4, ".lz4"),
        ("zstd", Compression::Zstd, ".zst"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let wal: Vec<u8> = NAMES.iter().flat_map(|n| fixture(n)).collect();
        let start = Lsn(8 * SEG);
        let mut cfg = config(tmp.path(), start, false);
        cfg.compression = CompressionSpec::parse(z).unwrap();
        let mut sink = WalSink::new(cfg);
        let stop = 2 * SEG as usize + 300_000;
        let mut pos = 0usize;
        let mut synced = sink.positions();
        while pos < stop {
            let n = 70_001.min(stop - pos);
            let at = Lsn(start.0 + pos as u64);
            let mut done = 0;
            while done < n {
                done += sink
                    .write(Lsn(at.0 + done as u64), &wal[pos + done..pos + n])
                    .unwrap();
                if sink.has_filled_segment() {
                    sink.complete_filled().unwrap();
                }
            }
            pos += n;
            let before = sink.positions();
            // Still in the encoder: neither written nor flushed yet, unless a
            // segment completed (its trailer and rename made it durable).
            if pos as u64 % SEG > 70_001 {
                // At most the end of the previous chunk (which that sync
                // covered), MAXALIGNed: nothing of this chunk.
                let prev_end = Lsn(start.0 + (pos - n) as u64).max_align();
                assert!(before.write <= prev_end, "{z}: buffered bytes reported");
                assert!(
                    before.flush <= prev_end && before.flush >= synced.flush,
                    "{z}"
                );
            }
            sink.sync().unwrap();
            let after = sink.positions();
            synced = after;
            assert!(
                after.write >= before.write && after.flush <= after.write,
                "{z}"
            );
            if pos as u64 % SEG != 0 && pos as u64 > 2 * SEG {
                // The open .partial decodes to at least what is reported.
                let partial = tmp.path().join(format!("{}{sfx}.partial", NAMES[2]));
                let d = decompress(c, &std::fs::read(&partial).unwrap(), SEG).unwrap();
                let covered = start.0 + 2 * SEG + d.bytes.len() as u64;
                assert!(after.write.0 <= covered && after.flush.0 <= covered, "{z}");
                assert!(
                    d.bytes[..] == wal[2 * SEG as usize..pos][..d.bytes.len()],
                    "{z}"
                );
            }
        }
        sink.close().unwrap();
        for n in &NAMES[..2] {
            let file = std::fs::read(tmp.path().join(format!("{n}{sfx}"))).unwrap();
            let d = decompress(c, &file, SEG).unwrap();
            assert!(d.finished && d.bytes == fixture(n), "{z} {n} identical");
        }
        assert_eq!(
            names(tmp.path()),
            [
                format!("{}{sfx}", NAMES[0]),
                format!("{}{sfx}", NAMES[1]),
                format!("{}{sfx}.partial", NAMES[2]),
            ],
            "{z}: nothing prepared, nothing padded"
        );
    }
}

/// Catch-up with `-Z`: a compressed segment the server has whole is
/// flushed and fdatasynced once, at its completion; nothing in it is
/// reported before (as for a plain segment written direct).
#[test]
fn compressed_catch_up_reports_a_segment_once_complete() {
    use crate::archive::compress_spec::CompressionSpec;
    let tmp = tempfile::tempdir().unwrap();
    let start = Lsn(8 * SEG);
    let mut cfg = config(tmp.path(), start, false);
    cfg.compression = CompressionSpec::parse("zstd").unwrap();
    let mut sink = WalSink::new(cfg);
    sink.server_has(Lsn(10 * SEG));
    let seg8 = fixture(NAMES[0]);
    let half = SEG as usize / 2;
    write_all(&mut sink, start, &seg8[..half]).unwrap();
    assert_eq!(
        sink.positions(),
        Positions::default(),
        "nothing before completion"
    );
    assert!(tmp
        .path()
        .join(format!("{}.zst.partial", NAMES[0]))
        .is_file());
    write_all(&mut sink, Lsn(start.0 + half as u64), &seg8[half..]).unwrap();
    assert!(sink.positions().flush > Lsn(start.0 + half as u64));
    assert!(tmp.path().join(format!("{}.zst", NAMES[0])).is_file());
}

/// Issue 17 in the sink: a compressed segment streamed again beside its old
/// `.partial` (which holds 500 kB of it, acknowledged by the session that
/// wrote it) reports nothing of the new stream while it is shorter, and a
/// session that ends there keeps the old file whole and reports nothing of
/// it; once the new stream holds as much, positions move and the WAL name
/// holds the new stream.
#[test]
fn a_compressed_segment_streamed_again_reports_nothing_until_it_replaced_the_old_file() {
    use crate::archive::compress_spec::CompressionSpec;
    use crate::archive::compression::decompress;
    let spec = CompressionSpec::parse("lz4").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let seg8 = fixture(NAMES[0]);
    let start = Lsn(8 * SEG);
    let partial = tmp.path().join(format!("{}.lz4.partial", NAMES[0]));
    let decoded = || {
        let d = decompress(Compression::Lz4, &std::fs::read(&partial).unwrap(), SEG).unwrap();
        d.bytes
    };
    {
        // The earlier session, killed (no close).
        let mut cfg = config(tmp.path(), start, false);
        cfg.compression = spec;
        let mut first = WalSink::new(cfg);
        write_all(&mut first, start, &seg8[..500_000]).unwrap();
        assert!(first.positions().flush > Lsn(start.0 + 400_000));
        std::mem::forget(first);
    }
    let old = std::fs::read(&partial).unwrap();
    assert!(decoded() == seg8[..500_000]);

    let mut cfg = config(tmp.path(), start, true);
    cfg.compression = spec;
    let mut sink = WalSink::new(cfg.clone());
    write_all(&mut sink, start, &seg8[..200_000]).unwrap();
    let p = sink.positions();
    assert!(p.flush <= start && p.write <= start, "{p:?}");
    let p = sink.close().unwrap();
    assert!(p.flush <= start && p.write <= start, "{p:?}");
    assert!(
        std::fs::read(&partial).unwrap() == old,
        "the old file changed"
    );
    assert_eq!(names(tmp.path()), [format!("{}.lz4.partial", NAMES[0])]);

    let mut sink = WalSink::new(cfg);
    write_all(&mut sink, start, &seg8[..300_000]).unwrap();
    assert!(sink.positions().flush <= start);
    write_all(&mut sink, Lsn(start.0 + 300_000), &seg8[300_000..600_000]).unwrap();
    // Now what a fresh verifier accepts over those bytes.
    let mut v = Verifier::at_segment_start(config(tmp.path(), start, true).verifier, start);
    v.feed(&seg8[..600_000]).unwrap();
    assert!(v.verified_end() > Lsn(start.0 + 400_000));
    assert_eq!(sink.positions().flush, v.verified_end());
    assert!(decoded() == seg8[..600_000]);
    assert_eq!(names(tmp.path()), [format!("{}.lz4.partial", NAMES[0])]);
}
