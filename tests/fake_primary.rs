//! walrcv's receiver, run in-process against the scripted fake primary
//! ([`crate::support::fake_walsender`]): message orders and timings a real
//! server produces only by chance, with exact assertions on every standby
//! status update walrcv sends.
//!
//! The WAL sent is real (`testdata/wal/pg15`, segments 8, 9 and A, streamed
//! from 0/800000). The highest flush walrcv may ever report for the bytes sent
//! so far is the verified end of those bytes (end of the last complete record),
//! computed here with `walrcv::wal::Verifier` fed exactly the same chunks.
//!
//! The receiver runs on its own current-thread runtime in its own thread, as in
//! the `walrcv` binary, so the fake's timestamps do not depend on how the
//! receiver uses its runtime.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::sync::{oneshot, watch};
use walrcv::conninfo::ConnParams;
use walrcv::lsn::Lsn;
use walrcv::receiver::{self, Outcome, StreamOptions};
use walrcv::wal::{Verifier, VerifierConfig};

use crate::support::fake_walsender::{
    FakeConfig, FakeWalsender, ReplicationStream, ServerMsg, StatusUpdate, PG15_SYSTEM_ID,
};
use crate::support::{conn_params, format_lsn, SUPERUSER};

pub(crate) const SEG: u64 = 1 << 20;
/// Where walrcv starts with an empty archive against [`FakeConfig::pg15_fixture`].
pub(crate) const START: u64 = 0x80_0000;
pub(crate) const SEGMENTS: [&str; 3] = [
    "000000010000000000000008",
    "000000010000000000000009",
    "00000001000000000000000A",
];
/// Largest XLogData payload a walsender sends (MAX_SEND_SIZE).
const MAX_SEND: usize = 128 * 1024;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/wal/pg15")
}

/// Segments 8, 9, A of the pg15 fixture, back to back (0/800000 to 0/B00000).
pub(crate) fn fixture() -> &'static [u8] {
    static WAL: OnceLock<Vec<u8>> = OnceLock::new();
    WAL.get_or_init(|| {
        let mut all = Vec::new();
        for name in SEGMENTS {
            let path = fixture_dir().join(name);
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("read fixture {}: {e}", path.display()));
            assert_eq!(bytes.len() as u64, SEG, "{} is not 1 MB", path.display());
            all.extend_from_slice(&bytes);
        }
        all
    })
}

/// The fixture's WAL handed out in chunks, with the verified end after each.
pub(crate) struct Wal {
    pos: u64,
    verifier: Verifier,
    /// sent end -> verified end of the bytes up to it.
    ends: BTreeMap<u64, u64>,
}

impl Wal {
    pub(crate) fn new() -> Wal {
        Wal::from_segment_start(START)
    }

    /// The fixture from `start` (a segment start inside it) on.
    pub(crate) fn from_segment_start(start: u64) -> Wal {
        assert!(
            start % SEG == 0 && (START..Self::end()).contains(&start),
            "{} is not a segment start in the fixture",
            format_lsn(start)
        );
        let config = VerifierConfig {
            segment_size: SEG,
            block_size: 8192,
            system_id: Some(PG15_SYSTEM_ID),
            timeline: 1,
            server_major: Some(15),
        };
        Wal {
            pos: start,
            verifier: Verifier::at_segment_start(config, Lsn(start)),
            ends: BTreeMap::from([(start, start)]),
        }
    }

    /// LSN of the next byte to send.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    pub(crate) fn end() -> u64 {
        START + fixture().len() as u64
    }

    pub(crate) fn remaining(&self) -> usize {
        (Self::end() - self.pos) as usize
    }

    /// The next `len` bytes (fewer at the end): (start LSN, bytes).
    pub(crate) fn next(&mut self, len: usize) -> (u64, Vec<u8>) {
        let start = self.pos;
        let from = (start - START) as usize;
        let to = (from + len).min(fixture().len());
        let data = fixture()[from..to].to_vec();
        self.verifier
            .feed(&data)
            .unwrap_or_else(|e| panic!("the fixture fails verification at {}: {e:?}", e.lsn));
        self.pos = start + data.len() as u64;
        self.ends.insert(self.pos, self.verifier.verified_end().0);
        (start, data)
    }

    /// The bytes up to the end of the record in progress (its MAXALIGN
    /// padding included), so that everything handed out is verified.
    pub(crate) fn next_to_record_end(&mut self) -> (u64, Vec<u8>) {
        let start = self.pos;
        let mut data = Vec::new();
        while self.verified_end() != self.pos && self.remaining() > 0 {
            data.extend(self.next(8).1);
        }
        (start, data)
    }

    /// Verified end of everything handed out so far.
    pub(crate) fn verified_end(&self) -> u64 {
        self.verifier.verified_end().0
    }

    /// Verified end of the bytes up to `sent` (a chunk end handed out).
    pub(crate) fn verified_at(&self, sent: u64) -> u64 {
        let (&at, &end) = self
            .ends
            .range(..=sent)
            .next_back()
            .expect("the first start point is always in the table");
        assert_eq!(at, sent, "{} is not a chunk end", format_lsn(sent));
        end
    }
}

