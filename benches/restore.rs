//! Criterion benchmarks of `walrcv restore` end to end, in process: list the
//! archive, plan, read (mmap or decompress), verify every record, write `%p`
//! through a temporary file and rename it.
//!
//! Ids: `restore/<stored as>` for a complete segment stored uncompressed,
//! gzip, lz4 and zstd (compressed here at each method's default level), and
//! `restore/partial` (the newest `.partial`, served padded), each with
//! `Throughput::Bytes` of the segment served. The segments are the 1 MB
//! fixtures of `testdata/wal/pg15`; the cost is per byte (the verifier is
//! O(1) memory, the copy one `write`), so a 16 MB segment takes 16 times as
//! long. Run with `cargo bench --bench restore`; the archive and `%p` live in
//! `$TMPDIR` (run it where the archive would live).

use std::hint::black_box;
use std::io::Write;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use walrcv::tools::restore::{restore, Served};

const SEGMENT: &str = "00000002000000000000000C";
const PARTIAL: &str = "00000002000000000000000D";

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/wal/pg15")
        .join(name);
    std::fs::read(path).expect("fixture missing: run scripts/make-testdata.sh")
}

fn stored(method: &str, data: &[u8]) -> Vec<u8> {
    match method {
        "gz" => {
            let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            w.write_all(data).unwrap();
            w.finish().unwrap()
        }
        "lz4" => {
            let mut w = lz4_flex::frame::FrameEncoder::new(Vec::new());
            w.write_all(data).unwrap();
            w.finish().unwrap()
        }
        "zst" => zstd::encode_all(data, 3).unwrap(),
        _ => data.to_vec(),
    }
}

fn bench_restore(c: &mut Criterion) {
    let mut group = c.benchmark_group("restore");
    let segment = fixture(SEGMENT);
    group.throughput(Throughput::Bytes(segment.len() as u64));
    for method in ["plain", "gz", "lz4", "zst"] {
        let archive = tempfile::tempdir().unwrap();
        let pg_wal = tempfile::tempdir().unwrap();
        let name = match method {
            "plain" => SEGMENT.to_owned(),
            m => format!("{SEGMENT}.{m}"),
        };
        std::fs::write(archive.path().join(name), stored(method, &segment)).unwrap();
        let target = pg_wal.path().join("RECOVERYXLOG");
        group.bench_function(method, |b| {
            b.iter(|| {
                let served = restore(archive.path(), SEGMENT, &target).unwrap();
                assert!(matches!(served, Served::File { .. }));
                black_box(served)
            })
        });
    }
    let archive = tempfile::tempdir().unwrap();
    let pg_wal = tempfile::tempdir().unwrap();
    std::fs::write(
        archive.path().join(format!("{PARTIAL}.partial")),
        fixture(&format!("{PARTIAL}.partial")),
    )
    .unwrap();
    let target = pg_wal.path().join("RECOVERYXLOG");
    group.bench_function("partial", |b| {
        b.iter(|| black_box(restore(archive.path(), PARTIAL, &target).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, bench_restore);
criterion_main!(benches);
