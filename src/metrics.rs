//! Prometheus metrics of `walrcv stream`: the registry and its typed handles
//! ([`Metrics`], one per process through [`global`]), the acknowledge-latency
//! clock ([`AckClock`], sans-IO), and the `/metrics` HTTP endpoint
//! ([`serve`], `--metrics-address`, in [`http`]: bounded against any client).
//!
//! The metric names are a contract with `walrcv status`, the Grafana
//! dashboard and the alert rules in `contrib/`: see `docs/src/metrics.md`.
//!
//! Cost on the commit path: every update is one or two relaxed atomic
//! operations on a handle built once at start-up (no allocation, no map
//! lookup). The two histograms take a short mutex each (prometheus-client's),
//! which a scrape holds only to copy a dozen buckets, never while it writes
//! to the network: the exposition is encoded into memory first, then sent by
//! the endpoint's thread. The values are kept whether or not they are served.

use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::lsn::Lsn;
use crate::{MAX_SERVER_MAJOR, MIN_SERVER_MAJOR};

pub mod http;
pub mod serve;
pub mod upload;
pub use http::{serve, MetricsServer, ServeError};

/// An LSN, byte count or other non-negative integer gauge.
type U64Gauge = Gauge<u64, AtomicU64>;
type IntGauge = Gauge<i64, AtomicI64>;

/// Labels of `walrcv_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    server_majors: String,
}

/// Label of `walrcv_last_disconnect_reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// What failed and ended a session: the label of
/// `walrcv_session_failures_total`, and the key of the receiver's backoff
/// (`crate::receiver::backoff`: failures of one kind tend to repeat). Defined
/// here, below the receiver, so that the metrics do not depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Connecting, a lost connection, a receive timeout.
    Network,
    /// A retryable error from the server (shutting down, too many clients,
    /// slot in use...).
    Server,
    /// Writing, fsyncing or renaming in the archive (a full disk, EIO).
    Archive,
    /// Received WAL failed verification.
    Verification,
    /// A malformed or unexpected message from the server.
    Protocol,
}

impl FailureKind {
    pub fn describe(self) -> &'static str {
        match self {
            FailureKind::Network => "network",
            FailureKind::Server => "server",
            FailureKind::Archive => "archive write",
            FailureKind::Verification => "WAL verification",
            FailureKind::Protocol => "protocol",
        }
    }
}

/// Every failure kind, in the order of [`FailureKind`].
const KINDS: [FailureKind; 5] = [
    FailureKind::Network,
    FailureKind::Server,
    FailureKind::Archive,
    FailureKind::Verification,
    FailureKind::Protocol,
];

/// The `kind` label of a failure kind (one word, unlike `describe`).
pub fn kind_label(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Network => "network",
        FailureKind::Server => "server",
        FailureKind::Archive => "archive",
        FailureKind::Verification => "verification",
        FailureKind::Protocol => "protocol",
    }
}

/// Buckets of the fdatasync histogram: 100 µs to about 3.3 s.
fn fdatasync_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16)
}

/// Buckets of the acknowledge-latency histogram: 50 µs to about 3.3 s.
fn ack_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 17)
}

