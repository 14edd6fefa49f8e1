//! The compressed segment writer (`-Z gzip|lz4|zstd`): one
//! `NAME.gz.partial` (`.lz4.partial`, `.zst.partial`) written sequentially
//! through an encoder, renamed to `NAME.gz` once the whole segment went
//! through it, as pg_receivewal's `walmethods.c` names and writes them.
//!
//! Lifecycle of a compressed segment file:
//!
//! 1. A new segment: `NAME.gz.partial` is created empty (mode 0600): no
//!    pre-padding (a compressed file has no fixed size, so nothing is gained
//!    by it). Its directory entry becomes durable with the first
//!    [`CompressedWriter::sync`].
//!
//!    A segment whose `NAME.gz.partial` exists (an earlier session stopped in
//!    it, and the WAL it holds may have been acknowledged) is streamed again
//!    from its start, **aside**: into `NAME.gz.partial.tmp`, never into the
//!    old file. The new stream **replaces the old file only once it holds at
//!    least as much WAL**: at the first [`CompressedWriter::sync`] (or the
//!    completion) where the uncompressed bytes written reach what the old
//!    file decodes to (measured once, at open, by decoding it through a
//!    small buffer: [`decodable_len`]), the aside file, fdatasynced, is
//!    renamed over the old one and the directory fsynced before the sync
//!    returns. Until then:
//!    - the WAL name holds the old file, untouched. kill -9 at any instant
//!      leaves under the WAL name either the old file or the new one, at
//!      least as long, never less; the `.tmp` left beside it is removed by
//!      the next start ([`super::ArchiveDir::open`]) and ignored by Barman,
//!      `restore`, `verify`, `status` and `cleanup`;
//!    - nothing written aside counts as written or flushed
//!      ([`SegmentSink::is_aside`]): the sink reports none of it. Reporting
//!      it on the strength of the old file would acknowledge bytes the old
//!      file may not hold identically (divergent WAL); and it buys nothing:
//!      the old file's WAL was acknowledged before, so a commit waiting now
//!      waits for WAL past its end, which the server sends right after;
//!    - a session that ends first (`--endpos`, a signal, the end of its
//!      timeline, an error) drops the aside file and the old one stays
//!      ([`CompressedWriter::close_partial`] says which).
//!
//!    Why aside rather than carrying the old file's WAL over into the new
//!    stream (decode it, re-encode it, stream on): the writer stays
//!    append-only from offset 0 (the server sends the segment again from its
//!    start anyway), nothing is decompressed into memory nor compressed
//!    twice before the session can start, and no received byte has to be
//!    compared with the old file's. The price: the old file is decoded once
//!    to measure it, and one rename and directory fsync per resumed segment.
//!    (pg_receivewal writes the new stream over the old one in place,
//!    without truncating: a crash in between leaves a mix of both.)
//! 2. WAL goes through the encoder in order (the uncompressed position is
//!    counted here). **Flush rule**: [`CompressedWriter::sync`] first flushes
//!    the encoder into the file (gzip `Z_SYNC_FLUSH`, an lz4 block, a zstd
//!    flush), then fdatasyncs it; only then may the session report the WAL
//!    as flushed. Bytes still inside the encoder are not in the file, so the
//!    sink does not count them as written either ([`SegmentSink::buffers`]).
//! 3. Once the whole segment was written: the stream is finished (gzip's
//!    trailer with CRC and size, lz4's end mark, zstd's last block),
//!    fdatasynced, renamed to `NAME.gz`, and the directory fsynced.
//!    Closed before that ([`CompressedWriter::close_partial`]), the stream is
//!    finished too (as pg_receivewal's `gzclose`/`LZ4F_compressEnd` do) and
//!    the file keeps its `.partial` name.
//!
//! All file IO goes through [`super::durable`] (and its failpoints). A failed
//! write, flush or fdatasync poisons the writer, as for plain segments.
//!
//! lz4: `lz4_flex` has one compression level (lz4's fast mode); the levels
//! pg_receivewal accepts (1 to 12) are accepted and have no effect.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::compress_spec::CompressionSpec;
use super::durable::{self, Site, TMP_SUFFIX};
use super::inspect::decodable_len;
use super::names::{segment_file_name, Compression, SegmentName};
use super::segment::{SegmentId, SegmentWriter};
use super::ArchiveError;
use crate::lsn::{is_valid_segment_size, wal_file_name, Lsn, SegNo, TimeLineId};

