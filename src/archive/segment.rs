//! The segment writer: one open `NAME.partial`, pre-padded with zeros to the
//! segment size (through a `.tmp` name, so a short file never carries a WAL name),
//! written with `pwrite`, made durable with `fdatasync`, and renamed to `NAME`
//! once complete and fsynced.
//!
//! Lifecycle of a segment file:
//!
//! 1. `NAME.partial.tmp` is created (mode 0600), filled with real zeros (not
//!    `fallocate`: written blocks mean a later `fdatasync` has no metadata to
//!    flush), fsynced, renamed to `NAME.partial`, and the directory fsynced.
//!    If padding fails (ENOSPC), the temporary is removed: unlike
//!    pg_receivewal, no short `.partial` is left to block every later start.
//!    An existing full-size `NAME.partial` is reused (and fsynced first, in
//!    case an earlier run crashed before its fsync); a zero-byte one (Barman's
//!    `receive-wal --reset`) is replaced by a new padded file.
//! 2. WAL is written in place with `pwrite` and made durable with `fdatasync`.
//! 3. Once every byte from offset 0 to the end was written: `fdatasync`,
//!    rename to `NAME`, fsync the directory. Otherwise the file keeps its
//!    `.partial` name ([`SegmentWriter::close_partial`]).
//!
//! Segments after the first of a session are prepared ahead of time, off the
//! commit path: [`PreparedSegment::create`] pads and fsyncs `NAME.partial.tmp`
//! (on another thread), and [`SegmentWriter::install`] renames it to
//! `NAME.partial` when the stream reaches it. The directory fsync that makes
//! that name durable is deferred to the writer's first [`SegmentWriter::sync`],
//! which must run before any byte of the segment is reported as flushed; so a
//! crash leaves either a `.tmp` (removed on the next start) or a full-size,
//! zero-padded `.partial`, never a short file under a WAL name.
//!
//! A segment the server already has whole (catch-up) is written *direct*
//! ([`SegmentWriter::create_direct`]): under `NAME.partial.tmp`, without
//! padding, and renamed to `NAME` once complete and fsynced. That halves what
//! reaches the disk (no 16 MB of zeros before the data), at the price that
//! nothing in it can be reported before it is complete: a crash leaves a
//! `.tmp`, removed at the next start. A direct segment closed early
//! ([`SegmentWriter::close_partial`]) is padded and renamed to `NAME.partial`.
//!
//! A failed fsync (or write) poisons the writer: it is never retried on this
//! descriptor, every later call returns [`ArchiveError::Poisoned`], and the
//! session must end and re-stream from the last durable point.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::durable::{self, Site, TMP_SUFFIX};
use super::names::PARTIAL_SUFFIX;
use super::ArchiveError;
use crate::lsn::{is_valid_segment_size, segment_start_lsn, wal_file_name, Lsn, SegNo, TimeLineId};

/// Size of each zero block written while pre-padding.
const PAD_BLOCK: usize = 1 << 20;

/// Which segment a writer writes: its timeline, number and size. The one
/// identity both writers ([`SegmentWriter`] and
/// [`super::compressed::CompressedWriter`]) and the sink that holds either
/// ([`super::SegmentSink`]) answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentId {
    pub timeline: TimeLineId,
    pub segno: SegNo,
    pub segment_size: u64,
}

impl SegmentId {
    /// LSN of the segment's first byte.
    pub fn start_lsn(self) -> Lsn {
        segment_start_lsn(self.segno, self.segment_size)
    }
    /// LSN just past the segment's last byte.
    pub fn end_lsn(self) -> Lsn {
        Lsn(self.start_lsn().0.saturating_add(self.segment_size))
    }
}

/// An open segment file being written: `NAME.partial`, or
/// `NAME.partial.tmp` when written direct.
#[derive(Debug)]
pub struct SegmentWriter {
    file: File,
    dir: PathBuf,
    /// The file's name while it is being written: `dir/NAME.partial`
    /// (`dir/NAME.partial.tmp` when written direct).
    path: PathBuf,
    /// `dir/NAME`, the name once complete.
    final_path: PathBuf,
    /// Which segment this is (timeline, number, size).
    id: SegmentId,
    sync: bool,
    /// End of the prefix `[0, written)` covered by writes through this writer.
    /// [`SegmentWriter::complete`] requires the whole segment.
    written: u64,
    /// Set by a failed fsync or write; every later call fails.
    poisoned: bool,
    /// Bytes were written since the last fdatasync.
    dirty: bool,
    /// The directory entry `NAME.partial` is known to be durable (false right
    /// after [`SegmentWriter::install`] until the next [`SegmentWriter::sync`]).
    name_durable: bool,
    /// Written direct under `NAME.partial.tmp`, unpadded (see the module doc).
    direct: bool,
    /// Direct segments: the end of what the kernel was asked to start
    /// writing back (see [`SegmentWriter::start_writeback`]).
    writeback_requested: u64,
}

