//! `walrcv stream --serve` as the upstream of real standbys of every
//! supported major (13, 15, 16, 17, 18; issue 21): a standby made from the
//! primary of its own major (pg_basebackup up to 15, a cold copy for 16+,
//! whose pg_basebackup is not installed), pointed at walrcv, catches up
//! from the archive, streams live WAL, and reconnects to a restarted walrcv
//! with nothing missing. A timeline switch followed by walrcv moves a
//! standby streaming from it onto the new timeline mid-stream. A second
//! walrcv as a client gets a byte-identical archive. A client that never
//! reads leaves walrcv's memory and the primary's TPS alone.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::serve::{
    commit_rows, psql, segment_files, start_archiver, start_archiver_serving,
    start_archiver_serving_on, start_serve, APP, LIMIT,
};
use crate::support::{
    debian_bin, format_lsn, parse_lsn, wait_until, BackgroundProcess, PgServer, Walrcv,
    DEBIAN_MAJOR,
};

/// walrcv's log with the commands clients send.
const DEBUG: &[(&str, &str)] = &[("WALRCV_LOG", "info,walrcv::serve=debug")];

/// The replication commands clients sent, from walrcv's log.
fn commands(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split_once("command: "))
        // Then tracing's fields.
        .map(|(_, c)| {
            c.split(" application_name=")
                .next()
                .unwrap_or(c)
                .trim()
                .to_owned()
        })
        .collect()
}

/// Waits until `standby` replayed up to `lsn`, walrcv still running.
fn wait_replayed(standby: &PgServer, rcv: &mut BackgroundProcess, lsn: u64, what: &str) {
    wait_until(LIMIT, what, || {
        assert!(rcv.is_running(), "walrcv exited:\n{}", rcv.stderr());
        standby
            .try_psql("SELECT pg_last_wal_replay_lsn()")
            .is_ok_and(|l| !l.is_empty() && parse_lsn(&l) >= lsn)
    });
}

/// The port the standby's WAL receiver streams from.
fn sender_port(standby: &PgServer) -> String {
    standby.psql("SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'")
}

/// A standby of `major` with walrcv as its only upstream: catch-up from
/// the archive, live streaming, reconnection after walrcv restarts.
fn standby_streams_from_walrcv(major: u32) {
    let pg = PgServer::builder().major(major).wal_segsize_mb(1).start();
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    std::fs::create_dir_all(&a).unwrap();
    commit_rows(&pg, 50);
    // Made before walrcv connects (for 16+ the primary restarts once).
    let mut standby = pg.create_standby();
    standby.stop();
    let (mut rcv, port) = start_archiver_serving(&pg, &a, work.path(), DEBUG);
    // In the archive only: the standby is down.
    commit_rows(&pg, 200);
    let end = pg.current_lsn();
    pg.wait_for_flush(APP, end, LIMIT);
    set_primary_conninfo_offline(&standby, port);
    standby.start_again();
    wait_replayed(
        &standby,
        &mut rcv,
        end,
        "the standby to catch up from walrcv",
    );
    assert_eq!(sender_port(&standby), port.to_string());
    // Live: each commit is acknowledged once walrcv flushed it, then served.
    let t0 = Instant::now();
    commit_rows(&pg, 50);
    let live_end = pg.current_lsn();
    wait_replayed(
        &standby,
        &mut rcv,
        live_end,
        "the standby to stream live WAL",
    );
    let live = t0.elapsed();
    // walrcv restarts (killed): the standby reconnects and goes on.
    rcv.kill9();
    let mut rcv = start_archiver_serving_on(&pg, &a, work.path(), DEBUG, port);
    commit_rows(&pg, 50);
    let after = pg.current_lsn();
    pg.wait_for_flush(APP, after, LIMIT);
    wait_replayed(
        &standby,
        &mut rcv,
        after,
        "the standby to reconnect to walrcv",
    );
    let expected = pg.psql("SELECT count(*), sum(id) FROM t");
    assert_eq!(standby.psql("SELECT count(*), sum(id) FROM t"), expected);
    assert_eq!(expected.split('|').next(), Some("350"));
    assert_eq!(sender_port(&standby), port.to_string());
    assert!(
        rcv.stderr().contains("streaming from"),
        "the standby did not stream from the restarted walrcv:\n{}",
        rcv.stderr()
    );
    let sent = commands(&rcv.stderr());
    assert!(
        sent.iter().any(|c| c == "IDENTIFY_SYSTEM")
            && sent.iter().any(|c| c.starts_with("START_REPLICATION ")),
        "{sent:?}"
    );
    eprintln!("PostgreSQL {major} walreceiver sent: {sent:?}");
    eprintln!("PostgreSQL {major}: 50 rows committed and replayed through walrcv in {live:?}");
    rcv.interrupt();
}

