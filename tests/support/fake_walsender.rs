//! A scripted fake primary ("fake walsender") for in-process receiver tests.
//!
//! A real server decides by itself when and how it sends WAL and keepalives, so
//! message orders such as "WAL and a reply-requested keepalive in one TCP
//! segment", "a flood without a pause" or "total silence" only happen by chance.
//! This fake speaks just enough of protocol v3 for a physical replication
//! client (startup with trust authentication, `IDENTIFY_SYSTEM`, `SHOW`,
//! `READ_REPLICATION_SLOT`, `START_REPLICATION` -> CopyBoth) and then hands the
//! stream to the test, which sends exactly the messages it wants, in the writes
//! it wants, and reads back what the client sent (standby status updates with
//! the instant each arrived).
//!
//! Server messages are encoded here, by hand, so the client's parser is tested
//! too; client messages are decoded here as well. LSNs are plain `u64`.
//!
//! ```ignore
//! let mut fake = FakeWalsender::start(FakeConfig::pg15_fixture()).await;
//! // ... start the receiver against fake.port() ...
//! let mut stream = fake.next_stream(Duration::from_secs(5)).await;
//! stream.send(&[ServerMsg::xlog(0x80_0000, &wal), ServerMsg::keepalive(end, true)]).await?;
//! let st = stream.wait_for_status(Duration::from_secs(1), |s| s.flush == expected).await;
//! ```

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

/// What the fake server says about itself.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    pub system_id: u64,
    pub timeline: u32,
    /// IDENTIFY_SYSTEM's `xlogpos` (the server's flush position).
    pub xlogpos: u64,
    /// ParameterStatus `server_version`.
    pub server_version: String,
    /// `SHOW wal_segment_size`.
    pub wal_segment_size: String,
    /// `SHOW wal_block_size`.
    pub wal_block_size: String,
    /// Slots READ_REPLICATION_SLOT knows; others give a row of NULLs.
    pub slots: Vec<FakeSlot>,
    /// START_REPLICATION is answered with this ErrorResponse (SQLSTATE,
    /// message) instead of CopyBoth, as a server refusing the start point or
    /// the slot does; see [`FakeConfig::refusing_start`].
    pub start_error: Option<(String, String)>,
    /// TIMELINE_HISTORY of the server's own timeline answers with this
    /// content (`parent<TAB>switchpoint<TAB>reason` lines); other timelines,
    /// or none configured, give an ErrorResponse as a server without the file.
    pub timeline_history: Option<String>,
}

/// A physical slot as READ_REPLICATION_SLOT reports it.
#[derive(Debug, Clone)]
pub struct FakeSlot {
    pub name: String,
    pub restart_lsn: u64,
    pub restart_tli: u32,
}

/// System id of `testdata/wal/pg15`.
pub const PG15_SYSTEM_ID: u64 = 7710430266889386786;

impl FakeConfig {
    /// The server of `testdata/wal/pg15`: PostgreSQL 15.18, 1 MB segments,
    /// timeline 1, positioned inside segment 8 (so a receiver with an empty
    /// archive starts at 0/800000).
    pub fn pg15_fixture() -> FakeConfig {
        FakeConfig {
            system_id: PG15_SYSTEM_ID,
            timeline: 1,
            xlogpos: 0x86_FC58,
            server_version: "15.18".into(),
            wal_segment_size: "1MB".into(),
            wal_block_size: "8192".into(),
            slots: Vec::new(),
            start_error: None,
            timeline_history: None,
        }
    }

    /// This config, answering START_REPLICATION with an ErrorResponse of
    /// SQLSTATE `code` and text `message` (in whatever language).
    pub fn refusing_start(mut self, code: &str, message: &str) -> FakeConfig {
        self.start_error = Some((code.to_string(), message.to_string()));
        self
    }
}

