//! Reading WAL files back whatever their compression, for the start-point
//! scan, the identity check, the resume verifier and `walrcv status`: the
//! first bytes of a file, the uncompressed size of a complete compressed
//! segment, and a whole segment's bytes.
//!
//! The size rules are pg_receivewal's (`FindStreamingStart` in
//! `pg_receivewal.c`): a complete `.gz` must end with ISIZE (its last 4
//! bytes, little-endian: the uncompressed size modulo 2^32) equal to the
//! segment size; a `.lz4` is decompressed and its size compared (lz4 frames
//! need not carry their size). walrcv treats `.zst` as `.lz4`, and also
//! requires the stream to be finished (a complete file without its trailer
//! was cut).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::compression::decompress;
use super::names::Compression;

/// Up to `n` uncompressed bytes from the start of `path`: fewer when the
/// file (or the stream flushed so far) holds fewer, or when the stream is
/// cut or corrupt after them (the caller compares what it got).
pub fn read_prefix(path: &Path, compression: Compression, n: usize) -> std::io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut buf = Vec::with_capacity(n);
    let limit = n as u64;
    let result = match compression {
        Compression::None => {
            let mut plain = vec![0u8; n];
            let mut got = 0;
            while got < n {
                match file.read_at(&mut plain[got..], got as u64)? {
                    0 => break,
                    k => got += k,
                }
            }
            plain.truncate(got);
            return Ok(plain);
        }
        Compression::Gzip => flate2::read::GzDecoder::new(file)
            .take(limit)
            .read_to_end(&mut buf),
        Compression::Lz4 => lz4_flex::frame::FrameDecoder::new(file)
            .take(limit)
            .read_to_end(&mut buf),
        Compression::Zstd => zstd::stream::read::Decoder::new(file)?
            .take(limit)
            .read_to_end(&mut buf),
    };
    match result {
        Ok(_) => Ok(buf),
        // A torn or unfinished stream: what decoded before the fault counts.
        Err(e) if !buf.is_empty() || e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(buf),
        Err(e) => Err(e),
    }
}

/// How many uncompressed bytes the stream in `path` decodes to, at most
/// `limit`: what a compressed `.partial` holds, a torn or corrupt end
/// excluded (what decoded before the fault counts, as in [`read_prefix`]).
/// Streams through a small buffer: a whole segment is never in memory. An
/// error reading the file itself is an error, never a short length.
pub fn decodable_len(path: &Path, compression: Compression, limit: u64) -> std::io::Result<u64> {
    let file = File::open(path)?;
    let (tracked, read_error) = Tracked::new(file);
    let decoder: Box<dyn Read> = match compression {
        Compression::None => return Ok(tracked.inner.metadata()?.len().min(limit)),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(tracked)),
        Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(tracked)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(tracked)?),
    };
    let mut decoder = decoder.take(limit);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match decoder.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // The end of what decodes (torn, cut or corrupt), unless the
            // file could not be read.
            Err(_) => break,
        }
    }
    match read_error.take() {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// A reader that keeps the first error of the reader under it, so that a
/// decoder's "the stream ends here" is told apart from "the disk failed".
struct Tracked<R> {
    inner: R,
    error: std::rc::Rc<std::cell::Cell<Option<std::io::Error>>>,
}

impl<R> Tracked<R> {
    fn new(inner: R) -> (Self, std::rc::Rc<std::cell::Cell<Option<std::io::Error>>>) {
        let error = std::rc::Rc::new(std::cell::Cell::new(None));
        (
            Tracked {
                inner,
                error: error.clone(),
            },
            error,
        )
    }
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            if e.kind() != std::io::ErrorKind::Interrupted {
                self.error
                    .set(Some(std::io::Error::new(e.kind(), e.to_string())));
            }
        })
    }
}

/// Why a complete compressed segment is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeCheck {
    Ok,
    /// Decompresses (or claims to) to this many bytes, not the segment size.
    WrongSize(u64),
    /// Not a finished stream of its format.
    Broken(String),
}

/// Checks that `data`, the bytes of a complete compressed segment file,
/// holds exactly `segment_size` bytes (see the module documentation).
pub fn check_complete_size(compression: Compression, data: &[u8], segment_size: u64) -> SizeCheck {
    match compression {
        Compression::None => match data.len() as u64 {
            n if n == segment_size => SizeCheck::Ok,
            n => SizeCheck::WrongSize(n),
        },
        Compression::Gzip => {
            let Some(tail) = data.len().checked_sub(4).map(|at| &data[at..]) else {
                return SizeCheck::Broken("shorter than a gzip trailer".into());
            };
            let isize = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
            // ISIZE is the size modulo 2^32: a segment of 4 GiB or more is
            // impossible (at most 1 GiB), so the comparison is exact.
            if u64::from(isize) == segment_size {
                SizeCheck::Ok
            } else {
                SizeCheck::WrongSize(u64::from(isize))
            }
        }
        Compression::Lz4 | Compression::Zstd => match decompress(compression, data, segment_size) {
            Ok(d) if !d.finished => SizeCheck::Broken(format!(
                "the stream ends without its trailer after {} bytes",
                d.bytes.len()
            )),
            Ok(d) if d.bytes.len() as u64 == segment_size => SizeCheck::Ok,
            Ok(d) => SizeCheck::WrongSize(d.bytes.len() as u64),
            Err(e) => SizeCheck::Broken(e.to_string()),
        },
    }
}

/// The whole uncompressed content of a complete segment file, or what is
/// wrong with it: not a finished stream of exactly `segment_size` bytes (cut,
/// corrupt, or of another size). The outer error is the file's reading.
pub fn read_complete_segment(
    path: &Path,
    compression: Compression,
    segment_size: u64,
) -> std::io::Result<Result<Vec<u8>, String>> {
    let data = std::fs::read(path)?;
    Ok(match decompress(compression, &data, segment_size) {
        Ok(d) if !d.finished => Err(format!(
            "the stream ends without its trailer after {} bytes",
            d.bytes.len()
        )),
        Ok(d) if d.bytes.len() as u64 == segment_size => Ok(d.bytes),
        Ok(d) => Err(format!(
            "it decompresses to {} bytes, not the segment size {segment_size}",
            d.bytes.len()
        )),
        Err(e) => Err(e.to_string()),
    })
}