/// The file under an encoder: appends through [`durable::write_at`], and
/// keeps the archive error behind a failed write (the encoder only passes
/// `io::Error`s on).
struct FileOut {
    file: File,
    path: PathBuf,
    offset: u64,
    error: Option<ArchiveError>,
    /// Set when the writer is dropped: an encoder that finishes its stream
    /// on drop (gzip does) must not write into a file nobody will sync.
    discard: bool,
}

impl FileOut {
    fn fail(&mut self, e: ArchiveError) -> std::io::Error {
        let io = std::io::Error::other(e.to_string());
        self.error = Some(e);
        io
    }
}

impl Write for FileOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.discard {
            return Ok(buf.len());
        }
        if let Err(e) = durable::write_at(&self.file, &self.path, self.offset, buf, Site::Wal) {
            return Err(self.fail(e));
        }
        self.offset += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One encoder per method.
enum Encoder {
    Gzip(flate2::write::GzEncoder<FileOut>),
    Lz4(lz4_flex::frame::FrameEncoder<FileOut>),
    Zstd(zstd::stream::write::Encoder<'static, FileOut>),
}

impl Encoder {
    fn new(spec: CompressionSpec, out: FileOut) -> std::io::Result<Encoder> {
        let level = spec.effective_level();
        Ok(match spec.method {
            Compression::Gzip => {
                // Levels are checked to be 1..=9 by the spec parser.
                let level = flate2::Compression::new(level.clamp(0, 9) as u32);
                Encoder::Gzip(flate2::write::GzEncoder::new(out, level))
            }
            Compression::Lz4 => {
                let info = lz4_flex::frame::FrameInfo::new().content_checksum(true);
                Encoder::Lz4(lz4_flex::frame::FrameEncoder::with_frame_info(info, out))
            }
            Compression::None => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a compressed writer needs a compression method",
                ))
            }
            Compression::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(out, level)?;
                encoder.include_checksum(true)?;
                Encoder::Zstd(encoder)
            }
        })
    }

    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Lz4(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write_all(data),
        }
    }

    /// Pushes everything written so far into the file, decodable.
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Lz4(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }

    /// Ends the stream (trailer) and gives the file back.
    fn finish(self) -> std::io::Result<FileOut> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Lz4(e) => e.finish().map_err(std::io::Error::other),
            Encoder::Zstd(e) => e.finish(),
        }
    }

    fn out(&mut self) -> &mut FileOut {
        match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Lz4(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        }
    }
}

/// Compresses `data` whole (a history file), as [`CompressedWriter`] would.
pub fn compress_all(spec: CompressionSpec, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let compressed = match spec.method {
        Compression::None => return Ok(data.to_vec()),
        Compression::Gzip => {
            let level = flate2::Compression::new(spec.effective_level().clamp(0, 9) as u32);
            let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
            e.write_all(data)?;
            e.finish()?
        }
        Compression::Lz4 => {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(data)?;
            e.finish().map_err(std::io::Error::other)?
        }
        Compression::Zstd => zstd::stream::encode_all(data, spec.effective_level())?,
    };
    Ok(compressed)
}

/// An open compressed segment file being written (see the module doc).
pub struct CompressedWriter {
    /// `None` once the stream was finished (or a finish failed).
    encoder: Option<Encoder>,
    compression: Compression,
    dir: PathBuf,
    /// The file written: `dir/NAME.gz.partial` (or `.lz4`, `.zst`), or
    /// `dir/NAME.gz.partial.tmp` while written aside.
    path: PathBuf,
    /// `dir/NAME.gz.partial`
    partial_path: PathBuf,
    /// `dir/NAME.gz`
    final_path: PathBuf,
    /// Written aside: the uncompressed length of the old `NAME.gz.partial`,
    /// which the new stream replaces once it has written as much (see the
    /// module documentation).
    aside: Option<u64>,
    /// Which segment this is (timeline, number, size).
    id: SegmentId,
    sync: bool,
    /// Uncompressed bytes written from offset 0.
    written: u64,
    poisoned: bool,
    /// Bytes were given to the encoder since its last flush.
    buffered: bool,
    /// Bytes reached the file since the last fdatasync.
    dirty: bool,
    /// The directory entry is known to be durable.
    name_durable: bool,
}