/// A message the fake sends inside CopyBoth (or to end it).
#[derive(Debug, Clone)]
pub enum ServerMsg {
    /// XLogData `'w'`.
    XLogData {
        start: u64,
        wal_end: u64,
        data: Vec<u8>,
    },
    /// Primary keepalive `'k'`.
    Keepalive { wal_end: u64, reply_requested: bool },
    /// CopyDone `'c'`.
    CopyDone,
    /// CommandComplete `'C'` with this tag (a shutting-down server sends `COPY 0`).
    CommandComplete(String),
    /// ErrorResponse `'E'`.
    Error { code: String, message: String },
}

impl ServerMsg {
    /// XLogData whose `walEnd` is the end of `data`.
    pub fn xlog(start: u64, data: &[u8]) -> ServerMsg {
        ServerMsg::XLogData {
            start,
            wal_end: start + data.len() as u64,
            data: data.to_vec(),
        }
    }

    pub fn keepalive(wal_end: u64, reply_requested: bool) -> ServerMsg {
        ServerMsg::Keepalive {
            wal_end,
            reply_requested,
        }
    }

    /// Appends the wire bytes (type byte, length, body) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ServerMsg::XLogData {
                start,
                wal_end,
                data,
            } => {
                let mut p = Vec::with_capacity(25 + data.len());
                p.push(b'w');
                p.extend_from_slice(&start.to_be_bytes());
                p.extend_from_slice(&wal_end.to_be_bytes());
                p.extend_from_slice(&pg_now().to_be_bytes());
                p.extend_from_slice(data);
                frame(out, b'd', &p);
            }
            ServerMsg::Keepalive {
                wal_end,
                reply_requested,
            } => {
                let mut p = Vec::with_capacity(18);
                p.push(b'k');
                p.extend_from_slice(&wal_end.to_be_bytes());
                p.extend_from_slice(&pg_now().to_be_bytes());
                p.push(u8::from(*reply_requested));
                frame(out, b'd', &p);
            }
            ServerMsg::CopyDone => frame(out, b'c', &[]),
            ServerMsg::CommandComplete(tag) => frame(out, b'C', &cstr(tag)),
            ServerMsg::Error { code, message } => error_response(out, code, message),
        }
    }
}

/// A standby status update `'r'` received from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusUpdate {
    pub write: u64,
    pub flush: u64,
    pub apply: u64,
    /// The client's clock (µs since 2000-01-01).
    pub client_time: i64,
    pub reply_requested: bool,
    /// When the fake read it.
    pub at: Instant,
    /// End of the WAL the fake had sent (or started sending) before this update
    /// arrived, the START_REPLICATION point before any: the client cannot have
    /// seen more.
    pub sent_before: u64,
}

/// Hot standby feedback `'h'`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotStandbyFeedback {
    pub client_time: i64,
    pub xmin: u32,
    pub xmin_epoch: u32,
    pub catalog_xmin: u32,
    pub catalog_xmin_epoch: u32,
    pub at: Instant,
}

/// Anything the client sent during CopyBoth, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg {
    Status(StatusUpdate),
    HotStandby(HotStandbyFeedback),
    CopyDone {
        at: Instant,
    },
    Terminate {
        at: Instant,
    },
    /// A CopyData payload that is neither `'r'` nor `'h'`, or the wrong size.
    BadCopyData {
        payload: Vec<u8>,
        at: Instant,
    },
    /// Another frontend message type.
    Other {
        tag: u8,
        at: Instant,
    },
}

#[derive(Debug, Default)]
struct LogInner {
    received: Vec<ClientMsg>,
    sent_end: u64,
    last_send_at: Option<Instant>,
    closed_at: Option<Instant>,
    server_copy_done: bool,
    /// The next timeline and where it starts, announced in the result set
    /// that follows the client's CopyDone (the end of a timeline).
    next_timeline: Option<(u32, u64)>,
    /// The timeline ended and the connection went back to commands: it is
    /// no longer this stream's to close.
    moved_on: bool,
}

