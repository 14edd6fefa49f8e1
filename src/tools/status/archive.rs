//! Reading the archive for `walrcv status`, strictly read-only: the directory is
//! listed with [`ArchiveDir::scan_unlocked`] (no lock, no clean-up, no fsync, unlike
//! [`crate::archive::ArchiveDir::open`]) and files are opened for reading
//! only, so it runs beside a `walrcv stream` writing to the same directory.
//!
//! The segment size comes from the archive itself (the long page header of a
//! segment file), so the archive can be judged when the server cannot be
//! reached; the server's value is the fall-back for an archive with no header
//! yet.
//!
//! Where the WAL in the newest `.partial` ends is estimated without parsing
//! records: walrcv and pg_receivewal pre-pad a `.partial` with zeros and write
//! it front to back, so the written pages are a prefix (found by a binary
//! search on the page magic), and the end is the last non-zero byte of the
//! last written page, rounded up to the 8-byte record alignment. The estimate
//! can fall short of the true end by the zero bytes ending the last record.
//! A compressed `.partial` (`-Z`) is decompressed first (what was flushed
//! into it), and its end estimated the same way on the decompressed bytes.
//!
//! Files set aside after a failover (`*.divergent.tmp`) are not WAL of the
//! archive's history (the scan skips them); they are counted, with their size
//! on disk, so that a DBA sees there is something to inspect (`walrcv
//! verify` says what and where).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::archive::compression::decompress_partial;
use crate::archive::inspect::read_prefix;
use crate::archive::names::{ArchiveName, Compression};
use crate::archive::{ArchiveDir, ArchiveError, Scan};
use crate::lsn::{is_valid_block_size, is_valid_segment_size};
use crate::wal::page::{PageHeader, LONG_HEADER_SIZE};

use super::check::SegmentEntry;

/// What was read from the archive.
#[derive(Debug, Clone)]
pub struct ArchiveRead {
    pub segment_size: u64,
    pub scan: Scan,
    /// The newest segment file (pg_receivewal's ordering), if any.
    pub newest: Option<SegmentEntry>,
    /// Bytes of WAL estimated written in the newest file when it is a `.partial`.
    pub partial_written: u64,
    /// Seconds since the newest file was last modified.
    pub newest_age_secs: Option<u64>,
    /// Files set aside after a failover.
    pub divergent: DivergentTally,
}

/// How many files are set aside after a failover, and their size on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DivergentTally {
    pub files: u64,
    pub bytes: u64,
}

/// Errors reading the archive: it cannot be judged (UNKNOWN), or it holds a
/// damaged file (CRITICAL).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveReadError {
    #[error("archive directory \"{0}\" does not exist or is not a directory")]
    NotADirectory(PathBuf),
    #[error(transparent)]
    Scan(#[from] ArchiveError),
    #[error(transparent)]
    Bucket(#[from] crate::tools::bucket::BucketError),
}

impl ArchiveReadError {
    /// A file of the wrong size is damage in the archive, not a failure to look.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            ArchiveReadError::Scan(
                ArchiveError::WrongSize { .. } | ArchiveError::BadCompressedFile { .. }
            )
        )
    }
}

/// Reads the archive in `dir`; `server_segment_size` is used only when no
/// file carries a long page header.
pub fn read_archive(
    dir: &Path,
    server_segment_size: Option<u64>,
) -> Result<ArchiveRead, ArchiveReadError> {
    if !std::fs::metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Err(ArchiveReadError::NotADirectory(dir.to_path_buf()));
    }
    let from_files = sizes_from_headers(dir)?;
    let segment_size = from_files
        .map(|(s, _)| s)
        .or(server_segment_size)
        .unwrap_or(DEFAULT_SEGMENT_SIZE);
    let block_size = from_files.map_or(DEFAULT_BLOCK_SIZE, |(_, b)| b);
    let scan = ArchiveDir::scan_unlocked(dir, segment_size)?;
    let newest_file = scan.newest().cloned();
    let newest = newest_file.as_ref().map(|f| SegmentEntry {
        timeline: f.timeline,
        segno: f.segno,
        partial: f.partial,
    });
    let mut partial_written = 0;
    let mut newest_age_secs = None;
    if let Some(f) = &newest_file {
        if f.partial {
            partial_written =
                partial_written_bytes(&f.path, f.compression, segment_size, block_size)
                    .map_err(|e| ArchiveError::io(&f.path, e))?;
        }
        newest_age_secs = std::fs::metadata(&f.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .map(|d| d.as_secs());
    }
    Ok(ArchiveRead {
        segment_size,
        scan,
        newest,
        partial_written,
        newest_age_secs,
        divergent: divergent_tally(dir)?,
    })
}