fn options(dir: &Path, port: u16) -> StreamOptions {
    StreamOptions {
        directory: dir.to_path_buf(),
        conn: ConnParams {
            connect_timeout: Some(Duration::from_secs(5)),
            ..conn_params(port, SUPERUSER, None)
        },
        slot: None,
        create_slot_if_missing: false,
        endpos: None,
        no_loop: false,
        sync: true,
        synchronous: true,
        status_interval: Some(Duration::from_secs(10)),
        receive_timeout: Duration::from_secs(60),
        password_prompt: false,
        metrics_address: None,
        compression: walrcv::archive::compress_spec::CompressionSpec::NONE,
        live: None,
    }
}

/// `walrcv::receiver::run` on its own current-thread runtime and thread.
struct RunningReceiver {
    shutdown: watch::Sender<bool>,
    done: Option<oneshot::Receiver<Result<Outcome, String>>>,
    /// Dropping it cancels the receiver at once (its runtime is dropped).
    kill: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningReceiver {
    fn spawn(opts: StreamOptions) -> RunningReceiver {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (done_tx, done) = oneshot::channel();
        let (kill, kill_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("walrcv-under-test".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("receiver runtime");
                rt.block_on(async move {
                    tokio::select! {
                        r = receiver::run(opts, shutdown_rx) => {
                            let _ = done_tx.send(r.map_err(|e| e.to_string()));
                        }
                        _ = kill_rx => {}
                    }
                });
                rt.shutdown_timeout(Duration::from_secs(5));
            })
            .expect("spawn the receiver thread");
        RunningReceiver {
            shutdown,
            done: Some(done),
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    /// Sends the shutdown signal and waits (bounded) for `run` to return.
    async fn stop(mut self) -> Outcome {
        let _ = self.shutdown.send(true);
        let done = self.done.take().expect("stop called once");
        let result = match tokio::time::timeout(Duration::from_secs(10), done).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the receiver thread ended without a result".into()),
            Err(_) => Err("the receiver did not stop within 10 s of the shutdown signal".into()),
        };
        self.kill.take();
        if let Some(t) = self.thread.take() {
            let joined = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::task::spawn_blocking(move || t.join()),
            )
            .await;
            assert!(
                matches!(joined, Ok(Ok(Ok(())))),
                "receiver thread did not end cleanly"
            );
        }
        result.unwrap_or_else(|e| panic!("receiver: {e}"))
    }
}

impl Drop for RunningReceiver {
    fn drop(&mut self) {
        // A test failed before stop(): cancel everything, do not wait.
        let _ = self.shutdown.send(true);
        self.kill.take();
    }
}

/// Everything a test needs: the fake, the receiver on an empty archive, and
/// the first replication stream (at 0/800000, after walrcv's first update).
struct Setup {
    fake: FakeWalsender,
    rcv: RunningReceiver,
    dir: TempDir,
    stream: ReplicationStream,
    t0: Instant,
    /// These tests measure timings: they run one at a time (bind it to a
    /// named variable so it lives until the end of the test).
    serial: tokio::sync::MutexGuard<'static, ()>,
}

pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn setup(tweak: impl FnOnce(&mut StreamOptions)) -> Setup {
    let serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let mut fake = FakeWalsender::start(FakeConfig::pg15_fixture()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(dir.path(), fake.port());
    tweak(&mut opts);
    let rcv = RunningReceiver::spawn(opts);
    let stream = fake.next_stream(Duration::from_secs(10)).await;
    assert_eq!(
        (stream.start_lsn, stream.timeline),
        (START, Some(1)),
        "with an empty archive walrcv starts at the segment start of the server's position"
    );
    assert!(
        stream.wait_for_status(PROMPT, |_| true).await.is_some(),
        "no status update within {PROMPT:?} of the stream start"
    );
    Setup {
        fake,
        rcv,
        dir,
        stream,
        t0,
        serial,
    }
}

pub(crate) fn describe(updates: &[StatusUpdate], t0: Instant) -> String {
    let mut s = String::new();
    for (i, u) in updates.iter().enumerate() {
        let _ = writeln!(
            s,
            "  #{i} at {:>7.3} s: write {} flush {} apply {} reply_requested {} (sent up to {})",
            u.at.duration_since(t0).as_secs_f64(),
            format_lsn(u.write),
            format_lsn(u.flush),
            format_lsn(u.apply),
            u.reply_requested,
            format_lsn(u.sent_before),
        );
    }
    s
}

/// Promise 1 and "never backwards", over the updates of one connection: write
/// and flush never decrease, flush <= write, write <= the WAL sent, flush <= the
/// verified end of the WAL sent, apply = 0.
fn check_invariants(updates: &[StatusUpdate], wal: &Wal, t0: Instant) {
    check_invariants_after(updates, wal, t0, START);
}

/// [`check_invariants`] for a later connection of the same receiver: WAL up to
/// `archived` (a chunk end of `wal`) was sent on an earlier one and may be
/// reported from the start.
pub(crate) fn check_invariants_after(
    updates: &[StatusUpdate],
    wal: &Wal,
    t0: Instant,
    archived: u64,
) {
    let all = || describe(updates, t0);
    for (i, u) in updates.iter().enumerate() {
        let u = &StatusUpdate {
            sent_before: u.sent_before.max(archived),
            ..*u
        };
        assert!(
            u.flush <= u.write,
            "update #{i}: flush {} > write {}\n{}",
            format_lsn(u.flush),
            format_lsn(u.write),
            all()
        );
        assert!(
            u.write <= u.sent_before,
            "update #{i}: write {} beyond the WAL sent ({})\n{}",
            format_lsn(u.write),
            format_lsn(u.sent_before),
            all()
        );
        let verified = wal.verified_at(u.sent_before);
        assert!(
            u.flush <= verified,
            "update #{i}: flush {} beyond the verified end {} of the WAL sent (up to {})\n{}",
            format_lsn(u.flush),
            format_lsn(verified),
            format_lsn(u.sent_before),
            all()
        );
        assert_eq!(u.apply, 0, "update #{i}: apply must be 0\n{}", all());
        if i > 0 {
            let p = &updates[i - 1];
            assert!(
                u.write >= p.write && u.flush >= p.flush,
                "update #{i} goes backwards from #{}\n{}",
                i - 1,
                all()
            );
        }
    }
}

/// The archive holds exactly the fixture's bytes up to `sent`: complete
/// segments under their final names, the segment holding `sent` as a 1 MB
/// `.partial` with the bytes sent then zeros, and nothing else.
pub(crate) fn assert_archive_matches(dir: &Path, sent: u64) {
    let mut expected = Vec::new();
    let mut seg_start = START;
    while seg_start < sent {
        let i = ((seg_start - START) / SEG) as usize;
        let fixture_seg = &fixture()[i * SEG as usize..(i + 1) * SEG as usize];
        if sent >= seg_start + SEG {
            let path = dir.join(SEGMENTS[i]);
            let got = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("complete segment {}: {e}", path.display()));
            assert!(
                got == fixture_seg,
                "{} differs from the fixture",
                SEGMENTS[i]
            );
            expected.push(SEGMENTS[i].to_string());
        } else {
            let name = format!("{}.partial", SEGMENTS[i]);
            let path = dir.join(&name);
            let got = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("partial segment {}: {e}", path.display()));
            let n = (sent - seg_start) as usize;
            assert_eq!(got.len() as u64, SEG, "{name} is not padded to 1 MB");
            assert!(
                got[..n] == fixture_seg[..n],
                "{name}: the {n} bytes sent differ from the fixture"
            );
            assert!(
                got[n..].iter().all(|&b| b == 0),
                "{name}: bytes past the {n} sent are not zero"
            );
            expected.push(name);
        }
        seg_start += SEG;
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the archive")
        .map(|e| {
            e.expect("archive entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names, expected, "files in the archive");
}

/// How long a status update that is due at once (at stream start, for WAL
/// made durable, for a reply request) may take on a loaded machine: under
/// the 10 s status interval of [`options`], so that a periodic update cannot
/// stand in for it.
const PROMPT: Duration = Duration::from_secs(5);

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// (a) WAL and a reply-requested keepalive in ONE write: the answer must carry
/// the fsynced, verified end of that WAL, without any further message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_primary_wal_and_reply_request_in_one_write() {
    let Setup {
        fake,
        rcv,
        dir,
        mut stream,
        t0,
        serial: _serial,
    } = setup(|_| {}).await;
    let mut wal = Wal::new();
    // Small enough for one TCP segment on loopback; ends inside a record.
    let (start, data) = wal.next(40_000);
    let expected = wal.verified_end();
    assert!(
        expected > START && expected < wal.pos(),
        "the chunk must end inside a record"
    );
    let sent_at = Instant::now();
    stream
        .send(&[
            ServerMsg::xlog(start, &data),
            ServerMsg::keepalive(wal.pos(), true),
        ])
        .await
        .expect("send WAL + keepalive");
    // The first update after the write is the answer, and it carries the
    // WAL's verified end: not an answer with the flush position from before
    // the WAL followed by another update. The bound stays below the 10 s
    // status interval, so that a periodic update cannot stand in.
    let answer = stream.wait_for_status(PROMPT, |u| u.at >= sent_at).await;
    let updates = stream.status_updates();
    let answer = answer.unwrap_or_else(|| {
        panic!(
            "no status update within {PROMPT:?} of WAL + reply-requested keepalive in one write:\n{}",
            describe(&updates, t0)
        )
    });
    assert_eq!(
        answer.flush,
        expected,
        "the first update after WAL + reply-requested keepalive in one write has flush {}, not {} \
         (the verified end of that WAL):\n{}",
        format_lsn(answer.flush),
        format_lsn(expected),
        describe(&updates, t0)
    );
    check_invariants(&updates, &wal, t0);
    assert_eq!(rcv.stop().await, Outcome::Stopped);
    check_invariants(&stream.status_updates(), &wal, t0);
    assert_archive_matches(dir.path(), wal.pos());
    assert_eq!(fake.connections(), 1, "no reconnection");
}

/// (b) Silence: a ping (reply_requested) at about half of receive_timeout, then
/// the connection is dropped at receive_timeout and walrcv reconnects after
/// its 1 s backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_primary_silence_ping_then_timeout_and_reconnect() {
    let Setup {
        mut fake,
        rcv,
        dir,
        mut stream,
        t0,
        serial: _serial,
    } = setup(|o| o.receive_timeout = Duration::from_secs(2)).await;
    let mut wal = Wal::new();
    let (start, data) = wal.next(20_000);
    stream.send_xlog(start, &data).await.expect("send WAL");
    let last = stream.last_send_at().expect("sent");
    let expected = wal.verified_end();
    assert!(
        stream
            .wait_for_status(Duration::from_millis(700), |u| u.flush == expected)
            .await
            .is_some(),
        "no status update with flush = {} within 0.7 s of WAL sent alone",
        format_lsn(expected)
    );
    // From now on the fake says nothing.
    let ping = stream
        .wait_for_status(Duration::from_secs(3), |u| u.reply_requested)
        .await;
    let updates = stream.status_updates();
    let ping = ping.unwrap_or_else(|| {
        panic!(
            "no status update with reply_requested within 3 s of silence:\n{}",
            describe(&updates, t0)
        )
    });
    let after = secs(ping.at.duration_since(last));
    assert!(
        (0.8..=1.6).contains(&after),
        "ping {after:.3} s after the last message, expected about receive_timeout/2 = 1 s:\n{}",
        describe(&updates, t0)
    );
    let closed = stream
        .wait_closed(Duration::from_secs(4))
        .await
        .expect("walrcv did not drop the silent connection within 4 s");
    let closed_after = secs(closed.duration_since(last));
    assert!(
        (1.8..=2.8).contains(&closed_after),
        "connection dropped {closed_after:.3} s after the last message, expected about receive_timeout = 2 s"
    );
    let second = fake.next_stream(Duration::from_secs(5)).await;
    let reconnect_after = secs(second.connected_at.duration_since(last));
    assert_eq!(second.connection, 2);
    assert!(
        (2.8..=4.5).contains(&reconnect_after),
        "reconnected {reconnect_after:.3} s after the last message, expected timeout 2 s + backoff 1 s"
    );
    assert_eq!(
        second.start_lsn, START,
        "the .partial is streamed again from its segment start"
    );
    assert!(
        second
            .wait_for_status(Duration::from_secs(2), |_| true)
            .await
            .is_some(),
        "no status update on the second connection"
    );
    let updates = stream.status_updates();
    check_invariants(&updates, &wal, t0);
    assert_eq!(rcv.stop().await, Outcome::Stopped);
    check_invariants_after(&second.status_updates(), &wal, t0, wal.pos());
    assert_archive_matches(dir.path(), wal.pos());
    assert_eq!(fake.connections(), 2);
}

/// How many status updates the flood tests wait for while the flood goes on.
const FLOOD_UPDATES: usize = 3;
/// How long a flood goes on at most: a receiver whose timers the flood
/// starves sends no update during it, whatever the bound.
const FLOOD_LIMIT: Duration = Duration::from_secs(30);

/// Whether a flood that began at `start` goes on: until [`FLOOD_UPDATES`]
/// status updates arrived during it, or [`FLOOD_LIMIT`]. The spacing of the
/// updates (the interval, from the last one sent) is the policy's, checked
/// under a controlled clock in src/receiver/feedback.rs, not here on a
/// loaded machine's wall clock.
fn flood_continues(stream: &ReplicationStream, start: Instant) -> bool {
    let during = stream
        .status_updates()
        .iter()
        .filter(|u| u.at > start)
        .count();
    during < FLOOD_UPDATES && start.elapsed() < FLOOD_LIMIT
}

/// (c) Under a continuous stream without any pause, periodic status updates
/// still go out (every status_interval: the policy's unit tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_primary_status_updates_flow_during_a_flood() {
    let Setup {
        fake,
        rcv,
        dir: _dir,
        mut stream,
        t0,
        serial: _serial,
    } = setup(|o| o.status_interval = Some(Duration::from_secs(1))).await;
    let wal = Wal::new();
    let flood_start = Instant::now();
    let batch: Vec<ServerMsg> = (0..500)
        .map(|_| ServerMsg::keepalive(START, false))
        .collect();
    let mut writes = 0u64;
    while flood_continues(&stream, flood_start) {
        stream.send(&batch).await.expect("flood");
        writes += 1;
    }
    let flood_end = Instant::now();
    let updates = stream.status_updates();
    let all = describe(&updates, t0);
    let during: Vec<&StatusUpdate> = updates
        .iter()
        .filter(|u| u.at > flood_start && u.at <= flood_end)
        .collect();
    assert!(
        during.len() >= FLOOD_UPDATES,
        "{} status updates during a {:.1} s flood ({} writes of 500 keepalives) with status_interval 1 s, expected >= {FLOOD_UPDATES}:\n{all}",
        during.len(),
        secs(flood_end.duration_since(flood_start)),
        writes
    );
    check_invariants(&updates, &wal, t0);
    assert_eq!(rcv.stop().await, Outcome::Stopped);
    assert_eq!(fake.connections(), 1, "no reconnection");
}

/// (c) The same with WAL in the flood: every write is a small XLogData then
/// keepalives, so walrcv never finds its socket drained. Status updates keep
/// flowing (at most about an interval apart), and once the flood stops the
/// flush reaches the verified end of everything sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_primary_status_updates_flow_during_a_wal_flood() {
    let Setup {
        fake,
        rcv,
        dir,
        mut stream,
        t0,
        serial: _serial,
    } = setup(|o| o.status_interval = Some(Duration::from_secs(1))).await;
    let mut wal = Wal::new();
    let flood_start = Instant::now();
    let mut writes = 0u64;
    while flood_continues(&stream, flood_start) {
        let mut msgs = Vec::with_capacity(201);
        // Should the fixture run out, the flood goes on with keepalives only.
        if wal.remaining() > 0 {
            let (start, data) = wal.next(128);
            msgs.push(ServerMsg::xlog(start, &data));
        }
        msgs.extend((0..200).map(|_| ServerMsg::keepalive(wal.pos(), false)));
        stream.send(&msgs).await.expect("flood");
        writes += 1;
    }
    let flood_end = Instant::now();
    // Then, alone, the rest of the record in progress: once the flush reaches
    // its end, walrcv has consumed everything sent.
    let (start, tail) = wal.next_to_record_end();
    for (i, piece) in tail.chunks(MAX_SEND).enumerate() {
        let at = start + (i * MAX_SEND) as u64;
        stream
            .send_xlog(at, piece)
            .await
            .expect("send the record's end");
    }
    let expected = wal.pos();
    assert_eq!(wal.verified_end(), expected);
    let updates = stream.status_updates();
    let all = describe(&updates, t0);
    let during: Vec<&StatusUpdate> = updates
        .iter()
        .filter(|u| u.at > flood_start && u.at <= flood_end)
        .collect();
    assert!(
        during.len() >= FLOOD_UPDATES,
        "{} status updates during a {:.1} s flood ({writes} writes of 128 bytes of WAL + 200 keepalives) \
         with status_interval 1 s, expected >= {FLOOD_UPDATES}:\n{all}",
        during.len(),
        secs(flood_end.duration_since(flood_start)),
    );
    let reached = stream
        .wait_for_status(Duration::from_secs(5), |u| u.flush == expected)
        .await;
    let updates = stream.status_updates();
    assert!(
        reached.is_some(),
        "flush did not reach {} (end of the WAL sent) within 5 s after the flood:\n{}",
        format_lsn(expected),
        describe(&updates, t0)
    );
    check_invariants(&updates, &wal, t0);
    assert_eq!(rcv.stop().await, Outcome::Stopped);
    assert_archive_matches(dir.path(), wal.pos());
    assert_eq!(fake.connections(), 1, "no reconnection");
}

