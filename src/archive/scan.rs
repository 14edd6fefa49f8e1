//! Opening and locking the archive directory, scanning its files, and choosing
//! where streaming starts (pg_receivewal's `FindStreamingStart` rules).
//!
//! The lock is `flock(LOCK_EX|LOCK_NB)` on a descriptor of the directory itself:
//! no lock file appears in the directory (Barman moves any unknown file to its
//! errors directory), the kernel drops the lock when the process dies, and a
//! second opener, even in the same process, is refused because flock locks
//! belong to the open file description.
//!
//! The scan names files with [`ArchiveName::classify`] (the archive's one
//! vocabulary): segments complete or `.partial`, plain or compressed (`.gz`,
//! `.lz4`, `.zst`, as pg_receivewal `-Z` and walrcv `-Z` write them), and
//! history files (plain or compressed). A complete compressed segment counts
//! as complete after pg_receivewal's checks ([`super::inspect`]: gzip's
//! ISIZE, the decompressed size of lz4 and zstd files), done once per file
//! per process; a compressed `.partial` of any size restarts its segment. So
//! an archive of compressed segments is never taken for an empty one.
//!
//! It is stricter than pg_receivewal about sizes: a complete segment of the
//! wrong size (uncompressed, or once decompressed), or a plain `.partial`
//! neither empty nor pre-padded, is an error rather than a warning, because
//! streaming over it would silently leave a gap or a torn file. Nothing found
//! by the scan is ever deleted.
//!
//! Start-up work ([`ArchiveDir::prepare_start`]) is proportional to what
//! changed: the first start of the process checks every file's identity and
//! fsyncs every file and the directory (see its documentation for why); later
//! reconnects of the same process list the directory again but only stat,
//! check and fsync the files they have not seen yet.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::compress_spec::CompressionSpec;
use super::compressed::compress_all;
use super::durable::{self, Site};
use super::inspect::{check_complete_size, read_prefix, SizeCheck};
use super::names::{ArchiveName, Compression};
use super::taint::{self, Plan, Taints};
use super::ArchiveError;
use crate::lsn::{
    history_file_name, is_valid_segment_size, parse_history_file_name, segment_start_lsn,
    TimeLineId,
};
use crate::wal::page::{
    major_for_magic, PageHeader, LONG_HEADER_SIZE, XLP_ALL_FLAGS, XLP_LONG_HEADER,
};

pub use super::names::PARTIAL_SUFFIX;

/// An open, locked archive directory. The lock (flock on the directory itself,
/// so no extra file appears in it) is held until this value and all its clones
/// are dropped. Clones share the lock and what is known about the files, so
/// that blocking work can run on another thread.
#[derive(Debug, Clone)]
pub struct ArchiveDir {
    path: PathBuf,
    /// The descriptor holding the flock; closing it (on drop) releases the lock.
    _lock: Arc<File>,
    /// What this process has already checked and made durable.
    known: Arc<Mutex<Known>>,
    /// Files whose fsync failed in this process (see [`super::taint`]).
    taints: Arc<Mutex<Taints>>,
}

/// Why [`ArchiveDir::prepare_start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// Listing or checking the files: what is there is wrong (another
    /// cluster, a wrong size) or cannot be read.
    #[error(transparent)]
    Check(ArchiveError),
    /// Making them durable: a disk fault.
    #[error(transparent)]
    Sync(ArchiveError),
    /// WAL the start point relies on had its fsync fail earlier in this
    /// process and cannot be streamed again (see [`super::taint`]).
    #[error("\"{}\": {why}; walrcv never reports it flushed and stops", .path.display())]
    Untrusted { path: PathBuf, why: String },
}

/// Files whose identity this process has checked (and which it has fsynced,
/// when syncing), by name, so that a reconnect does not do it again.
#[derive(Debug, Default)]
struct Known {
    /// The server identity and segment size they were checked against: the
    /// cache holds only for those.
    checked_for: Option<(u64, u64, bool)>,
    /// Segment files, with what the scan found.
    segments: HashMap<String, SegmentFile>,
    histories: HashSet<TimeLineId>,
}