/// A segment file padded with zeros (and fsynced) under `NAME.partial.tmp`,
/// waiting to be installed as `NAME.partial`. Dropped without being
/// installed, it removes its temporary file.
#[derive(Debug)]
pub struct PreparedSegment {
    file: Option<File>,
    tmp: PathBuf,
    dir: PathBuf,
    timeline: TimeLineId,
    segno: SegNo,
    segment_size: u64,
    sync: bool,
}

impl PreparedSegment {
    /// Creates `dir/NAME.partial.tmp`, zero-filled to `segment_size` and (with
    /// `sync`) fsynced, so that installing it needs only a rename. The
    /// temporary is removed on any failure.
    pub fn create(
        dir: &Path,
        timeline: TimeLineId,
        segno: SegNo,
        segment_size: u64,
        sync: bool,
    ) -> Result<PreparedSegment, ArchiveError> {
        let tmp = SegmentAt::new(dir, timeline, segno, segment_size, sync)?.tmp_path();
        match create_padded_tmp(&tmp, segment_size, sync) {
            Ok(file) => Ok(PreparedSegment {
                file: Some(file),
                tmp,
                dir: dir.to_path_buf(),
                timeline,
                segno,
                segment_size,
                sync,
            }),
            Err(e) => {
                durable::remove_quietly(&tmp);
                Err(e)
            }
        }
    }

    pub fn timeline(&self) -> TimeLineId {
        self.timeline
    }
    pub fn segno(&self) -> SegNo {
        self.segno
    }
    /// The temporary file's path.
    pub fn path(&self) -> &Path {
        &self.tmp
    }
}

impl Drop for PreparedSegment {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            durable::remove_quietly(&self.tmp);
        }
    }
}

/// Where a segment file goes and how it is kept: what every constructor of a
/// [`SegmentWriter`] knows before it has a file.
struct SegmentAt<'a> {
    dir: &'a Path,
    timeline: TimeLineId,
    segno: SegNo,
    segment_size: u64,
    sync: bool,
}

/// How a new writer's file came to be.
enum Origin {
    /// Opened or created under `NAME.partial`, whose name is durable.
    Named,
    /// Renamed from a prepared file: the directory fsync is still owed.
    Installed,
    /// Written direct under `NAME.partial.tmp`.
    Direct,
}

impl<'a> SegmentAt<'a> {
    /// Checks the arguments (a valid segment size, a timeline above 0).
    fn new(
        dir: &'a Path,
        timeline: TimeLineId,
        segno: SegNo,
        segment_size: u64,
        sync: bool,
    ) -> Result<Self, ArchiveError> {
        check_arguments(timeline, segment_size)?;
        Ok(SegmentAt {
            dir,
            timeline,
            segno,
            segment_size,
            sync,
        })
    }

    fn name(&self) -> String {
        wal_file_name(self.timeline, self.segno, self.segment_size)
    }
    /// `dir/NAME`
    fn final_path(&self) -> PathBuf {
        self.dir.join(self.name())
    }
    /// `dir/NAME.partial`
    fn partial_path(&self) -> PathBuf {
        self.dir.join(format!("{}{PARTIAL_SUFFIX}", self.name()))
    }
    /// `dir/NAME.partial.tmp`
    fn tmp_path(&self) -> PathBuf {
        self.dir
            .join(format!("{}{PARTIAL_SUFFIX}{TMP_SUFFIX}", self.name()))
    }

    fn writer(
        &self,
        file: File,
        path: PathBuf,
        final_path: PathBuf,
        origin: Origin,
    ) -> SegmentWriter {
        SegmentWriter {
            file,
            dir: self.dir.to_path_buf(),
            path,
            final_path,
            id: SegmentId {
                timeline: self.timeline,
                segno: self.segno,
                segment_size: self.segment_size,
            },
            sync: self.sync,
            written: 0,
            poisoned: false,
            dirty: false,
            name_durable: matches!(origin, Origin::Named) || !self.sync,
            direct: matches!(origin, Origin::Direct),
            writeback_requested: 0,
        }
    }
}

fn check_arguments(timeline: TimeLineId, segment_size: u64) -> Result<(), ArchiveError> {
    if !is_valid_segment_size(segment_size) {
        return Err(ArchiveError::InvalidSegmentSize { size: segment_size });
    }
    if timeline == 0 {
        return Err(ArchiveError::InvalidTimeline { timeline });
    }
    Ok(())
}

