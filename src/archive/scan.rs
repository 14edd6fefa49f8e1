//! Opening and locking the archive directory, scanning its files, and choosing
//! where streaming starts (pg_receivewal's `FindStreamingStart` rules).
//!
//! The lock is `flock(LOCK_EX|LOCK_NB)` on a descriptor of the directory itself:
//! no lock file appears in the directory (Barman moves any unknown file to its
//! errors directory), the kernel drops the lock when the process dies, and a
//! second opener, even in the same process, is refused because flock locks
//! belong to the open file description.
//!
//! The scan recognises what pg_receivewal writes uncompressed: 24 upper-case hex
//! characters (complete segment), the same plus `.partial`, and
//! `TTTTTTTT.history`. It is stricter than pg_receivewal about sizes: a complete
//! segment of the wrong size, or a `.partial` neither empty nor pre-padded, is an
//! error rather than a warning, because streaming over it would silently leave
//! a gap or a torn file. Nothing found by the scan is ever deleted.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::durable::{self, TMP_SUFFIX};
use super::ArchiveError;
use crate::lsn::{
    history_file_name, is_valid_segment_size, parse_history_file_name, parse_wal_file_name,
    segment_start_lsn, Lsn, SegNo, TimeLineId,
};
use crate::wal::page::{
    major_for_magic, PageHeader, LONG_HEADER_SIZE, XLP_ALL_FLAGS, XLP_LONG_HEADER,
};

/// Suffix of a segment still being written.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// An open, locked archive directory. The lock (flock on the directory itself,
/// so no extra file appears in it) is held until this value is dropped.
#[derive(Debug)]
pub struct ArchiveDir {
    path: PathBuf,
    /// The descriptor holding the flock; closing it (on drop) releases the lock.
    _lock: File,
}

/// A segment file found by the scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    pub timeline: TimeLineId,
    pub segno: SegNo,
    pub partial: bool,
    pub size: u64,
    pub path: PathBuf,
}

/// What the scan found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Segment files (complete and `.partial`), sorted by (segno, timeline, complete-last).
    pub segments: Vec<SegmentFile>,
    /// Timelines with a `.history` file.
    pub histories: Vec<TimeLineId>,
}

/// Where to start streaming, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartPoint {
    pub lsn: Lsn,
    pub timeline: TimeLineId,
}

/// Whether `s` is made only of upper-case hex digits (PostgreSQL's file names).
fn is_upper_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
}

/// Whether `name` is a temporary this module creates: `<24 hex>.partial.tmp`
/// (segment being pre-padded) or `TTTTTTTT.history.tmp` (history being written).
fn is_own_tmp(name: &str) -> bool {
    let Some(base) = name.strip_suffix(TMP_SUFFIX) else {
        return false;
    };
    if let Some(seg) = base.strip_suffix(PARTIAL_SUFFIX) {
        return seg.len() == 24 && is_upper_hex(seg);
    }
    parse_history_file_name(base).is_some()
}

/// Whether `name` is a compressed segment as pg_receivewal --compress writes it.
fn is_compressed_segment(name: &str) -> bool {
    let base = name.strip_suffix(PARTIAL_SUFFIX).unwrap_or(name);
    let Some(seg) = base
        .strip_suffix(".gz")
        .or_else(|| base.strip_suffix(".lz4"))
    else {
        return false;
    };
    seg.len() == 24 && is_upper_hex(seg)
}

