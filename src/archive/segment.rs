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
//! A failed fsync (or write) poisons the writer: it is never retried on this
//! descriptor, every later call returns [`ArchiveError::Poisoned`], and the
//! session must end and re-stream from the last durable point.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::durable::{self, TMP_SUFFIX};
use super::scan::PARTIAL_SUFFIX;
use super::ArchiveError;
use crate::lsn::{is_valid_segment_size, segment_start_lsn, wal_file_name, Lsn, SegNo, TimeLineId};

/// Size of each zero block written while pre-padding.
const PAD_BLOCK: usize = 1 << 20;

/// An open `.partial` segment file.
#[derive(Debug)]
pub struct SegmentWriter {
    file: File,
    dir: PathBuf,
    /// `dir/NAME.partial` (the file's name while it is being written).
    path: PathBuf,
    /// `dir/NAME`, the name once complete.
    final_path: PathBuf,
    timeline: TimeLineId,
    segno: SegNo,
    segment_size: u64,
    sync: bool,
    /// End of the prefix `[0, written)` covered by writes through this writer.
    /// [`SegmentWriter::complete`] requires the whole segment.
    written: u64,
    /// Set by a failed fsync or write; every later call fails.
    poisoned: bool,
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
        if !is_valid_segment_size(segment_size) {
            return Err(ArchiveError::InvalidSegmentSize { size: segment_size });
        }
        if timeline == 0 {
            return Err(ArchiveError::InvalidTimeline { timeline });
        }
        let name = wal_file_name(timeline, segno, segment_size);
        let final_path = dir.join(&name);
        let path = dir.join(format!("{name}{PARTIAL_SUFFIX}"));

        match std::fs::symlink_metadata(&final_path) {
            Ok(_) => return Err(ArchiveError::AlreadyComplete { path: final_path }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ArchiveError::io(&final_path, e)),
        }

        let existing = match std::fs::metadata(&path) {
            Ok(m) if !m.is_file() => {
                return Err(ArchiveError::io(
                    &path,
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
                ))
            }
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(ArchiveError::io(&path, e)),
        };

        let file = match existing {
            Some(size) if size == segment_size => reopen_partial(dir, &path, sync)?,
            Some(0) | None => create_padded(dir, &name, &path, segment_size, sync)?,
            Some(size) => {
                return Err(ArchiveError::WrongSize {
                    path,
                    size,
                    expected: segment_size,
                })
            }
        };

        Ok(SegmentWriter {
            file,
            dir: dir.to_path_buf(),
            path,
            final_path,
            timeline,
            segno,
            segment_size,
            sync,
            written: 0,
            poisoned: false,
        })
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
            Some(end) if end <= self.segment_size => end,
            _ => {
                return Err(ArchiveError::OutOfSegment {
                    path: self.path.clone(),
                    offset,
                    len,
                    segment_size: self.segment_size,
                })
            }
        };
        if let Err(source) = self.file.write_all_at(data, offset) {
            self.poisoned = true;
            return Err(ArchiveError::Write {
                path: self.path.clone(),
                offset,
                source,
            });
        }
        if offset <= self.written {
            self.written = self.written.max(end);
        }
        Ok(())
    }

    /// fdatasync (no-op without `sync`). An error poisons the writer: it is never
    /// retried on this descriptor and every later call fails.
    pub fn sync(&mut self) -> Result<(), ArchiveError> {
        self.check_poisoned()?;
        if !self.sync {
            return Ok(());
        }
        self.datasync()
    }

    /// The fdatasync itself; poisons on failure.
    fn datasync(&mut self) -> Result<(), ArchiveError> {
        #[cfg(test)]
        let result = match failpoints::take_datasync_failure() {
            Some(source) => Err(ArchiveError::Fsync {
                path: self.path.clone(),
                source,
            }),
            None => durable::fdatasync(&self.file, &self.path),
        };
        #[cfg(not(test))]
        let result = durable::fdatasync(&self.file, &self.path);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// The segment is complete: fsync, rename `NAME.partial` to `NAME`, fsync the
    /// directory. Returns the final path.
    ///
    /// Refused with [`ArchiveError::IncompleteSegment`] unless every byte from
    /// offset 0 to the segment end was written through this writer; the file
    /// then keeps its `.partial` name. With `sync == false` this is a plain
    /// rename.
    pub fn complete(mut self) -> Result<PathBuf, ArchiveError> {
        self.check_poisoned()?;
        if self.written != self.segment_size {
            return Err(ArchiveError::IncompleteSegment {
                path: self.path.clone(),
                written: self.written,
                expected: self.segment_size,
            });
        }
        if self.sync {
            self.datasync()?;
        }
        // Rename while the descriptor is still open: harmless, and it keeps the
        // file's data tied to this (already fsynced) descriptor until the end.
        durable::rename(&self.path, &self.final_path)?;
        if self.sync {
            durable::fsync_dir(&self.dir)?;
        }
        tracing::debug!(path = %self.final_path.display(), "segment complete");
        Ok(self.final_path)
    }

    /// Stop writing but keep the `.partial` (fsynced when `sync`).
    ///
    /// A poisoned writer is closed without fsync and returns
    /// [`ArchiveError::Poisoned`].
    pub fn close_partial(mut self) -> Result<(), ArchiveError> {
        self.check_poisoned()?;
        if self.sync {
            self.datasync()?;
        }
        tracing::info!(
            "not renaming \"{}\", segment is not complete",
            self.path.display()
        );
        Ok(())
    }

    /// The file's current name (`NAME.partial`).
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The name the file gets once complete (`NAME`).
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }
    pub fn timeline(&self) -> TimeLineId {
        self.timeline
    }
    pub fn segno(&self) -> SegNo {
        self.segno
    }
    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }
    /// Whether fsyncs are done (`false` with `--no-sync`).
    pub fn sync_enabled(&self) -> bool {
        self.sync
    }
    /// LSN of the segment's first byte.
    pub fn start_lsn(&self) -> Lsn {
        segment_start_lsn(self.segno, self.segment_size)
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

/// Reopens a full-size `.partial` for writing (no truncation). With `sync` it is
/// fsynced first, and the directory too: an earlier run may have crashed before
/// either reached the disk, and we are about to trust this file's name.
fn reopen_partial(dir: &Path, path: &Path, sync: bool) -> Result<File, ArchiveError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| ArchiveError::io(path, e))?;
    if sync {
        // On failure the file is left in place (pg_receivewal deletes it): it is
        // re-streamed from offset 0 by the next session anyway, and deleting
        // could only lose bytes that might still be good.
        file.sync_all().map_err(|source| ArchiveError::Fsync {
            path: path.to_path_buf(),
            source,
        })?;
        durable::fsync_dir(dir)?;
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
        durable::rename(&tmp, path)?;
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
        durable::fsync_dir(dir)?;
    }
    tracing::debug!(path = %path.display(), "created pre-padded partial segment");
    Ok(file)
}