/// Shared between a [`ReplicationStream`] and its reader task.
#[derive(Debug)]
struct Log {
    inner: Mutex<LogInner>,
    changed: watch::Sender<u64>,
}

impl Log {
    fn update(&self, f: impl FnOnce(&mut LogInner)) {
        f(&mut self.inner.lock().expect("fake walsender log poisoned"));
        self.changed.send_modify(|n| *n += 1);
    }
    fn read<T>(&self, f: impl FnOnce(&LogInner) -> T) -> T {
        f(&self.inner.lock().expect("fake walsender log poisoned"))
    }
}

/// The write half, shared with the reader task (which answers the client's
/// CopyDone); `None` once closed.
type Writer = Arc<tokio::sync::Mutex<Option<OwnedWriteHalf>>>;

/// One connection in CopyBoth mode, driven by the test.
///
/// When the client sends CopyDone, the fake answers as a walsender does
/// (CopyDone unless it sent one already, CommandComplete `START_STREAMING`,
/// CommandComplete `START_REPLICATION`, ReadyForQuery) so a client that stops
/// cleanly does not wait. Dropping the stream (or
/// [`ReplicationStream::close`]) closes the connection.
pub struct ReplicationStream {
    /// 1 for the first connection the fake accepted, 2 for the next...
    pub connection: usize,
    /// When the TCP connection was accepted.
    pub connected_at: Instant,
    /// START_REPLICATION's start point, timeline and slot.
    pub start_lsn: u64,
    pub timeline: Option<u32>,
    pub slot: Option<String>,
    /// The startup packet's parameters (`user`, `application_name`, ...).
    pub params: HashMap<String, String>,
    writer: Writer,
    log: Arc<Log>,
    reader: JoinHandle<()>,
    wbuf: Vec<u8>,
}

impl ReplicationStream {
    /// Ends the timeline as a walsender does when its history leaves it:
    /// CopyDone now, and once the client answers with its own, the result set
    /// naming `next_tli` and where it starts.
    pub async fn end_timeline(&mut self, next_tli: u32, next_start: u64) -> io::Result<()> {
        self.log
            .update(|l| l.next_timeline = Some((next_tli, next_start)));
        self.send(&[ServerMsg::CopyDone]).await
    }

