//! Corrupted WAL on the wire, which a real server never sends: a proxy between
//! walrcv and a real primary flips one bit of one WAL record in the
//! replication stream. walrcv must refuse to acknowledge it, say where and
//! which check failed, and heal by re-streaming when the fault is transient.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::support::{PgServer, Walrcv};

/// A TCP proxy to `127.0.0.1:upstream` that flips the low bit of the WAL byte
/// at `target` in the server's XLogData messages, on the first `corrupt_times`
/// connections that carry it.
struct CorruptingProxy {
    port: u16,
    corrupted: Arc<AtomicUsize>,
}

impl CorruptingProxy {
    fn start(upstream: u16, target: u64, corrupt_times: usize) -> CorruptingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let corrupted = Arc::new(AtomicUsize::new(0));
        let count = corrupted.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut s_write);
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                let count = count.clone();
                thread::spawn(move || {
                    let _ = relay_server_messages(server, client, target, corrupt_times, &count);
                });
            }
        });
        CorruptingProxy { port, corrupted }
    }
}

/// Copies tagged backend messages from `server` to `client`, corrupting the
/// target byte when it passes (at most once per connection).
fn relay_server_messages(
    mut server: TcpStream,
    mut client: TcpStream,
    target: u64,
    corrupt_times: usize,
    count: &AtomicUsize,
) -> std::io::Result<()> {
    let mut done_here = false;
    loop {
        let mut head = [0u8; 5];
        server.read_exact(&mut head)?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        server.read_exact(&mut body)?;
        if head[0] == b'd' && body.first() == Some(&b'w') && body.len() > 25 && !done_here {
            let start = u64::from_be_bytes(body[1..9].try_into().unwrap());
            let n = (body.len() - 25) as u64;
            if (start..start + n).contains(&target) && count.load(Ordering::SeqCst) < corrupt_times
            {
                body[25 + (target - start) as usize] ^= 0x01;
                count.fetch_add(1, Ordering::SeqCst);
                done_here = true;
            }
        }
        client.write_all(&head)?;
        client.write_all(&body)?;
    }
}

/// Writes a large record and returns (an LSN inside its CRC-covered body, away
/// from page headers, and the flush position after a following commit).
fn big_record(pg: &PgServer) -> (u64, u64) {
    let start = crate::support::parse_lsn(&pg.psql("SELECT pg_current_wal_insert_lsn()"));
    pg.psql("SELECT pg_logical_emit_message(false, 'corrupt-me', repeat('x', 200000))");
    pg.psql("CREATE TABLE after_big(x int)");
    let end = crate::support::parse_lsn(&pg.psql("SELECT pg_current_wal_flush_lsn()"));
    let mut target = start + 50_000;
    let in_page = target % 8192;
    if !(100..8000).contains(&in_page) {
        target += 200;
    }
    (target, end)
}

fn lsn_text(v: u64) -> String {
    crate::support::format_lsn(v)
}

/// `walrcv stream` of slot `v` into `dir` up to `end`, through the proxy on
/// `port`, in plain text from the first byte: the proxy reads the server's
/// message framing, which the one-byte answer to SSLRequest (the default
/// sslmode=prefer) would shift.
fn through_proxy(dir: &std::path::Path, port: u16, end: u64) -> Walrcv {
    Walrcv::new(["stream", "-D", dir.to_str().unwrap(), "-S", "v", "-v"])
        .args(["-E", &lsn_text(end), "-d"])
        .arg(format!(
            "host=127.0.0.1 port={port} user=postgres sslmode=disable"
        ))
}

#[test]
fn persistent_corruption_is_never_acknowledged_and_exits_4() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    pg.psql("SELECT pg_create_physical_replication_slot('v', true)");
    let slot_start =
        crate::support::parse_lsn(&pg.psql("SELECT restart_lsn FROM pg_replication_slots"));
    let (target, end) = big_record(&pg);
    let proxy = CorruptingProxy::start(pg.port(), target, usize::MAX);
    let dir = tempfile::tempdir().unwrap();
    let out = through_proxy(dir.path(), proxy.port, end)
        .arg("-n")
        .timeout(Duration::from_secs(60))
        .run();
    let err = &out.stderr;
    eprintln!("{err}");
    assert_eq!(
        out.status.code(),
        Some(4),
        "verification failure has its own exit status"
    );
    assert!(proxy.corrupted.load(Ordering::SeqCst) >= 1);
    assert!(err.contains("Crc"), "names the check: {err}");
    let segno = target / (1 << 20);
    let file = format!("{:08X}{:08X}{:08X}", 1, segno / 4096, segno % 4096);
    assert!(err.contains(&file), "names the segment file {file}: {err}");
    // Nothing at or past the corrupted record was acknowledged.
    let flushed =
        crate::support::parse_lsn(&pg.psql("SELECT restart_lsn FROM pg_replication_slots"));
    assert!(
        flushed >= slot_start && flushed <= target,
        "flush {flushed:X} must stay below {target:X}"
    );
    // The segment with the bad record never became a complete segment.
    assert!(
        !dir.path().join(&file).exists(),
        "{file} must not be complete"
    );
}

#[test]
fn transient_corruption_heals_by_restreaming_the_segment() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    pg.psql("SELECT pg_create_physical_replication_slot('v', true)");
    let (target, end) = big_record(&pg);
    pg.psql("SELECT pg_switch_wal()");
    pg.psql("CREATE TABLE after_switch(x int)");
    let end = end.max(crate::support::parse_lsn(
        &pg.psql("SELECT pg_current_wal_flush_lsn()"),
    ));
    let proxy = CorruptingProxy::start(pg.port(), target, 1);
    let dir = tempfile::tempdir().unwrap();
    let mut child = through_proxy(dir.path(), proxy.port, end).spawn();
    let status = child
        .wait_timeout(Duration::from_secs(60))
        .expect("walrcv finished");
    let err = child.stderr();
    eprintln!("{err}");
    assert!(status.success(), "healed and reached endpos");
    assert_eq!(proxy.corrupted.load(Ordering::SeqCst), 1);
    assert_eq!(
        err.matches("WAL verification failed").count(),
        1,
        "reported once: {err}"
    );
    // Every complete segment, including the one that was corrupted on the
    // first attempt, is byte-identical to the primary's.
    let segno = target / (1 << 20);
    let file = format!("{:08X}{:08X}{:08X}", 1, segno / 4096, segno % 4096);
    let ours = std::fs::read(dir.path().join(&file))
        .expect("the segment was completed on the second attempt");
    let theirs = std::fs::read(pg.wal_dir().join(&file)).unwrap();
    assert!(ours == theirs, "{file} differs from the primary's");
}
