//! `walrcv_serve_*` metrics (`walrcv serve`, `walrcv stream --serve`),
//! registered in the process's registry by [`crate::metrics::Metrics::new`]
//! and updated by the server (`crate::serve::server`).
//!
//! Per-client series are labelled by the client's `application_name` and
//! address; there are never more label sets than `--serve-max-clients`
//! (the cap is checked here too, not only by the server's semaphore), and a
//! client's series are removed when it leaves, so the cardinality is bounded
//! whatever clients come and go.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::lsn::Lsn;

type U64Gauge = Gauge<u64, AtomicU64>;
type IntGauge = Gauge<i64, AtomicI64>;

/// Longest `application_name` label kept (PostgreSQL's NAMEDATALEN - 1).
const MAX_NAME: usize = 63;

/// Why a connection was refused: the label of `walrcv_serve_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--serve-max-clients` reached.
    TooManyClients,
    /// No `--serve-hba` line matched.
    NoHbaEntry,
    /// A `reject` line matched.
    HbaReject,
    /// Wrong password, or a client certificate missing or not the user's.
    AuthFailed,
    /// A TLS handshake failed (a client certificate that does not verify).
    Tls,
    /// Not a replication connection.
    NotReplication,
    /// Start-up or authentication took too long.
    Timeout,
}

const REFUSALS: [Refusal; 7] = [
    Refusal::TooManyClients,
    Refusal::NoHbaEntry,
    Refusal::HbaReject,
    Refusal::AuthFailed,
    Refusal::Tls,
    Refusal::NotReplication,
    Refusal::Timeout,
];

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::TooManyClients => "too_many_clients",
            Refusal::NoHbaEntry => "no_hba_entry",
            Refusal::HbaReject => "hba_reject",
            Refusal::AuthFailed => "auth_failed",
            Refusal::Tls => "tls",
            Refusal::NotReplication => "not_replication",
            Refusal::Timeout => "timeout",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabels {
    application_name: String,
    client: String,
}

/// The server's handles.
#[derive(Debug, Clone)]
pub struct ServeMetrics {
    clients: IntGauge,
    sent_bytes: Counter,
    refused: Family<ReasonLabel, Counter>,
    sent_lsn: Family<ClientLabels, U64Gauge>,
    flush_lsn: Family<ClientLabels, U64Gauge>,
    lag_bytes: Family<ClientLabels, U64Gauge>,
    /// Clients with series now.
    series: Arc<AtomicUsize>,
}

impl ServeMetrics {
    /// Registers every `walrcv_serve_*` metric in `r`.
    pub fn register(r: &mut Registry) -> ServeMetrics {
        let m = ServeMetrics {
            clients: IntGauge::default(),
            sent_bytes: Counter::default(),
            refused: Family::default(),
            sent_lsn: Family::default(),
            flush_lsn: Family::default(),
            lag_bytes: Family::default(),
            series: Arc::default(),
        };
        for reason in REFUSALS {
            // Every reason shows from the start, at 0.
            let _ = m.refused.get_or_create(&ReasonLabel {
                reason: reason.label(),
            });
        }
        r.register(
            "walrcv_serve_clients",
            "Replication clients connected and authenticated",
            m.clients.clone(),
        );
        // prometheus-client appends `_total` to a counter's name.
        r.register(
            "walrcv_serve_sent_bytes",
            "WAL bytes sent to replication clients",
            m.sent_bytes.clone(),
        );
        r.register(
            "walrcv_serve_refused",
            "Connections refused, by reason",
            m.refused.clone(),
        );
        r.register(
            "walrcv_serve_client_sent_lsn",
            "WAL sent to this client up to this LSN",
            m.sent_lsn.clone(),
        );
        r.register(
            "walrcv_serve_client_flush_lsn",
            "Flush position this client last reported",
            m.flush_lsn.clone(),
        );
        r.register(
            "walrcv_serve_client_lag_bytes",
            "Sent minus reported flush position of this client",
            m.lag_bytes.clone(),
        );
        m
    }