impl std::fmt::Debug for CompressedWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompressedWriter")
            .field("path", &self.path)
            .field("aside", &self.aside)
            .field("written", &self.written)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl CompressedWriter {
    /// Opens segment `segno` for writing from offset 0 with `spec`'s method:
    /// creates `NAME.gz.partial`, or, when it exists, `NAME.gz.partial.tmp`
    /// to replace it once as long (see the module documentation).
    /// [`ArchiveError::AlreadyComplete`] when the segment exists complete
    /// under any compression.
    pub fn open(
        dir: &Path,
        timeline: TimeLineId,
        segno: SegNo,
        segment_size: u64,
        sync: bool,
        spec: CompressionSpec,
    ) -> Result<CompressedWriter, ArchiveError> {
        if !is_valid_segment_size(segment_size) {
            return Err(ArchiveError::InvalidSegmentSize { size: segment_size });
        }
        let name = wal_file_name(timeline, segno, segment_size);
        let Some(seg) = SegmentName::parse(&name) else {
            return Err(ArchiveError::InvalidTimeline { timeline });
        };
        if spec.method == Compression::None {
            return Err(ArchiveError::io(
                dir.join(&name),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a compressed writer needs a compression method",
                ),
            ));
        }
        refuse_complete(dir, &seg)?;
        let partial_path = dir.join(segment_file_name(&seg, spec.method, true));
        let aside = old_partial_len(&partial_path, spec.method, segment_size)?;
        let path = match aside {
            Some(old) => {
                let mut tmp = partial_path.clone().into_os_string();
                tmp.push(TMP_SUFFIX);
                tracing::debug!(
                    path = %partial_path.display(), old_bytes = old,
                    "streaming the segment again beside its existing partial file, which it replaces once as long"
                );
                PathBuf::from(tmp)
            }
            None => partial_path.clone(),
        };
        let file = durable::create(&path, Site::Wal)?;
        let out = FileOut {
            file,
            path: path.clone(),
            offset: 0,
            error: None,
            discard: false,
        };
        let encoder = Encoder::new(spec, out).map_err(|e| ArchiveError::io(&path, e))?;
        Ok(CompressedWriter {
            encoder: Some(encoder),
            compression: spec.method,
            dir: dir.to_path_buf(),
            final_path: dir.join(segment_file_name(&seg, spec.method, false)),
            path,
            partial_path,
            aside,
            id: SegmentId {
                timeline,
                segno,
                segment_size,
            },
            sync,
            written: 0,
            poisoned: false,
            buffered: false,
            dirty: false,
            // An aside file's own name never needs to be durable: the
            // rename that replaces the old file is followed by a
            // directory fsync.
            name_durable: aside.is_some() || !sync,
        })
    }

    fn check_poisoned(&self) -> Result<(), ArchiveError> {
        if self.poisoned || self.encoder.is_none() {
            return Err(ArchiveError::Poisoned {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// The archive error behind a failed encoder call; poisons the writer.
    fn failed(&mut self, e: std::io::Error) -> ArchiveError {
        self.poisoned = true;
        let stashed = self.encoder.as_mut().and_then(|enc| enc.out().error.take());
        stashed.unwrap_or_else(|| ArchiveError::Write {
            path: self.path.clone(),
            offset: self.written,
            source: e,
        })
    }

    /// Compresses `data`, which must continue the segment at `offset`
    /// (== the uncompressed bytes written so far); the encoder may keep it
    /// in memory until [`CompressedWriter::sync`].
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), ArchiveError> {
        self.check_poisoned()?;
        let len = data.len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= self.id.segment_size => {}
            _ => {
                return Err(ArchiveError::OutOfSegment {
                    path: self.path.clone(),
                    offset,
                    len,
                    segment_size: self.id.segment_size,
                })
            }
        }
        if offset != self.written {
            return Err(ArchiveError::NotSequential {
                path: self.path.clone(),
                offset,
                written: self.written,
            });
        }
        if data.is_empty() {
            return Ok(());
        }
        let result = match self.encoder.as_mut() {
            Some(encoder) => encoder.write_all(data),
            None => Ok(()),
        };
        if let Err(e) = result {
            return Err(self.failed(e));
        }
        self.written += len;
        self.buffered = true;
        Ok(())
    }

    /// The flush rule: the encoder is flushed into the file, then (with
    /// `sync`) the file fdatasynced and a new name's directory fsynced. After
    /// it returns, everything written is durable (or at least in the file
    /// with `--no-sync`), and under the WAL name unless the writer is still
    /// aside ([`CompressedWriter::is_aside`]): an aside file that reached the
    /// old file's length has replaced it.
    pub fn sync(&mut self) -> Result<(), ArchiveError> {
        self.check_poisoned()?;
        if self.buffered {
            let result = match self.encoder.as_mut() {
                Some(encoder) => encoder.flush(),
                None => Ok(()),
            };
            if let Err(e) = result {
                return Err(self.failed(e));
            }
            self.buffered = false;
            self.dirty = true;
        }
        self.make_durable(Site::Wal)?;
        if self.caught_up() {
            self.replace_old()?;
        }
        Ok(())
    }

    /// Whether the aside file holds at least as much WAL as the old file
    /// it is to replace (and some: a writer that wrote nothing leaves the
    /// old file as it is).
    fn caught_up(&self) -> bool {
        self.aside
            .is_some_and(|old| self.written > 0 && self.written >= old)
    }

    /// Renames the aside file (fdatasynced by the caller) over the old
    /// `NAME.gz.partial`, then fsyncs the directory: from then on the WAL
    /// name holds the new stream. Poisons on failure (the old file stays
    /// under the WAL name if the rename itself failed).
    fn replace_old(&mut self) -> Result<(), ArchiveError> {
        if let Err(e) = durable::rename(&self.path, &self.partial_path, Site::Install) {
            self.poisoned = true;
            return Err(e);
        }
        self.path = self.partial_path.clone();
        self.aside = None;
        if self.sync {
            if let Err(e) = durable::fsync_dir(&self.dir, Site::Install) {
                self.poisoned = true;
                return Err(e);
            }
        }
        tracing::debug!(path = %self.path.display(), "the new stream replaced the old partial file");
        Ok(())
    }

    /// fdatasync after a flush or finish, and the directory fsync a new
    /// name still owes. Poisons on failure.
    fn make_durable(&mut self, site: Site) -> Result<(), ArchiveError> {
        if !self.sync {
            return Ok(());
        }
        if self.dirty {
            let file = match self.encoder.as_mut() {
                Some(encoder) => &encoder.out().file,
                None => return Ok(()),
            };
            let started = std::time::Instant::now();
            let result = durable::fdatasync(file, &self.path, site);
            super::observe::fdatasync_done(started.elapsed());
            if let Err(e) = result {
                self.poisoned = true;
                return Err(e);
            }
            self.dirty = false;
        }
        if !self.name_durable {
            if let Err(e) = durable::fsync_dir(&self.dir, site) {
                self.poisoned = true;
                return Err(e);
            }
            self.name_durable = true;
        }
        Ok(())
    }

    /// Finishes the stream (trailer) and fdatasyncs the file; the writer
    /// keeps the file for the rename.
    fn finish(&mut self, site: Site) -> Result<File, ArchiveError> {
        self.check_poisoned()?;
        let Some(encoder) = self.encoder.take() else {
            return Err(ArchiveError::Poisoned {
                path: self.path.clone(),
            });
        };
        let mut out = match encoder.finish() {
            Ok(out) => out,
            Err(e) => {
                self.poisoned = true;
                return Err(ArchiveError::Write {
                    path: self.path.clone(),
                    offset: self.written,
                    source: e,
                });
            }
        };
        if let Some(e) = out.error.take() {
            self.poisoned = true;
            return Err(e);
        }
        if self.sync {
            if let Err(e) = durable::fdatasync(&out.file, &self.path, site) {
                self.poisoned = true;
                return Err(e);
            }
        }
        Ok(out.file)
    }

    /// The segment is complete: finish the stream, fdatasync, rename
    /// `NAME.gz.partial` to `NAME.gz`, fsync the directory. Returns the
    /// final path. [`ArchiveError::IncompleteSegment`] unless the whole
    /// segment was written.
    pub fn complete(mut self) -> Result<PathBuf, ArchiveError> {
        self.check_poisoned()?;
        if self.written != self.id.segment_size {
            return Err(ArchiveError::IncompleteSegment {
                path: self.path.clone(),
                written: self.written,
                expected: self.id.segment_size,
            });
        }
        let _file = self.finish(Site::Complete)?;
        // The whole segment is at least as long as any old file.
        if self.aside.is_some() {
            self.replace_old()?;
        }
        durable::rename(&self.path, &self.final_path, Site::Complete)?;
        if self.sync {
            durable::fsync_dir(&self.dir, Site::Complete)?;
        }
        tracing::debug!(path = %self.final_path.display(), "compressed segment complete");
        Ok(self.final_path.clone())
    }

    /// Stops writing: the stream is finished (a complete gzip/lz4/zstd
    /// stream of what was written) and fdatasynced, and the file keeps its
    /// `.partial` name. A writer that wrote nothing leaves the file as it
    /// found it, and so does one written aside that did not reach the old
    /// file's length: its stream is dropped (see the module documentation).
    ///
    /// Returns whether what was written is now under the WAL name (false:
    /// the old file was kept, and nothing written here may be reported).
    pub fn close_partial(mut self) -> Result<bool, ArchiveError> {
        self.check_poisoned()?;
        if let Some(old) = self.aside.filter(|_| !self.caught_up()) {
            if self.written > 0 {
                tracing::info!(
                    "keeping \"{}\" ({old} bytes of WAL): the new stream of its segment ended after {} bytes",
                    self.partial_path.display(),
                    self.written
                );
            }
            // Dropped: the aside file is removed.
            return Ok(false);
        }
        if self.written == 0 {
            self.make_durable(Site::ClosePartial)?;
            return Ok(true);
        }
        let _file = self.finish(Site::ClosePartial)?;
        if self.aside.is_some() {
            self.replace_old()?;
        } else if self.sync && !self.name_durable {
            durable::fsync_dir(&self.dir, Site::ClosePartial)?;
        }
        tracing::info!(
            "not renaming \"{}\", segment is not complete",
            self.path.display()
        );
        Ok(true)
    }

    /// Whether the writer writes aside, beside an old `NAME.gz.partial` it
    /// has not replaced yet: nothing it wrote is under the WAL name.
    pub fn is_aside(&self) -> bool {
        self.aside.is_some()
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }
    /// The file's current name: `NAME.gz.partial`, or
    /// `NAME.gz.partial.tmp` while aside.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The name once complete (`NAME.gz`).
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }
    /// Which segment this is.
    pub fn id(&self) -> SegmentId {
        self.id
    }
    /// Uncompressed bytes written from offset 0.
    pub fn written(&self) -> u64 {
        self.written
    }
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }
}

