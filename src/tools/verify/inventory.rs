//! The inventory stage (IO): what the archive directory holds, named through
//! [`ArchiveName::classify`] only, and the bytes of its files (memory-mapped;
//! compressed files decompressed with [`compression::decompress`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::archive::compression::{self, Decoded, DecompressError};
use crate::archive::names::{ArchiveName, Compression, SegmentName};
use crate::lsn::{SegNo, TimeLineId};
use crate::wal::page::{PageHeader, LONG_HEADER_SIZE, XLP_LONG_HEADER};

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
        match ArchiveName::classify(&name) {
            ArchiveName::Segment {
                name: segment,
                compression,
                partial,
            } => {
                let size = match std::fs::metadata(&path) {
                    Ok(m) if m.is_file() => m.len(),
                    Ok(_) => continue,
                    Err(e) => {
                        inventory.problems.push(Problem::unreadable(&name, &e));
                        continue;
                    }
                };
                inventory.segments.push(SegFile {
                    name,
                    path,
                    segment,
                    compression,
                    partial,
                    size,
                    tli: 0,
                    segno: 0,
                });
            }
            ArchiveName::History {
                timeline,
                compression,
            } => {
                // Both `N.history` and `N.history.gz`: the plain one wins.
                let replace = inventory
                    .histories
                    .get(&timeline)
                    .is_none_or(|h| h.compression != Compression::None);
                if replace {
                    inventory
                        .histories
                        .insert(timeline, HistoryFile { path, compression });
                }
            }
            ArchiveName::Divergent {
                name: segment,
                compression,
                partial,
            } => {
                let size = match std::fs::metadata(&path) {
                    Ok(m) if m.is_file() => m.len(),
                    // Unreadable metadata: the file is reported when measured.
                    Ok(_) => continue,
                    Err(_) => 0,
                };
                inventory.divergent.push(DivergentEntry {
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
    inventory.segments.sort_by(|a, b| a.name.cmp(&b.name));
    inventory.divergent.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(inventory)
}

/// A read-only view of a file's (decompressed) bytes.
pub(super) enum Bytes {
    Empty,
    Map(memmap2::Mmap),
    Decoded(Decoded),
}

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Empty => &[],
            Bytes::Map(m) => m,
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
pub(super) fn load(path: &Path, compression: Compression) -> Result<Bytes, LoadError> {
    let mapped = map_file(path).map_err(LoadError::Io)?;
    if compression == Compression::None {
        return Ok(mapped);
    }
    // A `.partial` counts up to what decodes (see `decompress_partial`).
    let partial = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".partial"));
    let decode = if partial {
        compression::decompress_partial
    } else {
        compression::decompress
    };
    decode(compression, mapped.as_slice(), MAX_SEGMENT_SIZE)
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
pub(super) fn read_long_header(
    path: &Path,
    compression: Compression,
) -> std::io::Result<Option<PageHeader>> {
    let file = File::open(path)?;
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
