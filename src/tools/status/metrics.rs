//! `walrcv status --metrics-url`: one HTTP GET of a running `walrcv stream`'s
//! `/metrics`, and the few samples the status reports.
//!
//! The client is a plain HTTP/1.0 GET over `std::net::TcpStream` (the endpoint
//! is walrcv's own, on a trusted address; HTTP/1.0 means no chunked encoding
//! and the body ends when the connection closes). The parser reads only what
//! the Prometheus text format puts on sample lines, `name{labels} value
//! [timestamp]`, and skips comments; label values may hold escaped quotes.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::lsn::Lsn;

use super::check::LiveFacts;

/// The largest response read (the exposition is a few KiB).
const MAX_RESPONSE: u64 = 4 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetricsError {
    #[error("invalid metrics URL {url:?}: {why}")]
    BadUrl { url: String, why: &'static str },
    #[error("could not connect to {addr}: {why}")]
    Connect { addr: String, why: String },
    #[error("reading from {addr}: {why}")]
    Io { addr: String, why: String },
    #[error("{addr} answered {status:?} instead of 200 OK")]
    Status { addr: String, status: String },
}

/// `http://host:port[/path]`, or `host:port` (path `/metrics`, as printed
/// by `--metrics-address`).
fn split_url(url: &str) -> Result<(String, String), MetricsError> {
    let bad = |why| MetricsError::BadUrl {
        url: url.to_string(),
        why,
    };
    if url.starts_with("https://") {
        return Err(bad("https is not supported (walrcv serves plain HTTP)"));
    }
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    if authority.is_empty() || !authority.contains(':') {
        return Err(bad("expected host:port"));
    }
    Ok((authority.to_string(), path.to_string()))
}

/// GETs `url` and returns the body, each step bounded by `timeout`.
pub fn fetch(url: &str, timeout: Duration) -> Result<String, MetricsError> {
    let (authority, path) = split_url(url)?;
    let connect = |why: String| MetricsError::Connect {
        addr: authority.clone(),
        why,
    };
    let io = |e: std::io::Error| MetricsError::Io {
        addr: authority.clone(),
        why: e.to_string(),
    };
    let addrs: Vec<_> = authority
        .to_socket_addrs()
        .map_err(|e| connect(e.to_string()))?
        .collect();
    let mut last = connect("the name resolved to no address".into());
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = connect(e.to_string()),
        }
    }
    let mut stream = stream.ok_or(last)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: text/plain\r\nUser-Agent: walrcv-status/{}\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let response = read_response(&mut stream).map_err(io)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("").trim();
    let code = status.split_whitespace().nth(1);
    if !status.starts_with("HTTP/") || code != Some("200") {
        return Err(MetricsError::Status {
            addr: authority,
            status: status.to_string(),
        });
    }
    Ok(body.to_string())
}

/// Reads the response until the connection closes or, when the headers give a
/// `Content-Length`, until the body is complete (a server that keeps the
/// connection open despite HTTP/1.0 must not cost the whole timeout).
fn read_response(stream: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut response = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(response);
        }
        response.extend_from_slice(&chunk[..n]);
        if response.len() as u64 >= MAX_RESPONSE {
            return Ok(response);
        }
        if let Some(total) = complete_length(&response) {
            if response.len() >= total {
                return Ok(response);
            }
        }
    }
}

/// Headers plus `Content-Length`, once the headers are all there and give it.
fn complete_length(response: &[u8]) -> Option<usize> {
    let end = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&response[..end]);
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    })?;
    Some(end + length)
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses the sample lines of a Prometheus text exposition; malformed lines are
/// skipped (one odd line must not hide the rest).
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if rest.starts_with('{') {
        let (parsed, after) = parse_labels(&rest[1..])?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `a="x",b="y\"z"}` → the pairs and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key, value));
        s = &s[end + 1..];
    }
}

fn value(samples: &[Sample], name: &str) -> Option<f64> {
    samples.iter().find(|s| s.name == name).map(|s| s.value)
}

fn count(samples: &[Sample], name: &str) -> Option<u64> {
    value(samples, name)
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| v as u64)
}

fn lsn(samples: &[Sample], name: &str) -> Option<String> {
    count(samples, name).map(|v| Lsn(v).to_string())
}

