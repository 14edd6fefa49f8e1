//! Unit tests of the metrics module: names, values, lag, the ack clock and
//! the endpoint.

use super::*;

fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

#[test]
fn every_contract_name_is_exposed() {
    let text = Metrics::new().encode();
    for name in [
        "walrcv_connected",
        "walrcv_server_timeline",
        "walrcv_received_lsn",
        "walrcv_written_lsn",
        "walrcv_flushed_lsn",
        "walrcv_verified_lsn",
        "walrcv_server_wal_end_lsn",
        "walrcv_lag_bytes",
        "walrcv_received_bytes_total",
        "walrcv_records_verified_total",
        "walrcv_verification_failures_total",
        "walrcv_fdatasync_duration_seconds_count",
        "walrcv_flush_ack_latency_seconds_count",
        "walrcv_segments_completed_total",
        "walrcv_reconnects_total",
        "walrcv_archive_untrusted",
        "walrcv_archive_free_bytes",
    ] {
        assert_eq!(sample(&text, name), Some(0.0), "{name} in\n{text}");
    }
    let build = format!(
        "walrcv_build_info{{version=\"{}\",server_majors=\"13-18\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample(&text, &build), Some(1.0), "{text}");
    assert!(text.contains("# TYPE walrcv_fdatasync_duration_seconds histogram"));
    assert!(text.contains("# TYPE walrcv_received_bytes counter"));
}

#[test]
fn updates_show_in_the_exposition() {
    let m = Metrics::new();
    m.stream_started(3);
    m.wal_received(Lsn(0x3000_0100), 256);
    m.wal_received(Lsn(0x3000_0200), 256);
    m.wal_verified(Lsn(0x3000_01F8), 7);
    m.server_wal_end(Lsn(0x3000_0400));
    m.status_sent(Lsn(0x3000_01F8), Lsn(0x3000_0100));
    m.fdatasync_done(Duration::from_micros(300));
    m.flush_acknowledged(Duration::from_millis(2));
    m.segment_completed();
    m.verification_failed();
    m.archive_untrusted();
    let text = m.encode();
    assert_eq!(sample(&text, "walrcv_archive_untrusted"), Some(1.0));
    assert_eq!(sample(&text, "walrcv_connected"), Some(1.0));
    assert_eq!(sample(&text, "walrcv_server_timeline"), Some(3.0));
    assert_eq!(
        sample(&text, "walrcv_received_lsn"),
        Some(f64::from(0x3000_0200u32))
    );
    assert_eq!(sample(&text, "walrcv_received_bytes_total"), Some(512.0));
    assert_eq!(
        sample(&text, "walrcv_verified_lsn"),
        Some(f64::from(0x3000_01F8u32))
    );
    assert_eq!(sample(&text, "walrcv_records_verified_total"), Some(7.0));
    assert_eq!(
        sample(&text, "walrcv_written_lsn"),
        Some(f64::from(0x3000_01F8u32))
    );
    assert_eq!(
        sample(&text, "walrcv_flushed_lsn"),
        Some(f64::from(0x3000_0100u32))
    );
    assert_eq!(sample(&text, "walrcv_lag_bytes"), Some(f64::from(0x300u32)));
    assert_eq!(
        sample(&text, "walrcv_fdatasync_duration_seconds_count"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "walrcv_fdatasync_duration_seconds_bucket{le=\"0.0004\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "walrcv_fdatasync_duration_seconds_bucket{le=\"0.0002\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "walrcv_flush_ack_latency_seconds_count"),
        Some(1.0)
    );
    assert_eq!(sample(&text, "walrcv_segments_completed_total"), Some(1.0));
    assert_eq!(
        sample(&text, "walrcv_verification_failures_total"),
        Some(1.0)
    );
    m.stream_ended();
    assert_eq!(sample(&m.encode(), "walrcv_connected"), Some(0.0));
}

#[test]
fn a_failure_marks_its_kind_only() {
    let m = Metrics::new();
    m.stream_started(1);
    m.session_failed(FailureKind::Network);
    m.session_failed(FailureKind::Archive);
    let text = m.encode();
    assert_eq!(sample(&text, "walrcv_reconnects_total"), Some(2.0));
    assert_eq!(sample(&text, "walrcv_connected"), Some(0.0));
    for kind in KINDS {
        let series = format!(
            "walrcv_last_disconnect_reason{{kind=\"{}\"}}",
            kind_label(kind)
        );
        let expected = if kind == FailureKind::Archive {
            1.0
        } else {
            0.0
        };
        assert_eq!(sample(&text, &series), Some(expected), "{series}");
    }
}

#[test]
fn lag_is_zero_while_unknown_and_never_negative() {
    assert_eq!(lag(0, 100), 0);
    assert_eq!(lag(100, 0), 0);
    assert_eq!(lag(100, 40), 60);
    // A flush position past a stale server end (a new keepalive is due).
    assert_eq!(lag(100, 140), 0);
}

#[test]
fn ack_clock_measures_the_oldest_unacknowledged_wal() {
    let t0 = Instant::now();
    let mut clock = AckClock::default();
    assert_eq!(clock.status_sent(t0, Lsn(100)), None, "nothing pending");
    clock.wal_arrived(t0, Lsn(200));
    // Newer WAL while older waits: the older one's arrival is kept.
    clock.wal_arrived(t0 + Duration::from_millis(1), Lsn(300));
    assert_eq!(
        clock.status_sent(t0 + Duration::from_millis(2), Lsn(150)),
        None,
        "flush short of the end"
    );
    assert_eq!(
        clock.status_sent(t0 + Duration::from_millis(3), Lsn(200)),
        Some(Duration::from_millis(3))
    );
    assert_eq!(
        clock.status_sent(t0 + Duration::from_millis(4), Lsn(300)),
        None
    );
    clock.wal_arrived(t0 + Duration::from_millis(5), Lsn(400));
    clock.reset();
    assert_eq!(
        clock.status_sent(t0 + Duration::from_millis(6), Lsn(400)),
        None
    );
}

#[test]
fn free_bytes_of_an_existing_directory_and_none_for_a_missing_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(free_bytes(dir.path()).is_some_and(|b| b > 0));
    assert_eq!(free_bytes(&dir.path().join("missing")), None);
}

fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(address).expect("connect");
    write!(socket, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("send");
    let mut reply = String::new();
    socket.read_to_string(&mut reply).expect("read");
    reply
}

#[test]
fn the_endpoint_serves_metrics_and_404_elsewhere_and_stops_when_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve("127.0.0.1:0", dir.path()).expect("bind");
    let address = server.local_address().to_string();
    let reply = http_get(&address, "/metrics");
    assert!(
        reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"),
        "{reply}"
    );
    assert!(reply.contains("application/openmetrics-text"), "{reply}");
    assert!(reply.contains("walrcv_flushed_lsn"), "{reply}");
    assert!(reply.trim_end().ends_with("# EOF"), "{reply}");
    let free = reply
        .lines()
        .find_map(|l| l.strip_prefix("walrcv_archive_free_bytes "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(free.is_some_and(|b| b > 0), "{reply}");
    let reply = http_get(&address, "/");
    assert!(reply.contains(" 404 "), "{reply}");
    drop(server);
    // Dropping the server joins its thread, which closes the listener.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(&address).is_ok() {
        assert!(Instant::now() < deadline, "still listening after 5 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_bind_failure_names_the_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = serve("127.0.0.1:0", dir.path()).expect("bind");
    let taken = first.local_address().to_string();
    let err = serve(&taken, dir.path()).err().expect("second bind fails");
    assert!(err.to_string().contains(&taken), "{err}");
    let err = serve("not an address", dir.path())
        .err()
        .expect("bad address");
    assert!(err.to_string().contains("not an address"), "{err}");
}

/// Scrapers that never finish their request or never read hold connections
/// of the endpoint's own thread, not the receive loop: the updates and the encoding
/// share nothing with the endpoint but atomics and the histograms' short
/// mutex.
#[test]
fn updates_and_encoding_never_wait_for_stuck_scrapers() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve("127.0.0.1:0", dir.path()).expect("bind");
    let address = server.local_address().to_string();
    let mut half = std::net::TcpStream::connect(&address).expect("connect");
    write!(half, "GET /metr").expect("send");
    let silent: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&address).expect("connect");
            write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
            s
        })
        .collect();
    let m = global();
    let started = Instant::now();
    for i in 0..100_000u64 {
        m.wal_received(Lsn(i * 512), 512);
        m.status_sent(Lsn(i * 512), Lsn(i * 512));
        m.flush_acknowledged(Duration::from_micros(100));
    }
    assert!(m.encode().contains("walrcv_flushed_lsn"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "100000 updates took {:?} beside stuck scrapers",
        started.elapsed()
    );
    // The scrapes were in progress all along: the half-sent one is still
    // open and answers once its request is complete, and the silent ones got
    // their answer, unread until now.
    write!(half, "ics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send the rest");
    for (which, mut stream) in
        std::iter::once(("half-sent", half)).chain(silent.into_iter().map(|s| ("silent", s)))
    {
        let answer = read_answer(&mut stream);
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.contains("walrcv_flushed_lsn"),
            "the {which} scrape: {answer:?}"
        );
    }
    drop(server);
}

#[test]
fn the_archives_fdatasyncs_reach_the_process_metrics() {
    // The archive reports through `archive::observe`; `global()` installs
    // these metrics as its observer on first use.
    let count = || {
        sample(
            &global().encode(),
            "walrcv_fdatasync_duration_seconds_count",
        )
    };
    let before = count().unwrap_or(0.0);
    crate::archive::observe::fdatasync_done(Duration::from_micros(5));
    assert!(count().unwrap_or(0.0) >= before + 1.0);
}

/// What the server sent on `stream` until it closed it or paused 10 s.
fn read_answer(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&answer);
                if text.contains("# EOF") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}
