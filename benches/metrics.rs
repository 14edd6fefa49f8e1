//! Criterion benchmark of what the metrics add to each commit: the updates
//! the receive loop, the sink and the status update make for one commit
//! (received, verified, server WAL end, one fdatasync observed, the status
//! sent and its acknowledge latency), alone and while another thread scrapes
//! (encodes the registry) in a loop.
//!
//! Ids: `metrics/per_commit/idle`, `metrics/per_commit/scraped`,
//! `metrics/encode` (one scrape's encoding). Run with
//! `cargo bench --bench metrics`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use walrcv::lsn::Lsn;
use walrcv::metrics::{AckClock, Metrics};

/// The metric updates of one synchronous commit of about 512 bytes.
fn one_commit(m: &Metrics, clock: &mut AckClock, at: &mut u64, arrived: Instant) {
    let end = *at + 512;
    m.server_wal_end(Lsn(end));
    clock.wal_arrived(arrived, Lsn(end));
    m.wal_verified(Lsn(end), 3);
    m.wal_received(Lsn(end), 512);
    m.fdatasync_done(Duration::from_micros(250));
    m.status_sent(Lsn(end), Lsn(end));
    if let Some(latency) = clock.status_sent(arrived, Lsn(end)) {
        m.flush_acknowledged(latency);
    }
    *at = end;
}

fn per_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("metrics");
    let metrics = Arc::new(Metrics::new());
    let now = Instant::now();
    let (mut clock, mut at) = (AckClock::default(), 0x1000_0000u64);
    group.bench_function("per_commit/idle", |b| {
        b.iter(|| one_commit(black_box(&metrics), &mut clock, &mut at, now))
    });
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = {
        let (metrics, stop) = (Arc::clone(&metrics), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                black_box(metrics.encode());
            }
        })
    };
    group.bench_function("per_commit/scraped", |b| {
        b.iter(|| one_commit(black_box(&metrics), &mut clock, &mut at, now))
    });
    stop.store(true, Ordering::Relaxed);
    let _ = scraper.join();
    group.bench_function("encode", |b| b.iter(|| black_box(metrics.encode())));
    group.finish();
}

criterion_group!(benches, per_commit);
criterion_main!(benches);
