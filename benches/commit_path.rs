//! Criterion benchmarks of the commit path's own work, per commit-sized chunk
//! of real WAL (`testdata/wal/pg15`, 1 MB segments): what the receive loop
//! does between reading a message and sending the status update.
//!
//! Ids:
//! - `commit_path/verify_write/chunk=512`: verify and `pwrite` one 512-byte
//!   chunk (about one pgbench -N commit) through [`WalSink`], no fsync;
//! - `commit_path/verify_write_fdatasync/chunk=512`: the same plus the
//!   batch's `fdatasync` (on the file system holding the temporary directory:
//!   run it where the archive would live, `TMPDIR=/path cargo bench`);
//! - `commit_path/feedback/after_sync`: the policy's decision and status.
//!
//! Run with `cargo bench --bench commit_path`. Segment set-up (opening and
//! padding a new segment file) is excluded from the timings.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use walrcv::lsn::Lsn;
use walrcv::receiver::feedback::{Feedback, FeedbackConfig, Positions};
use walrcv::receiver::sink::{SinkConfig, WalSink};
use walrcv::wal::VerifierConfig;

const SEG: u64 = 1 << 20;
const CHUNK: usize = 512;

fn segment() -> Vec<u8> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/wal/pg15/000000010000000000000008");
    std::fs::read(path).expect("fixture missing: run scripts/make-testdata.sh")
}

fn sink(dir: &Path, sync: bool) -> WalSink {
    let start = Lsn(8 * SEG);
    WalSink::new(SinkConfig {
        directory: dir.to_path_buf(),
        timeline: 1,
        segment_size: SEG,
        sync,
        start,
        start_is_durable: false,
        verifier: VerifierConfig {
            segment_size: SEG,
            block_size: 8192,
            system_id: None,
            timeline: 1,
            server_major: Some(15),
        },
        primed: None,
        compression: walrcv::archive::compress_spec::CompressionSpec::NONE,
    })
}

/// Times `iters` chunks written (and synced after each, when `sync`), starting
/// a fresh sink whenever the segment runs out; set-up is not timed.
fn write_chunks(wal: &[u8], iters: u64, sync: bool) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0u64;
    while done < iters {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut s = sink(dir.path(), sync);
        // Open (and pad) the segment outside the timing.
        s.write(Lsn(8 * SEG), &wal[..CHUNK]).expect("first chunk");
        s.sync().expect("sync");
        let mut offset = CHUNK;
        // Stop before the segment fills, so its completion is not timed.
        while offset + CHUNK < wal.len() && done < iters {
            let t = Instant::now();
            let n = s
                .write(Lsn(8 * SEG + offset as u64), &wal[offset..offset + CHUNK])
                .expect("write");
            s.sync().expect("sync");
            black_box(s.positions());
            total += t.elapsed();
            offset += n;
            done += 1;
        }
        drop(s);
    }
    total
}

fn bench_commit_path(c: &mut Criterion) {
    let wal = segment();
    let mut group = c.benchmark_group("commit_path");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    group.bench_function("verify_write/chunk=512", |b| {
        b.iter_custom(|iters| write_chunks(&wal, iters, false))
    });
    group.sample_size(20);
    group.bench_function("verify_write_fdatasync/chunk=512", |b| {
        b.iter_custom(|iters| write_chunks(&wal, iters, true))
    });
    group.finish();

    let mut group = c.benchmark_group("commit_path/feedback");
    group.bench_function("after_sync", |b| {
        let config = FeedbackConfig {
            status_interval: Some(Duration::from_secs(10)),
            receive_timeout: Duration::from_secs(60),
        };
        let now = Instant::now();
        let mut f = Feedback::new(config, now);
        let mut lsn = 1u64;
        b.iter(|| {
            lsn += 512;
            let p = Positions {
                write: Lsn(lsn),
                flush: Lsn(lsn),
            };
            black_box(f.after_sync(now, p, false))
        })
    });
    group.finish();
}

criterion_group!(benches, bench_commit_path);
criterion_main!(benches);