/// (d, e) All of segments 8, 9 and A in chunks of varying sizes, several
/// messages per write, keepalives (reply-requested or not) in between: the
/// updates never go backwards nor beyond the verified WAL, flush reaches the
/// end, and the archive is byte-identical to the fixture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_primary_full_stream_in_varying_chunks() {
    let Setup {
        fake,
        rcv,
        dir,
        mut stream,
        t0,
        serial: _serial,
    } = setup(|o| o.status_interval = Some(Duration::from_secs(1))).await;
    let mut wal = Wal::new();
    let sizes = [
        8192, 1, 3000, MAX_SEND, 77, 65536, 12345, 8191, 40000, 100_000, 8, 24, 131_000,
    ];
    let mut i = 0usize;
    while wal.remaining() > 0 {
        // 1 to 3 XLogData per write, sometimes followed by a keepalive in the
        // same write, sometimes by one in its own write.
        let mut msgs = Vec::new();
        for _ in 0..(1 + i % 3) {
            if wal.remaining() == 0 {
                break;
            }
            let (start, data) = wal.next(sizes[i % sizes.len()]);
            msgs.push(ServerMsg::xlog(start, &data));
            i += 1;
        }
        if wal.remaining() == 0 {
            // The last write is WAL alone, then silence.
            stream.send(&msgs).await.expect("send");
            break;
        }
        match i % 4 {
            0 => msgs.push(ServerMsg::keepalive(wal.pos(), true)),
            1 => msgs.push(ServerMsg::keepalive(wal.pos(), false)),
            _ => {}
        }
        stream.send(&msgs).await.expect("send");
        if i % 5 == 0 {
            stream
                .send_keepalive(wal.pos(), i % 10 == 0)
                .await
                .expect("keepalive");
        }
        if i % 7 == 0 {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
    let end = wal.pos();
    assert_eq!(end, START + 3 * SEG);
    assert_eq!(
        wal.verified_end(),
        end,
        "segment A ends with an XLOG_SWITCH tail"
    );
    let reached = stream
        .wait_for_status(Duration::from_secs(10), |u| u.flush == end)
        .await;
    let updates = stream.status_updates();
    assert!(
        reached.is_some(),
        "flush did not reach {} within 10 s of the last WAL:\n{}",
        format_lsn(end),
        describe(&updates, t0)
    );
    check_invariants(&updates, &wal, t0);
    assert_eq!(rcv.stop().await, Outcome::Stopped);
    check_invariants(&stream.status_updates(), &wal, t0);
    assert_archive_matches(dir.path(), end);
    assert_eq!(fake.connections(), 1, "no reconnection");
}

/// Sends each chunk alone (its own write, then silence) and waits until the
/// flush reported reaches its verified end.
async fn send_chunks_and_wait(
    stream: &mut ReplicationStream,
    wal: &mut Wal,
    lens: &[usize],
    t0: Instant,
) {
    for &len in lens {
        let (start, data) = wal.next(len);
        stream.send_xlog(start, &data).await.expect("send WAL");
        let expected = wal.verified_end();
        assert!(expected < wal.pos(), "the chunk must end inside a record");
        let got = stream
            .wait_for_status(PROMPT, |u| u.flush == expected)
            .await;
        assert!(
            got.is_some(),
            "no status update with flush = {} within {PROMPT:?} of WAL sent alone:\n{}",
            format_lsn(expected),
            describe(&stream.status_updates(), t0)
        );
    }
}

/// (d) Empty archive, so the start point is not backed by the archive's own
/// files: flush is 0/0 (invalid) until WAL was fsynced, never the start point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_primary_flush_invalid_until_wal_is_fsynced() {
    let Setup {
        fake,
        rcv,
        dir,
        mut stream,
        t0,
        serial: _serial,
    } = setup(|_| {}).await;
    let mut wal = Wal::new();
    // The update walrcv sends at stream start, before any WAL.
    let first = stream
        .wait_for_status(Duration::from_secs(30), |_| true)
        .await;
    let before = stream.status_updates();
    assert!(
        first.is_some(),
        "no status update at stream start:\n{}",
        describe(&before, t0)
    );
    assert!(
        before.iter().all(|u| u.flush == 0),
        "before any WAL was received, flush must be reported as 0/0 (invalid), not the start point:\n{}",
        describe(&before, t0)
    );
    send_chunks_and_wait(&mut stream, &mut wal, &[30_000], t0).await;
    let updates = stream.status_updates();
    check_invariants(&updates, &wal, t0);
    for (i, u) in updates.iter().enumerate() {
        assert!(
            u.flush == 0 || u.flush > START,
            "update #{i}: flush {} is the start point, which nothing fsynced backs\n{}",
            format_lsn(u.flush),
            describe(&updates, t0)
        );
    }
    assert_eq!(rcv.stop().await, Outcome::Stopped);
    assert_archive_matches(dir.path(), wal.pos());
    assert_eq!(fake.connections(), 1, "no reconnection");
}

