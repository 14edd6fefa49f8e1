//! The readers of [`crate::archive::inspect`] over what this module writes:
//! sizes, decodable lengths and prefixes of whole, flushed and cut streams.
//! (Here rather than in `inspect.rs`, so that the reader does not depend on
//! the writer.)

use crate::archive::compress_spec::CompressionSpec;
use crate::archive::compressed::{compress_all, CompressedWriter};
use crate::archive::inspect::*;
use crate::archive::names::Compression;

const SEG: u64 = 1 << 20;

fn packed(z: &str, data: &[u8]) -> Vec<u8> {
    compress_all(CompressionSpec::parse(z).unwrap(), data).unwrap()
}

#[test]
fn complete_sizes_as_pg_receivewal_checks_them() {
    let seg: Vec<u8> = (0..SEG).map(|i| (i % 13) as u8).collect();
    for (z, c) in [
        ("gzip", Compression::Gzip),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ] {
        assert_eq!(check_complete_size(c, &packed(z, &seg), SEG), SizeCheck::Ok);
        let short = packed(z, &seg[..1000]);
        assert_eq!(
            check_complete_size(c, &short, SEG),
            SizeCheck::WrongSize(1000),
            "{z}"
        );
    }
    // A cut lz4/zstd stream is broken, not short.
    let lz4 = packed("lz4", &seg);
    assert!(matches!(
        check_complete_size(Compression::Lz4, &lz4[..lz4.len() / 2], SEG),
        SizeCheck::Broken(_)
    ));
    assert!(matches!(
        check_complete_size(Compression::Gzip, &[1, 2], SEG),
        SizeCheck::Broken(_)
    ));
}

#[test]
fn decodable_lengths_of_whole_flushed_and_cut_streams() {
    let tmp = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i / 7 % 251) as u8).collect();
    for (z, c) in [
        ("none", Compression::None),
        ("gzip", Compression::Gzip),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ] {
        let path = tmp.path().join(z);
        std::fs::write(&path, packed(z, &data)).unwrap();
        assert_eq!(decodable_len(&path, c, SEG).unwrap(), 300_000, "{z}");
        assert_eq!(decodable_len(&path, c, 1000).unwrap(), 1000, "{z}");
        if c == Compression::None {
            continue;
        }
        // A flushed, unfinished stream (a killed session's .partial),
        // then the same cut in the middle of its last flush.
        let spec = CompressionSpec::parse(z).unwrap();
        let mut w = CompressedWriter::open(tmp.path(), 1, 7, SEG, false, spec).unwrap();
        w.write_at(0, &data[..200_000]).unwrap();
        w.sync().unwrap();
        let flushed = std::fs::read(w.path()).unwrap();
        w.write_at(200_000, &data[200_000..]).unwrap();
        w.sync().unwrap();
        let partial = w.path().to_path_buf();
        std::mem::forget(w);
        assert_eq!(decodable_len(&partial, c, SEG).unwrap(), 300_000, "{z}");
        let all = std::fs::read(&partial).unwrap();
        let cut = flushed.len() + (all.len() - flushed.len()) / 2;
        std::fs::write(&partial, &all[..cut]).unwrap();
        let n = decodable_len(&partial, c, SEG).unwrap();
        assert!((200_000..300_000).contains(&n), "{z}: {n}");
        std::fs::write(&partial, b"").unwrap();
        assert_eq!(decodable_len(&partial, c, SEG).unwrap(), 0, "{z}");
        std::fs::remove_file(&partial).unwrap();
    }
    assert!(decodable_len(&tmp.path().join("missing"), Compression::Gzip, SEG).is_err());
}

#[test]
fn prefixes_of_every_kind_including_cut_streams() {
    let tmp = tempfile::tempdir().unwrap();
    let seg: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    for (z, c) in [
        ("none", Compression::None),
        ("gzip", Compression::Gzip),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ] {
        let path = tmp.path().join(z);
        std::fs::write(&path, packed(z, &seg)).unwrap();
        assert_eq!(read_prefix(&path, c, 40).unwrap(), &seg[..40], "{z}");
        assert_eq!(
            read_complete_segment(&path, c, 200_000).unwrap().as_deref(),
            Ok(&seg[..]),
            "{z}"
        );
        std::fs::write(&path, b"").unwrap();
        assert!(read_prefix(&path, c, 40).unwrap().is_empty(), "{z}");
    }
}
