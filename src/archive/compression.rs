//! Decompressing WAL files stored compressed (`.gz`, `.lz4`, `.zst`), over
//! bytes in memory: the one decoder that the start-point scan, `verify` and
//! `restore` share.
//!
//! A compressed `.partial` is a stream that was flushed (gzip `Z_SYNC_FLUSH`,
//! an lz4 block, a zstd flush) but never finished: it has no trailer, and its
//! last flush may itself be torn if the writer died mid-write. Decoding
//! therefore returns what decodes and says whether the stream ended properly,
//! instead of failing: the caller (which knows whether the file claims to be
//! complete) decides what an unfinished stream means.

use std::io::Read;

use super::names::Compression;

/// Why compressed bytes could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecompressError {
    /// The stream decodes to more than `limit` bytes (a WAL segment cannot).
    #[error("decompresses to more than {limit} bytes")]
    TooLarge { limit: u64 },
    /// Not a valid stream of this format; `decoded` bytes came out before the
    /// fault.
    #[error("{format} data is corrupt after {decoded} decompressed bytes: {detail}")]
    Corrupt {
        format: &'static str,
        decoded: u64,
        detail: String,
    },
}

/// What a compressed file decodes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub bytes: Vec<u8>,
    /// Whether the stream ended with its trailer (gzip CRC and size, lz4 end
    /// mark, zstd last block). A complete file must; a `.partial` need not.
    pub finished: bool,
}

/// Decodes `data`, stored with `compression`, refusing output over `limit`
/// bytes. Uncompressed data is returned as is (and is always `finished`).
pub fn decompress(
    compression: Compression,
    data: &[u8],
    limit: u64,
) -> Result<Decoded, DecompressError> {
    match compression {
        Compression::None => {
            if data.len() as u64 > limit {
                return Err(DecompressError::TooLarge { limit });
            }
            Ok(Decoded {
                bytes: data.to_vec(),
                finished: true,
            })
        }
        Compression::Gzip => drain(
            "gzip",
            flate2::read::GzDecoder::new(data),
            limit,
            is_truncation,
        ),
        Compression::Lz4 => {
            let mut decoded = drain(
                "lz4",
                lz4_flex::frame::FrameDecoder::new(data),
                limit,
                is_truncation,
            )?;
            // lz4_flex ends quietly when the input stops between two blocks,
            // so whether the frame was finished is read off its last bytes.
            // A cut frame whose last literals happen to be four zero bytes
            // passes this check; a complete file is also size-checked.
            decoded.finished &= lz4_frame_has_end_mark(data);
            Ok(decoded)
        }
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(data).map_err(|e| {
                DecompressError::Corrupt {
                    format: "zstd",
                    decoded: 0,
                    detail: e.to_string(),
                }
            })?;
            drain("zstd", decoder, limit, is_truncation)
        }
    }
}

/// Decodes a `.partial` (its name says it may be unfinished): what decodes
/// before a fault is its content, as the valid WAL of a plain `.partial`
/// ends at its first bad record. After a power loss, a compressed `.partial`
/// can end in a run of zeros where the file's size outlived its data (a
/// failed fsync the next process cannot know of): refusing the whole file
/// would hide the acknowledged WAL before it from `verify` and `restore`.
/// A complete file gets no such leniency ([`decompress`]).
pub fn decompress_partial(
    compression: Compression,
    data: &[u8],
    limit: u64,
) -> Result<Decoded, DecompressError> {
    match decompress(compression, data, limit) {
        Err(DecompressError::Corrupt { .. }) => {
            let bytes = decoded_prefix(compression, data, limit)?;
            Ok(Decoded {
                bytes,
                finished: false,
            })
        }
        other => other,
    }
}