/// Counts the set-aside files of `dir`. One that vanishes meanwhile (a DBA
/// moving it away) is not counted.
fn divergent_tally(dir: &Path) -> Result<DivergentTally, ArchiveError> {
    let mut tally = DivergentTally::default();
    for entry in std::fs::read_dir(dir).map_err(|e| ArchiveError::io(dir, e))? {
        let entry = entry.map_err(|e| ArchiveError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !matches!(ArchiveName::classify(name), ArchiveName::Divergent { .. }) {
            continue;
        }
        match entry.metadata() {
            Ok(m) if m.is_file() => {
                tally.files += 1;
                tally.bytes += m.len();
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ArchiveError::io(entry.path(), e)),
        }
    }
    Ok(tally)
}

const DEFAULT_SEGMENT_SIZE: u64 = 16 << 20;
const DEFAULT_BLOCK_SIZE: u64 = 8192;

/// Segment and block size from the first segment file with a valid long page
/// header. `None` when there is none (empty archive, or only empty `.partial`s).
fn sizes_from_headers(dir: &Path) -> Result<Option<(u64, u64)>, ArchiveError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ArchiveError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ArchiveError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ArchiveName::Segment { compression, .. } = ArchiveName::classify(name) else {
            continue;
        };
        // A file moved away (Barman) or shorter than a header is skipped.
        let Ok(header) = read_prefix(&entry.path(), compression, LONG_HEADER_SIZE) else {
            continue;
        };
        let Some(long) = PageHeader::parse(&header).and_then(|h| h.long) else {
            continue;
        };
        let seg = u64::from(long.segment_size);
        let block = u64::from(long.block_size);
        if is_valid_segment_size(seg) && is_valid_block_size(block) {
            return Ok(Some((seg, block)));
        }
    }
    Ok(None)
}

fn partial_written_bytes(
    path: &Path,
    compression: Compression,
    segment_size: u64,
    block_size: u64,
) -> io::Result<u64> {
    if compression != Compression::None {
        let data = std::fs::read(path)?;
        // A `.partial` counts up to what decodes (see `decompress_partial`).
        let bytes = decompress_partial(compression, &data, segment_size)
            .map(|d| d.bytes)
            .unwrap_or_default();
        return written_end(bytes.len() as u64, block_size, |offset, buf| {
            let start = usize::try_from(offset).map_err(io::Error::other)?;
            let src = bytes
                .get(start..start + buf.len())
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(src);
            Ok(())
        });
    }
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    written_end(segment_size.min(len), block_size, |offset, buf| {
        f.read_exact_at(buf, offset)
    })
}

/// Where the written prefix of a zero-padded segment ends, reading pages
/// through `read_at(offset, buf)`: a binary search for the last page with a
/// non-zero magic, then its last non-zero byte, rounded up to 8 bytes.
pub fn written_end(
    size: u64,
    block_size: u64,
    mut read_at: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let pages = size / block_size;
    let block = usize::try_from(block_size).unwrap_or(8192);
    let mut page = vec![0u8; block];
    let mut is_written = |index: u64, page: &mut [u8]| -> io::Result<bool> {
        read_at(index * block_size, page)?;
        Ok(page[0] != 0 || page[1] != 0)
    };
    if pages == 0 || !is_written(0, &mut page)? {
        return Ok(0);
    }
    // Invariant: page `lo` is written, page `hi` is not (or is past the end).
    let (mut lo, mut hi) = (0, pages);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if is_written(mid, &mut page)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    is_written(lo, &mut page)?;
    let last_nonzero = page.iter().rposition(|&b| b != 0).unwrap_or(0) as u64;
    let in_page = ((last_nonzero + 1).div_ceil(8) * 8).min(block_size);
    Ok(lo * block_size + in_page)
}