    /// Sends `msgs` in ONE socket write (one TCP segment when small enough).
    pub async fn send(&mut self, msgs: &[ServerMsg]) -> io::Result<()> {
        self.wbuf.clear();
        let mut wal_end = None;
        let mut copy_done = false;
        for m in msgs {
            m.encode(&mut self.wbuf);
            match m {
                ServerMsg::XLogData { start, data, .. } => {
                    wal_end = Some(start + data.len() as u64)
                }
                ServerMsg::CopyDone => copy_done = true,
                _ => {}
            }
        }
        // Recorded before the write: a status update caused by these bytes is
        // necessarily logged after this.
        self.log.update(|l| {
            if let Some(end) = wal_end {
                l.sent_end = l.sent_end.max(end);
            }
            l.last_send_at = Some(Instant::now());
            l.server_copy_done |= copy_done;
        });
        let mut guard = self.writer.lock().await;
        let w = guard
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "stream closed"))?;
        w.write_all(&self.wbuf).await?;
        w.flush().await
    }

    /// One XLogData (walEnd = end of `data`) in its own write.
    pub async fn send_xlog(&mut self, start: u64, data: &[u8]) -> io::Result<()> {
        self.send(&[ServerMsg::xlog(start, data)]).await
    }

    /// One keepalive in its own write.
    pub async fn send_keepalive(&mut self, wal_end: u64, reply_requested: bool) -> io::Result<()> {
        self.send(&[ServerMsg::keepalive(wal_end, reply_requested)])
            .await
    }

    /// Closes the connection (both directions) without a word.
    pub fn close(self) {}

    /// Everything the client sent so far, in arrival order.
    pub fn received(&self) -> Vec<ClientMsg> {
        self.log.read(|l| l.received.clone())
    }

    /// The status updates received so far, in arrival order.
    pub fn status_updates(&self) -> Vec<StatusUpdate> {
        self.log.read(|l| {
            l.received
                .iter()
                .filter_map(|m| match m {
                    ClientMsg::Status(s) => Some(*s),
                    _ => None,
                })
                .collect()
        })
    }

    /// End of the WAL sent so far (the start point before any).
    pub fn sent_end(&self) -> u64 {
        self.log.read(|l| l.sent_end)
    }

    /// When the last write started.
    pub fn last_send_at(&self) -> Option<Instant> {
        self.log.read(|l| l.last_send_at)
    }

    /// When the client closed its side (EOF or error on read), if it did.
    pub fn closed_at(&self) -> Option<Instant> {
        self.log.read(|l| l.closed_at)
    }

    /// Waits up to `timeout` for a status update satisfying `pred` (already
    /// received ones count) and returns the first one.
    pub async fn wait_for_status(
        &self,
        timeout: Duration,
        pred: impl Fn(&StatusUpdate) -> bool,
    ) -> Option<StatusUpdate> {
        self.wait_until(timeout, |l| {
            l.received.iter().find_map(|m| match m {
                ClientMsg::Status(s) if pred(s) => Some(*s),
                _ => None,
            })
        })
        .await
    }

    /// Waits up to `timeout` for the client to close the connection.
    pub async fn wait_closed(&self, timeout: Duration) -> Option<Instant> {
        self.wait_until(timeout, |l| l.closed_at).await
    }

    async fn wait_until<T>(
        &self,
        timeout: Duration,
        check: impl Fn(&LogInner) -> Option<T>,
    ) -> Option<T> {
        let mut rx = self.log.changed.subscribe();
        let wait = async {
            loop {
                rx.borrow_and_update();
                if let Some(v) = self.log.read(&check) {
                    return v;
                }
                if rx.changed().await.is_err() {
                    // Cannot happen while `self` holds the sender; wait out the timeout.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok()
    }
}

impl Drop for ReplicationStream {
    fn drop(&mut self) {
        if self.log.read(|l| l.moved_on) {
            return;
        }
        self.reader.abort();
        if let Ok(mut w) = self.writer.try_lock() {
            w.take();
        }
    }
}

/// The fake server. Dropping it stops accepting and closes connections that
/// have not reached START_REPLICATION yet.
pub struct FakeWalsender {
    addr: SocketAddr,
    accepted: Arc<Mutex<Vec<Instant>>>,
    streams: mpsc::UnboundedReceiver<ReplicationStream>,
    accept_task: JoinHandle<()>,
}

impl FakeWalsender {
    /// Listens on 127.0.0.1, port chosen by the system.
    pub async fn start(config: FakeConfig) -> FakeWalsender {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake walsender on 127.0.0.1");
        let addr = listener.local_addr().expect("local address of the fake");
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let (tx, streams) = mpsc::unbounded_channel();
        let config = Arc::new(config);
        let acc = accepted.clone();
        let accept_task = tokio::spawn(async move {
            let mut handshakes = JoinSet::new();
            loop {
                tokio::select! {
                    r = listener.accept() => {
                        let Ok((sock, _)) = r else { continue };
                        let connected_at = Instant::now();
                        let connection = {
                            let mut a = acc.lock().expect("fake walsender poisoned");
                            a.push(connected_at);
                            a.len()
                        };
                        let (config, tx) = (config.clone(), tx.clone());
                        handshakes.spawn(async move {
                            // A client that leaves before START_REPLICATION is not an error.
                            let _ = handshake(sock, config, connection, connected_at, tx).await;
                        });
                    }
                    Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
                }
            }
        });
        FakeWalsender {
            addr,
            accepted,
            streams,
            accept_task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Number of TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.lock().expect("fake walsender poisoned").len()
    }

    /// When each connection was accepted.
    pub fn connection_times(&self) -> Vec<Instant> {
        self.accepted
            .lock()
            .expect("fake walsender poisoned")
            .clone()
    }

    /// The next connection that reached CopyBoth; panics after `timeout`.
    pub async fn next_stream(&mut self, timeout: Duration) -> ReplicationStream {
        match tokio::time::timeout(timeout, self.streams.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => panic!("fake walsender: accept task ended"),
            Err(_) => panic!(
                "fake walsender: no START_REPLICATION within {timeout:?} ({} connections accepted)",
                self.connections()
            ),
        }
    }

    /// Like [`FakeWalsender::next_stream`] but `None` on timeout.
    pub async fn try_next_stream(&mut self, timeout: Duration) -> Option<ReplicationStream> {
        tokio::time::timeout(timeout, self.streams.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for FakeWalsender {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

// ---------------------------------------------------------------------------
// Protocol v3, server side.

const PROTOCOL_3: i32 = 196608;
const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;
const TEXT_OID: i32 = 25;
const INT4_OID: i32 = 23;
const INT8_OID: i32 = 20;

fn pg_now() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_micros() as i64 - 946_684_800 * 1_000_000
}

fn fmt_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn frame(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
}

fn error_response(out: &mut Vec<u8>, code: &str, message: &str) {
    let mut b = Vec::new();
    for (f, v) in [
        (b'S', "ERROR"),
        (b'V', "ERROR"),
        (b'C', code),
        (b'M', message),
    ] {
        b.push(f);
        b.extend(cstr(v));
    }
    b.push(0);
    frame(out, b'E', &b);
}

/// RowDescription + one DataRow + CommandComplete.
fn one_row(out: &mut Vec<u8>, cols: &[(&str, i32)], values: &[Option<&str>], tag: &str) {
    let mut t = (cols.len() as i16).to_be_bytes().to_vec();
    for (name, oid) in cols {
        t.extend(cstr(name));
        t.extend_from_slice(&0i32.to_be_bytes()); // table oid
        t.extend_from_slice(&0i16.to_be_bytes()); // column number
        t.extend_from_slice(&oid.to_be_bytes());
        let size: i16 = match *oid {
            INT4_OID => 4,
            INT8_OID => 8,
            _ => -1,
        };
        t.extend_from_slice(&size.to_be_bytes());
        t.extend_from_slice(&(-1i32).to_be_bytes()); // type modifier
        t.extend_from_slice(&0i16.to_be_bytes()); // text format
    }
    frame(out, b'T', &t);
    let mut d = (values.len() as i16).to_be_bytes().to_vec();
    for v in values {
        match v {
            Some(s) => {
                d.extend_from_slice(&(s.len() as i32).to_be_bytes());
                d.extend_from_slice(s.as_bytes());
            }
            None => d.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    frame(out, b'D', &d);
    frame(out, b'C', &cstr(tag));
}

fn ready(out: &mut Vec<u8>) {
    frame(out, b'Z', b"I");
}

/// Reads one typed frontend message: (type byte, body).
async fn read_message<R: AsyncReadExt + Unpin>(r: &mut R) -> io::Result<(u8, Vec<u8>)> {
    let tag = r.read_u8().await?;
    let len = r.read_u32().await? as usize;
    if !(4..=(1 << 20)).contains(&len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad length {len} for '{}'", tag as char),
        ));
    }
    let mut body = vec![0; len - 4];
    r.read_exact(&mut body).await?;
    Ok((tag, body))
}

/// What a connection's replication streams share.
#[derive(Clone)]
struct ConnectionInfo {
    config: Arc<FakeConfig>,
    connection: usize,
    connected_at: Instant,
    params: HashMap<String, String>,
    streams: mpsc::UnboundedSender<ReplicationStream>,
}

/// Startup and authentication, then the commands (see [`commands`]).
async fn handshake(
    mut sock: TcpStream,
    config: Arc<FakeConfig>,
    connection: usize,
    connected_at: Instant,
    streams: mpsc::UnboundedSender<ReplicationStream>,
) -> io::Result<()> {
    sock.set_nodelay(true)?;
    // Startup packet (untyped), after any SSL/GSS request, which is refused.
    let params = loop {
        let len = sock.read_u32().await? as usize;
        if !(8..=10_000).contains(&len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad startup length",
            ));
        }
        let mut body = vec![0; len - 4];
        sock.read_exact(&mut body).await?;
        let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        match code {
            SSL_REQUEST | GSSENC_REQUEST => sock.write_all(b"N").await?,
            PROTOCOL_3 => {
                let mut params = HashMap::new();
                let mut fields = body[4..].split(|&b| b == 0).map(String::from_utf8_lossy);
                while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
                    if k.is_empty() {
                        break;
                    }
                    params.insert(k.into_owned(), v.into_owned());
                }
                break params;
            }
            _ => return Ok(()),
        }
    };

    let mut out = Vec::new();
    frame(&mut out, b'R', &0i32.to_be_bytes()); // AuthenticationOk (trust)
    for (k, v) in [
        ("server_version", config.server_version.as_str()),
        ("integer_datetimes", "on"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("standard_conforming_strings", "on"),
        (
            "application_name",
            params.get("application_name").map_or("", String::as_str),
        ),
    ] {
        let mut b = cstr(k);
        b.extend(cstr(v));
        frame(&mut out, b'S', &b);
    }
    let mut key = (4242 + connection as i32).to_be_bytes().to_vec();
    key.extend_from_slice(&0x5EC_2E7i32.to_be_bytes());
    frame(&mut out, b'K', &key);
    ready(&mut out);
    sock.write_all(&out).await?;
    let (read, write) = sock.into_split();
    let info = ConnectionInfo {
        config,
        connection,
        connected_at,
        params,
        streams,
    };
    commands(
        BufReader::new(read),
        Arc::new(tokio::sync::Mutex::new(Some(write))),
        info,
    )
    .await
}

/// Writes `out` on the connection (nothing once it is closed).
async fn write_out(writer: &Writer, out: &[u8]) -> io::Result<()> {
    match writer.lock().await.as_mut() {
        Some(w) => w.write_all(out).await,
        None => Ok(()),
    }
}

/// Commands up to START_REPLICATION, whose stream goes to the test; also
/// after the end of a timeline, on the same connection, as a walsender does.
/// Ends quietly when the client leaves (Terminate or EOF).
fn commands(mut sock: BufReader<OwnedReadHalf>, writer: Writer, info: ConnectionInfo) -> Commands {
    // Boxed: `read_client`, which this spawns, comes back here.
    Box::pin(async move {
        let config = info.config.clone();
        loop {
            let (tag, body) = match read_message(&mut sock).await {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            };
            match tag {
                b'X' => return Ok(()),
                b'Q' => {}
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected frontend message '{}'", other as char),
                    ))
                }
            }
            let sql =
                String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned();
            let q = sql.trim().trim_end_matches(';').trim();
            let words: Vec<&str> = q.split_whitespace().collect();
            let command = words
                .first()
                .map(|w| w.to_ascii_uppercase())
                .unwrap_or_default();
            let mut out = Vec::new();
            match command.as_str() {
                "IDENTIFY_SYSTEM" => one_row(
                    &mut out,
                    &[
                        ("systemid", TEXT_OID),
                        ("timeline", INT4_OID),
                        ("xlogpos", TEXT_OID),
                        ("dbname", TEXT_OID),
                    ],
                    &[
                        Some(&config.system_id.to_string()),
                        Some(&config.timeline.to_string()),
                        Some(&fmt_lsn(config.xlogpos)),
                        None,
                    ],
                    "IDENTIFY_SYSTEM",
                ),
                "SHOW" => {
                    let name = words
                        .get(1)
                        .map(|w| w.to_ascii_lowercase())
                        .unwrap_or_default();
                    let value = match name.as_str() {
                        "wal_segment_size" => Some(config.wal_segment_size.as_str()),
                        "wal_block_size" => Some(config.wal_block_size.as_str()),
                        "server_version" => Some(config.server_version.as_str()),
                        "integer_datetimes" => Some("on"),
                        "data_directory_mode" => Some("0700"),
                        _ => None,
                    };
                    match value {
                        Some(v) => one_row(&mut out, &[(&name, TEXT_OID)], &[Some(v)], "SHOW"),
                        None => error_response(
                            &mut out,
                            "42704",
                            &format!("unrecognized configuration parameter \"{name}\""),
                        ),
                    }
                }
                "READ_REPLICATION_SLOT" => {
                    let name = words
                        .get(1)
                        .map(|w| w.trim_matches('"'))
                        .unwrap_or_default();
                    let cols = [
                        ("slot_type", TEXT_OID),
                        ("restart_lsn", TEXT_OID),
                        ("restart_tli", INT8_OID),
                    ];
                    match config.slots.iter().find(|s| s.name == name) {
                        Some(s) => one_row(
                            &mut out,
                            &cols,
                            &[
                                Some("physical"),
                                Some(&fmt_lsn(s.restart_lsn)),
                                Some(&s.restart_tli.to_string()),
                            ],
                            "READ_REPLICATION_SLOT",
                        ),
                        None => one_row(
                            &mut out,
                            &cols,
                            &[None, None, None],
                            "READ_REPLICATION_SLOT",
                        ),
                    }
                }
                "TIMELINE_HISTORY" => {
                    let asked: Option<u32> = words.get(1).and_then(|w| w.parse().ok());
                    match (&config.timeline_history, asked) {
                    (Some(content), Some(tli)) if tli == config.timeline => one_row(
                        &mut out,
                        &[("filename", TEXT_OID), ("content", TEXT_OID)],
                        &[Some(&format!("{tli:08X}.history")), Some(content)],
                        "TIMELINE_HISTORY",
                    ),
                    _ => error_response(
                        &mut out,
                        "58P01",
                        "could not open file \"pg_wal/00000002.history\": No such file or directory",
                    ),
                }
                }
                "START_REPLICATION" if config.start_error.is_some() => {
                    if let Some((code, message)) = &config.start_error {
                        error_response(&mut out, code, message);
                    }
                }
                "START_REPLICATION" => match parse_start_replication(&words[1..]) {
                    Some((start_lsn, timeline, slot)) => {
                        // CopyBothResponse: overall format 0, no columns.
                        frame(&mut out, b'W', &[0, 0, 0]);
                        write_out(&writer, &out).await?;
                        let log = Arc::new(Log {
                            inner: Mutex::new(LogInner {
                                sent_end: start_lsn,
                                ..LogInner::default()
                            }),
                            changed: watch::channel(0).0,
                        });
                        let reader = tokio::spawn(read_client(
                            sock,
                            log.clone(),
                            writer.clone(),
                            info.clone(),
                        ));
                        let _ = info.streams.send(ReplicationStream {
                            connection: info.connection,
                            connected_at: info.connected_at,
                            start_lsn,
                            timeline,
                            slot,
                            params: info.params.clone(),
                            writer,
                            log,
                            reader,
                            wbuf: Vec::new(),
                        });
                        return Ok(());
                    }
                    None => error_response(&mut out, "42601", &format!("syntax error in {q:?}")),
                },
                _ => error_response(
                    &mut out,
                    "42601",
                    &format!("fake walsender does not know {q:?}"),
                ),
            }
            ready(&mut out);
            write_out(&writer, &out).await?;
        }
    })
}

/// The future of [`commands`].
type Commands = std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<()>> + Send>>;

/// `[SLOT name] [PHYSICAL] X/X [TIMELINE n]` -> (start, timeline, slot).
fn parse_start_replication(words: &[&str]) -> Option<(u64, Option<u32>, Option<String>)> {
    let (mut start, mut timeline, mut slot) = (None, None, None);
    let mut it = words.iter();
    while let Some(w) = it.next() {
        match w.to_ascii_uppercase().as_str() {
            "SLOT" => slot = Some(it.next()?.trim_matches('"').to_string()),
            "PHYSICAL" => {}
            "TIMELINE" => timeline = Some(it.next()?.parse().ok()?),
            _ => {
                let (hi, lo) = w.split_once('/')?;
                let hi = u64::from_str_radix(hi, 16).ok()?;
                let lo = u64::from_str_radix(lo, 16).ok()?;
                start = Some((hi << 32) | lo);
            }
        }
    }
    Some((start?, timeline, slot))
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

/// Records everything the client sends in CopyBoth until it closes, and
/// answers its CopyDone. After the end of a timeline the connection goes
/// back to commands (the next START_REPLICATION is a new stream).
async fn read_client(
    mut r: BufReader<OwnedReadHalf>,
    log: Arc<Log>,
    writer: Writer,
    info: ConnectionInfo,
) {
    loop {
        let Ok((tag, body)) = read_message(&mut r).await else {
            log.update(|l| l.closed_at = Some(Instant::now()));
            return;
        };
        let at = Instant::now();
        let msg = match (tag, body.first()) {
            (b'd', Some(b'r')) if body.len() == 34 => ClientMsg::Status(StatusUpdate {
                write: be_u64(&body[1..]),
                flush: be_u64(&body[9..]),
                apply: be_u64(&body[17..]),
                client_time: be_u64(&body[25..]) as i64,
                reply_requested: body[33] != 0,
                at,
                sent_before: 0,
            }),
            (b'd', Some(b'h')) if body.len() == 25 => ClientMsg::HotStandby(HotStandbyFeedback {
                client_time: be_u64(&body[1..]) as i64,
                xmin: be_u32(&body[9..]),
                xmin_epoch: be_u32(&body[13..]),
                catalog_xmin: be_u32(&body[17..]),
                catalog_xmin_epoch: be_u32(&body[21..]),
                at,
            }),
            (b'd', _) => ClientMsg::BadCopyData { payload: body, at },
            (b'c', _) => ClientMsg::CopyDone { at },
            (b'X', _) => ClientMsg::Terminate { at },
            (tag, _) => ClientMsg::Other { tag, at },
        };
        log.update(|l| {
            let msg = match msg {
                ClientMsg::Status(s) => ClientMsg::Status(StatusUpdate {
                    sent_before: l.sent_end,
                    ..s
                }),
                m => m,
            };
            l.received.push(msg);
        });
        if tag == b'c' {
            let mut out = Vec::new();
            if !log.read(|l| l.server_copy_done) {
                frame(&mut out, b'c', &[]);
            }
            if let Some((tli, start)) = log.read(|l| l.next_timeline) {
                one_row(
                    &mut out,
                    &[("next_tli", INT8_OID), ("next_tli_startpos", TEXT_OID)],
                    &[Some(&tli.to_string()), Some(&fmt_lsn(start))],
                    "SELECT",
                );
            }
            frame(&mut out, b'C', &cstr("START_STREAMING"));
            frame(&mut out, b'C', &cstr("START_REPLICATION"));
            ready(&mut out);
            log.update(|l| l.server_copy_done = true);
            let _ = write_out(&writer, &out).await;
            if log.read(|l| l.next_timeline.is_some()) {
                log.update(|l| l.moved_on = true);
                let _ = commands(r, writer, info).await;
                return;
            }
        }
    }
}
