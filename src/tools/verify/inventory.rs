//! The inventory stage (IO): what the archive directory (or bucket) holds,
//! named through [`ArchiveName::classify`] only (a directory's entries and a
//! bucket's listing go through the same [`Inventory::add`]), and the bytes of
//! its files (memory-mapped, or one object fetched at a time; compressed
//! files decompressed with [`compression::decompress`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::archive::compression::{self, Decoded, DecompressError};
use crate::archive::names::{ArchiveName, Compression, SegmentName};
use crate::lsn::{SegNo, TimeLineId};
use crate::wal::page::{PageHeader, LONG_HEADER_SIZE, XLP_LONG_HEADER};

use crate::tools::bucket::{Bucket, BucketListing};

use super::report::Problem;
use super::VerifyToolError;

/// The largest WAL segment PostgreSQL allows (1 GB): no segment decompresses
/// to more.
pub(super) const MAX_SEGMENT_SIZE: u64 = 1 << 30;

/// A segment file (complete or `.partial`, any compression).
#[derive(Debug, Clone)]
pub(super) struct SegFile {
    pub name: String,
    pub path: PathBuf,
    pub segment: SegmentName,
    pub compression: Compression,
    pub partial: bool,
    /// Size on disk.
    pub size: u64,
    /// A receiver's uploaded `.partial` copy (bucket only): the receiver.
    pub copy_of: Option<String>,
    /// (timeline, segno) once the segment size is known.
    pub tli: TimeLineId,
    pub segno: SegNo,
}

/// A segment file set aside after a failover (`*.divergent.tmp`).
#[derive(Debug, Clone)]
pub(super) struct DivergentEntry {
    pub name: String,
    pub path: PathBuf,
    pub segment: SegmentName,
    pub compression: Compression,
    pub partial: bool,
    /// Size on disk.
    pub size: u64,
}

/// A timeline history file.
#[derive(Debug, Clone)]
pub(super) struct HistoryFile {
    pub path: PathBuf,
    pub compression: Compression,
}

/// What the directory holds.
#[derive(Debug, Default)]
pub(super) struct Inventory {
    /// Sorted by file name.
    pub segments: Vec<SegFile>,
    pub histories: BTreeMap<TimeLineId, HistoryFile>,
    /// Set-aside files, sorted by file name.
    pub divergent: Vec<DivergentEntry>,
    /// Files that could not even be looked at.
    pub problems: Vec<Problem>,
}

