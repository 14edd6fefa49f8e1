//! The `/metrics` HTTP endpoint (`--metrics-address`), bounded against any
//! client: HTTP/1 by hyper with explicit limits, on a thread and a
//! single-threaded tokio runtime of its own, so that no scraper, however
//! slow, many or hostile, can take memory, threads, descriptors or time from
//! the receive loop (the commit path).
//!
//! The limits ([`LIMITS`], documented in the guide, `docs/src/metrics.md`):
//! - a request head (request line and headers) of at most 8 KiB: a longer
//!   one is answered 431 and the connection closed, the rest never read;
//! - the head must arrive within 5 s of the connection, and a connection
//!   lives at most 10 s in all (a scraper that never reads its answer
//!   included); one request per connection (no keep-alive);
//! - at most 64 connections at once: one more closes the oldest (a legitimate
//!   scrape lasts milliseconds, so the oldest is the likeliest to be idle),
//!   which keeps scrapes answered while an attacker holds idle connections;
//! - an accept that fails (no descriptor left: `EMFILE`) waits 100 ms before
//!   the next, rather than spinning.
//!
//! Which connection to close is [`Admission`]'s decision (sans-IO).

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{mpsc, oneshot};

use super::{free_bytes, global};

/// The endpoint's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; one more closes the oldest.
    pub max_connections: usize,
    /// The most bytes buffered for a request head (hyper's minimum is 8 KiB).
    pub max_request_head: usize,
    /// From the connection to the end of the request head.
    pub header_timeout: Duration,
    /// From the connection to its end, whatever happens.
    pub connection_lifetime: Duration,
    /// The wait after a failed accept.
    pub accept_backoff: Duration,
}

pub const LIMITS: Limits = Limits {
    max_connections: 64,
    max_request_head: 8 << 10,
    header_timeout: Duration::from_secs(5),
    connection_lifetime: Duration::from_secs(10),
    accept_backoff: Duration::from_millis(100),
};

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("could not serve metrics on \"{address}\": {reason}")]
pub struct ServeError {
    pub address: String,
    pub reason: String,
}

/// Which connections are open, oldest first, and which one a new
/// connection displaces when all `max` places are taken.
#[derive(Debug)]
pub struct Admission {
    max: usize,
    next: u64,
    open: BTreeSet<u64>,
}

impl Admission {
    pub fn new(max: usize) -> Admission {
        Admission {
            max: max.max(1),
            next: 0,
            open: BTreeSet::new(),
        }
    }

    /// A new connection: its number, and the oldest open one to close first
    /// if there was no room.
    pub fn admit(&mut self) -> (u64, Option<u64>) {
        let evicted = if self.open.len() >= self.max {
            self.open.pop_first()
        } else {
            None
        };
        let id = self.next;
        self.next += 1;
        self.open.insert(id);
        (id, evicted)
    }

    /// Connection `id` ended (or was closed).
    pub fn finished(&mut self, id: u64) {
        self.open.remove(&id);
    }

    pub fn open(&self) -> usize {
        self.open.len()
    }
}

/// The `/metrics` endpoint, on its own thread. Dropping it stops the thread
/// and closes the listener and every connection.
pub struct MetricsServer {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    local_address: String,
}

impl MetricsServer {
    /// The address bound (with the port chosen when 0 was asked).
    pub fn local_address(&self) -> &str {
        &self.local_address
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds `address` (HOST:PORT) and serves the [`global`] metrics at
/// `/metrics` from a thread of its own within [`LIMITS`]. The archive's free
/// space is measured (statvfs) at each scrape.
pub fn serve(address: &str, archive: &Path) -> Result<MetricsServer, ServeError> {
    let failed = |reason: String| ServeError {
        address: address.to_string(),
        reason,
    };
    let listener = std::net::TcpListener::bind(address).map_err(|e| failed(e.to_string()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| failed(e.to_string()))?;
    let local_address = listener
        .local_addr()
        .map_err(|e| failed(e.to_string()))?
        .to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| failed(format!("no runtime to serve from: {e}")))?;
    let listener = {
        let _context = runtime.enter();
        tokio::net::TcpListener::from_std(listener).map_err(|e| failed(e.to_string()))?
    };
    let (stop, stopped) = oneshot::channel();
    let archive = Arc::new(archive.to_path_buf());
    let thread = std::thread::Builder::new()
        .name("walrcv-metrics".into())
        .spawn(move || runtime.block_on(accept_loop(listener, archive, stopped, LIMITS)))
        .map_err(|e| failed(format!("no thread to serve from: {e}")))?;
    tracing::info!("serving metrics at http://{local_address}/metrics");
    Ok(MetricsServer {
        stop: Some(stop),
        thread: Some(thread),
        local_address,
    })
}

/// Accepts connections until `stop`, each served by a task of its own,
/// at most `limits.max_connections` at once.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    archive: Arc<PathBuf>,
    mut stop: oneshot::Receiver<()>,
    limits: Limits,
) {
    let mut admission = Admission::new(limits.max_connections);
    let mut tasks: HashMap<u64, tokio::task::JoinHandle<()>> = HashMap::new();
    let (ended, mut endings) = mpsc::unbounded_channel::<u64>();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            Some(id) = endings.recv() => {
                admission.finished(id);
                tasks.remove(&id);
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (id, evicted) = admission.admit();
                    if let Some(old) = evicted.and_then(|old| tasks.remove(&old)) {
                        old.abort();
                    }
                    let archive = Arc::clone(&archive);
                    let ended = ended.clone();
                    let task = tokio::spawn(async move {
                        serve_connection(stream, archive, limits).await;
                        let _ = ended.send(id);
                    });
                    tasks.insert(id, task);
                }
                Err(e) => {
                    tracing::debug!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(limits.accept_backoff).await;
                }
            },
        }
    }
}

/// One request on one connection, within the limits.
async fn serve_connection(stream: tokio::net::TcpStream, archive: Arc<PathBuf>, limits: Limits) {
    let service = hyper::service::service_fn(move |request| {
        let archive = Arc::clone(&archive);
        async move { Ok::<_, Infallible>(answer(&request, &archive)) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_request_head)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(limits.connection_lifetime, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("metrics endpoint: {e}"),
        Err(_) => tracing::debug!("metrics endpoint: a connection outlived its limit, closed"),
    }
}

const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn answer(request: &Request<Incoming>, archive: &Path) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            if let Some(free) = free_bytes(archive) {
                global().set_archive_free_bytes(free);
            }
            text(StatusCode::OK, global().encode(), OPENMETRICS_TYPE)
        }
        (&Method::GET, _) => text(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n".into(),
            "text/plain",
        ),
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET\n".into(),
            "text/plain",
        ),
    }
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Room for `max`; one more displaces the oldest still open, never one
    /// that already ended.
    #[test]
    fn a_connection_over_the_cap_displaces_the_oldest() {
        let mut a = Admission::new(3);
        assert_eq!(a.admit(), (0, None));
        assert_eq!(a.admit(), (1, None));
        assert_eq!(a.admit(), (2, None));
        assert_eq!(a.admit(), (3, Some(0)));
        a.finished(1);
        assert_eq!(a.open(), 2);
        assert_eq!(a.admit(), (4, None));
        assert_eq!(a.admit(), (5, Some(2)));
        a.finished(2);
        assert_eq!(a.open(), 3);
        assert_eq!(Admission::new(0).admit(), (0, None));
    }
}