pub use super::listing::{Scan, SegmentFile, StartPoint};

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
            _lock: Arc::new(lock),
            known: Arc::default(),
            taints: Arc::default(),
        };
        dir.remove_stale_tmp()?;
        Ok(dir)
    }

    /// `path` for reading only, beside a `walrcv stream` that may hold the
    /// lock: no lock is taken and nothing is removed. Only the read-only
    /// methods (the scan, [`ArchiveDir::resume_verifier`], history files)
    /// may be used on it: `walrcv status` checks with it the WAL that the
    /// next start reads.
    pub fn for_reading(path: &Path) -> Result<Self, ArchiveError> {
        let handle = File::open(path).map_err(|e| ArchiveError::io(path, e))?;
        Ok(ArchiveDir {
            path: path.to_path_buf(),
            _lock: Arc::new(handle),
            known: Arc::default(),
            taints: Arc::default(),
        })
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
                    tracing::info!(
                        path = %path.display(),
                        "removed temporary file left by an earlier run"
                    )
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
    /// Compressed segments count as their segment (see the module
    /// documentation); other names are ignored (and never touched).
    pub fn scan(&self, segment_size: u64) -> Result<Scan, ArchiveError> {
        self.scan_with(segment_size, &HashMap::new())
    }

    /// [`ArchiveDir::scan`], taking complete segments named in `known` from it
    /// without a `stat` (a complete segment never changes: walrcv does not
    /// write one again, and the lock keeps other writers out). A `.partial`
    /// is always looked at.
    fn scan_with(
        &self,
        segment_size: u64,
        known: &HashMap<String, SegmentFile>,
    ) -> Result<Scan, ArchiveError> {
        Self::scan_path(&self.path, segment_size, known)
    }

    /// [`ArchiveDir::scan`] of a directory that is neither opened nor locked:
    /// it only lists and stats, never writes, locks or fsyncs, so it can run
    /// beside a `walrcv stream` holding the lock (`walrcv status` uses it).
    /// A file renamed or removed during the listing is skipped.
    pub fn scan_unlocked(dir: &Path, segment_size: u64) -> Result<Scan, ArchiveError> {
        Self::scan_path(dir, segment_size, &HashMap::new())
    }

    fn scan_path(
        dir: &Path,
        segment_size: u64,
        known: &HashMap<String, SegmentFile>,
    ) -> Result<Scan, ArchiveError> {
        if !is_valid_segment_size(segment_size) {
            return Err(ArchiveError::InvalidSegmentSize { size: segment_size });
        }
        let mut scan = Scan::default();
        let entries = std::fs::read_dir(dir).map_err(|e| ArchiveError::io(dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ArchiveError::io(dir, e))?;
            let os_name = entry.file_name();
            let Some(name) = os_name.to_str() else {
                tracing::debug!(name = ?os_name, "ignoring file with a non-UTF-8 name");
                continue;
            };
            let path = entry.path();
            let (seg, compression, partial) = match ArchiveName::classify(name) {
                ArchiveName::History { timeline, .. } => {
                    scan.histories.push(timeline);
                    continue;
                }
                ArchiveName::Segment {
                    name: seg,
                    compression,
                    partial,
                } => (seg, compression, partial),
                // Set aside on purpose: never a start point.
                ArchiveName::Temporary | ArchiveName::Divergent { .. } => continue,
                ArchiveName::Backup { .. } | ArchiveName::Foreign => {
                    tracing::debug!(
                        path = %path.display(),
                        "ignoring file that is not a WAL segment or history file"
                    );
                    continue;
                }
            };
            if let Some(seen) = known.get(name).filter(|_| !partial) {
                scan.segments.push(seen.clone());
                continue;
            }
            let Some((timeline, segno)) = seg.segno(segment_size) else {
                // Not a valid name for this segment size: possibly written
                // with another wal_segment_size.
                tracing::warn!(
                    path = %path.display(), segment_size,
                    "ignoring file: not a valid WAL file name for this segment size"
                );
                continue;
            };
            let Some(size) = regular_file_size(&path)? else {
                continue;
            };
            check_size(&path, compression, partial, size, segment_size)?;
            scan.segments.push(SegmentFile {
                timeline,
                segno,
                partial,
                size,
                path,
                compression,
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

    /// Whether `TTTTTTTT.history` is present, plain or compressed (any
    /// method: an archive written with another `-Z` has it too).
    pub fn has_history(&self, timeline: TimeLineId) -> bool {
        timeline != 0 && self.history_path(timeline).is_some()
    }

    /// The history file of `timeline` under whichever compression it has.
    fn history_path(&self, timeline: TimeLineId) -> Option<(PathBuf, Compression)> {
        Compression::ALL.into_iter().find_map(|c| {
            let path = self.path.join(super::names::history_file_name(timeline, c));
            std::fs::metadata(&path)
                .is_ok_and(|m| m.is_file())
                .then_some((path, c))
        })
    }

    /// The content of `timeline`'s history file, decompressed; `None` when
    /// the archive has none that reads.
    pub fn read_history(&self, timeline: TimeLineId) -> Option<Vec<u8>> {
        // History files are small (a line per timeline switch).
        const LIMIT: u64 = 16 << 20;
        let (path, compression) = self.history_path(timeline)?;
        let data = std::fs::read(path).ok()?;
        super::compression::decompress(compression, &data, LIMIT)
            .ok()
            .map(|d| d.bytes)
    }

    /// Stores a history file received from the server, after checking that
    /// `name_from_server` is exactly the expected `TTTTTTTT.history` for `timeline`.
    /// Written through `NAME.tmp` and a durable rename (no fsync if `!sync`).
    ///
    /// With `-Z` it is stored compressed as pg_receivewal stores it
    /// (`00000002.history.gz`).
    pub fn write_history(
        &self,
        timeline: TimeLineId,
        name_from_server: &str,
        content: &[u8],
        sync: bool,
        compression: CompressionSpec,
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
        let stored = super::names::history_file_name(timeline, compression.method);
        let packed = compress_all(compression, content)
            .map_err(|e| ArchiveError::io(self.path.join(&stored), e))?;
        durable::write_file_durably(&self.path, &stored, &packed, sync, Site::History)?;
        tracing::info!(path = %self.path.join(&stored).display(), "wrote timeline history file");
        Ok(())
    }

    /// Everything a session needs from the directory before it streams: the
    /// scan, the identity check ([`ArchiveDir::check_identity`]) and, when
    /// `sync`, the fsync of the files and the directory
    /// ([`ArchiveDir::sync_existing`]), each done once per file per process.
    /// Blocking: call it off the async runtime.
    ///
    /// Why every file once per process start, like PostgreSQL's fsync of the
    /// data directory after a crash: the start point reported as flushed
    /// covers every file already there, and nothing tells a file that an
    /// earlier run fsynced from one it wrote with `--no-sync`, or one copied
    /// in, or one whose process died before its fsync: only an fsync makes
    /// it durable, and the kernel makes one of a clean file cheap. Within a
    /// process, a file seen before was checked and fsynced then, and the
    /// files the sink writes are fsynced by the sink before anything in them
    /// is reported; so a reconnect checks and fsyncs only names it has not
    /// seen (the segments completed by the session before, anything moved in)
    /// and fsyncs the directory only if there were any.
    ///
    /// A new fsync proves nothing about a file whose fsync failed earlier in
    /// the process: such files are not trusted ([`super::taint`]): the start
    /// point moves back to stream them again (a complete one renamed back to
    /// `.partial` first), or [`PrepareError::Untrusted`] refuses the session.
    pub fn prepare_start(
        &self,
        system_id: u64,
        segment_size: u64,
        sync: bool,
    ) -> Result<Scan, PrepareError> {
        let began = std::time::Instant::now();
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let identity = (system_id, segment_size, sync);
        if known.checked_for != Some(identity) {
            *known = Known::default();
        }
        let first = known.checked_for.is_none();
        let scan = (self.scan_with(segment_size, &known.segments)).map_err(PrepareError::Check)?;
        let is_new =
            |s: &&SegmentFile| file_name(&s.path).is_none_or(|n| !known.segments.contains_key(n));
        let new = Scan {
            segments: scan.segments.iter().filter(is_new).cloned().collect(),
            histories: (scan.histories.iter())
                .filter(|t| !known.histories.contains(t))
                .copied()
                .collect(),
            restream_from: None,
        };
        (self.check_identity(&new, system_id, segment_size)).map_err(PrepareError::Check)?;
        if sync && (first || !new.segments.is_empty() || !new.histories.is_empty()) {
            self.sync_existing(&new).map_err(PrepareError::Sync)?;
        }
        tracing::debug!(
            files = scan.segments.len(),
            new = new.segments.len(),
            elapsed_us = began.elapsed().as_micros(),
            "archive scanned; new files checked{}",
            if sync { " and fsynced" } else { "" }
        );
        // Forget what is gone (moved away by Barman): if it comes back, it is new.
        known.segments = (scan.segments.iter())
            .filter_map(|s| Some((file_name(&s.path)?.to_string(), s.clone())))
            .collect();
        known.histories = scan.histories.iter().copied().collect();
        known.checked_for = Some(identity);
        drop(known);
        self.honour_taints(scan, segment_size, sync)
    }

    /// Records a failed fsync reported by `error` (of a file, of the
    /// directory, or of the directory after a segment's completing rename),
    /// for the life of the process: see [`super::taint`].
    pub fn record_fsync_failure(&self, error: &ArchiveError) {
        let mut taints = self.lock_taints();
        match error {
            ArchiveError::Fsync { path, .. } => taints.failed_fsync(&self.path, path),
            ArchiveError::RenameNotDurable { path, .. } => taints.failed_rename(path),
            _ => {}
        }
    }

    /// Forgets that `path` was checked and fsynced: this process moved it
    /// away after the scan that recorded it, so a file that appears under
    /// its name later (moved in by an operator or Barman) is a new file, to
    /// be checked and fsynced before anything built on it is reported.
    /// Without this, the name stays known until a scan sees it missing,
    /// which never happens when the file comes back before the next scan.
    pub(crate) fn forget_known(&self, path: &Path) {
        if let Some(name) = file_name(path) {
            let mut known = self
                .known
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            known.segments.remove(name);
        }
    }

    fn lock_taints(&self) -> std::sync::MutexGuard<'_, Taints> {
        self.taints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies [`taint::plan`] to the scan: a tainted complete segment is
    /// renamed back to `NAME.partial` (durably) and the start point moved
    /// to the oldest tainted segment; or the session is refused.
    fn honour_taints(
        &self,
        mut scan: Scan,
        segment_size: u64,
        sync: bool,
    ) -> Result<Scan, PrepareError> {
        let mut taints = self.lock_taints();
        taints.settle(&scan);
        if taints.is_empty() {
            return Ok(scan);
        }
        let plan = taint::plan(&scan, &taints, segment_size);
        match &plan {
            Plan::Normal => {}
            Plan::Stop { path, why } => {
                return Err(PrepareError::Untrusted {
                    path: path.clone(),
                    why: why.clone(),
                })
            }
            Plan::Restream { rename, start } => {
                if let Some(file) = rename {
                    let partial = file.path.with_file_name(format!(
                        "{}{PARTIAL_SUFFIX}",
                        file_name(&file.path).unwrap_or_default()
                    ));
                    if std::fs::symlink_metadata(&partial).is_ok() {
                        // A `.partial` of the same segment is there too (a
                        // complete file put beside it): never replaced by
                        // the file of unknown durability, which goes; the
                        // `.partial` is streamed again from its start.
                        durable::remove_file(&file.path, Site::Startup)
                            .and_then(|_| if sync { self.fsync() } else { Ok(()) })
                            .map_err(PrepareError::Sync)?;
                    } else {
                        let renamed = if sync {
                            durable::durable_rename(&file.path, &partial, Site::Startup)
                        } else {
                            durable::rename(&file.path, &partial, Site::Startup)
                        };
                        renamed.map_err(PrepareError::Sync)?;
                    }
                    self.forget_known(&file.path);
                    tracing::warn!(
                        "the fsync of \"{}\" (or of the directory after its rename) failed earlier: its WAL is of \
                         unknown durability; renamed it back to \"{}\" to stream it again from {} (timeline {})",
                        file.path.display(),
                        partial.display(),
                        start.lsn,
                        start.timeline
                    );
                }
                tracing::warn!(
                    "WAL from {} (timeline {}) had a failed fsync in this process: streaming it again from there",
                    start.lsn,
                    start.timeline
                );
                scan.restream_from = Some(*start);
            }
        }
        taints.restreaming(&scan, &plan);
        Ok(scan)
    }

    /// fsyncs the directory itself (pg_receivewal does so at the end of each
    /// streaming pass).
    pub fn fsync(&self) -> Result<(), ArchiveError> {
        durable::fsync_dir(&self.path, Site::Startup)
    }

    /// fsyncs every segment and history file in `scan`, then the directory:
    /// files left by an earlier run (perhaps with `--no-sync`, or by a process
    /// that crashed before its fsync) are made durable before anything built on
    /// them is reported to the primary as flushed.
    pub fn sync_existing(&self, scan: &Scan) -> Result<(), ArchiveError> {
        // Every stored form of each history file (the scan keeps only the
        // timeline); the missing ones are skipped below.
        let paths =
            scan.segments
                .iter()
                .map(|s| s.path.clone())
                .chain(scan.histories.iter().flat_map(|&tli| {
                    Compression::ALL
                        .map(|c| self.path.join(super::names::history_file_name(tli, c)))
                }));
        for path in paths {
            match durable::fsync_path(&path, Site::Startup) {
                Ok(()) => {}
                // Moved away by Barman since the scan: no longer ours to sync.
                Err(ArchiveError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        durable::fsync_dir(&self.path, Site::Startup)
    }
}

/// The size of a regular file; `None` (skipped) when it vanished during the
/// scan (Barman's archiver moves files out while we run) or is not a
/// regular file.
fn regular_file_size(path: &Path) -> Result<Option<u64>, ArchiveError> {
    // metadata follows symlinks, as pg_receivewal's stat does.
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(Some(m.len())),
        Ok(_) => {
            tracing::warn!(
                path = %path.display(),
                "ignoring WAL-named entry that is not a regular file"
            );
            Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!(path = %path.display(), "file vanished during the scan");
            Ok(None)
        }
        Err(e) => Err(ArchiveError::io(path, e)),
    }
}

/// The size rules: a plain complete segment is exactly `segment_size`
/// bytes, a plain `.partial` 0 or `segment_size`; a complete compressed one
/// decompresses to exactly `segment_size` bytes; a compressed `.partial`
/// may be anything (it is streamed again from its start).
fn check_size(
    path: &Path,
    compression: Compression,
    partial: bool,
    size: u64,
    segment_size: u64,
) -> Result<(), ArchiveError> {
    let wrong = |size| ArchiveError::WrongSize {
        path: path.to_path_buf(),
        size,
        expected: segment_size,
    };
    match (compression, partial) {
        (Compression::None, true) if size == 0 || size == segment_size => Ok(()),
        (Compression::None, false) if size == segment_size => Ok(()),
        (Compression::None, _) => Err(wrong(size)),
        (_, true) => Ok(()),
        (_, false) => {
            let data = std::fs::read(path).map_err(|e| ArchiveError::io(path, e))?;
            match check_complete_size(compression, &data, segment_size) {
                SizeCheck::Ok => Ok(()),
                SizeCheck::WrongSize(n) => Err(ArchiveError::BadCompressedFile {
                    path: path.to_path_buf(),
                    what: format!(
                        "it decompresses to {n} bytes, not the segment size {segment_size}"
                    ),
                }),
                SizeCheck::Broken(what) => Err(ArchiveError::BadCompressedFile {
                    path: path.to_path_buf(),
                    what,
                }),
            }
        }
    }
}

/// Whether `name` is a temporary walrcv creates: a `.partial.tmp` of a
/// segment (any compression; being pre-padded or written direct) or a
/// history file's `.tmp`. Other temporaries of WAL names are not ours.
fn is_own_tmp(name: &str) -> bool {
    let Some(base) = name.strip_suffix(durable::TMP_SUFFIX) else {
        return false;
    };
    matches!(
        ArchiveName::classify(base),
        ArchiveName::Segment { partial: true, .. } | ArchiveName::History { .. }
    )
}

fn file_name(path: &Path) -> Option<&str> {
    path.file_name().and_then(|n| n.to_str())
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
    // A compressed file's first page is decompressed.
    let buf = match read_prefix(&seg.path, seg.compression, LONG_HEADER_SIZE) {
        Ok(b) => b,
        // Moved away by Barman since the scan: nothing left to contradict.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ArchiveError::io(&seg.path, e)),
    };
    if buf.len() < LONG_HEADER_SIZE {
        if seg.partial && seg.compression != Compression::None {
            // A compressed .partial whose first page is not flushed yet.
            return Ok(());
        }
        return Err(not_wal(format!(
            "file is shorter than {LONG_HEADER_SIZE} bytes"
        )));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::{Lsn, SegNo};
    use crate::wal::page::magic_for_major;
    use std::os::unix::fs::FileExt;

    const SEG: u64 = 1 << 20;
    const SYSID: u64 = 7_310_415_656_024_096_833;

    fn name(tli: TimeLineId, segno: SegNo) -> String {
        crate::lsn::wal_file_name(tli, segno, SEG)
    }

    /// Creates `dir/name` of `size` bytes (sparse: content is zeros).
    fn touch(dir: &Path, name: &str, size: u64) -> PathBuf {
        let path = dir.join(name);
        let f = File::create(&path).unwrap();
        f.set_len(size).unwrap();
        path
    }

    /// A synthetic 40-byte long page header.
    fn long_header(magic: u16, info: u16, pageaddr: u64, sysid: u64, seg_size: u32) -> [u8; 40] {
        let mut b = [0u8; 40];
        b[0..2].copy_from_slice(&magic.to_le_bytes());
        b[2..4].copy_from_slice(&info.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..16].copy_from_slice(&pageaddr.to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&seg_size.to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        b
    }

    fn good_header(segno: SegNo) -> [u8; 40] {
        let magic = magic_for_major(17).unwrap();
        long_header(magic, XLP_LONG_HEADER, segno * SEG, SYSID, SEG as u32)
    }

    /// Creates a WAL file of `size` bytes whose first bytes are `header`.
    fn wal_file(dir: &Path, name: &str, size: u64, header: &[u8]) -> PathBuf {
        let path = touch(dir, name, size);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(header, 0).unwrap();
        path
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn lock_is_refused_twice_and_released_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let first = ArchiveDir::open(tmp.path()).unwrap();
        let err = ArchiveDir::open(tmp.path()).unwrap_err();
        assert!(matches!(err, ArchiveError::Locked { .. }), "{err}");
        // Same directory through another spelling of its path: still the same inode.
        let err = ArchiveDir::open(&tmp.path().join(".")).unwrap_err();
        assert!(matches!(err, ArchiveError::Locked { .. }), "{err}");
        drop(first);
        let again = ArchiveDir::open(tmp.path()).unwrap();
        assert_eq!(again.path(), tmp.path());
        // No lock file (or anything else) appeared in the directory.
        assert!(names(tmp.path()).is_empty());
    }

    #[test]
    fn open_requires_an_existing_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        let err = ArchiveDir::open(&missing).unwrap_err();
        assert!(matches!(err, ArchiveError::NotADirectory(_)), "{err}");
        assert!(!missing.exists(), "open must never create the directory");
        let file = touch(tmp.path(), "file", 0);
        let err = ArchiveDir::open(&file).unwrap_err();
        assert!(matches!(err, ArchiveError::NotADirectory(_)), "{err}");
    }

    #[test]
    fn open_removes_only_our_stale_temporaries() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        touch(d, &format!("{}.partial.tmp", name(1, 3)), 12345);
        // A compressed segment streamed again aside, killed before it
        // replaced its old .partial (which stays).
        touch(d, &format!("{}.zst.partial.tmp", name(1, 4)), 123);
        touch(d, &format!("{}.zst.partial", name(1, 4)), 456);
        touch(d, "00000002.history.tmp", 10);
        for keep in [
            "other.tmp",
            "000000010000000000000003.tmp",
            "0000000a.history.tmp",
            "notes",
            "00000002.history",
        ] {
            touch(d, keep, 1);
        }
        let _dir = ArchiveDir::open(d).unwrap();
        assert_eq!(
            names(d),
            [
                "000000010000000000000003.tmp",
                "000000010000000000000004.zst.partial",
                "00000002.history",
                "0000000a.history.tmp",
                "notes",
                "other.tmp"
            ]
        );
    }

    #[test]
    fn scan_recognises_names_sorts_and_ignores_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        touch(d, &name(2, 5), SEG);
        touch(d, &format!("{}.partial", name(1, 5)), 0);
        touch(d, &name(1, 5), SEG);
        touch(d, &format!("{}.partial", name(2, 6)), SEG);
        touch(d, &name(1, 4), SEG);
        touch(d, "00000002.history", 40);
        touch(d, "00000003.history", 40);
        let ignored = [
            "000000010000000000000007.bz2",
            "00000001000000000000000a",         // lower case
            "00000001000000000000000a.partial", // lower case
            "000000010000000000001000",         // segment field out of range for 1 MiB
            "000000000000000000000001",         // timeline 0
            "00000001000000000000000",          // 23 characters
            "0000000a.history",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000009.tmp",
            "random.txt",
        ];
        for n in ignored {
            touch(d, n, 3);
        }
        std::fs::create_dir(d.join("subdir")).unwrap();
        std::fs::create_dir(d.join(name(1, 9))).unwrap(); // a directory with a WAL name

        let dir = ArchiveDir::open(d).unwrap();
        let scan = dir.scan(SEG).unwrap();
        let got: Vec<(TimeLineId, SegNo, bool, u64)> = scan
            .segments
            .iter()
            .map(|s| (s.timeline, s.segno, s.partial, s.size))
            .collect();
        assert_eq!(
            got,
            [
                (1, 4, false, SEG),
                (1, 5, true, 0),
                (1, 5, false, SEG),
                (2, 5, false, SEG),
                (2, 6, true, SEG)
            ]
        );
        assert_eq!(
            scan.segments[1].path,
            d.join(format!("{}.partial", name(1, 5)))
        );
        assert_eq!(scan.histories, [2, 3]);
        assert!(dir.has_history(2) && dir.has_history(3));
        assert!(!dir.has_history(1) && !dir.has_history(0) && !dir.has_history(10));
        // Nothing was removed.
        for n in ignored {
            assert!(d.join(n).exists(), "{n}");
        }
    }

    #[test]
    fn scan_refuses_wrong_sizes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ArchiveDir::open(tmp.path()).unwrap();

        let short = touch(tmp.path(), &name(1, 1), SEG - 1);
        let err = dir.scan(SEG).unwrap_err();
        match &err {
            ArchiveError::WrongSize {
                path,
                size,
                expected,
            } => {
                assert_eq!((path, *size, *expected), (&short, SEG - 1, SEG));
            }
            other => panic!("{other}"),
        }
        assert!(
            err.to_string()
                .contains(&format!("has {} bytes, should be {SEG};", SEG - 1)),
            "{err}"
        );
        std::fs::remove_file(&short).unwrap();

        let long = touch(tmp.path(), &name(1, 1), SEG + 1);
        assert!(
            matches!(dir.scan(SEG), Err(ArchiveError::WrongSize { size, .. }) if size == SEG + 1)
        );
        std::fs::remove_file(&long).unwrap();

        let partial = touch(tmp.path(), &format!("{}.partial", name(1, 2)), 8192);
        let err = dir.scan(SEG).unwrap_err();
        assert!(
            matches!(&err, ArchiveError::WrongSize { path, size: 8192, .. } if *path == partial)
        );
        assert!(
            err.to_string()
                .contains(&format!("has 8192 bytes, should be 0 or {SEG}")),
            "{err}"
        );

        assert!(matches!(
            dir.scan(0),
            Err(ArchiveError::InvalidSegmentSize { size: 0 })
        ));
        assert!(matches!(
            dir.scan(3 << 20),
            Err(ArchiveError::InvalidSegmentSize { .. })
        ));
    }

    fn scan_of(files: &[(TimeLineId, SegNo, bool)]) -> Scan {
        let segments = files
            .iter()
            .map(|&(timeline, segno, partial)| SegmentFile {
                timeline,
                segno,
                partial,
                size: SEG,
                path: PathBuf::new(),
                compression: Compression::None,
            })
            .collect();
        Scan {
            segments,
            histories: vec![],
            restream_from: None,
        }
    }

    #[test]
    fn streaming_start_follows_pg_receivewal() {
        let start = |files: &[(TimeLineId, SegNo, bool)]| scan_of(files).streaming_start(SEG);
        let at = |segno: u64, timeline| {
            Some(StartPoint {
                lsn: Lsn(segno * SEG),
                timeline,
            })
        };
        // Empty directory: no local start.
        assert_eq!(start(&[]), None);
        // Complete: start of the next segment on its timeline.
        assert_eq!(start(&[(1, 3, false), (1, 4, false)]), at(5, 1));
        // Partial: start of that segment.
        assert_eq!(start(&[(1, 4, false), (1, 5, true)]), at(5, 1));
        // Complete beats partial for the same (segno, tli).
        assert_eq!(start(&[(1, 5, true), (1, 5, false)]), at(6, 1));
        // Highest segno wins over highest timeline.
        assert_eq!(start(&[(2, 4, false), (1, 6, true)]), at(6, 1));
        // Same segno: highest timeline wins, even a partial over a complete
        // (timeline switch: old TLI's segment complete, new TLI's in progress).
        assert_eq!(start(&[(1, 5, false), (2, 5, true)]), at(5, 2));
        // Old timeline's last segment stays partial; new timeline complete.
        assert_eq!(start(&[(1, 5, true), (2, 5, false)]), at(6, 2));
        // Order of the input does not matter.
        assert_eq!(
            start(&[(2, 5, false), (1, 5, true), (1, 4, false)]),
            at(6, 2)
        );
        // Segment numbers beyond one xlogid.
        assert_eq!(start(&[(1, 0x1_0000_0003, false)]), at(0x1_0000_0004, 1));
    }

    #[test]
    fn streaming_start_from_a_real_scan_with_a_zero_byte_partial() {
        // `barman receive-wal --reset` leaves exactly this.
        let tmp = tempfile::tempdir().unwrap();
        touch(tmp.path(), &name(1, 7), SEG);
        touch(tmp.path(), &format!("{}.partial", name(1, 8)), 0);
        let dir = ArchiveDir::open(tmp.path()).unwrap();
        let scan = dir.scan(SEG).unwrap();
        assert_eq!(
            scan.streaming_start(SEG),
            Some(StartPoint {
                lsn: Lsn(8 * SEG),
                timeline: 1
            })
        );
        assert_eq!(scan.newest().map(|s| s.segno), Some(8));
    }

    #[test]
    fn identity_accepts_matching_wal() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        wal_file(d, &name(1, 3), SEG, &good_header(3));
        wal_file(d, &name(1, 4), SEG, &good_header(4));
        // Pre-padded partial with nothing written yet, and a zero-byte one.
        touch(d, &format!("{}.partial", name(1, 5)), SEG);
        touch(d, &format!("{}.partial", name(2, 5)), 0);
        let dir = ArchiveDir::open(d).unwrap();
        let scan = dir.scan(SEG).unwrap();
        dir.check_identity(&scan, SYSID, SEG).unwrap();
        // A partial in progress with a header is checked too.
        wal_file(d, &format!("{}.partial", name(2, 6)), SEG, &good_header(6));
        dir.check_identity(&dir.scan(SEG).unwrap(), SYSID, SEG)
            .unwrap();
        // An empty directory, or one with only header-less partials, is fine.
        let empty = tempfile::tempdir().unwrap();
        touch(empty.path(), &format!("{}.partial", name(1, 1)), SEG);
        let dir = ArchiveDir::open(empty.path()).unwrap();
        dir.check_identity(&dir.scan(SEG).unwrap(), SYSID, SEG)
            .unwrap();
    }

    #[test]
    fn identity_refuses_another_cluster() {
        let tmp = tempfile::tempdir().unwrap();
        let magic = magic_for_major(16).unwrap();
        let other = wal_file(
            tmp.path(),
            &name(1, 3),
            SEG,
            &long_header(magic, XLP_LONG_HEADER, 3 * SEG, SYSID + 1, SEG as u32),
        );
        // The newest file (a header-less partial) is skipped; the older one is checked.
        touch(tmp.path(), &format!("{}.partial", name(1, 4)), SEG);
        let dir = ArchiveDir::open(tmp.path()).unwrap();
        let err = dir
            .check_identity(&dir.scan(SEG).unwrap(), SYSID, SEG)
            .unwrap_err();
        match err {
            ArchiveError::OtherCluster {
                path,
                found,
                expected,
            } => {
                assert_eq!((path, found, expected), (other, SYSID + 1, SYSID));
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn identity_catches_a_mixed_directory() {
        // The newest file matches; an older one belongs to another cluster.
        let tmp = tempfile::tempdir().unwrap();
        let magic = magic_for_major(15).unwrap();
        wal_file(
            tmp.path(),
            &name(1, 2),
            SEG,
            &long_header(magic, XLP_LONG_HEADER, 2 * SEG, 42, SEG as u32),
        );
        wal_file(tmp.path(), &name(1, 3), SEG, &good_header(3));
        let dir = ArchiveDir::open(tmp.path()).unwrap();
        let err = dir
            .check_identity(&dir.scan(SEG).unwrap(), SYSID, SEG)
            .unwrap_err();
        assert!(
            matches!(err, ArchiveError::OtherCluster { found: 42, .. }),
            "{err}"
        );
    }

    #[test]
    fn identity_refuses_another_segment_size() {
        let tmp = tempfile::tempdir().unwrap();
        let magic = magic_for_major(17).unwrap();
        wal_file(
            tmp.path(),
            &format!("{}.partial", name(1, 3)),
            SEG,
            &long_header(magic, XLP_LONG_HEADER, 3 * SEG, SYSID, 16 << 20),
        );
        let dir = ArchiveDir::open(tmp.path()).unwrap();
        let err = dir
            .check_identity(&dir.scan(SEG).unwrap(), SYSID, SEG)
            .unwrap_err();
        assert!(
            matches!(
                err,
                ArchiveError::SegmentSizeMismatch { found, expected, .. }
                    if found == 16 << 20 && expected == SEG
            ),
            "{err}"
        );
    }

    #[test]
    fn identity_refuses_garbage() {
        let magic = magic_for_major(17).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "text",
                b"this is not a WAL file, just some text....".to_vec(),
            ),
            (
                "unknown magic",
                long_header(0xD0FF, XLP_LONG_HEADER, 3 * SEG, SYSID, SEG as u32).to_vec(),
            ),
            (
                "short header",
                long_header(magic, 0, 3 * SEG, SYSID, SEG as u32).to_vec(),
            ),
            (
                "unknown flags",
                long_header(magic, XLP_LONG_HEADER | 0x10, 3 * SEG, SYSID, SEG as u32).to_vec(),
            ),
            (
                "wrong page address",
                long_header(magic, XLP_LONG_HEADER, 4 * SEG, SYSID, SEG as u32).to_vec(),
            ),
            ("all zeros (complete file)", vec![0u8; 40]),
        ];
        for (what, header) in cases {
            let tmp = tempfile::tempdir().unwrap();
            wal_file(tmp.path(), &name(1, 3), SEG, &header);
            let dir = ArchiveDir::open(tmp.path()).unwrap();
            let err = dir
                .check_identity(&dir.scan(SEG).unwrap(), SYSID, SEG)
                .unwrap_err();
            assert!(matches!(err, ArchiveError::NotWal { .. }), "{what}: {err}");
        }
    }

    #[test]
    fn write_history_validates_the_name() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ArchiveDir::open(tmp.path()).unwrap();
        for (tli, bad) in [
            (2, "../x.history"),
            (2, "../00000002.history"),
            (2, "00000003.history"),
            (0x1A, "0000001a.history"),
            (2, "00000002.history/"),
            (2, "/tmp/00000002.history"),
            (2, "00000002.HISTORY"),
            (2, "00000002.history.tmp"),
            (2, ""),
            (0, "00000000.history"),
        ] {
            let err = dir
                .write_history(tli, bad, b"content", true, CompressionSpec::NONE)
                .unwrap_err();
            assert!(
                matches!(err, ArchiveError::BadHistoryName { .. }),
                "{bad}: {err}"
            );
        }
        assert!(names(tmp.path()).is_empty());
        assert!(!tmp.path().parent().unwrap().join("x.history").exists());

        let content = b"1\t0/5000060\tno recovery target specified\n";
        dir.write_history(2, "00000002.history", content, true, CompressionSpec::NONE)
            .unwrap();
        dir.write_history(
            0x1A,
            "0000001A.history",
            content,
            false,
            CompressionSpec::NONE,
        )
        .unwrap();
        assert_eq!(names(tmp.path()), ["00000002.history", "0000001A.history"]);
        assert_eq!(
            std::fs::read(tmp.path().join("00000002.history")).unwrap(),
            content
        );
        assert!(dir.has_history(2) && dir.has_history(0x1A));
        assert_eq!(dir.scan(SEG).unwrap().histories, [2, 0x1A]);
    }

    #[test]
    fn files_moved_away_after_the_scan_are_tolerated() {
        // Barman's archiver moves completed segments out while we run.
        let tmp = tempfile::tempdir().unwrap();
        let moved = wal_file(tmp.path(), &name(1, 1), SEG, &good_header(1));
        wal_file(tmp.path(), &name(1, 2), SEG, &good_header(2));
        let dir = ArchiveDir::open(tmp.path()).unwrap();
        let scan = dir.scan(SEG).unwrap();
        std::fs::remove_file(&moved).unwrap();
        dir.check_identity(&scan, SYSID, SEG).unwrap();
        dir.sync_existing(&scan).unwrap();
    }

    #[test]
    fn sync_existing_and_fsync() {
        let tmp = tempfile::tempdir().unwrap();
        touch(tmp.path(), &name(1, 1), SEG);
        touch(tmp.path(), "00000002.history", 10);
        let dir = ArchiveDir::open(tmp.path()).unwrap();
        let scan = dir.scan(SEG).unwrap();
        dir.sync_existing(&scan).unwrap();
        dir.fsync().unwrap();
    }

    /// A complete segment renamed back to `.partial` (its fsync failed) is
    /// no longer a known file: one moved in later under its name is checked
    /// (and fsynced) as new, never taken for the file checked before.
    #[test]
    fn a_file_moved_in_under_a_name_renamed_back_is_new() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let complete = wal_file(d, &name(1, 3), SEG, &good_header(3));
        let dir = ArchiveDir::open(d).unwrap();
        dir.prepare_start(SYSID, SEG, true).unwrap();
        dir.record_fsync_failure(&ArchiveError::Fsync {
            path: complete.clone(),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        });
        // Renamed back to `.partial`, streamed again from its start.
        let scan = dir.prepare_start(SYSID, SEG, true).unwrap();
        assert_eq!(scan.streaming_start(SEG).unwrap().lsn, Lsn(3 * SEG));
        assert!(!complete.exists(), "{:?}", names(d));
        // Before the next scan, a file of another cluster appears under the
        // complete name: it must be checked like any new file.
        let magic = magic_for_major(17).unwrap();
        wal_file(
            d,
            &name(1, 3),
            SEG,
            &long_header(magic, XLP_LONG_HEADER, 3 * SEG, SYSID + 1, SEG as u32),
        );
        let err = dir.prepare_start(SYSID, SEG, true).unwrap_err();
        assert!(
            matches!(err, PrepareError::Check(ArchiveError::OtherCluster { .. })),
            "{err}"
        );
    }

    /// A segment whose fsync failed is streamed again from its start: the
    /// complete file is renamed back to `.partial` and the start moved, even
    /// though the fsyncs of the next session (new descriptors) succeed; it
    /// stays owed until completed again; with a complete segment after it,
    /// the session is refused.
    #[test]
    fn a_segment_whose_fsync_failed_is_not_trusted_again() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        wal_file(d, &name(1, 3), SEG, &good_header(3));
        wal_file(d, &name(1, 4), SEG, &good_header(4));
        wal_file(d, &format!("{}.partial", name(1, 5)), SEG, &good_header(5));
        let dir = ArchiveDir::open(d).unwrap();
        let fsync_failed = |segno| ArchiveError::Fsync {
            path: d.join(name(1, segno)),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        };
        dir.record_fsync_failure(&fsync_failed(4));
        let scan = dir.prepare_start(SYSID, SEG, true).unwrap();
        let restart = Some(StartPoint {
            lsn: Lsn(4 * SEG),
            timeline: 1,
        });
        assert_eq!(scan.streaming_start(SEG), restart);
        let partial4 = format!("{}.partial", name(1, 4));
        assert!(names(d).contains(&partial4), "{:?}", names(d));
        assert!(!names(d).contains(&name(1, 4)));
        // A reconnect before segment 4 is complete starts there again.
        let scan = dir.prepare_start(SYSID, SEG, true).unwrap();
        assert_eq!(scan.streaming_start(SEG), restart);
        // Completed again (as the sink does): trusted again.
        std::fs::rename(d.join(&partial4), d.join(name(1, 4))).unwrap();
        let scan = dir.prepare_start(SYSID, SEG, true).unwrap();
        assert_eq!(scan.streaming_start(SEG).unwrap().lsn, Lsn(5 * SEG));
        // An older one, complete segments after it: refused.
        dir.record_fsync_failure(&fsync_failed(3));
        let err = dir.prepare_start(SYSID, SEG, true).unwrap_err();
        assert!(
            matches!(&err, PrepareError::Untrusted { path, .. } if *path == d.join(name(1, 3))),
            "{err}"
        );
        // So is anything after a failed fsync of the directory.
        let tmp2 = tempfile::tempdir().unwrap();
        let dir2 = ArchiveDir::open(tmp2.path()).unwrap();
        dir2.record_fsync_failure(&ArchiveError::Fsync {
            path: tmp2.path().to_path_buf(),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        });
        assert!(matches!(
            dir2.prepare_start(SYSID, SEG, true),
            Err(PrepareError::Untrusted { .. })
        ));
    }

    #[test]
    fn prepare_start_checks_each_file_once_per_process() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let old = wal_file(d, &name(1, 3), SEG, &good_header(3));
        wal_file(d, &name(1, 4), SEG, &good_header(4));
        wal_file(d, &format!("{}.partial", name(1, 5)), SEG, &good_header(5));
        let dir = ArchiveDir::open(d).unwrap();
        let first = dir.prepare_start(SYSID, SEG, true).unwrap();
        assert_eq!(first.segments.len(), 3);
        // A clone (as the session's blocking task has) shares what is known.
        let clone = dir.clone();
        // A known complete segment is not read again (walrcv never rewrites
        // one): damaging it behind our back goes unnoticed by a reconnect...
        let magic = magic_for_major(17).unwrap();
        let other = long_header(magic, XLP_LONG_HEADER, 3 * SEG, SYSID + 1, SEG as u32);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&old)
            .unwrap()
            .write_all_at(&other, 0)
            .unwrap();
        let again = clone.prepare_start(SYSID, SEG, true).unwrap();
        assert_eq!(again.streaming_start(SEG), first.streaming_start(SEG));
        // ...but every new file is checked, and a `.partial` is always looked at.
        let partial = d.join(format!("{}.partial", name(1, 5)));
        std::fs::File::options()
            .write(true)
            .open(&partial)
            .unwrap()
            .set_len(8192)
            .unwrap();
        assert!(matches!(
            dir.prepare_start(SYSID, SEG, true),
            Err(PrepareError::Check(ArchiveError::WrongSize {
                size: 8192,
                ..
            }))
        ));
        std::fs::remove_file(&partial).unwrap();
        let stranger = wal_file(
            d,
            &name(1, 6),
            SEG,
            &long_header(magic, XLP_LONG_HEADER, 6 * SEG, 42, SEG as u32),
        );
        assert!(matches!(
            dir.prepare_start(SYSID, SEG, true),
            Err(PrepareError::Check(ArchiveError::OtherCluster {
                found: 42,
                ..
            }))
        ));
        std::fs::remove_file(&stranger).unwrap();
        // Another server identity: everything is checked again.
        std::fs::remove_file(&old).unwrap();
        wal_file(d, &name(1, 3), SEG, &good_header(3));
        let scan = dir.prepare_start(SYSID + 7, SEG, true).unwrap_err();
        assert!(
            matches!(scan, PrepareError::Check(ArchiveError::OtherCluster { .. })),
            "{scan}"
        );
        // A file moved away and back is new again.
        let s = dir.prepare_start(SYSID, SEG, true).unwrap();
        assert_eq!(s.segments.len(), 2);
        std::fs::rename(d.join(name(1, 4)), d.join("aside")).unwrap();
        dir.prepare_start(SYSID, SEG, true).unwrap();
        let magic = magic_for_major(17).unwrap();
        wal_file(
            d,
            &name(1, 4),
            SEG,
            &long_header(magic, XLP_LONG_HEADER, 4 * SEG, 42, SEG as u32),
        );
        assert!(matches!(
            dir.prepare_start(SYSID, SEG, true),
            Err(PrepareError::Check(ArchiveError::OtherCluster {
                found: 42,
                ..
            }))
        ));
    }
}