fn label<'a>(sample: &'a Sample, key: &str) -> Option<&'a str> {
    sample
        .labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The live state from the samples (the names of issue 10's metrics contract).
pub fn live_facts(url: &str, samples: &[Sample]) -> LiveFacts {
    let last_disconnect_kind = samples
        .iter()
        .find(|s| s.name == "walrcv_last_disconnect_reason" && s.value == 1.0)
        .and_then(|s| label(s, "kind"))
        .map(str::to_string);
    LiveFacts {
        url: url.to_string(),
        error: None,
        version: samples
            .iter()
            .find(|s| s.name == "walrcv_build_info")
            .and_then(|s| label(s, "version"))
            .map(str::to_string),
        connected: value(samples, "walrcv_connected").map(|v| v == 1.0),
        server_timeline: count(samples, "walrcv_server_timeline"),
        flushed_lsn: lsn(samples, "walrcv_flushed_lsn"),
        server_wal_end_lsn: lsn(samples, "walrcv_server_wal_end_lsn"),
        lag_bytes: count(samples, "walrcv_lag_bytes"),
        reconnects: count(samples, "walrcv_reconnects_total"),
        verification_failures: count(samples, "walrcv_verification_failures_total"),
        last_disconnect_kind,
        archive_free_bytes: count(samples, "walrcv_archive_free_bytes"),
        upload_conflicted_files: count(samples, "walrcv_upload_conflicted_files"),
        upload_backlog_files: count(samples, "walrcv_upload_backlog_files"),
        upload_oldest_pending_seconds: count(samples, "walrcv_upload_oldest_pending_seconds"),
    }
}

/// Fetches and reads `url`; a failure is carried in [`LiveFacts::error`].
pub fn read_live(url: &str, timeout: Duration) -> LiveFacts {
    match fetch(url, timeout) {
        Ok(body) => live_facts(url, &parse_exposition(&body)),
        Err(e) => LiveFacts {
            url: url.to_string(),
            error: Some(e.to_string()),
            ..LiveFacts::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = r#"# HELP walrcv_build_info Build information.
# TYPE walrcv_build_info gauge
walrcv_build_info{version="0.1.0",server_majors="13-18"} 1
walrcv_connected 1
walrcv_server_timeline 2
walrcv_flushed_lsn 83886080
walrcv_server_wal_end_lsn 83890176
walrcv_lag_bytes 4096
walrcv_reconnects_total 3
walrcv_verification_failures_total 0
walrcv_last_disconnect_reason{kind="network"} 1
walrcv_last_disconnect_reason{kind="server"} 0
walrcv_fdatasync_duration_seconds_bucket{le="+Inf"} 12
walrcv_archive_free_bytes 1.073741824e+09
"#;

    #[test]
    fn parses_the_contract_names() {
        let l = live_facts("x", &parse_exposition(EXPOSITION));
        assert_eq!(l.version.as_deref(), Some("0.1.0"));
        assert_eq!(l.connected, Some(true));
        assert_eq!(l.server_timeline, Some(2));
        assert_eq!(l.flushed_lsn.as_deref(), Some("0/5000000"));
        assert_eq!(l.server_wal_end_lsn.as_deref(), Some("0/5001000"));
        assert_eq!(l.lag_bytes, Some(4096));
        assert_eq!(l.reconnects, Some(3));
        assert_eq!(l.verification_failures, Some(0));
        assert_eq!(l.last_disconnect_kind.as_deref(), Some("network"));
        assert_eq!(l.archive_free_bytes, Some(1 << 30));
    }

    #[test]
    fn lines() {
        let s = parse_line(r#"m{a="x\"y",b="z"} 1.5 1700000000000"#).unwrap();
        assert_eq!(s.name, "m");
        assert_eq!(
            s.labels,
            vec![("a".into(), "x\"y".into()), ("b".into(), "z".into())]
        );
        assert_eq!(s.value, 1.5);
        assert_eq!(parse_line("m +Inf").unwrap().value, f64::INFINITY);
        assert!(parse_line("# TYPE m gauge").is_none());
        assert!(parse_line("m{a=\"x\" 1").is_none());
        assert!(parse_line("m notanumber").is_none());
        assert!(parse_line("").is_none());
    }

    #[test]
    fn missing_metrics_are_none() {
        let l = live_facts("x", &parse_exposition("walrcv_connected 0\n"));
        assert_eq!(l.connected, Some(false));
        assert_eq!(l.flushed_lsn, None);
        assert_eq!(l.last_disconnect_kind, None);
    }

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:9187/metrics").unwrap(),
            ("127.0.0.1:9187".into(), "/metrics".into())
        );
        assert_eq!(
            split_url("localhost:9187").unwrap(),
            ("localhost:9187".into(), "/metrics".into())
        );
        assert!(split_url("https://h:1/metrics").is_err());
        assert!(split_url("http://nohost/metrics").is_err());
    }

    /// A one-shot HTTP server answering `response`.
    fn serve_once(response: &'static str) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            s.write_all(response.as_bytes()).unwrap();
        });
        format!("http://{addr}/metrics")
    }

    #[test]
    fn fetch_reads_the_body_and_checks_the_status() {
        let url =
            serve_once("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nwalrcv_connected 1\n");
        assert_eq!(
            fetch(&url, Duration::from_secs(5)).unwrap(),
            "walrcv_connected 1\n"
        );
        let url = serve_once("HTTP/1.0 404 Not Found\r\n\r\nnope");
        assert!(matches!(
            fetch(&url, Duration::from_secs(5)),
            Err(MetricsError::Status { .. })
        ));
    }

    #[test]
    fn content_length_ends_the_read() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(complete_length(head), Some(head.len() + 5));
        assert_eq!(
            complete_length(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"),
            None
        );
        assert_eq!(complete_length(b"HTTP/1.0 200 OK\r\n\r\nbody"), None);
    }

    #[test]
    fn a_kept_alive_connection_does_not_cost_the_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\nwalrcv_connected 1\n")
                .unwrap();
            // Keep the connection open until the client is done.
            let _ = done_rx.recv();
        });
        let start = std::time::Instant::now();
        let body = fetch(&format!("{addr}"), Duration::from_secs(20)).unwrap();
        assert_eq!(body, "walrcv_connected 1\n");
        assert!(start.elapsed() < Duration::from_secs(5));
        let _ = done_tx.send(());
    }

    #[test]
    fn refused_connection_is_an_error_in_the_facts() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let l = read_live(&format!("127.0.0.1:{port}"), Duration::from_secs(2));
        assert!(l.error.is_some());
        assert_eq!(l.connected, None);
    }
}
