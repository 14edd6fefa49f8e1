//! `walrcv serve --metrics-address` scraped while pg_receivewal streams from
//! it (issue 21): the client count, the client's series (sent and reported
//! flush positions, lag) labelled by its application_name and address,
//! bytes sent, refusals by reason; the client's series are gone when it
//! leaves. And the keepalive flags: a client that never answers gets
//! keepalives, a reply request at half `--serve-sender-timeout`, and is
//! dropped at the timeout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use std::time::Instant;

use walrcv::conninfo::ConnParams;
use walrcv::pgwire::{BackendMessage, Connection};
use walrcv::replication::ReplicationMessage;

use crate::serve_auth::{small_archive, start_serve};
use crate::support::{
    debian_bin, format_lsn, free_port, parse_lsn, run_with_timeout, wait_until, BackgroundProcess,
    PgServer,
};

fn scrape(address: &str) -> String {
    let mut socket = TcpStream::connect(address).expect("connect to the metrics address");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(socket, "GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut reply = String::new();
    socket.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    assert!(head.contains(" 200 "), "{head}");
    body.to_owned()
}

/// The value of the sample whose name and labels start with `prefix`.
fn value(text: &str, prefix: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn psql(port: u16, user: &str, sql: &str) -> Result<String, String> {
    let mut cmd = std::process::Command::new(debian_bin("psql"));
    cmd.args([
        "-XAtqw",
        "-d",
        &format!("host=127.0.0.1 port={port} user={user} dbname=replication replication=true sslmode=disable"),
        "-c",
        sql,
    ]);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    if out.success() {
        Ok(out.stdout.trim().to_owned())
    } else {
        Err(out.text())
    }
}

#[test]
fn serve_metrics_follow_a_pg_receivewal_client() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    let b = work.path().join("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    small_archive(&pg, &a);
    let metrics = format!("127.0.0.1:{}", free_port());
    let (mut serve, port) = start_serve(
        &a,
        work.path(),
        "host replication postgres 127.0.0.1/32 trust\n",
        &["--metrics-address", &metrics],
    );
    let text = scrape(&metrics);
    assert_eq!(value(&text, "walrcv_serve_clients "), Some(0), "{text}");
    // A refusal, counted by reason.
    let e = psql(port, "intruder", "IDENTIFY_SYSTEM").unwrap_err();
    assert!(e.contains("no pg_hba.conf entry"), "{e}");
    let ident = psql(port, "postgres", "IDENTIFY_SYSTEM").unwrap();
    let end = parse_lsn(ident.split('|').nth(2).expect("xlogpos"));
    let mut receivewal = BackgroundProcess::spawn({
        let mut cmd = std::process::Command::new(debian_bin("pg_receivewal"));
        cmd.args(["-D", b.to_str().unwrap(), "-h", "127.0.0.1"])
            .args([
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-n",
                "--synchronous",
            ]);
        cmd
    });
    // Streamed to the end and reported flushed (--synchronous): lag 0.
    let sent =
        r#"walrcv_serve_client_sent_lsn{application_name="pg_receivewal",client="127.0.0.1:"#;
    let flush =
        r#"walrcv_serve_client_flush_lsn{application_name="pg_receivewal",client="127.0.0.1:"#;
    let lag =
        r#"walrcv_serve_client_lag_bytes{application_name="pg_receivewal",client="127.0.0.1:"#;
    let mut text = String::new();
    wait_until(
        Duration::from_secs(60),
        "the client's flush in the metrics",
        || {
            assert!(receivewal.is_running(), "{}", receivewal.stderr());
            text = scrape(&metrics);
            value(&text, flush) == Some(end)
        },
    );
    assert_eq!(value(&text, "walrcv_serve_clients "), Some(1), "{text}");
    assert_eq!(
        value(&text, sent),
        Some(end),
        "sent up to {}:\n{text}",
        format_lsn(end)
    );
    assert_eq!(value(&text, lag), Some(0), "{text}");
    // pg_receivewal starts at the beginning of the served end's segment.
    let start = end - end % (1 << 20);
    let bytes = value(&text, "walrcv_serve_sent_bytes_total ").unwrap();
    assert!(bytes >= end - start, "{bytes} bytes sent");
    assert_eq!(
        value(
            &text,
            r#"walrcv_serve_refused_total{reason="no_hba_entry"}"#
        ),
        Some(1),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"walrcv_serve_refused_total{reason="too_many_clients"}"#
        ),
        Some(0)
    );
    // The client leaves: its series go.
    receivewal.interrupt();
    wait_until(Duration::from_secs(30), "the client's series to go", || {
        let text = scrape(&metrics);
        value(&text, "walrcv_serve_clients ") == Some(0) && !text.contains("pg_receivewal")
    });
    serve.interrupt();
}

fn conn_params(port: u16) -> ConnParams {
    ConnParams {
        application_name: "silent".into(),
        ..crate::support::conn_params(port, crate::support::SUPERUSER, None)
    }
}

/// A caught-up client that never sends a status update, against
/// `--serve-keepalive-interval 1 --serve-sender-timeout 4`: keepalives about
/// every second, one with a reply request after about 2 s, the connection
/// closed after about 4 s (not at the 60 s default).
#[test]
fn serve_sender_timeout_drops_a_silent_client() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    std::fs::create_dir_all(&a).unwrap();
    small_archive(&pg, &a);
    let (mut serve, port) = start_serve(
        &a,
        work.path(),
        "host replication postgres 127.0.0.1/32 trust\n",
        &[
            "--serve-keepalive-interval",
            "1",
            "--serve-sender-timeout",
            "4",
        ],
    );
    let ident = psql(port, "postgres", "IDENTIFY_SYSTEM").unwrap();
    let end = parse_lsn(ident.split('|').nth(2).expect("xlogpos"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (keepalives, asked_at, closed_at) = rt.block_on(async {
        let mut conn = Connection::connect(&conn_params(port), true, Duration::from_secs(10))
            .await
            .unwrap();
        conn.start_copy(&format!("START_REPLICATION {} TIMELINE 1", format_lsn(end)))
            .await
            .unwrap();
        let began = Instant::now();
        let (mut keepalives, mut asked_at) = (0, None);
        loop {
            assert!(began.elapsed() < Duration::from_secs(30), "never dropped");
            let msg = tokio::time::timeout(Duration::from_secs(30), conn.read_message()).await;
            let Ok(Ok(BackendMessage::CopyData(payload))) = msg else {
                // An error (the FATAL-less close of a timed-out walsender) or EOF.
                return (keepalives, asked_at, began.elapsed());
            };
            if let Ok(ReplicationMessage::Keepalive {
                reply_requested, ..
            }) = ReplicationMessage::parse(payload)
            {
                keepalives += 1;
                if reply_requested && asked_at.is_none() {
                    asked_at = Some(began.elapsed());
                }
            }
        }
    });
    let asked_at = asked_at.expect("a keepalive asking for a reply");
    assert!(
        asked_at >= Duration::from_millis(1500) && asked_at < Duration::from_secs(4),
        "reply requested after {asked_at:?}"
    );
    assert!(keepalives >= 3, "{keepalives} keepalives");
    assert!(
        closed_at >= Duration::from_millis(3500) && closed_at < Duration::from_secs(10),
        "closed after {closed_at:?}"
    );
    serve.wait_for_stderr("replication timeout", Duration::from_secs(10));
    serve.interrupt();
}