    pub fn refused(&self, why: Refusal) {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: why.label(),
            })
            .inc();
    }

    /// A client authenticated: counted until the handle is dropped, with
    /// series of its own unless `cap` clients have them already.
    pub fn client(&self, application_name: &str, client: &str, cap: usize) -> ClientMetrics {
        self.clients.inc();
        let taken = self
            .series
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok();
        let labels = taken.then(|| {
            let mut name = application_name.to_owned();
            if name.len() > MAX_NAME {
                let mut cut = MAX_NAME;
                while !name.is_char_boundary(cut) {
                    cut -= 1;
                }
                name.truncate(cut);
            }
            ClientLabels {
                application_name: name,
                client: client.to_owned(),
            }
        });
        let handles = labels.as_ref().map(|l| {
            [
                self.sent_lsn.get_or_create(l).clone(),
                self.flush_lsn.get_or_create(l).clone(),
                self.lag_bytes.get_or_create(l).clone(),
            ]
        });
        ClientMetrics {
            all: self.clone(),
            labels,
            handles,
        }
    }
}

/// One client's series; removed when dropped.
#[derive(Debug)]
pub struct ClientMetrics {
    all: ServeMetrics,
    labels: Option<ClientLabels>,
    /// sent, flush, lag.
    handles: Option<[U64Gauge; 3]>,
}

impl ClientMetrics {
    /// `bytes` more were sent, up to `sent`.
    pub fn sent(&self, sent: Lsn, bytes: u64, flush: Lsn) {
        self.all.sent_bytes.inc_by(bytes);
        self.positions(sent, flush);
    }

    /// The positions now.
    pub fn positions(&self, sent: Lsn, flush: Lsn) {
        if let Some([s, f, lag]) = &self.handles {
            s.set(sent.0);
            f.set(flush.0);
            lag.set(if flush.0 == 0 {
                0
            } else {
                sent.0.saturating_sub(flush.0)
            });
        }
    }
}

impl Drop for ClientMetrics {
    fn drop(&mut self) {
        self.all.clients.dec();
        if let Some(l) = self.labels.take() {
            self.all.sent_lsn.remove(&l);
            self.all.flush_lsn.remove(&l);
            self.all.lag_bytes.remove(&l);
            self.all.series.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(r: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, r).unwrap();
        out
    }

    #[test]
    fn client_series_come_and_go_within_the_cap() {
        let mut r = Registry::default();
        let m = ServeMetrics::register(&mut r);
        let text = encode(&r);
        assert!(text.contains("walrcv_serve_clients 0"), "{text}");
        assert!(text.contains("walrcv_serve_refused_total{reason=\"too_many_clients\"} 0"));
        let a = m.client("standby1", "10.0.0.1:40000", 2);
        a.sent(Lsn(0x300_0000), 4096, Lsn(0x2ff_f000));
        let b = m.client(&"x".repeat(200), "10.0.0.2:40000", 2);
        b.positions(Lsn(10), Lsn(0));
        // Over the cap: counted, no series.
        let c = m.client("third", "10.0.0.3:40000", 2);
        m.refused(Refusal::AuthFailed);
        let text = encode(&r);
        assert!(text.contains("walrcv_serve_clients 3"), "{text}");
        assert!(text.contains(
            "walrcv_serve_client_sent_lsn{application_name=\"standby1\",client=\"10.0.0.1:40000\"} 50331648"
        ), "{text}");
        assert!(text.contains(
            "walrcv_serve_client_lag_bytes{application_name=\"standby1\",client=\"10.0.0.1:40000\"} 4096"
        ), "{text}");
        assert!(text.contains(&format!("application_name=\"{}\"", "x".repeat(63))));
        assert!(!text.contains("third"));
        assert!(text.contains("walrcv_serve_sent_bytes_total 4096"));
        assert!(text.contains("walrcv_serve_refused_total{reason=\"auth_failed\"} 1"));
        drop(a);
        let text = encode(&r);
        assert!(!text.contains("standby1"), "{text}");
        assert!(text.contains("walrcv_serve_clients 2"));
        // A slot freed: the next client gets series.
        let d = m.client("fourth", "10.0.0.4:40000", 2);
        assert!(encode(&r).contains("fourth"));
        drop((b, c, d));
        let text = encode(&r);
        assert!(text.contains("walrcv_serve_clients 0"));
        assert!(!text.contains("client_sent_lsn{"), "{text}");
    }
}