#[cfg(test)]
mod compressed_tests {
    use super::*;
    use crate::archive::compressed::compress_all;
    use crate::lsn::{wal_file_name, Lsn, SegNo};
    use crate::wal::page::magic_for_major;

    const SEG: u64 = 1 << 20;
    const SYSID: u64 = 7_310_415_656_024_096_833;

    /// A segment's bytes: a valid long page header, then filler.
    fn segment(segno: SegNo, sysid: u64) -> Vec<u8> {
        let mut b = vec![0u8; SEG as usize];
        let magic = magic_for_major(17).unwrap();
        b[0..2].copy_from_slice(&magic.to_le_bytes());
        b[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..16].copy_from_slice(&(segno * SEG).to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        for (i, x) in b[40..].iter_mut().enumerate() {
            *x = (i % 7) as u8;
        }
        b
    }

    fn write(dir: &Path, segno: SegNo, z: &str, sfx: &str, data: &[u8]) -> PathBuf {
        let path = dir.join(format!("{}{sfx}", wal_file_name(1, segno, SEG)));
        let spec = CompressionSpec::parse(z).unwrap();
        std::fs::write(&path, compress_all(spec, data).unwrap()).unwrap();
        path
    }

    #[test]
    fn an_archive_of_compressed_segments_is_not_empty() {
        for (z, sfx) in [("gzip", ".gz"), ("lz4", ".lz4"), ("zstd", ".zst")] {
            let tmp = tempfile::tempdir().unwrap();
            let d = tmp.path();
            write(d, 3, z, sfx, &segment(3, SYSID));
            write(d, 4, z, sfx, &segment(4, SYSID));
            let dir = ArchiveDir::open(d).unwrap();
            let scan = dir.prepare_start(SYSID, SEG, true).unwrap();
            assert_eq!(scan.segments.len(), 2, "{z}");
            assert_eq!(
                scan.streaming_start(SEG),
                Some(StartPoint {
                    lsn: Lsn(5 * SEG),
                    timeline: 1
                }),
                "{z}: after the newest complete compressed segment"
            );
            // A compressed .partial (here a flushed, unfinished one cut
            // anywhere) restarts its segment, whatever its size.
            let p = write(
                d,
                5,
                z,
                &format!("{sfx}.partial"),
                &segment(5, SYSID)[..5000],
            );
            let cut = std::fs::read(&p).unwrap();
            std::fs::write(&p, &cut[..cut.len() - 3]).unwrap();
            let scan = dir.prepare_start(SYSID, SEG, true).unwrap();
            assert_eq!(scan.streaming_start(SEG).unwrap().lsn, Lsn(5 * SEG), "{z}");
            assert_eq!(
                scan.newest().unwrap().compression,
                Compression::ALL[match z {
                    "gzip" => 1,
                    "lz4" => 2,
                    _ => 3,
                }]
            );
        }
    }

    #[test]
    fn a_mixed_archive_starts_after_its_newest_file() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::write(d.join(wal_file_name(1, 3, SEG)), segment(3, SYSID)).unwrap();
        write(d, 4, "lz4", ".lz4", &segment(4, SYSID));
        std::fs::write(
            d.join(format!("{}.partial", wal_file_name(1, 5, SEG))),
            vec![0u8; SEG as usize],
        )
        .unwrap();
        let dir = ArchiveDir::open(d).unwrap();
        let scan = dir.prepare_start(SYSID, SEG, true).unwrap();
        assert_eq!(scan.streaming_start(SEG).unwrap().lsn, Lsn(5 * SEG));
    }