/// (d) write never exceeds the verified end of the WAL sent: the bytes of a
/// record not yet complete are not verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_primary_write_never_beyond_verified_wal() {
    let Setup {
        fake,
        rcv,
        dir,
        mut stream,
        t0,
        serial: _serial,
    } = setup(|_| {}).await;
    let mut wal = Wal::new();
    send_chunks_and_wait(&mut stream, &mut wal, &[30_000, 50_000, 8192], t0).await;
    let updates = stream.status_updates();
    check_invariants(&updates, &wal, t0);
    for (i, u) in updates.iter().enumerate() {
        let verified = wal.verified_at(u.sent_before);
        assert!(
            u.write <= verified,
            "update #{i}: write {} beyond the verified end {} of the WAL sent (up to {})\n{}",
            format_lsn(u.write),
            format_lsn(verified),
            format_lsn(u.sent_before),
            describe(&updates, t0)
        );
    }
    assert_eq!(rcv.stop().await, Outcome::Stopped);
    assert_archive_matches(dir.path(), wal.pos());
    assert_eq!(fake.connections(), 1, "no reconnection");
}

/// After an in-session timeline switch, nothing past the switch point is
/// reported on the new timeline until WAL of the new timeline past it is
/// durable. The scripted server (on timeline 2, which left timeline 1 at
/// 0/C10000) first streams timeline 1 from 0/C00000 past the switch point,
/// and walrcv reports that WAL flushed (true on timeline 1); then it ends
/// timeline 1 at 0/C10000. On timeline 2, repeating that flush position
/// would make the new primary release commits in (0/C10000, flush] that
/// walrcv does not have on timeline 2: the reports go back to the switch
/// point (WAL up to it is the same on both timelines) and advance only with
/// timeline 2's own WAL, here the same records with timeline 2's page headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_primary_nothing_past_the_switch_point_is_reported_on_the_new_timeline() {
    const SWITCH: u64 = 0xC1_0000;
    const SEG_C: u64 = 0xC0_0000;
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    for segno in 8..=0xB {
        let name = walrcv::lsn::wal_file_name(1, segno, SEG);
        std::fs::copy(fixture_dir().join(&name), dir.path().join(&name)).unwrap();
    }
    let old = std::fs::read(fixture_dir().join("00000001000000000000000C.partial")).unwrap();
    let sent = walrcv::archive::divergent::end_of_data(&old);
    assert!(SEG_C + sent as u64 > SWITCH + 0x4000);
    let config = FakeConfig {
        timeline: 2,
        xlogpos: 0xC2_0000,
        timeline_history: Some(format!(
            "1\t{}\tno recovery target specified\n",
            format_lsn(SWITCH)
        )),
        ..FakeConfig::pg15_fixture()
    };
    let mut fake = FakeWalsender::start(config).await;
    let rcv = RunningReceiver::spawn(options(dir.path(), fake.port()));
    let mut first = fake.next_stream(Duration::from_secs(10)).await;
    assert_eq!((first.start_lsn, first.timeline), (SEG_C, Some(1)));
    first
        .send(&[
            ServerMsg::xlog(SEG_C, &old[..sent]),
            ServerMsg::keepalive(SEG_C + sent as u64, true),
        ])
        .await
        .expect("send timeline 1");
    let acked = first
        .wait_for_status(Duration::from_secs(5), |u| u.flush > SWITCH)
        .await
        .unwrap_or_else(|| {
            panic!(
                "timeline 1's WAL past the switch point was not reported flushed:\n{}",
                describe(&first.status_updates(), t0)
            )
        });
    first.end_timeline(2, SWITCH).await.expect("end timeline 1");
    let mut second = fake.next_stream(Duration::from_secs(10)).await;
    assert_eq!(
        (second.connection, second.start_lsn, second.timeline),
        (1, SEG_C, Some(2)),
        "the same connection follows onto timeline 2 from the switch point's segment"
    );
    // Timeline 2's WAL: the same records, with timeline 2 in the page
    // headers from the switch point on (xlp_tli, bytes 4..8 of each page).
    let mut tl2 = old[..sent].to_vec();
    for page in ((SWITCH - SEG_C) as usize..sent).step_by(8192) {
        tl2[page + 4..page + 8].copy_from_slice(&2u32.to_le_bytes());
    }
    let below = 0x8000;
    // The update at the start of timeline 2's stream, before any of its WAL.
    let started = second
        .wait_for_status(Duration::from_secs(30), |_| true)
        .await;
    assert!(
        started.is_some(),
        "no status update at the start of timeline 2:\n{}",
        describe(&second.status_updates(), t0)
    );
    second
        .send(&[
            ServerMsg::xlog(SEG_C, &tl2[..below]),
            ServerMsg::keepalive(SEG_C + below as u64, true),
        ])
        .await
        .expect("send timeline 2 below the switch point");
    let answered_at = Instant::now();
    let answer = second
        .wait_for_status(PROMPT, |u| u.at >= answered_at)
        .await;
    let held = second.status_updates();
    assert!(
        answer.is_some(),
        "no answer to the reply request:\n{}",
        describe(&held, t0)
    );
    for (i, u) in held.iter().enumerate() {
        assert!(
            u.flush <= SWITCH && u.write <= SWITCH,
            "update #{i} on timeline 2 reports {} flushed ({} written), past the switch point {}, \
             before any of timeline 2's WAL past it was received (timeline 1 was reported up to {}):\n{}",
            format_lsn(u.flush),
            format_lsn(u.write),
            format_lsn(SWITCH),
            format_lsn(acked.flush),
            describe(&held, t0)
        );
    }
    second
        .send_xlog(SEG_C + below as u64, &tl2[below..])
        .await
        .expect("send timeline 2 past the switch point");
    let reached = second
        .wait_for_status(Duration::from_secs(5), |u| u.flush >= acked.flush)
        .await;
    let updates = second.status_updates();
    assert!(
        reached.is_some(),
        "timeline 2's own WAL past the switch point was not reported flushed:\n{}",
        describe(&updates, t0)
    );
    for w in updates.windows(2) {
        assert!(w[1].flush >= w[0].flush, "{}", describe(&updates, t0));
    }
    assert_eq!(rcv.stop().await, Outcome::Stopped);
    drop(first);
}