/// primary_conninfo of a stopped standby.
fn set_primary_conninfo_offline(standby: &PgServer, port: u16) {
    let conf = standby.data_dir().join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "primary_conninfo = 'host=127.0.0.1 port={port} user=postgres application_name=standby'\n"
    ));
    std::fs::write(&conf, text).unwrap();
}

#[test]
fn serve_standby_13_catches_up_streams_and_reconnects() {
    standby_streams_from_walrcv(13);
}

#[test]
fn serve_standby_15_catches_up_streams_and_reconnects() {
    standby_streams_from_walrcv(15);
}

#[test]
fn serve_standby_16_catches_up_streams_and_reconnects() {
    standby_streams_from_walrcv(16);
}

#[test]
fn serve_standby_17_catches_up_streams_and_reconnects() {
    standby_streams_from_walrcv(17);
}

#[test]
fn serve_standby_18_catches_up_streams_and_reconnects() {
    standby_streams_from_walrcv(18);
}

/// A timeline switch: walrcv streams (and serves) from a standby S1 of the
/// primary; a standby S2 streams from walrcv. S1 is promoted (timeline 2):
/// walrcv follows it, and S2, streaming timeline 1 as walrcv's current
/// timeline, is sent the end-of-timeline sequence at the switch point and
/// goes on on timeline 2 with every row of the new primary.
fn standby_follows_a_timeline_switch(major: u32) {
    let mut pg = PgServer::builder().major(major).wal_segsize_mb(1).start();
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    std::fs::create_dir_all(&a).unwrap();
    commit_rows(&pg, 50);
    let s1 = pg.create_standby();
    let mut s2 = pg.create_standby();
    s2.stop();
    let hba = work.path().join("hba.conf");
    std::fs::write(&hba, "host replication all 127.0.0.1/32 trust\n").unwrap();
    let port = crate::support::free_port();
    let conn = format!("{} application_name={APP}", s1.conninfo());
    let mut rcv = Walrcv::new(["stream", "-D", a.to_str().unwrap(), "-d", &conn, "-v"])
        .args(["--serve", &format!("127.0.0.1:{port}")])
        .args(["--serve-hba", hba.to_str().unwrap()])
        .envs(DEBUG.iter().copied())
        .spawn();
    rcv.wait_for_stderr("serving the archive", Duration::from_secs(30));
    set_primary_conninfo_offline(&s2, port);
    s2.start_again();
    // pg_receivewal (Debian's, 15 only) streams timeline 1 from walrcv too.
    let c = work.path().join("c");
    std::fs::create_dir_all(&c).unwrap();
    wait_until(LIMIT, "walrcv to have WAL to serve", || {
        psql(port, "postgres", None, "", "IDENTIFY_SYSTEM").is_ok()
    });
    let mut receivewal = (major == DEBIAN_MAJOR).then(|| {
        let mut cmd = std::process::Command::new(debian_bin("pg_receivewal"));
        cmd.args(["-D", c.to_str().unwrap(), "-h", "127.0.0.1"])
            .args(["-p", &port.to_string(), "-U", "postgres", "-n", "-v"]);
        BackgroundProcess::spawn(cmd)
    });
    commit_rows(&pg, 100);
    let end = pg.current_lsn();
    wait_replayed(&s2, &mut rcv, end, "S2 to replay timeline 1 through walrcv");
    assert_eq!(sender_port(&s2), port.to_string());
    pg.stop();
    s1.promote();
    assert_eq!(s1.timeline(), 2);
    commit_rows(&s1, 100);
    let end2 = s1.current_lsn();
    wait_until(LIMIT, "S2 to stream timeline 2 through walrcv", || {
        assert!(rcv.is_running(), "walrcv exited:\n{}", rcv.stderr());
        s2.try_psql("SELECT received_tli FROM pg_stat_wal_receiver")
            .is_ok_and(|t| t == "2")
            && s2
                .try_psql("SELECT pg_last_wal_replay_lsn()")
                .is_ok_and(|l| !l.is_empty() && parse_lsn(&l) >= end2)
    });
    assert!(
        rcv.stderr().contains("timeline 1 ended at ")
            && rcv.stderr().contains("moving the client to timeline 2"),
        "S2 was not moved to timeline 2 mid-stream:\n{}",
        rcv.stderr()
    );
    assert_eq!(sender_port(&s2), port.to_string());
    if let Some(receivewal) = receivewal.as_mut() {
        // pg_receivewal followed too: the new history, and timeline 2's WAL
        // as the archive holds it.
        let name = s1.walfile_name(end2);
        let upto = (end2 % (1 << 20)) as usize;
        wait_until(LIMIT, "pg_receivewal to follow timeline 2", || {
            assert!(
                receivewal.is_running(),
                "pg_receivewal exited:\n{}",
                receivewal.stderr()
            );
            let mine = std::fs::read(c.join(format!("{name}.partial"))).unwrap_or_default();
            let theirs = std::fs::read(a.join(format!("{name}.partial")))
                .or_else(|_| std::fs::read(a.join(&name)))
                .unwrap_or_default();
            c.join("00000002.history").exists()
                && mine.len() >= upto
                && theirs.len() >= upto
                && mine[..upto] == theirs[..upto]
        });
        receivewal.interrupt();
    }
    // After the end-of-timeline sequence, S2 asked for the new history and
    // went on from the switch point on timeline 2.
    let sent = commands(&rcv.stderr());
    eprintln!("PostgreSQL {major} walreceiver sent: {sent:?}");
    let history = sent.iter().position(|c| c == "TIMELINE_HISTORY 2");
    let resumed = sent
        .iter()
        .rposition(|c| c.starts_with("START_REPLICATION ") && c.ends_with(" TIMELINE 2"));
    assert!(
        history.is_some() && resumed > history,
        "S2 did not follow with TIMELINE_HISTORY 2 then START_REPLICATION on 2: {sent:?}"
    );
    assert_eq!(
        s2.psql("SELECT count(*), sum(id) FROM t"),
        s1.psql("SELECT count(*), sum(id) FROM t")
    );
    rcv.interrupt();
}