impl ArchiveDir {
    /// Opens `path` (which must exist and be a directory) and takes the lock.
    /// A second opener gets [`ArchiveError::Locked`].
    ///
    /// Once locked, temporaries left by a crashed run of ours (`*.partial.tmp`,
    /// `*.history.tmp`) are removed: they never carried data anyone relies on.
    pub fn open(path: &Path) -> Result<Self, ArchiveError> {
        // Never create the directory: a typo in --directory must not start a
        // fresh, empty archive somewhere else.
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(ArchiveError::NotADirectory(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ArchiveError::NotADirectory(path.to_path_buf()))
            }
            Err(e) => return Err(ArchiveError::io(path, e)),
        }
        let lock = File::open(path).map_err(|e| ArchiveError::io(path, e))?;
        // SAFETY: flock on a descriptor we own and keep open; no memory is shared.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                ArchiveError::Locked {
                    path: path.to_path_buf(),
                }
            } else {
                ArchiveError::io(path, e)
            });
        }
        let dir = ArchiveDir {
            path: path.to_path_buf(),
            _lock: lock,
        };
        dir.remove_stale_tmp()?;
        Ok(dir)
    }

    /// Removes our own temporaries left by a crash. Safe because we hold the
    /// lock: no other walrcv can be writing them.
    fn remove_stale_tmp(&self) -> Result<(), ArchiveError> {
        let entries = std::fs::read_dir(&self.path).map_err(|e| ArchiveError::io(&self.path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ArchiveError::io(&self.path, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !is_own_tmp(name) {
                continue;
            }
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed temporary file left by an earlier run")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ArchiveError::io(path, e)),
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lists segment and history files. Complete segments must be exactly
    /// `segment_size` bytes and `.partial` files 0 or `segment_size` bytes:
    /// anything else is [`ArchiveError::WrongSize`].
    ///
    /// Compressed segments (`.gz`, `.lz4`) are ignored with a warning; other
    /// names are ignored (and never touched).
    pub fn scan(&self, segment_size: u64) -> Result<Scan, ArchiveError> {
        if !is_valid_segment_size(segment_size) {
            return Err(ArchiveError::InvalidSegmentSize { size: segment_size });
        }
        let mut scan = Scan::default();
        let entries = std::fs::read_dir(&self.path).map_err(|e| ArchiveError::io(&self.path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ArchiveError::io(&self.path, e))?;
            let os_name = entry.file_name();
            let Some(name) = os_name.to_str() else {
                tracing::debug!(name = ?os_name, "ignoring file with a non-UTF-8 name");
                continue;
            };
            let path = entry.path();
            if let Some(tli) = parse_history_file_name(name) {
                scan.histories.push(tli);
                continue;
            }
            let (base, partial) = match name.strip_suffix(PARTIAL_SUFFIX) {
                Some(base) => (base, true),
                None => (name, false),
            };
            if base.len() != 24 || !is_upper_hex(base) {
                if is_compressed_segment(name) {
                    tracing::warn!(path = %path.display(), "ignoring compressed WAL file: compressed segments are not supported yet");
                } else if !name.ends_with(TMP_SUFFIX) {
                    tracing::debug!(path = %path.display(), "ignoring file that is not a WAL segment or history file");
                }
                continue;
            }
            let Some((timeline, segno)) = parse_wal_file_name(base, segment_size) else {
                // Upper-case hex but not a valid name for this segment size (or
                // timeline 0): possibly written with another wal_segment_size.
                tracing::warn!(path = %path.display(), segment_size, "ignoring file: not a valid WAL file name for this segment size");
                continue;
            };
            // metadata follows symlinks, as pg_receivewal's stat does.
            let meta = std::fs::metadata(&path).map_err(|e| ArchiveError::io(&path, e))?;
            if !meta.is_file() {
                tracing::warn!(path = %path.display(), "ignoring WAL-named entry that is not a regular file");
                continue;
            }
            let size = meta.len();
            let size_ok = if partial {
                size == 0 || size == segment_size
            } else {
                size == segment_size
            };
            if !size_ok {
                return Err(ArchiveError::WrongSize {
                    path,
                    size,
                    expected: segment_size,
                });
            }
            scan.segments.push(SegmentFile {
                timeline,
                segno,
                partial,
                size,
                path,
            });
        }
        scan.segments
            .sort_by_key(|s| (s.segno, s.timeline, !s.partial));
        scan.histories.sort_unstable();
        scan.histories.dedup();
        Ok(scan)
    }

    /// Checks that the WAL already in the directory (the long page header of the
    /// newest non-empty segment file) belongs to `system_id` with `segment_size`.
    ///
    /// Every complete segment and every non-empty `.partial` in `scan` is checked
    /// (one 40-byte read each), which also catches a directory mixing clusters.
    /// A `.partial` whose header is still all zeros (pre-padded, nothing written
    /// yet) is skipped; if no file has a header there is nothing to contradict.
    /// Besides system identifier and segment size, the header's page address
    /// must match the file name (catches renamed or recycled files).
    pub fn check_identity(
        &self,
        scan: &Scan,
        system_id: u64,
        segment_size: u64,
    ) -> Result<(), ArchiveError> {
        // Newest first, so that the error (if any) names the file that matters.
        for seg in scan.segments.iter().rev() {
            if seg.size == 0 {
                continue;
            }
            check_segment_header(seg, system_id, segment_size)?;
        }
        Ok(())
    }

    /// Whether `TTTTTTTT.history` is present.
    pub fn has_history(&self, timeline: TimeLineId) -> bool {
        if timeline == 0 {
            return false;
        }
        std::fs::metadata(self.path.join(history_file_name(timeline))).is_ok_and(|m| m.is_file())
    }

    /// Stores a history file received from the server, after checking that
    /// `name_from_server` is exactly the expected `TTTTTTTT.history` for `timeline`.
    /// Written through `NAME.tmp` and a durable rename (no fsync if `!sync`).
    pub fn write_history(
        &self,
        timeline: TimeLineId,
        name_from_server: &str,
        content: &[u8],
        sync: bool,
    ) -> Result<(), ArchiveError> {
        let expected = history_file_name(timeline);
        // The exact comparison alone rules out separators, `..` and case
        // variants; the parse re-checks the shape (and rejects timeline 0).
        if name_from_server != expected
            || parse_history_file_name(name_from_server) != Some(timeline)
        {
            return Err(ArchiveError::BadHistoryName {
                name: name_from_server.to_string(),
                expected,
            });
        }
        durable::write_file_durably(&self.path, &expected, content, sync)?;
        tracing::info!(path = %self.path.join(&expected).display(), "wrote timeline history file");
        Ok(())
    }

    /// fsyncs the directory itself (pg_receivewal does so at the end of each
    /// streaming pass).
    pub fn fsync(&self) -> Result<(), ArchiveError> {
        durable::fsync_dir(&self.path)
    }

    /// fsyncs every segment and history file in `scan`, then the directory:
    /// files left by an earlier run (perhaps with `--no-sync`, or by a process
    /// that crashed before its fsync) are made durable before anything built on
    /// them is reported to the primary as flushed.
    pub fn sync_existing(&self, scan: &Scan) -> Result<(), ArchiveError> {
        for seg in &scan.segments {
            durable::fsync_path(&seg.path)?;
        }
        for &tli in &scan.histories {
            durable::fsync_path(&self.path.join(history_file_name(tli)))?;
        }
        durable::fsync_dir(&self.path)
    }
}

/// Reads and checks the long page header at the start of one segment file.
fn check_segment_header(
    seg: &SegmentFile,
    system_id: u64,
    segment_size: u64,
) -> Result<(), ArchiveError> {
    let not_wal = |what: String| ArchiveError::NotWal {
        path: seg.path.clone(),
        what,
    };
    let file = File::open(&seg.path).map_err(|e| ArchiveError::io(&seg.path, e))?;
    let mut buf = [0u8; LONG_HEADER_SIZE];
    match file.read_exact_at(&mut buf, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(not_wal(format!(
                "file is shorter than {LONG_HEADER_SIZE} bytes"
            )));
        }
        Err(e) => return Err(ArchiveError::io(&seg.path, e)),
    }
    if seg.partial && buf.iter().all(|&b| b == 0) {
        // Pre-padded, first page not written yet: no header to compare.
        tracing::debug!(path = %seg.path.display(), "partial segment has no page header yet");
        return Ok(());
    }
    let header =
        PageHeader::parse(&buf).ok_or_else(|| not_wal("too short for a page header".into()))?;
    if major_for_magic(header.magic).is_none() {
        return Err(not_wal(format!(
            "page magic 0x{:04X} is not that of a supported PostgreSQL version",
            header.magic
        )));
    }
    if header.info & XLP_LONG_HEADER == 0 || header.info & !XLP_ALL_FLAGS != 0 {
        return Err(not_wal(format!(
            "page flags 0x{:04X} are not those of a long header",
            header.info
        )));
    }
    let Some(long) = header.long else {
        return Err(not_wal("no long header fields".into()));
    };
    if long.system_id != system_id {
        return Err(ArchiveError::OtherCluster {
            path: seg.path.clone(),
            found: long.system_id,
            expected: system_id,
        });
    }
    if u64::from(long.segment_size) != segment_size {
        return Err(ArchiveError::SegmentSizeMismatch {
            path: seg.path.clone(),
            found: u64::from(long.segment_size),
            expected: segment_size,
        });
    }
    let expected_addr = segment_start_lsn(seg.segno, segment_size);
    if header.page_address != expected_addr {
        return Err(not_wal(format!(
            "page address {} does not match the file name (expected {expected_addr})",
            header.page_address
        )));
    }
    Ok(())
}

impl Scan {
    /// pg_receivewal's rule: after the newest complete segment, or at the start of
    /// the newest `.partial`; highest segno, then highest timeline, complete beats
    /// partial. `None` when the directory holds no segment.
    pub fn streaming_start(&self, segment_size: u64) -> Option<StartPoint> {
        let best = self.newest()?;
        // A zero-byte partial (e.g. from `barman receive-wal --reset`) counts as
        // a partial: start at the beginning of that segment.
        let segno = if best.partial {
            best.segno
        } else {
            best.segno.saturating_add(1)
        };
        Some(StartPoint {
            lsn: segment_start_lsn(segno, segment_size),
            timeline: best.timeline,
        })
    }

    /// The newest segment file by pg_receivewal's ordering (the one
    /// [`Scan::streaming_start`] is derived from).
    pub fn newest(&self) -> Option<&SegmentFile> {
        self.segments
            .iter()
            .max_by_key(|s| (s.segno, s.timeline, !s.partial))
    }
}