    #[test]
    fn a_complete_compressed_segment_of_the_wrong_size_is_an_error() {
        for (z, sfx) in [("gzip", ".gz"), ("lz4", ".lz4"), ("zstd", ".zst")] {
            let tmp = tempfile::tempdir().unwrap();
            let path = write(
                tmp.path(),
                3,
                z,
                sfx,
                &segment(3, SYSID)[..SEG as usize - 8192],
            );
            let dir = ArchiveDir::open(tmp.path()).unwrap();
            let err = dir.scan(SEG).unwrap_err();
            assert!(
                matches!(&err, ArchiveError::BadCompressedFile { path: p, .. } if *p == path),
                "{z}: {err}"
            );
            assert!(
                err.to_string().contains("decompresses to 1040384 bytes"),
                "{err}"
            );
        }
        // A truncated .lz4 (cut mid-stream) is broken, not complete.
        let tmp = tempfile::tempdir().unwrap();
        let path = write(tmp.path(), 3, "lz4", ".lz4", &segment(3, SYSID));
        let data = std::fs::read(&path).unwrap();
        std::fs::write(&path, &data[..data.len() / 2]).unwrap();
        let dir = ArchiveDir::open(tmp.path()).unwrap();
        assert!(matches!(
            dir.scan(SEG),
            Err(ArchiveError::BadCompressedFile { .. })
        ));
    }

