//! `walrcv_upload_*` metrics (`--upload`), registered in the process's registry by
//! [`crate::metrics::Metrics::new`] and updated by the uploader (`crate::upload`).

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type U64Gauge = Gauge<u64, AtomicU64>;

/// The uploader's handles.
#[derive(Debug, Clone)]
pub struct UploadMetrics {
    pub backlog_bytes: U64Gauge,
    pub backlog_files: U64Gauge,
    pub oldest_pending_seconds: U64Gauge,
    pub uploaded_files: Counter,
    pub uploaded_bytes: Counter,
    pub failures: Counter,
    pub conflicts: Counter,
    pub conflicts_pending: U64Gauge,
    pub latency: Histogram,
    pub local_removed: Counter,
    pub state_files: U64Gauge,
}

impl UploadMetrics {
    /// Registers every `walrcv_upload_*` metric in `r`.
    pub fn register(r: &mut Registry) -> UploadMetrics {
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = U64Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        // prometheus-client appends `_total` to a counter's name.
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let latency = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        r.register(
            "walrcv_upload_duration_seconds",
            "Duration of each confirmed upload (PUT, and the read-back when one was needed)",
            latency.clone(),
        );
        UploadMetrics {
            backlog_bytes: gauge(r, "walrcv_upload_backlog_bytes", "Bytes of complete segments and history files not yet confirmed in the object store"),
            backlog_files: gauge(r, "walrcv_upload_backlog_files", "Complete segments and history files not yet confirmed in the object store"),
            oldest_pending_seconds: gauge(r, "walrcv_upload_oldest_pending_seconds", "Age of the oldest file waiting for upload (0 when none)"),
            uploaded_files: counter(r, "walrcv_upload_files", "Files confirmed in the object store (complete, history and .partial versions)"),
            uploaded_bytes: counter(r, "walrcv_upload_bytes", "Bytes confirmed in the object store"),
            failures: counter(r, "walrcv_upload_failures", "Uploads that failed or stayed unconfirmed (retried with backoff)"),
            conflicts: counter(r, "walrcv_upload_conflicts", "Uploads refused because the object exists with different content (nothing overwritten)"),
            conflicts_pending: gauge(r, "walrcv_upload_conflicted_files", "Local files whose object in the store holds different content (critical)"),
            latency,
            local_removed: counter(r, "walrcv_upload_local_removed", "Local complete segments removed after a confirmed upload (--upload-keep-local)"),
            state_files: gauge(r, "walrcv_upload_state_files", "Local files the upload state file (.walrcv-uploaded) lists as confirmed: not uploaded nor read back after a restart"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_upload_metric_is_exposed() {
        let text = crate::metrics::Metrics::new().encode();
        for name in [
            "walrcv_upload_backlog_bytes 0",
            "walrcv_upload_backlog_files 0",
            "walrcv_upload_oldest_pending_seconds 0",
            "walrcv_upload_files_total 0",
            "walrcv_upload_bytes_total 0",
            "walrcv_upload_failures_total 0",
            "walrcv_upload_conflicts_total 0",
            "walrcv_upload_conflicted_files 0",
            "walrcv_upload_duration_seconds_count 0",
            "walrcv_upload_local_removed_total 0",
            "walrcv_upload_state_files 0",
        ] {
            assert!(text.lines().any(|l| l == name), "{name} missing in\n{text}");
        }
    }
}