#[test]
fn serve_standby_13_follows_a_timeline_switch_mid_stream() {
    standby_follows_a_timeline_switch(13);
}

#[test]
fn serve_standby_15_follows_a_timeline_switch_mid_stream() {
    standby_follows_a_timeline_switch(15);
}

#[test]
fn serve_standby_16_follows_a_timeline_switch_mid_stream() {
    standby_follows_a_timeline_switch(16);
}

#[test]
fn serve_standby_17_follows_a_timeline_switch_mid_stream() {
    standby_follows_a_timeline_switch(17);
}

#[test]
fn serve_standby_18_follows_a_timeline_switch_mid_stream() {
    standby_follows_a_timeline_switch(18);
}

/// A second walrcv as a client of `walrcv serve`: its archive is
/// byte-identical to the served one.
#[test]
fn serve_second_walrcv_gets_a_byte_identical_archive() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    let b = work.path().join("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let mut rcv = start_archiver(&pg, &a);
    commit_rows(&pg, 300);
    let end = pg.current_lsn();
    pg.wait_for_flush(APP, end, LIMIT);
    rcv.interrupt();
    // Like pg_receivewal, walrcv starts after its newest complete segment.
    let first = segment_files(&a)
        .into_iter()
        .find(|n| n.len() == 24)
        .expect("a complete segment");
    std::fs::copy(a.join(&first), b.join(&first)).unwrap();
    let (mut serve, port) = start_serve(
        &a,
        work.path(),
        "host replication all 127.0.0.1/32 trust\n",
        &[],
    );
    let conn = format!("host=127.0.0.1 port={port} user=postgres application_name=second");
    let out = Walrcv::new(["stream", "-D", b.to_str().unwrap(), "-d", &conn, "-n", "-v"])
        .args(["--endpos", &format_lsn(end)])
        .timeout(LIMIT)
        .run();
    assert!(
        out.success(),
        "walrcv stream from walrcv serve failed:\n{}\n--- serve ---\n{}",
        out.text(),
        serve.stderr()
    );
    let served = segment_files(&a);
    let got = segment_files(&b);
    let complete: Vec<&String> = got.iter().filter(|n| n.len() == 24).collect();
    assert!(complete.len() >= 3, "too few segments: {got:?}");
    for name in &got {
        let mine = std::fs::read(b.join(name)).unwrap();
        let theirs = std::fs::read(a.join(name))
            .unwrap_or_else(|e| panic!("{name} not in the served archive ({served:?}): {e}"));
        if name.ends_with(".partial") {
            let upto = (end % (1 << 20)) as usize;
            assert_eq!(
                mine[..upto],
                theirs[..upto],
                "{name} differs before the end"
            );
        } else {
            assert!(mine == theirs, "{name} differs from the served archive's");
        }
    }
    // Every complete segment of the served archive after the first one.
    for name in served.iter().filter(|n| n.len() == 24) {
        assert!(got.contains(name), "{name} not received: {got:?}");
    }
    assert!(serve.is_running());
    serve.interrupt();
}