impl SegmentWriter {
    /// Opens the segment for writing from offset 0: reuses an existing
    /// `NAME.partial` of full size (fsyncing it first, in case of an earlier
    /// crash), or creates a new zero-padded one. With `sync`, the new file and the
    /// directory are fsynced before it is used.
    ///
    /// Errors: [`ArchiveError::AlreadyComplete`] if `NAME` exists,
    /// [`ArchiveError::WrongSize`] if `NAME.partial` is neither empty nor full
    /// size, [`ArchiveError::InvalidSegmentSize`] / [`ArchiveError::InvalidTimeline`]
    /// for impossible arguments.
    pub fn open(
        dir: &Path,
        timeline: TimeLineId,
        segno: SegNo,
        segment_size: u64,
        sync: bool,
    ) -> Result<Self, ArchiveError> {
        let at = SegmentAt::new(dir, timeline, segno, segment_size, sync)?;
        let (final_path, path) = (at.final_path(), at.partial_path());
        let existing = existing_partial_size(&final_path, &path)?;

        let file = match existing {
            Some(size) if size == segment_size => reopen_partial(dir, &path, sync)?,
            Some(0) | None => create_padded(dir, &at.name(), &path, segment_size, sync)?,
            Some(size) => {
                return Err(ArchiveError::WrongSize {
                    path,
                    size,
                    expected: segment_size,
                })
            }
        };

        Ok(at.writer(file, path, final_path, Origin::Named))
    }

    /// Opens the segment to be written direct: a new, empty
    /// `NAME.partial.tmp`, renamed to `NAME` by [`SegmentWriter::complete`].
    /// When `NAME.partial` exists (an earlier run left it), it is opened as
    /// [`SegmentWriter::open`] does instead.
    pub fn create_direct(
        dir: &Path,
        timeline: TimeLineId,
        segno: SegNo,
        segment_size: u64,
        sync: bool,
    ) -> Result<Self, ArchiveError> {
        let at = SegmentAt::new(dir, timeline, segno, segment_size, sync)?;
        let final_path = at.final_path();
        if existing_partial_size(&final_path, &at.partial_path())?.is_some() {
            return SegmentWriter::open(dir, timeline, segno, segment_size, sync);
        }
        let path = at.tmp_path();
        let file = durable::create(&path, Site::Wal)?;
        tracing::debug!(path = %path.display(), "writing a segment direct");
        Ok(at.writer(file, path, final_path, Origin::Direct))
    }

    /// Installs a prepared segment: renames `NAME.partial.tmp` to
    /// `NAME.partial`. The new name becomes durable with the first
    /// [`SegmentWriter::sync`] (a directory fsync), which therefore must come
    /// before anything written here is reported as flushed.
    ///
    /// When `NAME.partial` already exists (an earlier run left it), the
    /// prepared file is dropped and the existing one is opened as
    /// [`SegmentWriter::open`] does; `NAME` existing is
    /// [`ArchiveError::AlreadyComplete`].
    pub fn install(mut prepared: PreparedSegment) -> Result<Self, ArchiveError> {
        let (dir, timeline, segno) = (prepared.dir.clone(), prepared.timeline, prepared.segno);
        let (segment_size, sync) = (prepared.segment_size, prepared.sync);
        let at = SegmentAt::new(&dir, timeline, segno, segment_size, sync)?;
        let (final_path, path) = (at.final_path(), at.partial_path());
        if existing_partial_size(&final_path, &path)?.is_some() {
            drop(prepared);
            return SegmentWriter::open(&dir, timeline, segno, segment_size, sync);
        }
        durable::rename(&prepared.tmp, &path, Site::Install)?;
        let Some(file) = prepared.file.take() else {
            // A PreparedSegment always holds its file until it is installed.
            return Err(ArchiveError::io(
                &prepared.tmp,
                std::io::Error::other("prepared segment has no open file"),
            ));
        };
        tracing::debug!(path = %path.display(), "installed prepared segment");
        Ok(at.writer(file, path, final_path, Origin::Installed))
    }

