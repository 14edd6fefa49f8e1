//! `walrcv stream --serve` restarted while the primary is down (issue 21):
//! until the receiver of this process has flushed and reported, only the
//! complete segments are served, never the `.partial` an earlier run left
//! (its tail may never have reached the disk); once the primary is back and
//! the receiver reports, the `.partial`'s WAL follows.

use std::path::Path;
use std::time::{Duration, Instant};

use walrcv::conninfo::ConnParams;
use walrcv::pgwire::{BackendMessage, Connection};
use walrcv::replication::ReplicationMessage;

use crate::support::{
    debian_bin, format_lsn, free_port, parse_lsn, run_with_timeout, wait_until, BackgroundProcess,
    PgServer, Walrcv,
};

const APP: &str = "walrcv";
const SEGMENT: u64 = 1 << 20;

fn conn_params(port: u16) -> ConnParams {
    ConnParams {
        application_name: "probe".into(),
        ..crate::support::conn_params(port, crate::support::SUPERUSER, None)
    }
}

/// `walrcv stream --serve` (trust for 127.0.0.1) on `port`.
fn stream_serving(pg: &PgServer, dir: &Path, port: u16) -> BackgroundProcess {
    let hba = dir.with_extension("hba");
    std::fs::write(&hba, "host replication all 127.0.0.1/32 trust\n").unwrap();
    let listen = format!("127.0.0.1:{port}");
    let conn = format!("{} application_name={APP}", pg.conninfo());
    let mut rcv = Walrcv::new(["stream", "-D", dir.to_str().unwrap(), "-d", &conn, "-v"])
        .args(["--serve", &listen, "--serve-hba", hba.to_str().unwrap()])
        .spawn();
    rcv.wait_for_stderr("serving the archive", Duration::from_secs(30));
    rcv
}

/// IDENTIFY_SYSTEM's xlogpos.
fn served_end(port: u16) -> u64 {
    let mut cmd = std::process::Command::new(debian_bin("psql"));
    cmd.args([
        "-XAtqw",
        "-d",
        &format!("host=127.0.0.1 port={port} user=postgres dbname=replication replication=true"),
        "-c",
        "IDENTIFY_SYSTEM",
    ]);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert!(out.success(), "{}", out.text());
    parse_lsn(out.stdout.trim().split('|').nth(2).expect("xlogpos"))
}

/// Reads XLogData until `until` passes or `want` is reached: the highest end.
async fn receive(conn: &mut Connection, mut high: u64, want: u64, until: Instant) -> u64 {
    while high < want && Instant::now() < until {
        let Ok(msg) = tokio::time::timeout(Duration::from_millis(500), conn.read_message()).await
        else {
            continue;
        };
        let BackendMessage::CopyData(payload) = msg.unwrap() else {
            continue;
        };
        if let Ok(ReplicationMessage::XLogData {
            data_start, data, ..
        }) = ReplicationMessage::parse(payload)
        {
            high = high.max(data_start.0 + data.len() as u64);
        }
    }
    high
}

#[test]
fn stream_serve_serves_no_partial_wal_before_the_receiver_reports() {
    let mut pg = PgServer::builder().wal_segsize_mb(1).start();
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    std::fs::create_dir_all(&a).unwrap();
    let port = free_port();
    // First run: complete segments and a .partial with WAL in it.
    let mut rcv = stream_serving(&pg, &a, port);
    pg.psql("CREATE TABLE t AS SELECT g, repeat(md5(g::text), 30) AS pad FROM generate_series(1, 2500) g");
    pg.psql("SELECT pg_switch_wal()");
    pg.psql("CREATE TABLE u AS SELECT g FROM generate_series(1, 2000) g");
    let end = pg.current_lsn();
    pg.wait_for_flush(APP, end, Duration::from_secs(60));
    let first = served_end(port);
    rcv.interrupt();
    let boundary = first - first % SEGMENT;
    assert!(
        first > boundary,
        "the .partial holds WAL: {}",
        format_lsn(first)
    );
    assert!(boundary >= 2 * SEGMENT, "complete segments before it");
    // The primary goes away; walrcv starts again without it.
    pg.stop();
    let mut rcv = stream_serving(&pg, &a, port);
    assert_eq!(
        served_end(port),
        boundary,
        "before any report only complete segments are served"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut conn = Connection::connect(&conn_params(port), true, Duration::from_secs(10))
            .await
            .unwrap();
        let start = boundary - SEGMENT;
        conn.start_copy(&format!(
            "START_REPLICATION {} TIMELINE 1",
            format_lsn(start)
        ))
        .await
        .unwrap();
        // The last complete segment, and for 3 s nothing past it.
        let got = receive(
            &mut conn,
            start,
            u64::MAX,
            Instant::now() + Duration::from_secs(3),
        )
        .await;
        assert_eq!(
            got,
            boundary,
            "served up to {} before walrcv reported anything",
            format_lsn(got)
        );
        assert!(rcv.is_running(), "{}", rcv.stderr());
        // The primary is back: walrcv streams, reports, and the .partial's
        // WAL is served.
        pg.start_again();
        let got = receive(
            &mut conn,
            got,
            first,
            Instant::now() + Duration::from_secs(120),
        )
        .await;
        assert!(
            got >= first,
            "only {} served after the primary came back (the .partial held {})",
            format_lsn(got),
            format_lsn(first)
        );
    });
    wait_until(Duration::from_secs(30), "walrcv to report", || {
        pg.replication_flush_lsn(APP).is_some_and(|f| f >= first)
    });
    rcv.interrupt();
}