/// Lists `dir`. Only a missing or unreadable directory is an error.
pub(super) fn list(dir: &Path) -> Result<Inventory, VerifyToolError> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            VerifyToolError::NotFound {
                path: dir.to_path_buf(),
            }
        } else {
            VerifyToolError::ReadDir {
                path: dir.to_path_buf(),
                source: e,
            }
        }
    })?;
    if !meta.is_dir() {
        return Err(VerifyToolError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let read_dir_error = |source| VerifyToolError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut inventory = Inventory::default();
    for entry in std::fs::read_dir(dir).map_err(read_dir_error)? {
        let entry = entry.map_err(read_dir_error)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let kind = ArchiveName::classify(&name);
        inventory.add(name, kind, path.clone(), None, || {
            std::fs::metadata(&path).map(|m| m.is_file().then_some(m.len()))
        });
    }
    inventory.sort();
    Ok(inventory)
}

/// Lists a bucket: the objects under the prefix as a directory's files, and
/// the receivers' `.partial` copies whose complete segment is not there, each
/// under its object name (classified by its local name). Superseded copies
/// are not part of the archive's WAL (restore never reads them).
pub(super) fn list_bucket(listing: &BucketListing) -> Inventory {
    let mut inventory = Inventory::default();
    for o in &listing.files {
        let kind = ArchiveName::classify(&o.name);
        inventory.add(o.name.clone(), kind, PathBuf::from(&o.name), None, || {
            Ok(Some(o.size))
        });
    }
    for c in &listing.copies {
        let kind = ArchiveName::classify(&c.copy.local);
        let o = &c.object;
        let receiver = Some(c.copy.receiver.clone());
        inventory.add(
            o.name.clone(),
            kind,
            PathBuf::from(&o.name),
            receiver,
            || Ok(Some(o.size)),
        );
    }
    inventory.sort();
    inventory
}

impl Inventory {
    /// Adds one listed file; `size` gives its size (`None`: not a file).
    fn add(
        &mut self,
        name: String,
        kind: ArchiveName,
        path: PathBuf,
        copy_of: Option<String>,
        size: impl FnOnce() -> std::io::Result<Option<u64>>,
    ) {
        match kind {
            ArchiveName::Segment {
                name: segment,
                compression,
                partial,
            } => {
                let size = match size() {
                    Ok(Some(len)) => len,
                    Ok(None) => return,
                    Err(e) => {
                        self.problems.push(Problem::unreadable(&name, &e));
                        return;
                    }
                };
                self.segments.push(SegFile {
                    name,
                    path,
                    segment,
                    compression,
                    partial,
                    size,
                    copy_of,
                    tli: 0,
                    segno: 0,
                });
            }
            ArchiveName::History {
                timeline,
                compression,
            } => {
                // Both `N.history` and `N.history.gz`: the plain one wins.
                let replace = self
                    .histories
                    .get(&timeline)
                    .is_none_or(|h| h.compression != Compression::None);
                if replace {
                    self.histories
                        .insert(timeline, HistoryFile { path, compression });
                }
            }
            ArchiveName::Divergent {
                name: segment,
                compression,
                partial,
            } => {
                let size = match size() {
                    Ok(Some(len)) => len,
                    // Unreadable metadata: the file is reported when measured.
                    Ok(None) => return,
                    Err(_) => 0,
                };
                self.divergent.push(DivergentEntry {
                    name,
                    path,
                    segment,
                    compression,
                    partial,
                    size,
                });
            }
            ArchiveName::Backup { .. } | ArchiveName::Temporary | ArchiveName::Foreign => {}
        }
    }

    fn sort(&mut self) {
        self.segments.sort_by(|a, b| a.name.cmp(&b.name));
        self.divergent.sort_by(|a, b| a.name.cmp(&b.name));
    }
}

/// Where the files' bytes come from: a directory (paths) or a bucket
/// (object names), one file at a time.
pub(super) enum Source<'a> {
    Dir,
    Bucket(&'a Bucket),
}

impl Source<'_> {
    /// The (decompressed) bytes of a file; `partial` says a compressed one
    /// counts up to what decodes.
    pub fn load(
        &self,
        path: &Path,
        compression: Compression,
        partial: bool,
    ) -> Result<Bytes, LoadError> {
        match self {
            Source::Dir => load(path, compression, partial),
            Source::Bucket(b) => {
                let name = path.to_string_lossy();
                let got = b.get(&name).map_err(|e| LoadError::Io(object_error(e)))?;
                let bytes = got.ok_or_else(|| LoadError::Io(gone(b, &name)))?;
                decode(Bytes::Owned(bytes), compression, partial)
            }
        }
    }

    /// The long page header at the start of a file (see [`read_long_header`]);
    /// from a bucket, a ranged GET of the object's first bytes.
    pub fn read_long_header(
        &self,
        path: &Path,
        compression: Compression,
        size: u64,
    ) -> std::io::Result<Option<PageHeader>> {
        match self {
            Source::Dir => read_long_header(File::open(path)?, compression),
            Source::Bucket(b) => {
                let name = path.to_string_lossy();
                // Enough compressed input for the first page's header.
                let len = size.min(HEADER_FETCH);
                if len == 0 {
                    return Ok(None);
                }
                let got = b.get_prefix(&name, len).map_err(object_error)?;
                let bytes = got.ok_or_else(|| gone(b, &name))?;
                read_long_header(std::io::Cursor::new(bytes), compression)
            }
        }
    }
}