/// What `data` decodes to up to the first fault.
fn decoded_prefix(
    compression: Compression,
    data: &[u8],
    limit: u64,
) -> Result<Vec<u8>, DecompressError> {
    if compression == Compression::Gzip {
        // The writer's flushes end with a sync marker (an empty stored
        // block, 00 00 FF FF): cut there, the stream decodes whole as an
        // unfinished one (the inflater keeps up to 32 KiB of output in its
        // window, lost when it meets the fault itself).
        let marker = data.windows(4).rposition(|w| w == [0, 0, 0xFF, 0xFF]);
        if let Some(Ok(d)) = marker.map(|at| decompress(compression, &data[..at + 4], limit)) {
            return Ok(d.bytes);
        }
    }
    let reader: Box<dyn Read + '_> = match compression {
        Compression::None => return Ok(data.to_vec()),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(data)),
        Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(data)),
        Compression::Zstd => match zstd::stream::read::Decoder::with_buffer(data) {
            Ok(d) => Box::new(d),
            Err(_) => return Ok(Vec::new()),
        },
    };
    // One byte at a time: a decoder drops what it decoded in the read call
    // that met the fault (gzip's would lose up to a whole buffer of
    // acknowledged WAL). Only damaged `.partial` files take this path.
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    let mut reader = reader;
    loop {
        match reader.read(&mut byte) {
            Ok(1) if (bytes.len() as u64) < limit => bytes.push(byte[0]),
            Ok(1) => return Err(DecompressError::TooLarge { limit }),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            _ => return Ok(bytes),
        }
    }
}

/// Whether an lz4 frame ends with its end mark (a zero block size), followed
/// by the content checksum when the frame descriptor announces one (LZ4 frame
/// format: magic, FLG byte with bit 2 = content checksum, ..., blocks, end
/// mark, optional checksum).
fn lz4_frame_has_end_mark(data: &[u8]) -> bool {
    const MAGIC: [u8; 4] = [0x04, 0x22, 0x4D, 0x18];
    if data.len() < 4 + 3 + 4 || data[..4] != MAGIC {
        return false;
    }
    let checksum_len = if data[4] & 0x04 != 0 { 4 } else { 0 };
    let Some(end) = data.len().checked_sub(checksum_len) else {
        return false;
    };
    end >= 4 && data[end - 4..end] == [0, 0, 0, 0]
}

/// Whether a decoder error means "the input ended early" rather than "the
/// input is wrong". Decoders report running out of input as
/// `UnexpectedEof`; zstd's streaming reader reports it as `Other` with this
/// wording (zstd-rs `read::Decoder` on an unfinished frame).
fn is_truncation(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::UnexpectedEof || e.to_string().contains("incomplete frame")
}