/// The check `walrcv stream` makes before it resumes (see
/// [`crate::archive::resume`]): the archive's WAL just before its start
/// point, read back and verified. `Some(message)` when it is corrupt: the
/// receiver then stops (exit 5) rather than resume after it.
pub fn corrupt_before_start(dir: &Path, read: &ArchiveRead) -> Option<String> {
    let start = read.scan.streaming_start(read.segment_size)?;
    let config = crate::wal::VerifierConfig {
        segment_size: read.segment_size,
        // XLOG_BLCKSZ of every packaged PostgreSQL build.
        block_size: 8192,
        system_id: None,
        timeline: start.timeline,
        server_major: None,
    };
    let archive = ArchiveDir::for_reading(dir).ok()?;
    match archive.resume_verifier(config, start.lsn) {
        Ok(crate::archive::Resume::Corrupt { path, error }) => Some(format!(
            "the WAL before the start point {} is corrupt: \"{}\" fails verification at {}: {error}; walrcv \
             stream stops (exit 5) rather than resume after it",
            start.lsn,
            path.display(),
            error.lsn
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: u64 = 8192;

    /// A segment of `pages` pages whose first `written` bytes are non-zero.
    fn segment(pages: u64, written: u64) -> Vec<u8> {
        let mut v = vec![0u8; (pages * BLOCK) as usize];
        for b in v.iter_mut().take(written as usize) {
            *b = 0xA5;
        }
        v
    }

    fn end_of(data: &[u8]) -> u64 {
        written_end(data.len() as u64, BLOCK, |off, buf| {
            let off = off as usize;
            buf.copy_from_slice(&data[off..off + buf.len()]);
            Ok(())
        })
        .unwrap()
    }

    /// A 40-byte long page header claiming `segment_size` and `block_size`.
    fn long_header(segment_size: u32, block_size: u32) -> Vec<u8> {
        let mut h = vec![0u8; crate::wal::page::LONG_HEADER_SIZE];
        h[2..4].copy_from_slice(&crate::wal::page::XLP_LONG_HEADER.to_le_bytes());
        h[32..36].copy_from_slice(&segment_size.to_le_bytes());
        h[36..40].copy_from_slice(&block_size.to_le_bytes());
        h
    }

    #[test]
    fn a_header_with_a_block_size_over_64_kb_is_not_believed() {
        // The case where this reader once disagreed with the rest of walrcv
        // (it had no upper bound): 128 kB is no WAL page size.
        let tmp = tempfile::tempdir().unwrap();
        let seg = 16u32 << 20;
        std::fs::write(
            tmp.path().join("000000010000000000000001.partial"),
            long_header(seg, 131_072),
        )
        .unwrap();
        assert_eq!(sizes_from_headers(tmp.path()).unwrap(), None);
        std::fs::write(
            tmp.path().join("000000010000000000000002.partial"),
            long_header(seg, 32_768),
        )
        .unwrap();
        assert_eq!(
            sizes_from_headers(tmp.path()).unwrap(),
            Some((u64::from(seg), 32_768))
        );
    }

    #[test]
    fn empty_segment_has_nothing_written() {
        assert_eq!(end_of(&segment(128, 0)), 0);
        assert_eq!(end_of(&[]), 0);
    }

    #[test]
    fn end_found_at_page_and_record_precision() {
        assert_eq!(end_of(&segment(128, 100)), 104);
        assert_eq!(end_of(&segment(128, BLOCK)), BLOCK);
        assert_eq!(end_of(&segment(128, 5 * BLOCK + 17)), 5 * BLOCK + 24);
        assert_eq!(end_of(&segment(128, 128 * BLOCK)), 128 * BLOCK);
        for written in [1, 777, 63 * BLOCK + 1, 64 * BLOCK, 127 * BLOCK + 8000] {
            let end = end_of(&segment(128, written));
            assert!(end >= written && end < written + 8, "{written} -> {end}");
        }
    }

    fn listing(dir: &Path) -> Vec<(String, u64)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let len = e.metadata().unwrap().len();
                (e.file_name().to_string_lossy().into_owned(), len)
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn reads_beside_a_lock_holder_and_changes_nothing() {
        const SEG: u64 = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("000000010000000000000002"),
            vec![0u8; SEG as usize],
        )
        .unwrap();
        std::fs::write(
            dir.path().join("000000010000000000000003.partial"),
            segment(SEG / BLOCK, 2 * BLOCK + 5),
        )
        .unwrap();
        // A temporary of a running walrcv: `ArchiveDir::open` would remove it.
        std::fs::write(
            dir.path().join("000000010000000000000004.partial.tmp"),
            b"x",
        )
        .unwrap();
        let held = ArchiveDir::open(dir.path());
        std::fs::write(
            dir.path().join("000000010000000000000004.partial.tmp"),
            b"x",
        )
        .unwrap();
        let before = listing(dir.path());
        let read = read_archive(dir.path(), Some(SEG)).unwrap();
        assert_eq!(listing(dir.path()), before);
        // The lock is still the holder's alone.
        assert!(held.is_ok());
        assert!(matches!(
            ArchiveDir::open(dir.path()),
            Err(ArchiveError::Locked { .. })
        ));
        assert_eq!(read.segment_size, SEG);
        assert_eq!(read.scan.segments.len(), 2);
        let newest = read.newest.unwrap();
        assert_eq!((newest.segno, newest.partial), (3, true));
        assert_eq!(read.partial_written, 2 * BLOCK + 8);
        assert!(read.newest_age_secs.is_some());
    }

    #[test]
    fn divergent_files_are_counted_not_scanned() {
        const SEG: u64 = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        for (name, len) in [
            ("000000010000000000000002", SEG),
            ("000000010000000000000003.divergent.tmp", SEG),
            ("000000010000000000000004.gz.partial.divergent.tmp", 1234),
            ("00000002.history.divergent.tmp", 10),
            ("000000020000000000000003.partial", SEG),
        ] {
            std::fs::write(dir.path().join(name), vec![0u8; len as usize]).unwrap();
        }
        let read = read_archive(dir.path(), Some(SEG)).unwrap();
        assert_eq!(
            read.divergent,
            DivergentTally {
                files: 2,
                bytes: SEG + 1234
            }
        );
        let newest = read.newest.unwrap();
        assert_eq!((newest.timeline, newest.segno), (2, 3));
        assert_eq!(read.scan.segments.len(), 2);
    }

    #[test]
    fn a_missing_directory_is_not_damage() {
        let e = read_archive(Path::new("/nonexistent/walrcv-status"), None).unwrap_err();
        assert!(matches!(e, ArchiveReadError::NotADirectory(_)));
        assert!(!e.is_damage());
    }

    #[test]
    fn reads_a_real_file_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000000010000000000000001.partial");
        std::fs::write(&path, segment(128, 3 * BLOCK + 40)).unwrap();
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(&path, perms).unwrap();
        assert_eq!(
            partial_written_bytes(&path, Compression::None, 128 * BLOCK, BLOCK).unwrap(),
            3 * BLOCK + 40
        );
    }

    /// A compressed `.partial` (unpadded, as `-Z` writes it) is measured on
    /// its decompressed bytes.
    #[test]
    fn reads_a_compressed_partial() {
        use crate::archive::compress_spec::CompressionSpec;
        use crate::archive::compressed::compress_all;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000000010000000000000001.zst.partial");
        let data = &segment(128, 3 * BLOCK + 40)[..4 * BLOCK as usize];
        let packed = compress_all(CompressionSpec::parse("zstd").unwrap(), data).unwrap();
        std::fs::write(&path, packed).unwrap();
        assert_eq!(
            partial_written_bytes(&path, Compression::Zstd, 128 * BLOCK, BLOCK).unwrap(),
            3 * BLOCK + 40
        );
    }
}