    fn check_poisoned(&self) -> Result<(), ArchiveError> {
        if self.poisoned {
            return Err(ArchiveError::Poisoned {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// Writes `data` at `offset` inside the segment (offset + len ≤ segment size).
    ///
    /// An out-of-bounds request is refused with [`ArchiveError::OutOfSegment`]
    /// and writes nothing. A failed write poisons the writer: what reached the
    /// file is unknown, so the session must re-stream.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), ArchiveError> {
        self.check_poisoned()?;
        let len = data.len() as u64;
        let end = match offset.checked_add(len) {
            Some(end) if end <= self.id.segment_size => end,
            _ => {
                return Err(ArchiveError::OutOfSegment {
                    path: self.path.clone(),
                    offset,
                    len,
                    segment_size: self.id.segment_size,
                })
            }
        };
        self.write_unchecked(offset, data, Site::Wal)?;
        if offset <= self.written {
            self.written = self.written.max(end);
        }
        if self.direct && self.sync {
            self.start_writeback();
        }
        Ok(())
    }

    /// The pwrite itself (bounds already checked); poisons on failure: what
    /// reached the file is unknown.
    fn write_unchecked(
        &mut self,
        offset: u64,
        data: &[u8],
        site: Site,
    ) -> Result<(), ArchiveError> {
        if let Err(e) = durable::write_at(&self.file, &self.path, offset, data, site) {
            self.poisoned = true;
            return Err(e);
        }
        self.dirty = true;
        Ok(())
    }

    /// A direct segment is fdatasynced only once complete: ask the kernel to
    /// start writing it back every few MB meanwhile, so that the disk works
    /// while the stream goes on and the final fdatasync has little left to
    /// wait for. Only a hint (no durability is assumed from it); errors are
    /// left to the fdatasync.
    fn start_writeback(&mut self) {
        const WRITEBACK_EVERY: u64 = 2 << 20;
        if self.written < self.writeback_requested + WRITEBACK_EVERY {
            return;
        }
        durable::start_writeback(
            &self.file,
            self.writeback_requested,
            self.written - self.writeback_requested,
        );
        self.writeback_requested = self.written;
    }

    /// Makes everything written so far durable: fdatasync when bytes were
    /// written since the last one, and the directory fsync an installed
    /// segment's name still needs. No-op without `sync`. An error poisons the
    /// writer: it is never retried on this descriptor and every later call
    /// fails.
    pub fn sync(&mut self) -> Result<(), ArchiveError> {
        self.check_poisoned()?;
        if !self.sync {
            return Ok(());
        }
        if self.dirty {
            self.datasync(Site::Wal)?;
        }
        if !self.name_durable {
            if let Err(e) = durable::fsync_dir(&self.dir, Site::Wal) {
                self.poisoned = true;
                return Err(e);
            }
            self.name_durable = true;
        }
        Ok(())
    }

    /// Whether bytes were written since the last fdatasync.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The fdatasync itself; poisons on failure.
    fn datasync(&mut self, site: Site) -> Result<(), ArchiveError> {
        let started = std::time::Instant::now();
        let result = durable::fdatasync(&self.file, &self.path, site);
        super::observe::fdatasync_done(started.elapsed());
        match result {
            Ok(()) => self.dirty = false,
            Err(_) => self.poisoned = true,
        }
        result
    }

    /// The segment is complete: fsync (unless nothing was written since the
    /// last [`SegmentWriter::sync`]), rename `NAME.partial` to `NAME`, fsync the
    /// directory. Returns the final path.
    ///
    /// Refused with [`ArchiveError::IncompleteSegment`] unless every byte from
    /// offset 0 to the segment end was written through this writer; the file
    /// then keeps its `.partial` name. With `sync == false` this is a plain
    /// rename.
    pub fn complete(mut self) -> Result<PathBuf, ArchiveError> {
        self.check_poisoned()?;
        if self.written != self.id.segment_size {
            return Err(ArchiveError::IncompleteSegment {
                path: self.path.clone(),
                written: self.written,
                expected: self.id.segment_size,
            });
        }
        if self.sync && self.dirty {
            self.datasync(Site::Complete)?;
        }
        durable::rename(&self.path, &self.final_path, Site::Complete)?;
        if self.sync {
            // The name in doubt is the segment's: the next session streams
            // it again (see `super::taint`).
            durable::fsync_dir(&self.dir, Site::Complete).map_err(|e| match e {
                ArchiveError::Fsync { path, source } => ArchiveError::RenameNotDurable {
                    path: self.final_path.clone(),
                    dir: path,
                    source,
                },
                other => other,
            })?;
        }
        tracing::debug!(path = %self.final_path.display(), "segment complete");
        Ok(self.final_path)
    }

    /// Stop writing but keep the `.partial` (fsynced when `sync`).
    ///
    /// A poisoned writer is closed without fsync and returns
    /// [`ArchiveError::Poisoned`].
    pub fn close_partial(mut self) -> Result<(), ArchiveError> {
        if self.direct {
            return self.close_direct_as_partial();
        }
        self.sync()?;
        tracing::info!(
            "not renaming \"{}\", segment is not complete",
            self.path.display()
        );
        Ok(())
    }

    /// A direct segment closed before it is complete becomes an ordinary
    /// `.partial`: padded with zeros to the segment size, fsynced, renamed,
    /// directory fsynced.
    fn close_direct_as_partial(mut self) -> Result<(), ArchiveError> {
        self.check_poisoned()?;
        let zeros = vec![0u8; PAD_BLOCK];
        let mut offset = self.written;
        while offset < self.id.segment_size {
            // Bounded by PAD_BLOCK, so the cast cannot truncate.
            let n = (self.id.segment_size - offset).min(PAD_BLOCK as u64) as usize;
            self.write_unchecked(offset, &zeros[..n], Site::ClosePartial)?;
            offset += n as u64;
        }
        if self.sync && self.dirty {
            self.datasync(Site::ClosePartial)?;
        }
        let partial = self.final_path.with_file_name(format!(
            "{}{PARTIAL_SUFFIX}",
            wal_file_name(self.id.timeline, self.id.segno, self.id.segment_size)
        ));
        durable::rename(&self.path, &partial, Site::ClosePartial)?;
        if self.sync {
            durable::fsync_dir(&self.dir, Site::ClosePartial)?;
        }
        tracing::info!(
            "not renaming \"{}\", segment is not complete",
            partial.display()
        );
        Ok(())
    }

    /// Whether this segment is written direct (see the module doc): nothing
    /// in it is durable under a WAL name before [`SegmentWriter::complete`].
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The file's current name (`NAME.partial`, or `NAME.partial.tmp` when
    /// written direct).
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The name the file gets once complete (`NAME`).
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }
    /// Which segment this is.
    pub fn id(&self) -> SegmentId {
        self.id
    }
    /// Whether fsyncs are done (`false` with `--no-sync`).
    pub fn sync_enabled(&self) -> bool {
        self.sync
    }
    /// Length of the prefix `[0, n)` written through this writer so far.
    pub fn written(&self) -> u64 {
        self.written
    }
    /// Whether an earlier fsync or write failed.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }
}

/// The size of an existing `NAME.partial` (`None` when there is none), after
/// checking that the complete `NAME` does not exist
/// ([`ArchiveError::AlreadyComplete`]).
fn existing_partial_size(final_path: &Path, path: &Path) -> Result<Option<u64>, ArchiveError> {
    match std::fs::symlink_metadata(final_path) {
        Ok(_) => {
            return Err(ArchiveError::AlreadyComplete {
                path: final_path.to_path_buf(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ArchiveError::io(final_path, e)),
    }
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => Err(ArchiveError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        )),
        Ok(m) => Ok(Some(m.len())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ArchiveError::io(path, e)),
    }
}

/// Reopens a full-size `.partial` for writing (no truncation). With `sync` it is
/// fsynced first, and the directory too: an earlier run may have crashed before
/// either reached the disk, and we are about to trust this file's name.
fn reopen_partial(dir: &Path, path: &Path, sync: bool) -> Result<File, ArchiveError> {
    let file = durable::open_for_write(path, Site::Startup)?;
    if sync {
        // On failure the file is left in place (pg_receivewal deletes it): it is
        // re-streamed from offset 0 by the next session anyway, and deleting
        // could only lose bytes that might still be good.
        durable::fsync(&file, path, Site::Startup)?;
        durable::fsync_dir(dir, Site::Startup)?;
    }
    tracing::debug!(path = %path.display(), "reusing existing pre-padded partial segment");
    Ok(file)
}

/// Creates `NAME.partial` through `NAME.partial.tmp`, zero-padded to
/// `segment_size`. The temporary is removed on any failure.
fn create_padded(
    dir: &Path,
    name: &str,
    path: &Path,
    segment_size: u64,
    sync: bool,
) -> Result<File, ArchiveError> {
    let tmp = dir.join(format!("{name}{PARTIAL_SUFFIX}{TMP_SUFFIX}"));
    let result = create_padded_tmp(&tmp, segment_size, sync).and_then(|file| {
        durable::rename(&tmp, path, Site::Prepare)?;
        Ok(file)
    });
    let file = match result {
        Ok(file) => file,
        Err(e) => {
            durable::remove_quietly(&tmp);
            return Err(e);
        }
    };
    if sync {
        durable::fsync_dir(dir, Site::Prepare)?;
    }
    tracing::debug!(path = %path.display(), "created pre-padded partial segment");
    Ok(file)
}

fn create_padded_tmp(tmp: &Path, segment_size: u64, sync: bool) -> Result<File, ArchiveError> {
    let file = durable::create(tmp, Site::Prepare)?;
    let zeros = vec![0u8; PAD_BLOCK];
    let mut offset = 0u64;
    while offset < segment_size {
        // Bounded by PAD_BLOCK, so the cast cannot truncate.
        let n = (segment_size - offset).min(PAD_BLOCK as u64) as usize;
        durable::write_at(&file, tmp, offset, &zeros[..n], Site::Prepare)?;
        offset += n as u64;
    }
    if sync {
        durable::fsync(&file, tmp, Site::Prepare)?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const SEG: u64 = 1 << 20;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn seg_name(tli: TimeLineId, segno: SegNo) -> String {
        wal_file_name(tli, segno, SEG)
    }

    #[test]
    fn create_pads_to_full_size_without_leftover_tmp() {
        for sync in [true, false] {
            let tmp = tempfile::tempdir().unwrap();
            let w = SegmentWriter::open(tmp.path(), 1, 3, SEG, sync).unwrap();
            let partial = tmp.path().join(format!("{}.partial", seg_name(1, 3)));
            assert_eq!(w.path(), partial);
            assert_eq!(w.final_path(), tmp.path().join(seg_name(1, 3)));
            let id = SegmentId {
                timeline: 1,
                segno: 3,
                segment_size: SEG,
            };
            assert_eq!((w.id(), w.sync_enabled()), (id, sync));
            assert_eq!((id.start_lsn(), id.end_lsn()), (Lsn(3 * SEG), Lsn(4 * SEG)));
            assert_eq!(names(tmp.path()), [format!("{}.partial", seg_name(1, 3))]);
            let meta = std::fs::metadata(&partial).unwrap();
            assert_eq!(meta.len(), SEG);
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            assert!(std::fs::read(&partial).unwrap().iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn write_then_complete_renames() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(tmp.path(), 2, 0x1_0000_0005, SEG, true).unwrap();
        let data: Vec<u8> = (0..SEG).map(|i| (i % 251) as u8).collect();
        // Written in uneven pieces, with a sync in between.
        w.write_at(0, &data[..1000]).unwrap();
        w.sync().unwrap();
        w.write_at(1000, &data[1000..]).unwrap();
        assert_eq!(w.written(), SEG);
        let done = w.complete().unwrap();
        let name = seg_name(2, 0x1_0000_0005);
        assert_eq!(done, tmp.path().join(&name));
        assert_eq!(names(tmp.path()), [name]);
        assert_eq!(std::fs::read(&done).unwrap(), data);
    }

    #[test]
    fn complete_without_sync_is_a_plain_rename() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(tmp.path(), 1, 1, SEG, false).unwrap();
        w.write_at(0, &vec![7u8; SEG as usize]).unwrap();
        w.sync().unwrap(); // no-op
        w.complete().unwrap();
        assert_eq!(names(tmp.path()), [seg_name(1, 1)]);
    }

    #[test]
    fn complete_refuses_an_incomplete_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(tmp.path(), 1, 1, SEG, true).unwrap();
        w.write_at(0, &[1u8; 100]).unwrap();
        // A gap: the bytes after it do not count towards completeness.
        w.write_at(200, &vec![1u8; (SEG - 200) as usize]).unwrap();
        assert_eq!(w.written(), 100);
        let err = w.complete().unwrap_err();
        assert!(
            matches!(err, ArchiveError::IncompleteSegment { written: 100, .. }),
            "{err}"
        );
        assert_eq!(names(tmp.path()), [format!("{}.partial", seg_name(1, 1))]);
    }

    #[test]
    fn close_partial_keeps_the_name_and_reopen_reuses_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(tmp.path(), 1, 9, SEG, true).unwrap();
        w.write_at(0, b"first session").unwrap();
        w.close_partial().unwrap();
        let partial = tmp.path().join(format!("{}.partial", seg_name(1, 9)));
        assert_eq!(names(tmp.path()), [format!("{}.partial", seg_name(1, 9))]);

        // Reopen: no truncation, no re-padding; old bytes stay until overwritten.
        let mut w = SegmentWriter::open(tmp.path(), 1, 9, SEG, true).unwrap();
        let content = std::fs::read(&partial).unwrap();
        assert_eq!(content.len() as u64, SEG);
        assert_eq!(&content[..13], b"first session");
        w.write_at(0, b"second").unwrap();
        w.close_partial().unwrap();
        assert_eq!(&std::fs::read(&partial).unwrap()[..13], b"secondsession");
        assert_eq!(names(tmp.path()), [format!("{}.partial", seg_name(1, 9))]);
    }

    #[test]
    fn zero_byte_partial_is_replaced_by_a_padded_one() {
        let tmp = tempfile::tempdir().unwrap();
        let partial = tmp.path().join(format!("{}.partial", seg_name(1, 4)));
        File::create(&partial).unwrap();
        let w = SegmentWriter::open(tmp.path(), 1, 4, SEG, true).unwrap();
        assert_eq!(std::fs::metadata(&partial).unwrap().len(), SEG);
        assert_eq!(names(tmp.path()), [format!("{}.partial", seg_name(1, 4))]);
        drop(w);
    }

    #[test]
    fn wrong_sized_partial_is_refused_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let partial = tmp.path().join(format!("{}.partial", seg_name(1, 4)));
        std::fs::write(&partial, vec![1u8; 8192]).unwrap();
        let err = SegmentWriter::open(tmp.path(), 1, 4, SEG, true).unwrap_err();
        assert!(
            matches!(&err, ArchiveError::WrongSize { path, size: 8192, .. } if *path == partial),
            "{err}"
        );
        assert!(err.to_string().contains("should be 0 or"), "{err}");
        assert_eq!(std::fs::read(&partial).unwrap(), vec![1u8; 8192]);
        assert_eq!(names(tmp.path()).len(), 1);
    }

    #[test]
    fn existing_complete_segment_is_not_reopened() {
        let tmp = tempfile::tempdir().unwrap();
        let done = tmp.path().join(seg_name(1, 4));
        std::fs::write(&done, b"x").unwrap();
        let err = SegmentWriter::open(tmp.path(), 1, 4, SEG, true).unwrap_err();
        assert!(
            matches!(&err, ArchiveError::AlreadyComplete { path } if *path == done),
            "{err}"
        );
        assert_eq!(names(tmp.path()), [seg_name(1, 4)]);
    }

    #[test]
    fn invalid_arguments_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            SegmentWriter::open(tmp.path(), 1, 1, 0, true),
            Err(ArchiveError::InvalidSegmentSize { size: 0 })
        ));
        assert!(matches!(
            SegmentWriter::open(tmp.path(), 1, 1, SEG + 1, true),
            Err(ArchiveError::InvalidSegmentSize { .. })
        ));
        assert!(matches!(
            SegmentWriter::open(tmp.path(), 0, 1, SEG, true),
            Err(ArchiveError::InvalidTimeline { timeline: 0 })
        ));
        assert!(names(tmp.path()).is_empty());
    }

    #[test]
    fn write_out_of_bounds_is_an_error_not_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(tmp.path(), 1, 1, SEG, false).unwrap();
        for (offset, len) in [
            (SEG, 1usize),
            (SEG - 1, 2),
            (u64::MAX, 1),
            (0, SEG as usize + 1),
        ] {
            let err = w.write_at(offset, &vec![0u8; len]).unwrap_err();
            assert!(
                matches!(err, ArchiveError::OutOfSegment { .. }),
                "{offset}+{len}: {err}"
            );
        }
        // Not poisoned by a refused request; the last byte is writable.
        w.write_at(SEG - 1, &[1]).unwrap();
        w.write_at(SEG, &[]).unwrap();
        assert!(!w.is_poisoned());
    }

    #[cfg(feature = "failpoints")]
    use crate::archive::failpoints::ScopedFailpoint;

    #[test]
    #[cfg(feature = "failpoints")]
    fn fsync_failure_poisons_the_writer() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(tmp.path(), 1, 1, SEG, true).unwrap();
        w.write_at(0, b"abc").unwrap();
        let fault = ScopedFailpoint::new("wal-fdatasync", "EIO", tmp.path());
        let err = w.sync().unwrap_err();
        drop(fault);
        assert!(matches!(err, ArchiveError::Fsync { .. }), "{err}");
        assert!(w.is_poisoned());
        // Never retried: every later call fails without touching the file.
        assert!(matches!(w.sync(), Err(ArchiveError::Poisoned { .. })));
        assert!(matches!(
            w.write_at(3, b"d"),
            Err(ArchiveError::Poisoned { .. })
        ));
        assert!(matches!(
            w.close_partial(),
            Err(ArchiveError::Poisoned { .. })
        ));
        assert_eq!(names(tmp.path()), [format!("{}.partial", seg_name(1, 1))]);
    }

    #[test]
    #[cfg(feature = "failpoints")]
    fn fsync_failure_at_completion_keeps_the_partial_name() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(tmp.path(), 1, 1, SEG, true).unwrap();
        w.write_at(0, &vec![5u8; SEG as usize]).unwrap();
        let _fault = ScopedFailpoint::new("complete-fdatasync", "EIO", tmp.path());
        let err = w.complete().unwrap_err();
        assert!(matches!(err, ArchiveError::Fsync { .. }), "{err}");
        assert_eq!(names(tmp.path()), [format!("{}.partial", seg_name(1, 1))]);
    }

    #[test]
    #[cfg(feature = "failpoints")]
    fn padding_failure_leaves_no_file() {
        let tmp = tempfile::tempdir().unwrap();
        let fault = ScopedFailpoint::new("prepare-pwrite", "ENOSPC", tmp.path());
        let err = SegmentWriter::open(tmp.path(), 1, 1, 2 * SEG, true).unwrap_err();
        match &err {
            ArchiveError::Write { source, .. } => {
                assert_eq!(source.raw_os_error(), Some(libc::ENOSPC))
            }
            other => panic!("{other}"),
        }
        assert!(names(tmp.path()).is_empty(), "{:?}", names(tmp.path()));
        // A zero-byte partial from Barman's reset survives a failed padding.
        let partial = tmp.path().join(format!("{}.partial", seg_name(1, 1)));
        File::create(&partial).unwrap();
        assert!(SegmentWriter::open(tmp.path(), 1, 1, SEG, true).is_err());
        drop(fault);
        assert_eq!(names(tmp.path()), [format!("{}.partial", seg_name(1, 1))]);
        assert_eq!(std::fs::metadata(&partial).unwrap().len(), 0);
    }

    #[test]
    fn prepared_segment_is_padded_under_tmp_and_installed_by_rename() {
        let tmp = tempfile::tempdir().unwrap();
        let prepared = PreparedSegment::create(tmp.path(), 1, 6, SEG, true).unwrap();
        let tmp_name = format!("{}.partial.tmp", seg_name(1, 6));
        assert_eq!(names(tmp.path()), std::slice::from_ref(&tmp_name));
        assert_eq!(prepared.path(), tmp.path().join(&tmp_name));
        let meta = std::fs::metadata(prepared.path()).unwrap();
        assert_eq!(
            (meta.len(), meta.permissions().mode() & 0o777),
            (SEG, 0o600)
        );
        let mut w = SegmentWriter::install(prepared).unwrap();
        assert_eq!(names(tmp.path()), [format!("{}.partial", seg_name(1, 6))]);
        assert!(!w.name_durable, "the directory fsync is still owed");
        w.write_at(0, b"wal").unwrap();
        w.sync().unwrap();
        assert!(w.name_durable && !w.is_dirty());
        let content = std::fs::read(w.path()).unwrap();
        assert_eq!((&content[..3], content.len() as u64), (&b"wal"[..], SEG));
    }

    #[test]
    fn a_prepared_segment_dropped_unused_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let prepared = PreparedSegment::create(tmp.path(), 1, 6, SEG, false).unwrap();
        drop(prepared);
        assert!(names(tmp.path()).is_empty());
    }

    #[test]
    fn install_defers_to_an_existing_partial_and_refuses_a_complete_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let partial = tmp.path().join(format!("{}.partial", seg_name(1, 6)));
        std::fs::write(&partial, vec![9u8; SEG as usize]).unwrap();
        let prepared = PreparedSegment::create(tmp.path(), 1, 6, SEG, true).unwrap();
        let w = SegmentWriter::install(prepared).unwrap();
        assert_eq!(w.path(), partial);
        assert_eq!(std::fs::read(&partial).unwrap()[0], 9, "existing file kept");
        assert_eq!(names(tmp.path()), [format!("{}.partial", seg_name(1, 6))]);
        drop(w);

        std::fs::write(tmp.path().join(seg_name(1, 7)), b"x").unwrap();
        let prepared = PreparedSegment::create(tmp.path(), 1, 7, SEG, true).unwrap();
        let err = SegmentWriter::install(prepared).unwrap_err();
        assert!(matches!(err, ArchiveError::AlreadyComplete { .. }), "{err}");
        assert!(!names(tmp.path()).iter().any(|n| n.ends_with(".tmp")));
    }

    #[test]
    #[cfg(feature = "failpoints")]
    fn fsync_failure_while_preparing_leaves_no_file() {
        let tmp = tempfile::tempdir().unwrap();
        let fault = ScopedFailpoint::new("prepare-fsync", "EIO", tmp.path());
        let err = PreparedSegment::create(tmp.path(), 1, 6, SEG, true).unwrap_err();
        drop(fault);
        assert!(matches!(err, ArchiveError::Fsync { .. }), "{err}");
        assert!(names(tmp.path()).is_empty());
    }

    #[test]
    fn direct_segment_is_written_under_tmp_and_renamed_when_complete() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::create_direct(tmp.path(), 1, 6, SEG, true).unwrap();
        assert!(w.is_direct());
        let tmp_name = format!("{}.partial.tmp", seg_name(1, 6));
        assert_eq!(w.path(), tmp.path().join(&tmp_name));
        let data: Vec<u8> = (0..SEG).map(|i| (i % 253) as u8).collect();
        for (i, piece) in data.chunks(300_000).enumerate() {
            w.write_at((i * 300_000) as u64, piece).unwrap();
        }
        assert_eq!(std::fs::metadata(w.path()).unwrap().len(), SEG);
        assert_eq!(names(tmp.path()), std::slice::from_ref(&tmp_name));
        let done = w.complete().unwrap();
        assert_eq!(names(tmp.path()), [seg_name(1, 6)]);
        assert_eq!(std::fs::read(done).unwrap(), data);
    }

    #[test]
    fn direct_segment_closed_early_becomes_a_padded_partial() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::create_direct(tmp.path(), 1, 6, SEG, true).unwrap();
        w.write_at(0, &[7u8; 5000]).unwrap();
        assert_eq!(
            std::fs::metadata(w.path()).unwrap().len(),
            5000,
            "no padding"
        );
        w.close_partial().unwrap();
        let partial = tmp.path().join(format!("{}.partial", seg_name(1, 6)));
        assert_eq!(names(tmp.path()), [format!("{}.partial", seg_name(1, 6))]);
        let content = std::fs::read(partial).unwrap();
        assert_eq!(content.len() as u64, SEG);
        assert!(content[..5000].iter().all(|&b| b == 7));
        assert!(content[5000..].iter().all(|&b| b == 0));
    }

    #[test]
    fn direct_defers_to_an_existing_partial() {
        let tmp = tempfile::tempdir().unwrap();
        let partial = tmp.path().join(format!("{}.partial", seg_name(1, 6)));
        std::fs::write(&partial, vec![0u8; SEG as usize]).unwrap();
        let w = SegmentWriter::create_direct(tmp.path(), 1, 6, SEG, true).unwrap();
        assert!(!w.is_direct());
        assert_eq!(w.path(), partial);
    }
}