/// The registry and the handles the receiver updates.
pub struct Metrics {
    registry: Registry,
    connected: IntGauge,
    server_timeline: IntGauge,
    received_lsn: U64Gauge,
    written_lsn: U64Gauge,
    flushed_lsn: U64Gauge,
    verified_lsn: U64Gauge,
    server_wal_end_lsn: U64Gauge,
    lag_bytes: U64Gauge,
    received_bytes: Counter,
    records_verified: Counter,
    verification_failures: Counter,
    fdatasync_duration: Histogram,
    flush_ack_latency: Histogram,
    segments_completed: Counter,
    divergent_bytes: Counter,
    archive_untrusted: IntGauge,
    reconnects: Counter,
    /// One gauge per kind, built at start so that a failure allocates nothing.
    last_disconnect: Vec<IntGauge>,
    archive_free_bytes: U64Gauge,
    /// `walrcv_upload_*` (`--upload`).
    upload: upload::UploadMetrics,
    /// `walrcv_serve_*` (`walrcv serve`, `stream --serve`).
    serve: serve::ServeMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered (all zero).
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let build_info = Family::<BuildLabels, IntGauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                server_majors: format!("{MIN_SERVER_MAJOR}-{MAX_SERVER_MAJOR}"),
            })
            .set(1);
        registry.register(
            "walrcv_build_info",
            "walrcv's version and the server major versions it supports",
            build_info,
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = IntGauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let u64_gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = U64Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        // prometheus-client appends `_total` to a counter's name.
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            let base = name.strip_suffix("_total").unwrap_or(name);
            registry.register(base, help, c.clone());
            c
        };
        let histogram = |registry: &mut Registry,
                         name: &str,
                         help: &str,
                         buckets: &mut dyn Iterator<Item = f64>| {
            let h = Histogram::new(buckets);
            registry.register(name, help, h.clone());
            h
        };
        let r = &mut registry;
        let connected = gauge(
            r,
            "walrcv_connected",
            "1 while a replication stream is open, else 0",
        );
        let server_timeline = gauge(r, "walrcv_server_timeline", "Timeline being streamed");
        // Registered (so encoded) from the lowest position to the highest:
        // a scrape is no snapshot, but reading each lower position first
        // keeps flushed <= written <= verified <= received <= server end
        // true in every scrape (all only grow on one timeline).
        let flushed_lsn = u64_gauge(
            r,
            "walrcv_flushed_lsn",
            "Flush position reported to the server (durable and verified)",
        );
        let written_lsn = u64_gauge(
            r,
            "walrcv_written_lsn",
            "Write position reported to the server",
        );
        let verified_lsn = u64_gauge(r, "walrcv_verified_lsn", "End of the WAL verified");
        let received_lsn = u64_gauge(r, "walrcv_received_lsn", "End of the WAL received");
        let server_wal_end_lsn = u64_gauge(
            r,
            "walrcv_server_wal_end_lsn",
            "The server's WAL end from its XLogData and keepalive messages",
        );
        let lag_bytes = u64_gauge(
            r,
            "walrcv_lag_bytes",
            "Server WAL end minus the flushed LSN (0 when unknown)",
        );
        let received_bytes = counter(r, "walrcv_received_bytes_total", "WAL bytes received");
        let records_verified = counter(r, "walrcv_records_verified_total", "WAL records verified");
        let verification_failures = counter(
            r,
            "walrcv_verification_failures_total",
            "WAL verification failures",
        );
        let fdatasync_duration = histogram(
            r,
            "walrcv_fdatasync_duration_seconds",
            "Duration of each fdatasync of WAL",
            &mut fdatasync_buckets(),
        );
        let flush_ack_latency = histogram(
            r,
            "walrcv_flush_ack_latency_seconds",
            "From a message's arrival to the status update acknowledging it as flushed",
            &mut ack_buckets(),
        );
        let segments_completed = counter(
            r,
            "walrcv_segments_completed_total",
            "Segments completed (renamed to their final name)",
        );
        let divergent_bytes = counter(
            r,
            "walrcv_divergent_bytes_total",
            "Bytes of WAL past a switch point set aside as divergent after a failover",
        );
        let archive_untrusted = gauge(
            r,
            "walrcv_archive_untrusted",
            "1 once the archive's WAL before the start point was found corrupt or of unknown durability (walrcv then exits 5)",
        );
        let reconnects = counter(
            r,
            "walrcv_reconnects_total",
            "Sessions that ended in a failure and were retried",
        );
        let reasons = Family::<KindLabel, IntGauge>::default();
        let last_disconnect = KINDS
            .iter()
            .map(|&k| {
                reasons
                    .get_or_create(&KindLabel {
                        kind: kind_label(k),
                    })
                    .clone()
            })
            .collect();
        registry.register(
            "walrcv_last_disconnect_reason",
            "Kind of the last failure (1 on the current kind)",
            reasons,
        );
        let archive_free_bytes = u64_gauge(
            &mut registry,
            "walrcv_archive_free_bytes",
            "Free bytes on the archive directory's file system",
        );
        let upload = upload::UploadMetrics::register(&mut registry);
        let serve = serve::ServeMetrics::register(&mut registry);
        Metrics {
            registry,
            connected,
            server_timeline,
            received_lsn,
            written_lsn,
            flushed_lsn,
            verified_lsn,
            server_wal_end_lsn,
            lag_bytes,
            received_bytes,
            records_verified,
            verification_failures,
            fdatasync_duration,
            flush_ack_latency,
            segments_completed,
            divergent_bytes,
            archive_untrusted,
            reconnects,
            last_disconnect,
            archive_free_bytes,
            upload,
            serve,
        }
    }

    /// The server's metrics (`walrcv serve`, `stream --serve`).
    pub fn serve(&self) -> &serve::ServeMetrics {
        &self.serve
    }

    /// The uploader's metrics.
    pub fn upload(&self) -> &upload::UploadMetrics {
        &self.upload
    }

    /// The exposition in the OpenMetrics text format (which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// A stream started on `timeline`.
    pub fn stream_started(&self, timeline: u32) {
        self.server_timeline.set(i64::from(timeline));
        self.connected.set(1);
    }

    /// The stream ended (for whatever reason).
    pub fn stream_ended(&self) {
        self.connected.set(0);
    }

    /// WAL was received up to `end`: `bytes` more.
    pub fn wal_received(&self, end: Lsn, bytes: u64) {
        self.received_lsn.set(end.0);
        self.received_bytes.inc_by(bytes);
    }

    /// The verifier reached `end`, with `new_records` more records checked.
    pub fn wal_verified(&self, end: Lsn, new_records: u64) {
        self.verified_lsn.set(end.0);
        if new_records > 0 {
            self.records_verified.inc_by(new_records);
        }
    }

    pub fn verification_failed(&self) {
        self.verification_failures.inc();
    }

    /// The server says it has WAL up to `lsn`.
    pub fn server_wal_end(&self, lsn: Lsn) {
        self.server_wal_end_lsn.set(lsn.0);
        self.update_lag(lsn.0, self.flushed_lsn.get());
    }

    /// A status update reported these positions.
    pub fn status_sent(&self, write: Lsn, flush: Lsn) {
        self.written_lsn.set(write.0);
        self.flushed_lsn.set(flush.0);
        self.update_lag(self.server_wal_end_lsn.get(), flush.0);
    }

    fn update_lag(&self, server_end: u64, flushed: u64) {
        self.lag_bytes.set(lag(server_end, flushed));
    }

    pub fn fdatasync_done(&self, took: Duration) {
        self.fdatasync_duration.observe(took.as_secs_f64());
    }

    pub fn flush_acknowledged(&self, latency: Duration) {
        self.flush_ack_latency.observe(latency.as_secs_f64());
    }

    pub fn segment_completed(&self) {
        self.segments_completed.inc();
    }

    /// A divergent tail of `bytes` was set aside.
    pub fn divergent_set_aside(&self, bytes: u64) {
        self.divergent_bytes.inc_by(bytes);
    }

    /// The archive's WAL before the start point cannot be trusted: walrcv
    /// stops (exit 5).
    pub fn archive_untrusted(&self) {
        self.archive_untrusted.set(1);
    }

    /// A session failed with `kind` and is retried.
    pub fn session_failed(&self, kind: FailureKind) {
        self.connected.set(0);
        self.reconnects.inc();
        for (k, gauge) in KINDS.iter().zip(&self.last_disconnect) {
            gauge.set(i64::from(*k == kind));
        }
    }

    pub fn set_archive_free_bytes(&self, bytes: u64) {
        self.archive_free_bytes.set(bytes);
    }
}