/// Resident set size of a process (kB).
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Synchronous TPS: the best of two short pgbench runs (the machine is
/// shared: one run alone is noisy).
fn tps(pg: &PgServer) -> f64 {
    tps_once(pg).max(tps_once(pg))
}

fn tps_once(pg: &PgServer) -> f64 {
    let out = pg.pgbench(&["-c", "2", "-T", "5", "-n"]);
    out.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench's output:\n{out}"))
}

/// A connection whose receive buffer is as small as the kernel allows, so
/// that a client that never reads holds almost nothing of what is sent.
fn tiny_receive_buffer(port: u16) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    socket.connect(&addr.into()).unwrap();
    socket.into()
}

/// A client that starts replication and never reads: walrcv's memory stays
/// bounded (it is dropped after the write timeout, not buffered for) and
/// the primary's synchronous TPS does not collapse.
#[test]
fn serve_a_client_that_never_reads_costs_neither_memory_nor_tps() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    std::fs::create_dir_all(&a).unwrap();
    let (mut rcv, port) = start_archiver_serving(&pg, &a, work.path(), &[]);
    pg.pgbench_init(1);
    commit_rows(&pg, 300);
    let before_tps = tps(&pg);
    let before_rss = rss_kb(rcv.pid());
    // Never reads: start-up, then START_REPLICATION from the archive's
    // first segment (MBs to send), then nothing.
    let first = segment_files(&a)[0].clone();
    let segno = u64::from_str_radix(&first[16..24], 16).unwrap();
    let ident = psql(port, "postgres", None, "", "IDENTIFY_SYSTEM").unwrap();
    assert!(!ident.is_empty());
    let mut stuck = Vec::new();
    for _ in 0..4 {
        let mut s = tiny_receive_buffer(port);
        let mut startup = 196_608u32.to_be_bytes().to_vec();
        startup
            .extend_from_slice(b"user\0postgres\0replication\0true\0application_name\0stuck\0\0");
        let mut packet = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
        packet.extend_from_slice(&startup);
        let q = format!("START_REPLICATION {} TIMELINE 1\0", format_lsn(segno << 20));
        packet.push(b'Q');
        packet.extend_from_slice(&((q.len() + 4) as u32).to_be_bytes());
        packet.extend_from_slice(q.as_bytes());
        s.write_all(&packet).unwrap();
        stuck.push(s);
    }
    // Far more WAL than the socket buffers hold: the clients are stuck.
    commit_rows(&pg, 1000);
    let with_tps = tps(&pg);
    let with_rss = rss_kb(rcv.pid());
    let end = pg.current_lsn();
    pg.wait_for_flush(APP, end, LIMIT);
    assert!(rcv.is_running(), "walrcv exited:\n{}", rcv.stderr());
    // Each was sent WAL it never read (the kernel holds a few kB of it).
    for s in &stuck {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 65536];
        let pending = s.peek(&mut buf).unwrap();
        assert!(pending > 0, "nothing was sent to a never-reading client");
    }
    drop(stuck);
    // Without them again: the machine is shared, so "with" is compared
    // with the lower of the runs around it.
    std::thread::sleep(Duration::from_secs(1));
    let after_tps = tps(&pg);
    eprintln!(
        "never-reading clients: walrcv RSS {before_rss} kB -> {with_rss} kB; primary \
         synchronous TPS without {before_tps:.0}, with {with_tps:.0}, without again {after_tps:.0}"
    );
    // Generous: a few MB of WAL held for 4 clients would show as much more.
    assert!(
        with_rss < before_rss + 16 * 1024,
        "RSS grew from {before_rss} kB to {with_rss} kB"
    );
    // Generous too: a stuck client delaying commits would bring TPS near 0.
    let baseline = before_tps.min(after_tps);
    assert!(
        with_tps >= baseline * 0.25,
        "TPS collapsed: {before_tps:.0}, with the clients {with_tps:.0}, {after_tps:.0}"
    );
    rcv.interrupt();
    let _: &Path = &a;
}