impl Drop for CompressedWriter {
    fn drop(&mut self) {
        // Whatever the encoder still holds is dropped with it: a writer that
        // was not completed or closed leaves the file as its last sync did.
        if let Some(encoder) = self.encoder.as_mut() {
            encoder.out().discard = true;
        }
        // A stream still aside never replaced the old file: it is dropped.
        if self.aside.is_some() {
            durable::remove_quietly(&self.path);
        }
    }
}

/// The uncompressed length of an existing `.partial` at `path` (what it
/// decodes to, at most a segment); `None` when there is none.
fn old_partial_len(
    path: &Path,
    compression: Compression,
    segment_size: u64,
) -> Result<Option<u64>, ArchiveError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => decodable_len(path, compression, segment_size)
            .map(Some)
            .map_err(|e| ArchiveError::io(path, e)),
        Ok(_) => Err(ArchiveError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ArchiveError::io(path, e)),
    }
}

/// [`ArchiveError::AlreadyComplete`] when `seg` exists complete under any
/// compression: streaming must start after it, not write it again.
fn refuse_complete(dir: &Path, seg: &SegmentName) -> Result<(), ArchiveError> {
    for c in Compression::ALL {
        let path = dir.join(segment_file_name(seg, c, false));
        match std::fs::symlink_metadata(&path) {
            Ok(_) => return Err(ArchiveError::AlreadyComplete { path }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ArchiveError::io(path, e)),
        }
    }
    Ok(())
}