fn create_padded_tmp(tmp: &Path, segment_size: u64, sync: bool) -> Result<File, ArchiveError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| ArchiveError::io(tmp, e))?;
    let zeros = vec![0u8; PAD_BLOCK];
    let mut offset = 0u64;
    while offset < segment_size {
        // Bounded by PAD_BLOCK, so the cast cannot truncate.
        let n = (segment_size - offset).min(PAD_BLOCK as u64) as usize;
        #[cfg(test)]
        let result = match failpoints::pad_failure(offset) {
            Some(e) => Err(e),
            None => file.write_all_at(&zeros[..n], offset),
        };
        #[cfg(not(test))]
        let result = file.write_all_at(&zeros[..n], offset);
        result.map_err(|source| ArchiveError::Write {
            path: tmp.to_path_buf(),
            offset,
            source,
        })?;
        offset += n as u64;
    }
    if sync {
        file.sync_all().map_err(|source| ArchiveError::Fsync {
            path: tmp.to_path_buf(),
            source,
        })?;
    }
    Ok(file)
}

/// Test-only fault injection, per test thread (each `#[test]` runs on its own
/// thread, so tests do not see each other's faults).
#[cfg(test)]
pub(crate) mod failpoints {
    use std::cell::Cell;

    thread_local! {
        static DATASYNC_FAIL: Cell<bool> = const { Cell::new(false) };
        static PAD_FAIL_AT: Cell<Option<u64>> = const { Cell::new(None) };
    }

    /// The next fdatasync of a segment writer on this thread fails with EIO.
    pub(crate) fn fail_next_datasync() {
        DATASYNC_FAIL.with(|c| c.set(true));
    }

    /// Pre-padding on this thread fails with ENOSPC at the first block at or
    /// after `offset`.
    pub(crate) fn fail_padding_at(offset: Option<u64>) {
        PAD_FAIL_AT.with(|c| c.set(offset));
    }

    pub(super) fn take_datasync_failure() -> Option<std::io::Error> {
        DATASYNC_FAIL
            .with(|c| c.replace(false))
            .then(|| std::io::Error::from_raw_os_error(libc::EIO))
    }

    pub(super) fn pad_failure(offset: u64) -> Option<std::io::Error> {
        PAD_FAIL_AT.with(|c| match c.get() {
            Some(at) if offset >= at => Some(std::io::Error::from_raw_os_error(libc::ENOSPC)),
            _ => None,
        })
    }
}
