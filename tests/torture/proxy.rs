//! The torture proxy: relays walrcv's connections to one server, message by
//! message, and records what the acknowledgements were.
//!
//! Client to server it parses `START_REPLICATION ... TIMELINE n` (the
//! connection's timeline) and every standby status update (`'r'` in CopyData:
//! write, flush, apply), recording each flush position with its time and a
//! snapshot of the WAL the server had sent by then. Server to client it parses
//! XLogData to know how far the server sent WAL on each timeline. Faults: cut
//! every connection, stall them, flip a bit of an XLogData payload.
//!
//! Two proxies (one per server, for a host list) share one [`Recorder`].
//! Plain threads and blocking sockets: a cut is a `shutdown` of both sockets,
//! which wakes the threads blocked on them. walrcv must connect with
//! `sslmode=disable` (the proxy reads the protocol in the clear).

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The WAL block size of the servers the torture test starts (the default).
const BLOCK_SIZE: u64 = 8192;

/// One standby status update seen by a proxy.
#[derive(Clone, Debug)]
pub struct Status {
    /// Milliseconds since the cycle's start.
    pub ms: u64,
    pub conn: u64,
    /// The connection's timeline (its last START_REPLICATION), 0 when none.
    pub tli: u32,
    pub write: u64,
    pub flush: u64,
    /// Per timeline, the end of the WAL servers had sent when it arrived.
    pub sent: BTreeMap<u32, u64>,
}

/// A bit flipped in an XLogData payload.
#[derive(Clone, Debug)]
pub struct Flip {
    pub ms: u64,
    pub conn: u64,
    pub tli: u32,
    pub lsn: u64,
    pub bit: u8,
}

#[derive(Default)]
struct Record {
    sent: BTreeMap<u32, u64>,
    statuses: Vec<Status>,
    max_flush: BTreeMap<u32, u64>,
    flips: Vec<Flip>,
    flip_armed: Option<(u64, u8)>,
    /// Anything the proxy could not follow (a test problem, not walrcv's).
    problems: Vec<String>,
}

/// What the proxies saw, shared by them and read by the cycle.
pub struct Recorder {
    started: Instant,
    next_conn: AtomicU64,
    record: Mutex<Record>,
}

impl Recorder {
    pub fn new(started: Instant) -> Arc<Recorder> {
        Arc::new(Recorder {
            started,
            next_conn: AtomicU64::new(1),
            record: Mutex::new(Record::default()),
        })
    }

    fn ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every status update so far.
    pub fn statuses(&self) -> Vec<Status> {
        self.lock().statuses.clone()
    }

    /// The highest flush position reported on each timeline so far.
    pub fn max_flush(&self) -> BTreeMap<u32, u64> {
        self.lock().max_flush.clone()
    }

    pub fn flips(&self) -> Vec<Flip> {
        self.lock().flips.clone()
    }

    pub fn problems(&self) -> Vec<String> {
        self.lock().problems.clone()
    }

    /// Arms a bit flip (see `Fault::Bitflip`); returns the flips done before.
    pub fn arm_flip(&self, pick: u64, bit: u8) -> usize {
        let mut r = self.lock();
        r.flip_armed = Some((pick, bit));
        r.flips.len()
    }

    pub fn flip_pending(&self) -> bool {
        self.lock().flip_armed.is_some()
    }

    /// Disarms a flip that found no payload to land in.
    pub fn disarm_flip(&self) {
        self.lock().flip_armed = None;
    }

    fn status(&self, conn: u64, tli: u32, write: u64, flush: u64) {
        let ms = self.ms();
        let mut r = self.lock();
        let sent = r.sent.clone();
        let max = r.max_flush.entry(tli).or_default();
        *max = (*max).max(flush);
        r.statuses.push(Status {
            ms,
            conn,
            tli,
            write,
            flush,
            sent,
        });
    }

    /// Records XLogData `[start, start + payload.len())` going to the client,
    /// flipping a bit of it first when a flip is armed and the payload starts
    /// past every flush position reported so far (WAL walrcv does not have).
    /// A flip aimed at a length (see `Fault::Bitflip`) waits for a payload
    /// that starts exactly at the flush position reported, off a page
    /// boundary: there a record begins, and byte 2 of its `xl_tot_len` makes
    /// it claim 64 KiB to 8 MiB more than it has.
    fn xlog_data(&self, conn: u64, tli: u32, start: u64, payload: &mut [u8]) {
        let ms = self.ms();
        let mut r = self.lock();
        let end = start + payload.len() as u64;
        let sent = r.sent.entry(tli).or_default();
        *sent = (*sent).max(end);
        let reported = r.max_flush.values().copied().max().unwrap_or(0);
        let Some((pick, bit)) = r.flip_armed else {
            return;
        };
        let at = if crate::schedule::flips_a_length(pick) {
            let record_starts = start == reported && start % BLOCK_SIZE != 0;
            (record_starts && payload.len() >= 4).then_some(2)
        } else {
            (!payload.is_empty() && start >= reported)
                .then(|| (pick % payload.len() as u64) as usize)
        };
        if let Some(at) = at {
            payload[at] ^= 1 << bit;
            r.flip_armed = None;
            r.flips.push(Flip {
                ms,
                conn,
                tli,
                lsn: start + at as u64,
                bit,
            });
        }
    }

    fn problem(&self, what: String) {
        self.lock().problems.push(what);
    }
}

struct Shared {
    upstream: u16,
    recorder: Arc<Recorder>,
    /// Both sockets of every connection (clones), to cut them.
    live: Mutex<Vec<(TcpStream, TcpStream)>>,
    stalled: Mutex<bool>,
    unstalled: Condvar,
    closing: AtomicBool,
}

