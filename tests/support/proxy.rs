//! A TCP proxy for network faults between walrcv and a real server.
//!
//! [`FaultProxy::start`] listens on `127.0.0.1` (a free port) and relays every
//! connection to the upstream server. The test then injects, at any moment:
//!
//! - [`FaultProxy::forward`]: relay normally (the default);
//! - [`FaultProxy::stall`]: the connections open now stay open but no byte
//!   moves in either direction (later connections are not affected);
//!   [`FaultProxy::stall_new_connections`] stalls connections from their first
//!   byte on (start-up and authentication never complete), and
//!   [`FaultProxy::stall_new_connections_after_replies`] once the server's
//!   n-th ReadyForQuery has been relayed (n = 1: start-up done, the first
//!   command, IDENTIFY_SYSTEM, never gets its reply; n = 2: the second...);
//! - [`FaultProxy::drip`]: server-to-client bytes go out a few at a time with
//!   a delay between them, on every connection, open or future;
//! - [`FaultProxy::cut_mid_wal_message`]: the next XLogData message the server
//!   sends is relayed up to a given number of its bytes, then both sides of
//!   that connection are closed;
//! - [`FaultProxy::reset`]: every open connection is closed with a TCP RST
//!   (`SO_LINGER` 0) towards the client.
//!
//! The proxy tracks the server's message framing (type byte and length) to
//! find XLogData messages; it never changes a byte. It runs on its own tokio
//! runtime (one worker thread), so tests stay synchronous; dropping the proxy
//! ends every connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Slow delivery of server-to-client bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drip {
    /// Bytes per write.
    pub chunk: usize,
    /// Pause after each write.
    pub delay: Duration,
}

/// What one connection is told to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Control {
    stalled: bool,
    /// Stall once the server's n-th ReadyForQuery has been relayed.
    stall_after_replies: Option<usize>,
    reset: bool,
    drip: Option<Drip>,
}

/// Settings for connections accepted from now on, and the armed cut.
#[derive(Debug, Default)]
struct Defaults {
    stall_new: bool,
    stall_after_replies: Option<usize>,
    drip: Option<Drip>,
    /// Cut the next XLogData message after this many of its bytes.
    cut_after: Option<usize>,
}

#[derive(Default)]
struct Shared {
    defaults: Mutex<Defaults>,
    live: Mutex<Vec<watch::Sender<Control>>>,
    accepted: AtomicUsize,
    cuts: AtomicUsize,
    resets: AtomicUsize,
    server_bytes: AtomicU64,
    /// The size of the largest XLogData message relayed (CopyData included).
    largest_wal_message: AtomicUsize,
    /// (write, flush) of every standby status update the clients sent.
    statuses: Mutex<Vec<(u64, u64)>>,
}

impl Shared {
    /// Applies `change` to every open connection (and forgets closed ones).
    fn each_live(&self, change: impl Fn(&mut Control)) {
        let mut live = self.live.lock().unwrap();
        live.retain(|c| !c.is_closed());
        for c in live.iter() {
            c.send_modify(|ctl| change(ctl));
        }
    }

    /// Takes the armed cut, if any (only one connection gets it).
    fn take_cut(&self) -> Option<usize> {
        self.defaults.lock().unwrap().cut_after.take()
    }

    fn cut_armed(&self) -> bool {
        self.defaults.lock().unwrap().cut_after.is_some()
    }
}