/// The segment file the receiver's sink writes: plain (pre-padded,
/// `pwrite`) or compressed, with the same operations.
#[derive(Debug)]
pub enum SegmentSink {
    Plain(SegmentWriter),
    /// Boxed: an encoder's state is large, and the plain variant is the
    /// common one.
    Compressed(Box<CompressedWriter>),
}

impl SegmentSink {
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), ArchiveError> {
        match self {
            SegmentSink::Plain(w) => w.write_at(offset, data),
            SegmentSink::Compressed(w) => w.write_at(offset, data),
        }
    }
    pub fn sync(&mut self) -> Result<(), ArchiveError> {
        match self {
            SegmentSink::Plain(w) => w.sync(),
            SegmentSink::Compressed(w) => w.sync(),
        }
    }
    pub fn complete(self) -> Result<PathBuf, ArchiveError> {
        match self {
            SegmentSink::Plain(w) => w.complete(),
            SegmentSink::Compressed(w) => w.complete(),
        }
    }
    /// Keeps the `.partial` name; returns whether what was written is under
    /// it (false only for a compressed writer still aside, whose stream is
    /// dropped: see [`CompressedWriter::close_partial`]).
    pub fn close_partial(self) -> Result<bool, ArchiveError> {
        match self {
            SegmentSink::Plain(w) => w.close_partial().map(|()| true),
            SegmentSink::Compressed(w) => w.close_partial(),
        }
    }
    /// Written aside (compressed only): nothing written so far is under the
    /// WAL name, so none of it may be reported (see
    /// [`CompressedWriter::is_aside`]).
    pub fn is_aside(&self) -> bool {
        matches!(self, SegmentSink::Compressed(w) if w.is_aside())
    }
    /// Written direct (plain only): nothing in it is under a WAL name
    /// before it is complete.
    pub fn is_direct(&self) -> bool {
        matches!(self, SegmentSink::Plain(w) if w.is_direct())
    }
    /// Whether what [`SegmentSink::write_at`] took may still be in memory
    /// (an encoder's buffer) until [`SegmentSink::sync`]: true when
    /// compressed.
    pub fn buffers(&self) -> bool {
        matches!(self, SegmentSink::Compressed(_))
    }
    /// Which segment this is, whichever the writer.
    pub fn id(&self) -> SegmentId {
        match self {
            SegmentSink::Plain(w) => w.id(),
            SegmentSink::Compressed(w) => w.id(),
        }
    }
    pub fn start_lsn(&self) -> Lsn {
        self.id().start_lsn()
    }
    pub fn segment_size(&self) -> u64 {
        self.id().segment_size
    }
    /// LSN just past the segment's last byte.
    pub fn end_lsn(&self) -> Lsn {
        self.id().end_lsn()
    }
    pub fn is_poisoned(&self) -> bool {
        match self {
            SegmentSink::Plain(w) => w.is_poisoned(),
            SegmentSink::Compressed(w) => w.is_poisoned(),
        }
    }
    pub fn path(&self) -> &Path {
        match self {
            SegmentSink::Plain(w) => w.path(),
            SegmentSink::Compressed(w) => w.path(),
        }
    }
}

#[cfg(test)]
mod read_back;
#[cfg(test)]
mod tests;