impl Shared {
    fn wait_while_stalled(&self) {
        let mut s = self.stalled.lock().unwrap_or_else(|e| e.into_inner());
        while *s {
            s = self.unstalled.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The proxy in front of one server; see the module documentation.
pub struct TortureProxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl TortureProxy {
    /// Listens on a free port of 127.0.0.1 and relays to `127.0.0.1:upstream`.
    pub fn start(upstream: u16, recorder: Arc<Recorder>) -> TortureProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the torture proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            upstream,
            recorder,
            live: Mutex::new(Vec::new()),
            stalled: Mutex::new(false),
            unstalled: Condvar::new(),
            closing: AtomicBool::new(false),
        });
        let s = shared.clone();
        let acceptor = std::thread::spawn(move || accept_loop(listener, s));
        TortureProxy {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes every open connection (both sides).
    pub fn cut(&self) -> usize {
        let live = std::mem::take(&mut *self.shared.live.lock().unwrap_or_else(|e| e.into_inner()));
        for (client, server) in &live {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
        live.len()
    }

    /// Stops (true) or resumes (false) moving bytes on every connection.
    pub fn stall(&self, stall: bool) {
        *self
            .shared
            .stalled
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = stall;
        self.shared.unstalled.notify_all();
    }
}

impl Drop for TortureProxy {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.stall(false);
        self.cut();
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.closing.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(("127.0.0.1", shared.upstream)) else {
                    continue; // the client sees the connection close: server down
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let conn = shared.recorder.next_conn.fetch_add(1, Ordering::SeqCst);
                if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                    shared
                        .live
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((c, s));
                }
                relay(conn, client, server, shared.clone());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Starts the two relaying threads of one connection (detached: they end
/// when either socket closes, and a cut closes both).
fn relay(conn: u64, client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let tli = Arc::new(AtomicU32::new(0));
    let (Ok(c_read), Ok(s_write), Ok(s_read)) =
        (client.try_clone(), server.try_clone(), server.try_clone())
    else {
        return;
    };
    let c_write = client;
    let (sh, t) = (shared.clone(), tli.clone());
    std::thread::spawn(move || {
        let _ = client_to_server(conn, c_read, &s_write, &sh, &t);
        let _ = s_write.shutdown(Shutdown::Both);
    });
    std::thread::spawn(move || {
        let _ = server_to_client(conn, s_read, &c_write, &shared, &tli);
        let _ = c_write.shutdown(Shutdown::Both);
    });
}

/// Reads one whole message: type byte (unless `typed` is false: the start-up
/// packet), length, body.
fn read_message(r: &mut impl Read, typed: bool) -> io::Result<Vec<u8>> {
    let head = if typed { 5 } else { 4 };
    let mut msg = vec![0u8; head];
    r.read_exact(&mut msg)?;
    let len = u32::from_be_bytes(msg[head - 4..head].try_into().expect("4 bytes")) as usize;
    if !(4..=(1 << 30)).contains(&len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad message length",
        ));
    }
    msg.resize(head - 4 + len, 0);
    r.read_exact(&mut msg[head..])?;
    Ok(msg)
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

fn client_to_server(
    conn: u64,
    from: TcpStream,
    mut to: &TcpStream,
    shared: &Shared,
    tli: &AtomicU32,
) -> io::Result<()> {
    let mut from = BufReader::new(from);
    let startup = read_message(&mut from, false)?;
    let code = u32::from_be_bytes(startup[4..8].try_into().expect("4 bytes"));
    if code == 80877103 || code == 80877104 {
        shared.recorder.problem(format!(
            "connection {conn}: SSL/GSS request: the proxy needs sslmode=disable"
        ));
        return Ok(());
    }
    shared.wait_while_stalled();
    to.write_all(&startup)?;
    loop {
        let msg = read_message(&mut from, true)?;
        match msg[0] {
            b'Q' => {
                let text = String::from_utf8_lossy(&msg[5..]);
                if text.trim_start().starts_with("START_REPLICATION") {
                    let words: Vec<&str> = text.trim_end_matches('\0').split_whitespace().collect();
                    let t = words
                        .iter()
                        .position(|w| w.eq_ignore_ascii_case("TIMELINE"))
                        .and_then(|i| words.get(i + 1))
                        .and_then(|w| w.trim_end_matches(';').parse().ok());
                    match t {
                        Some(t) => tli.store(t, Ordering::SeqCst),
                        None => shared
                            .recorder
                            .problem(format!("connection {conn}: no TIMELINE in {text:?}")),
                    }
                }
            }
            b'd' if msg.len() >= 5 + 34 && msg[5] == b'r' => {
                let write = be_u64(&msg[6..]);
                let flush = be_u64(&msg[14..]);
                shared
                    .recorder
                    .status(conn, tli.load(Ordering::SeqCst), write, flush);
            }
            _ => {}
        }
        shared.wait_while_stalled();
        to.write_all(&msg)?;
    }
}

fn server_to_client(
    conn: u64,
    from: TcpStream,
    mut to: &TcpStream,
    shared: &Shared,
    tli: &AtomicU32,
) -> io::Result<()> {
    let mut from = BufReader::with_capacity(256 * 1024, from);
    loop {
        let mut msg = read_message(&mut from, true)?;
        // CopyData holding XLogData: 'w', start, end, send time, payload.
        if msg[0] == b'd' && msg.len() >= 5 + 25 && msg[5] == b'w' {
            let start = be_u64(&msg[6..]);
            shared
                .recorder
                .xlog_data(conn, tli.load(Ordering::SeqCst), start, &mut msg[5 + 25..]);
        }
        shared.wait_while_stalled();
        to.write_all(&msg)?;
    }
}