/// The proxy; see the module documentation.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Starts relaying `127.0.0.1:<port()>` to `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16) -> FaultProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared::default());
        let upstream: SocketAddr = ([127, 0, 0, 1], upstream_port).into();
        runtime.spawn(accept_loop(listener, upstream, shared.clone()));
        FaultProxy {
            port,
            shared,
            runtime: Some(runtime),
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Relays normally again: stalls and drips end, on every connection.
    pub fn forward(&self) {
        {
            let mut d = self.shared.defaults.lock().unwrap();
            d.stall_new = false;
            d.stall_after_replies = None;
            d.drip = None;
        }
        self.shared.each_live(|c| {
            c.stalled = false;
            c.stall_after_replies = None;
            c.drip = None;
        });
    }

    /// The connections open now stop moving bytes (both ways) but stay open.
    pub fn stall(&self) {
        self.shared.each_live(|c| c.stalled = true);
    }

    /// Connections accepted from now on are stalled from their first byte
    /// (`true`), or relayed normally (`false`).
    pub fn stall_new_connections(&self, stall: bool) {
        self.shared.defaults.lock().unwrap().stall_new = stall;
    }

    /// Connections accepted from now on are relayed until the server's
    /// `n`-th ReadyForQuery (1: start-up and authentication complete; each
    /// command's reply ends with one more), then stalled; `None`: relayed
    /// normally.
    pub fn stall_new_connections_after_replies(&self, n: Option<usize>) {
        assert!(
            n != Some(0),
            "use stall_new_connections to stall from the start"
        );
        self.shared.defaults.lock().unwrap().stall_after_replies = n;
    }

    /// Server-to-client bytes of every connection, open or future, go out
    /// `chunk` bytes at a time with `delay` after each.
    pub fn drip(&self, chunk: usize, delay: Duration) {
        assert!(chunk > 0, "a drip moves at least one byte");
        let drip = Some(Drip { chunk, delay });
        self.shared.defaults.lock().unwrap().drip = drip;
        self.shared.each_live(|c| c.drip = drip);
    }

    /// Arms a cut: the next XLogData message (longer than `after_bytes`,
    /// counted from its type byte) on any connection is relayed up to
    /// `after_bytes` of it, then that connection is closed on both sides.
    pub fn cut_mid_wal_message(&self, after_bytes: usize) {
        assert!(after_bytes > 6, "cut inside the message, past its header");
        self.shared.defaults.lock().unwrap().cut_after = Some(after_bytes);
    }

    /// Closes every open connection with an RST towards the client.
    pub fn reset(&self) {
        self.shared.each_live(|c| c.reset = true);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Cuts done so far.
    pub fn cuts(&self) -> usize {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Connections reset so far.
    pub fn resets(&self) -> usize {
        self.shared.resets.load(Ordering::SeqCst)
    }

    /// Whether a cut is armed and has not happened yet.
    pub fn cut_pending(&self) -> bool {
        self.shared.cut_armed()
    }

    /// (write, flush) of every standby status update sent through the
    /// proxy so far, in order (all connections).
    pub fn status_updates(&self) -> Vec<(u64, u64)> {
        self.shared.statuses.lock().unwrap().clone()
    }

    /// Server-to-client bytes relayed so far, over all connections.
    /// The size in bytes of the largest XLogData message (the whole
    /// CopyData message) relayed since the last call, on any connection.
    pub fn take_largest_wal_message(&self) -> usize {
        self.shared.largest_wal_message.swap(0, Ordering::SeqCst)
    }

    pub fn server_bytes(&self) -> u64 {
        self.shared.server_bytes.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let initial = {
            let d = shared.defaults.lock().unwrap();
            Control {
                stalled: d.stall_new,
                stall_after_replies: d.stall_after_replies,
                reset: false,
                drip: d.drip,
            }
        };
        let (tx, rx) = watch::channel(initial);
        shared.live.lock().unwrap().push(tx);
        tokio::spawn(relay_connection(client, upstream, rx, shared.clone()));
    }
}

/// How a relayed connection ended.
enum End {
    /// One side closed or failed: the other is closed normally.
    Closed,
    /// The armed cut happened.
    Cut,
    /// The test asked for an RST.
    Reset,
}

async fn relay_connection(
    mut client: TcpStream,
    upstream: SocketAddr,
    ctl: watch::Receiver<Control>,
    shared: Arc<Shared>,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let end = {
        let (c_read, c_write) = client.split();
        let (s_read, s_write) = server.split();
        let replies = AtomicUsize::new(0);
        let mut up = Flow {
            ctl: ctl.clone(),
            replies: &replies,
        };
        let mut down = Flow {
            ctl: ctl.clone(),
            replies: &replies,
        };
        let mut reset_ctl = ctl.clone();
        tokio::select! {
            _ = client_to_server(c_read, s_write, &mut up, &shared) => End::Closed,
            end = server_to_client(s_read, c_write, &mut down, &shared) => end,
            () = reset_requested(&mut reset_ctl) => End::Reset,
        }
    };
    match end {
        End::Reset => {
            shared.resets.fetch_add(1, Ordering::SeqCst);
            // SO_LINGER 0: close() sends an RST instead of a FIN.
            let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
        }
        End::Cut => {
            shared.cuts.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown().await;
        }
        End::Closed => {
            let _ = client.shutdown().await;
        }
    }
    drop(client);
    drop(server);
}

async fn reset_requested(ctl: &mut watch::Receiver<Control>) {
    while !ctl.borrow_and_update().reset {
        if ctl.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// One direction's view of its connection's control.
struct Flow<'a> {
    ctl: watch::Receiver<Control>,
    /// ReadyForQuery messages of the server relayed so far.
    replies: &'a AtomicUsize,
}

impl Flow<'_> {
    /// Waits while the connection is stalled; returns its current control.
    async fn until_flowing(&mut self) -> Control {
        loop {
            let c = *self.ctl.borrow_and_update();
            let replied = self.replies.load(Ordering::SeqCst);
            let stalled = c.stalled || c.stall_after_replies.is_some_and(|n| replied >= n);
            if !stalled {
                return c;
            }
            if self.ctl.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

async fn client_to_server(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    flow: &mut Flow<'_>,
    shared: &Shared,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut statuses = ClientFramer::default();
    loop {
        flow.until_flowing().await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        for status in statuses.advance(&buf[..n]) {
            shared.statuses.lock().unwrap().push(status);
        }
        flow.until_flowing().await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn server_to_client(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    flow: &mut Flow<'_>,
    shared: &Shared,
) -> End {
    let mut buf = vec![0u8; 64 * 1024];
    let mut framer = Framer::default();
    let mut cut_after: Option<usize> = None;
    loop {
        flow.until_flowing().await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return End::Closed,
            Ok(n) => n,
        };
        if cut_after.is_none() && shared.cut_armed() {
            cut_after = shared.take_cut();
        }
        let (data, cut) = match framer.advance(&buf[..n], cut_after) {
            Some(at) => (&buf[..at], true),
            None => (&buf[..n], false),
        };
        if send(&mut to, data, flow, shared).await.is_err() {
            return End::Closed;
        }
        flow.replies.store(framer.ready_count, Ordering::SeqCst);
        shared
            .largest_wal_message
            .fetch_max(std::mem::take(&mut framer.largest_xlog), Ordering::SeqCst);
        if cut {
            return End::Cut;
        }
    }
}

/// Writes `data` to the client, obeying stalls and drips as it goes.
async fn send(
    to: &mut WriteHalf<'_>,
    mut data: &[u8],
    flow: &mut Flow<'_>,
    shared: &Shared,
) -> std::io::Result<()> {
    while !data.is_empty() {
        let c = flow.until_flowing().await;
        let n = c.drip.map_or(data.len(), |d| d.chunk.min(data.len()));
        to.write_all(&data[..n]).await?;
        shared.server_bytes.fetch_add(n as u64, Ordering::SeqCst);
        data = &data[n..];
        if let Some(d) = c.drip {
            tokio::time::sleep(d.delay).await;
        }
    }
    Ok(())
}

/// Follows the client's message framing (an untyped start-up message, after
/// any SSLRequest/GSSENCRequest, then type byte and length) to pick out the
/// standby status updates (`CopyData` holding `r`). Gives up on TLS.
#[derive(Debug, Default)]
struct ClientFramer {
    pending: Vec<u8>,
    started: bool,
    /// Not the plain protocol (TLS): nothing more is parsed.
    gave_up: bool,
}

impl ClientFramer {
    fn advance(&mut self, data: &[u8]) -> Vec<(u64, u64)> {
        const SSL_REQUEST: u32 = 80877103;
        const GSSENC_REQUEST: u32 = 80877104;
        let mut found = Vec::new();
        if self.gave_up {
            return found;
        }
        self.pending.extend_from_slice(data);
        loop {
            let p = &self.pending;
            let (len, body_at) = if self.started {
                if p.len() < 5 {
                    break;
                }
                (1 + u32::from_be_bytes([p[1], p[2], p[3], p[4]]) as usize, 5)
            } else {
                if p.len() < 8 {
                    break;
                }
                let code = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
                if code == SSL_REQUEST || code == GSSENC_REQUEST {
                    self.pending.drain(..8);
                    continue;
                }
                (u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize, 4)
            };
            if !(4..1 << 20).contains(&len) {
                self.gave_up = true;
                self.pending.clear();
                break;
            }
            if p.len() < len {
                break;
            }
            if self.started && p[0] == b'd' && len >= body_at + 17 && p[body_at] == b'r' {
                let at = |i: usize| u64::from_be_bytes(p[i..i + 8].try_into().unwrap());
                found.push((at(body_at + 1), at(body_at + 9)));
            }
            self.started = true;
            self.pending.drain(..len);
        }
        found
    }
}

/// Follows the server's message framing (type byte, 4-byte length) across
/// reads, to find where to cut an XLogData message. Sans-IO.
#[derive(Debug, Default)]
struct Framer {
    /// The first bytes of the current message: type, length, and the first
    /// payload byte (`w` for XLogData inside CopyData).
    head: [u8; 6],
    head_len: usize,
    /// Bytes of the current message seen so far.
    offset: usize,
    /// The current message's whole size (type byte included), once known.
    total: Option<usize>,
    /// Whole ReadyForQuery messages gone by.
    ready_count: usize,
    /// The largest XLogData message begun since this was last taken.
    largest_xlog: usize,
}

impl Framer {
    /// Moves over `data`. With `cut_after = Some(k)`, returns `Some(i)` when
    /// an XLogData message longer than `k` bytes reaches its `k`-th byte at
    /// `data[i - 1]`: relay `data[..i]`, then cut.
    fn advance(&mut self, data: &[u8], cut_after: Option<usize>) -> Option<usize> {
        let mut i = 0;
        while i < data.len() {
            if self.head_len < self.head.len() && self.total.is_none_or(|t| self.head_len < t) {
                self.head[self.head_len] = data[i];
                self.head_len += 1;
                self.offset += 1;
                i += 1;
                if self.is_xlog_data() {
                    let total = self.total.expect("length known past the header");
                    self.largest_xlog = self.largest_xlog.max(total);
                }
                if self.head_len == 5 {
                    let len = u32::from_be_bytes([
                        self.head[1],
                        self.head[2],
                        self.head[3],
                        self.head[4],
                    ]);
                    self.total = Some(1 + len as usize);
                }
            } else {
                let total = self.total.expect("length known past the header");
                let take = (total - self.offset).min(data.len() - i);
                if let Some(k) = cut_after.filter(|&k| self.is_xlog_data() && k < total) {
                    if self.offset < k && k <= self.offset + take {
                        let at = i + (k - self.offset);
                        self.offset = k;
                        return Some(at);
                    }
                }
                self.offset += take;
                i += take;
            }
            if self.total == Some(self.offset) {
                let ready_count = self.ready_count + usize::from(self.head[0] == b'Z');
                *self = Framer {
                    ready_count,
                    largest_xlog: self.largest_xlog,
                    ..Framer::default()
                };
            }
        }
        None
    }

    fn is_xlog_data(&self) -> bool {
        self.head_len == 6 && self.head[0] == b'd' && self.head[5] == b'w'
    }
}

#[cfg(test)]
mod tests {
    use super::Framer;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn framer_cuts_the_first_long_enough_xlogdata_at_any_read_split() {
        let mut stream = message(b'Z', b"I");
        stream.extend(message(b'd', b"k0123456789abcdefg"));
        stream.extend(message(b'c', b""));
        stream.extend(message(b'd', b"w short"));
        let xlog_at = stream.len();
        stream.extend(message(b'd', &[b'w'; 100]));
        stream.extend(message(b'd', &[b'w'; 100]));
        let k = 40;
        for split in 1..stream.len() {
            let mut f = Framer::default();
            let mut relayed = 0;
            let mut cut = None;
            for chunk in stream.chunks(split) {
                if let Some(at) = f.advance(chunk, Some(k)) {
                    cut = Some(relayed + at);
                    break;
                }
                relayed += chunk.len();
            }
            assert_eq!(cut, Some(xlog_at + k), "reads of {split} bytes");
            assert_eq!(f.ready_count, 1, "one ReadyForQuery before the cut");
        }
    }

    #[test]
    fn framer_without_a_cut_never_cuts() {
        let mut stream = message(b'd', &[b'w'; 300]);
        stream.extend(message(b'd', &[b'w'; 300]));
        let mut f = Framer::default();
        for chunk in stream.chunks(7) {
            assert_eq!(f.advance(chunk, None), None);
        }
        assert_eq!(f.offset, 0, "ends on a message boundary");
    }
}
