//! Criterion benchmarks of the streaming WAL verifier over real WAL from
//! `testdata/wal` (PostgreSQL 15 and 17, 1 MB segments).
//!
//! Ids: `verifier/<fixture>/chunk=<size>` with `Throughput::Bytes`, plus a
//! `crc32c/size=1M` baseline. Run with `cargo bench --bench verifier`.
//!
//! Fixtures: `pg15_tli1` (4 segments: heap/btree traffic, a 1.5 MB record, two
//! XLOG_SWITCH zero tails), `pg15_tli2_dense` (one segment of 3 268 records, small
//! records only: the worst case per byte), `pg17` (one segment, 2 127 records).

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use walrcv::lsn::Lsn;
use walrcv::wal::{Verifier, VerifierConfig};

const SEG: u64 = 1 << 20;

fn load(dir: &str, names: &[&str]) -> Vec<u8> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/wal")
        .join(dir);
    names
        .iter()
        .flat_map(|n| {
            std::fs::read(base.join(n)).expect("fixture missing: run scripts/make-testdata.sh")
        })
        .collect()
}

fn config(tli: u32, major: u32) -> VerifierConfig {
    VerifierConfig {
        segment_size: SEG,
        block_size: 8192,
        system_id: None,
        timeline: tli,
        server_major: Some(major),
    }
}

fn bench_verifier(c: &mut Criterion) {
    let fixtures: Vec<(&str, Vec<u8>, Lsn, u32, u32)> = vec![
        (
            "pg15_tli1",
            load(
                "pg15",
                &[
                    "000000010000000000000008",
                    "000000010000000000000009",
                    "00000001000000000000000A",
                    "00000001000000000000000B",
                ],
            ),
            Lsn(8 * SEG),
            1,
            15,
        ),
        (
            "pg15_tli2_dense",
            load("pg15", &["00000002000000000000000C"]),
            Lsn(0xC * SEG),
            2,
            15,
        ),
        (
            "pg17",
            load("pg17", &["000000010000000000000007"]),
            Lsn(7 * SEG),
            1,
            17,
        ),
    ];
    let mut g = c.benchmark_group("verifier");
    for (name, data, start, tli, major) in &fixtures {
        g.throughput(Throughput::Bytes(data.len() as u64));
        for chunk in [data.len(), 128 << 10, 8 << 10] {
            let label = if chunk == data.len() {
                "all".to_string()
            } else {
                format!("{}K", chunk >> 10)
            };
            g.bench_function(format!("{name}/chunk={label}"), |b| {
                b.iter_batched(
                    || Verifier::at_segment_start(config(*tli, *major), *start),
                    |mut v| {
                        for c in data.chunks(chunk) {
                            v.feed(black_box(c)).expect("fixture verifies");
                        }
                        v.records()
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("crc32c");
    let buf = vec![0x5Au8; 1 << 20];
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("size=1M", |b| b.iter(|| crc32c::crc32c(black_box(&buf))));
    g.finish();
}

criterion_group!(benches, bench_verifier);
criterion_main!(benches);