    #[test]
    fn identity_is_checked_on_the_decompressed_first_page() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), 3, "zstd", ".zst", &segment(3, SYSID + 1));
        let dir = ArchiveDir::open(tmp.path()).unwrap();
        let err = dir.prepare_start(SYSID, SEG, true).unwrap_err();
        assert!(
            matches!(err, PrepareError::Check(ArchiveError::OtherCluster { .. })),
            "{err}"
        );
        // An empty compressed .partial has no header yet: nothing to contradict.
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path()
                .join(format!("{}.gz.partial", wal_file_name(1, 3, SEG))),
            b"",
        )
        .unwrap();
        let dir = ArchiveDir::open(tmp.path()).unwrap();
        assert!(dir.prepare_start(SYSID, SEG, true).is_ok());
    }

    #[test]
    fn history_files_are_found_and_read_under_any_compression() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ArchiveDir::open(tmp.path()).unwrap();
        let content = b"1\t0/3000000\tno recovery target specified\n";
        let spec = CompressionSpec::parse("lz4").unwrap();
        dir.write_history(2, "00000002.history", content, true, spec)
            .unwrap();
        assert!(tmp.path().join("00000002.history.lz4").is_file());
        assert!(dir.has_history(2) && !dir.has_history(3));
        assert_eq!(dir.read_history(2).as_deref(), Some(&content[..]));
        let scan = dir.scan(SEG).unwrap();
        assert_eq!(scan.histories, [2]);
        dir.sync_existing(&scan).unwrap();
    }
}