/// `walrcv serve` restarted under a streaming standby: the standby
/// reconnects by itself and replays what the archive gained meanwhile,
/// with no gap.
#[test]
fn serve_standby_reconnects_after_walrcv_serve_restarts() {
    let mut pg = PgServer::builder().wal_segsize_mb(1).start();
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    std::fs::create_dir_all(&a).unwrap();
    let mut rcv = start_archiver(&pg, &a);
    commit_rows(&pg, 50);
    let mut standby = pg.create_standby();
    standby.stop();
    commit_rows(&pg, 100);
    let end = pg.current_lsn();
    pg.wait_for_flush(APP, end, LIMIT);
    let hba = "host replication all 127.0.0.1/32 trust\n";
    let (mut serve, port) = start_serve(&a, work.path(), hba, &[]);
    set_primary_conninfo_offline(&standby, port);
    standby.start_again();
    wait_replayed(
        &standby,
        &mut serve,
        end,
        "the standby to replay from walrcv serve",
    );
    // walrcv serve dies; the archive gains WAL while it is down.
    serve.kill9();
    commit_rows(&pg, 100);
    let expected = pg.psql("SELECT count(*), sum(id) FROM t");
    let end = pg.current_lsn();
    pg.wait_for_flush(APP, end, LIMIT);
    pg.stop();
    rcv.interrupt();
    let listen = format!("127.0.0.1:{port}");
    let mut serve = Walrcv::new(["serve", "-D", a.to_str().unwrap(), "--listen", &listen])
        .args([
            "--serve-hba",
            work.path().join("serve_hba.conf").to_str().unwrap(),
        ])
        .spawn();
    serve.wait_for_stderr("serving the archive", Duration::from_secs(30));
    wait_replayed(
        &standby,
        &mut serve,
        end,
        "the standby to reconnect to walrcv serve",
    );
    assert_eq!(standby.psql("SELECT count(*), sum(id) FROM t"), expected);
    assert_eq!(expected.split('|').next(), Some("250"));
    assert_eq!(sender_port(&standby), port.to_string());
    serve.interrupt();
}