/// How much of an object is fetched to read its long page header.
const HEADER_FETCH: u64 = 64 << 10;

fn object_error(e: crate::objstore::StoreError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn gone(b: &Bucket, name: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("object \"{}\" is gone", b.key(name)),
    )
}

/// A read-only view of a file's (decompressed) bytes.
pub(super) enum Bytes {
    Empty,
    Map(memmap2::Mmap),
    /// An object fetched from a bucket.
    Owned(bytes::Bytes),
    Decoded(Decoded),
}

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Empty => &[],
            Bytes::Map(m) => m,
            Bytes::Owned(b) => b,
            Bytes::Decoded(d) => &d.bytes,
        }
    }
}

/// Why a file's bytes could not be had.
pub(super) enum LoadError {
    Io(std::io::Error),
    Decompress(DecompressError),
}

/// The bytes of `path`, decompressed when `compression` says so.
pub(super) fn load(
    path: &Path,
    compression: Compression,
    partial: bool,
) -> Result<Bytes, LoadError> {
    let mapped = map_file(path).map_err(LoadError::Io)?;
    decode(mapped, compression, partial)
}

/// `raw` decompressed when `compression` says so; a `.partial` counts up to
/// what decodes (see `decompress_partial`).
fn decode(raw: Bytes, compression: Compression, partial: bool) -> Result<Bytes, LoadError> {
    if compression == Compression::None {
        return Ok(raw);
    }
    let decode = if partial {
        compression::decompress_partial
    } else {
        compression::decompress
    };
    decode(compression, raw.as_slice(), MAX_SEGMENT_SIZE)
        .map(Bytes::Decoded)
        .map_err(LoadError::Decompress)
}

fn map_file(path: &Path) -> std::io::Result<Bytes> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(Bytes::Empty);
    }
    // SAFETY: the archive is not expected to change under us; if another process
    // truncates a file while we read it, we may get SIGBUS, as any mmap reader would.
    let m = unsafe { memmap2::MmapOptions::new().map(&f)? };
    #[cfg(unix)]
    {
        let _ = m.advise(memmap2::Advice::Sequential);
    }
    Ok(Bytes::Map(m))
}

/// The long page header at the start of a segment file, decompressing only
/// its first bytes. `None` when there is none (empty, not WAL, corrupt).
fn read_long_header(
    file: impl Read + 'static,
    compression: Compression,
) -> std::io::Result<Option<PageHeader>> {
    let mut reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(file)),
        Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(file)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(file)?),
    };
    let mut buf = [0u8; LONG_HEADER_SIZE];
    let mut have = 0;
    while have < buf.len() {
        let n = match reader.read(buf.get_mut(have..).unwrap_or(&mut [])) {
            Ok(n) => n,
            // A compressed file that does not even decode its first bytes
            // has no usable header; the per-file check reports it.
            Err(_) if compression != Compression::None => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        have += n;
    }
    Ok(PageHeader::parse(buf.get(..have).unwrap_or(&[])).filter(|h| h.info & XLP_LONG_HEADER != 0))
}

/// The progress line on stderr (only when it is a terminal).
pub(super) struct Progress {
    enabled: bool,
    started: Instant,
    bytes: u64,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        // SAFETY: isatty only inspects the file descriptor.
        let tty = unsafe { libc::isatty(2) } == 1;
        Progress {
            enabled: enabled && tty,
            started: Instant::now(),
            bytes: 0,
        }
    }

    pub fn file(&mut self, i: usize, n: usize, name: &str, size: u64) {
        self.bytes += size;
        if self.enabled {
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            eprint!(
                "\r\x1b[Kverifying {name} ({}/{n}, {:.0} MB/s)",
                i + 1,
                self.bytes as f64 / secs / 1e6
            );
        }
    }

    pub fn done(&self) {
        if self.enabled {
            eprint!("\r\x1b[K");
        }
    }
}