/// `walrcv_lag_bytes`: 0 while either end is unknown (0/0), never negative.
pub fn lag(server_end: u64, flushed: u64) -> u64 {
    if server_end == 0 || flushed == 0 {
        0
    } else {
        server_end.saturating_sub(flushed)
    }
}

/// The process's metrics, created on first use.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    if let Some(metrics) = METRICS.get() {
        return metrics;
    }
    let metrics = METRICS.get_or_init(Metrics::new);
    // The archive reports its fdatasyncs through an observer (it depends on
    // no layer above it): these metrics are it from their first use on.
    crate::archive::observe::set_observer(metrics);
    metrics
}

impl crate::archive::observe::Observer for Metrics {
    fn fdatasync_done(&self, took: Duration) {
        Metrics::fdatasync_done(self, took);
    }
}

/// Measures `walrcv_flush_ack_latency_seconds`, sans-IO: the oldest WAL not
/// yet acknowledged is remembered with its arrival time, and the first status
/// update whose flush position covers its end gives the latency. WAL arriving
/// while older WAL waits is covered by the same measure (the oldest is the
/// worst), so on the synchronous commit path, where each commit is its own
/// batch, every commit is measured.
#[derive(Debug, Default, Clone)]
pub struct AckClock {
    oldest_unacked: Option<(Instant, Lsn)>,
}

impl AckClock {
    /// WAL ending at `end` arrived at `at`.
    pub fn wal_arrived(&mut self, at: Instant, end: Lsn) {
        if self.oldest_unacked.is_none() {
            self.oldest_unacked = Some((at, end));
        }
    }

    /// A status update reporting `flush` was sent at `now`: the latency of the
    /// oldest WAL it acknowledges, if it covers it.
    pub fn status_sent(&mut self, now: Instant, flush: Lsn) -> Option<Duration> {
        let (arrived, end) = self.oldest_unacked?;
        if flush < end {
            return None;
        }
        self.oldest_unacked = None;
        Some(now.saturating_duration_since(arrived))
    }

    /// A new stream: what the old one did not acknowledge is not measured.
    pub fn reset(&mut self) {
        self.oldest_unacked = None;
    }
}

/// Free bytes for an unprivileged user on the file system of `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `stat` is written by statvfs
    // before it is read (only on success).
    let stat = unsafe {
        if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    // The casts widen (or keep) the libc field types on every platform.
    #[allow(clippy::unnecessary_cast)]
    Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

#[cfg(test)]
mod tests;