/// Reads `decoder` to its end or to the first error, collecting at most
/// `limit` bytes.
fn drain(
    format: &'static str,
    mut decoder: impl Read,
    limit: u64,
    truncated: fn(&std::io::Error) -> bool,
) -> Result<Decoded, DecompressError> {
    let mut bytes = Vec::with_capacity(usize::try_from(limit.min(64 << 20)).unwrap_or(0));
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        match decoder.read(&mut chunk) {
            Ok(0) => {
                return Ok(Decoded {
                    bytes,
                    finished: true,
                })
            }
            Ok(n) => {
                if bytes.len() as u64 + n as u64 > limit {
                    return Err(DecompressError::TooLarge { limit });
                }
                bytes.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if truncated(&e) => {
                return Ok(Decoded {
                    bytes,
                    finished: false,
                })
            }
            Err(e) => {
                return Err(DecompressError::Corrupt {
                    format,
                    decoded: bytes.len() as u64,
                    detail: e.to_string(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn sample() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    /// `data` compressed as a finished stream, and as a stream flushed
    /// halfway and never finished (what a `.partial` holds).
    fn compressed(c: Compression, data: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let half = data.len() / 2;
        match c {
            Compression::None => (data.to_vec(), data[..half].to_vec()),
            Compression::Gzip => {
                let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                w.write_all(&data[..half]).unwrap();
                w.flush().unwrap();
                let partial = w.get_ref().clone();
                w.write_all(&data[half..]).unwrap();
                (w.finish().unwrap(), partial)
            }
            Compression::Lz4 => {
                let mut w = lz4_flex::frame::FrameEncoder::new(Vec::new());
                w.write_all(&data[..half]).unwrap();
                w.flush().unwrap();
                let partial = w.get_ref().clone();
                w.write_all(&data[half..]).unwrap();
                (w.finish().unwrap(), partial)
            }
            Compression::Zstd => {
                let mut w = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
                w.write_all(&data[..half]).unwrap();
                w.flush().unwrap();
                let partial = w.get_ref().clone();
                w.write_all(&data[half..]).unwrap();
                (w.finish().unwrap(), partial)
            }
        }
    }

    #[test]
    fn a_partial_with_a_zero_filled_tail_counts_up_to_what_decodes() {
        // A power loss after a failed fsync (that the next process could not
        // know of) can leave a compressed `.partial` whose size outlived its
        // data: flushed blocks, then zeros. Seen in the torture test (seed
        // 5118, -Z lz4): lz4 reads the zeros as an end mark with a wrong
        // checksum, and the file was refused whole.
        let data = sample();
        for c in [Compression::Gzip, Compression::Lz4, Compression::Zstd] {
            let (_, partial) = compressed(c, &data);
            let flushed = decompress(c, &partial, 16 << 20).unwrap().bytes;
            assert!(!flushed.is_empty(), "{c:?}");
            let mut torn = partial.clone();
            torn.extend_from_slice(&[0u8; 4096]);
            let d = decompress_partial(c, &torn, 16 << 20).unwrap();
            assert_eq!(
                d.bytes.len(),
                flushed.len(),
                "{c:?}: the flushed prefix, whole"
            );
            assert_eq!(d.bytes, flushed, "{c:?}");
        }
        // With the writer's own frames (lz4 with its content checksum) the
        // zeros are an end mark whose checksum is wrong: refused whole by
        // `decompress`, read up to the fault by `decompress_partial`.
        let mut out = Vec::new();
        {
            let info = lz4_flex::frame::FrameInfo::new().content_checksum(true);
            let mut e = lz4_flex::frame::FrameEncoder::with_frame_info(info, &mut out);
            e.write_all(&data).unwrap();
            e.flush().unwrap();
        }
        out.extend_from_slice(&[0u8; 4096]);
        assert!(decompress(Compression::Lz4, &out, 16 << 20).is_err());
        let d = decompress_partial(Compression::Lz4, &out, 16 << 20).unwrap();
        assert_eq!(d.bytes, data);
    }

    #[test]
    fn finished_streams_decode_whole() {
        let data = sample();
        for c in Compression::ALL {
            let (full, _) = compressed(c, &data);
            let d = decompress(c, &full, 16 << 20).unwrap();
            assert!(d.finished, "{c:?}");
            assert_eq!(d.bytes, data, "{c:?}");
        }
    }

    #[test]
    fn flushed_unfinished_streams_give_everything_flushed() {
        let data = sample();
        for c in [Compression::Gzip, Compression::Lz4, Compression::Zstd] {
            let (_, partial) = compressed(c, &data);
            let d = decompress(c, &partial, 16 << 20).unwrap();
            assert!(!d.finished, "{c:?}");
            assert_eq!(d.bytes, &data[..data.len() / 2], "{c:?}");
        }
    }

    #[test]
    fn a_torn_last_flush_gives_a_prefix_never_garbage() {
        let data = sample();
        for c in [Compression::Gzip, Compression::Lz4, Compression::Zstd] {
            let (full, _) = compressed(c, &data);
            for cut in [1, 7, full.len() / 3, full.len() - 5] {
                match decompress(c, &full[..cut], 16 << 20) {
                    Ok(d) => {
                        assert!(!d.finished, "{c:?} cut {cut}");
                        assert_eq!(d.bytes, &data[..d.bytes.len()], "{c:?} cut {cut}");
                    }
                    Err(DecompressError::Corrupt { .. }) => {}
                    Err(e) => panic!("{c:?} cut {cut}: {e}"),
                }
            }
        }
    }

    #[test]
    fn corrupt_input_is_an_error_naming_the_format() {
        let data = sample();
        for c in [Compression::Gzip, Compression::Lz4, Compression::Zstd] {
            let (mut full, _) = compressed(c, &data);
            let mid = full.len() / 2;
            for b in &mut full[mid..mid + 64] {
                *b ^= 0x5A;
            }
            match decompress(c, &full, 16 << 20) {
                Err(e @ DecompressError::Corrupt { format, .. }) => {
                    assert_eq!(format, c.method_name());
                    assert!(e.to_string().contains(c.method_name()), "{e}");
                }
                Ok(d) => panic!(
                    "{c:?}: corrupt input decoded without an error ({} bytes, finished {}, {})",
                    d.bytes.len(),
                    d.finished,
                    if d.bytes == data {
                        "the original"
                    } else {
                        "garbage"
                    }
                ),
                Err(e) => panic!("{c:?}: {e}"),
            }
        }
    }

    #[test]
    fn output_is_bounded() {
        let data = sample();
        for c in Compression::ALL {
            let (full, _) = compressed(c, &data);
            assert_eq!(
                decompress(c, &full, 1000),
                Err(DecompressError::TooLarge { limit: 1000 }),
                "{c:?}"
            );
        }
    }
}
