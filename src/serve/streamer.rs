//! One client's copy mode, sans-IO: which WAL to send next (page-aligned
//! pieces that never pass the verified end, a segment boundary or the
//! timeline's switch point), when a keepalive is due and whether it asks
//! for a reply, what the standby reported (status updates and hot-standby
//! feedback), and the end-of-timeline sequence.

use bytes::{Buf, Bytes, BytesMut};

use crate::lsn::{Lsn, TimeLineId};

use super::reply;
use super::walsender::{end_of_streaming, StreamPlan};

/// Largest XLogData payload: PostgreSQL's `MAX_SEND_SIZE` (16 pages of 8 kB).
pub const MAX_SEND: u64 = 128 << 10;
/// A keepalive when nothing was sent for this long (µs), by default.
pub const IDLE_KEEPALIVE_US: i64 = 10_000_000;
/// A keepalive asking for a reply when the standby has been silent this
/// long (half of PostgreSQL's default `wal_sender_timeout`, as it does).
pub const REPLY_REQUEST_US: i64 = 30_000_000;
/// The standby is gone when silent this long (`wal_sender_timeout`), by default.
pub const CLIENT_TIMEOUT_US: i64 = 60_000_000;

/// The keepalive policy (`--serve-keepalive-interval`,
/// `--serve-sender-timeout`): a keepalive after `idle_us` without sending,
/// one asking for a reply after half of `timeout_us` without hearing from the
/// standby, and the standby dropped after `timeout_us` of silence; no timeout
/// (and no reply request) when `timeout_us` is `None`, as
/// `wal_sender_timeout = 0` in PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub idle_us: i64,
    pub timeout_us: Option<i64>,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            idle_us: IDLE_KEEPALIVE_US,
            timeout_us: Some(CLIENT_TIMEOUT_US),
        }
    }
}

impl Keepalive {
    /// From whole seconds (0 timeout: never).
    pub fn from_secs(idle: u32, timeout: u32) -> Keepalive {
        Keepalive {
            idle_us: i64::from(idle.max(1)) * 1_000_000,
            timeout_us: (timeout > 0).then(|| i64::from(timeout) * 1_000_000),
        }
    }

    /// A keepalive due: `Some(reply_requested)`.
    pub fn due(
        &self,
        now: i64,
        last_sent: i64,
        last_heard: i64,
        reply_pending: bool,
    ) -> Option<bool> {
        if let Some(t) = self.timeout_us {
            if now - last_heard >= t / 2 && !reply_pending {
                return Some(true);
            }
        }
        (now - last_sent >= self.idle_us).then_some(false)
    }

    /// The standby has been silent past the timeout.
    pub fn timed_out(&self, now: i64, last_heard: i64) -> bool {
        self.timeout_us.is_some_and(|t| now - last_heard >= t)
    }
}

/// What the standby last reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reported {
    pub write: Lsn,
    pub flush: Lsn,
    pub apply: Lsn,
    /// Hot-standby feedback: xmin and catalog xmin (with epochs), if sent.
    pub xmin: Option<(u32, u32)>,
    pub catalog_xmin: Option<(u32, u32)>,
}

/// A standby message inside copy mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StandbyMessage {
    Status {
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    },
    HotStandbyFeedback {
        xmin: u32,
        xmin_epoch: u32,
        catalog_xmin: u32,
        catalog_xmin_epoch: u32,
    },
}

/// A malformed standby message (FATAL, as PostgreSQL's walsender has it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StandbyError {
    #[error("invalid standby message type \"{0}\"")]
    Type(char),
    #[error("invalid standby message: '{tag}' of {len} bytes")]
    Length { tag: char, len: usize },
}

/// Parses a CopyData payload from the standby.
pub fn parse_standby(mut p: Bytes) -> Result<StandbyMessage, StandbyError> {
    let tag = *p.first().ok_or(StandbyError::Type('?'))?;
    let len = p.len();
    let short = || StandbyError::Length {
        tag: tag as char,
        len,
    };
    match tag {
        b'r' => {
            if len < 34 {
                return Err(short());
            }
            p.advance(1);
            let write = Lsn(p.get_u64());
            let flush = Lsn(p.get_u64());
            let apply = Lsn(p.get_u64());
            let _time = p.get_i64();
            Ok(StandbyMessage::Status {
                write,
                flush,
                apply,
                reply_requested: p.get_u8() != 0,
            })
        }
        b'h' => {
            if len < 25 {
                return Err(short());
            }
            p.advance(9);
            Ok(StandbyMessage::HotStandbyFeedback {
                xmin: p.get_u32(),
                xmin_epoch: p.get_u32(),
                catalog_xmin: p.get_u32(),
                catalog_xmin_epoch: p.get_u32(),
            })
        }
        other => Err(StandbyError::Type(other as char)),
    }
}

/// Where copy mode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Streaming,
    /// walrcv sent CopyDone at the end of a historic timeline; waiting for the client's.
    SentCopyDone,
    /// Copy mode is over: the end sequence was produced.
    Done,
}

/// One client's stream.
#[derive(Debug, Clone)]
pub struct Streamer {
    pub plan: StreamPlan,
    major: u32,
    segment_size: u64,
    block_size: u64,
    /// Everything before this was sent.
    pub sent: Lsn,
    pub reported: Reported,
    pub phase: Phase,
    last_sent_us: i64,
    last_heard_us: i64,
    reply_requested_at: Option<i64>,
    keepalive: Keepalive,
}

impl Streamer {
    pub fn new(plan: StreamPlan, major: u32, segment_size: u64, block_size: u32, now: i64) -> Self {
        Streamer {
            sent: plan.start,
            plan,
            major,
            segment_size,
            block_size: u64::from(block_size.max(1)),
            reported: Reported::default(),
            phase: Phase::Streaming,
            last_sent_us: now,
            last_heard_us: now,
            reply_requested_at: None,
            keepalive: Keepalive::default(),
        }
    }

    /// The end this stream may reach, given the verified end `available`
    /// of its timeline: never past the switch point of a historic one.
    pub fn limit(&self, available: Lsn) -> Lsn {
        match self.plan.switch {
            Some((switchpoint, _)) => switchpoint,
            None => available,
        }
    }

    /// The next piece to send, `(start, len)`, when WAL up to `available`
    /// is verified: at most [`MAX_SEND`], within one segment, and ending on
    /// a page boundary unless it ends at the limit.
    pub fn next_piece(&self, available: Lsn) -> Option<(Lsn, u64)> {
        let limit = self.limit(available);
        if self.phase != Phase::Streaming || self.sent >= limit {
            return None;
        }
        let seg_end = self.sent.segment_start(self.segment_size).0 + self.segment_size;
        let mut end = limit.0.min(seg_end).min(self.sent.0 + MAX_SEND);
        if end < limit.0 && end < seg_end {
            let aligned = end - end % self.block_size;
            if aligned > self.sent.0 {
                end = aligned;
            }
        }
        Some((self.sent, end - self.sent.0))
    }

    /// Records that a piece was sent.
    pub fn sent_piece(&mut self, start: Lsn, len: u64, now: i64) {
        debug_assert_eq!(start, self.sent);
        self.sent = Lsn(start.0 + len);
        self.last_sent_us = now;
    }

    /// A historic timeline fully sent: walrcv's CopyDone is due.
    pub fn timeline_finished(&self) -> bool {
        self.phase == Phase::Streaming
            && self
                .plan
                .switch
                .is_some_and(|(switchpoint, _)| self.sent >= switchpoint)
    }

    /// The timeline being streamed as the current one ended (walrcv followed
    /// a switch): it becomes historic, so the stream stops at `switchpoint`
    /// and the end-of-timeline sequence names `next`. WAL already sent past
    /// the switch point (it cannot be verified WAL of the new history) is
    /// not taken back: the sequence follows at once and the standby, as
    /// with PostgreSQL, sees the switch point behind its position.
    pub fn timeline_ended(&mut self, switchpoint: Lsn, next: TimeLineId) {
        if self.phase == Phase::Streaming && self.plan.switch.is_none() {
            self.plan.switch = Some((switchpoint, next));
        }
    }

    /// Writes CopyDone and waits for the client's.
    pub fn finish_timeline(&mut self, out: &mut BytesMut) {
        reply::copy_done(out);
        self.phase = Phase::SentCopyDone;
    }

    /// The client sent CopyDone: answers with what ends copy mode.
    pub fn client_copy_done(&mut self, out: &mut BytesMut) {
        if self.phase == Phase::Streaming {
            reply::copy_done(out);
        }
        let switch = if self.phase == Phase::SentCopyDone {
            self.plan.switch
        } else {
            None
        };
        end_of_streaming(out, self.major, switch);
        self.phase = Phase::Done;
    }

    /// Takes in a standby message; `true` when it asks for a keepalive now.
    pub fn on_standby(&mut self, msg: &StandbyMessage, now: i64) -> bool {
        self.last_heard_us = now;
        match *msg {
            StandbyMessage::Status {
                write,
                flush,
                apply,
                reply_requested,
            } => {
                self.reported.write = write;
                self.reported.flush = flush;
                self.reported.apply = apply;
                self.reply_requested_at = None;
                reply_requested
            }
            StandbyMessage::HotStandbyFeedback {
                xmin,
                xmin_epoch,
                catalog_xmin,
                catalog_xmin_epoch,
            } => {
                self.reported.xmin = (xmin != 0).then_some((xmin, xmin_epoch));
                self.reported.catalog_xmin =
                    (catalog_xmin != 0).then_some((catalog_xmin, catalog_xmin_epoch));
                false
            }
        }
    }

    /// Any message from the client counts as a sign of life.
    pub fn heard(&mut self, now: i64) {
        self.last_heard_us = now;
    }

    /// A keepalive due at `now`: `Some(reply_requested)`.
    pub fn keepalive_due(&mut self, now: i64) -> Option<bool> {
        if self.phase != Phase::Streaming {
            return None;
        }
        let due = self.keepalive.due(
            now,
            self.last_sent_us,
            self.last_heard_us,
            self.reply_requested_at.is_some(),
        )?;
        if due {
            self.reply_requested_at = Some(now);
        }
        self.last_sent_us = now;
        Some(due)
    }

    /// The standby has been silent past the timeout.
    pub fn timed_out(&self, now: i64) -> bool {
        self.keepalive.timed_out(now, self.last_heard_us)
    }

    /// With this keepalive policy instead of the default.
    pub fn with_keepalive(mut self, keepalive: Keepalive) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// Bytes sent but not reported flushed.
    pub fn lag(&self) -> u64 {
        self.sent.0.saturating_sub(self.reported.flush.0)
    }

    pub fn timeline(&self) -> TimeLineId {
        self.plan.timeline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn streamer(start: u64, switch: Option<(Lsn, TimeLineId)>) -> Streamer {
        let plan = StreamPlan {
            slot: None,
            timeline: 1,
            start: Lsn(start),
            switch,
        };
        Streamer::new(plan, 15, SEG, 8192, 0)
    }

    #[test]
    fn pieces_are_page_aligned_and_bounded() {
        let mut s = streamer(0x100_0100, None);
        // Far more available: 128 kB, cut back to a page boundary.
        let (start, len) = s.next_piece(Lsn(0x200_0000)).unwrap();
        assert_eq!(start, Lsn(0x100_0100));
        assert_eq!((start.0 + len) % 8192, 0);
        assert!(len <= MAX_SEND);
        s.sent_piece(start, len, 1);
        // Only a little available: up to it exactly (a record end, not a page end).
        let (start, len) = s.next_piece(Lsn(0x102_0018)).unwrap();
        assert_eq!(start.0 + len, 0x102_0018);
        s.sent_piece(start, len, 2);
        assert_eq!(s.next_piece(Lsn(0x102_0018)), None);
    }

    #[test]
    fn never_crosses_a_segment() {
        let s = streamer(SEG - 8192, None);
        let (_, len) = s.next_piece(Lsn(3 * SEG)).unwrap();
        assert_eq!(len, 8192);
    }

    #[test]
    fn historic_timeline_stops_at_the_switch_then_the_sequence() {
        let mut s = streamer(0x100_0000, Some((Lsn(0x100_0200), 2)));
        let (start, len) = s.next_piece(Lsn(0x500_0000)).unwrap();
        assert_eq!(start.0 + len, 0x100_0200);
        s.sent_piece(start, len, 1);
        assert!(s.timeline_finished());
        let mut out = BytesMut::new();
        s.finish_timeline(&mut out);
        assert_eq!(&out[..], b"c\0\0\0\x04");
        out.clear();
        s.client_copy_done(&mut out);
        let mut msgs = Vec::new();
        while let Some(m) = crate::pgwire::backend::parse(&mut out).unwrap() {
            msgs.push(m);
        }
        use crate::pgwire::BackendMessage as B;
        assert!(
            matches!(&msgs[1], B::DataRow { values } if values[0].as_deref() == Some(&b"2"[..]) && values[1].as_deref() == Some(&b"0/1000200"[..]))
        );
        assert!(matches!(&msgs[2], B::CommandComplete { tag } if tag == "START_STREAMING"));
        assert!(matches!(&msgs[3], B::CommandComplete { tag } if tag == "START_REPLICATION"));
        assert!(matches!(msgs[4], B::ReadyForQuery));
        assert_eq!(s.phase, Phase::Done);
    }

    #[test]
    fn current_timeline_ends_mid_stream() {
        let mut s = streamer(0x100_0000, None);
        let (start, len) = s.next_piece(Lsn(0x100_0100)).unwrap();
        s.sent_piece(start, len, 1);
        assert!(!s.timeline_finished());
        // walrcv followed a switch to timeline 2 at 0/1000180.
        s.timeline_ended(Lsn(0x100_0180), 2);
        let (start, len) = s.next_piece(Lsn(0x100_0400)).unwrap();
        assert_eq!(start.0 + len, 0x100_0180, "never past the switch point");
        s.sent_piece(start, len, 2);
        assert!(s.timeline_finished());
        // A second notice changes nothing.
        s.timeline_ended(Lsn(0x100_0300), 3);
        assert_eq!(s.plan.switch, Some((Lsn(0x100_0180), 2)));
        let mut out = BytesMut::new();
        s.finish_timeline(&mut out);
        out.clear();
        s.client_copy_done(&mut out);
        let mut msgs = Vec::new();
        while let Some(m) = crate::pgwire::backend::parse(&mut out).unwrap() {
            msgs.push(m);
        }
        use crate::pgwire::BackendMessage as B;
        assert!(
            matches!(&msgs[1], B::DataRow { values } if values[0].as_deref() == Some(&b"2"[..]) && values[1].as_deref() == Some(&b"0/1000180"[..]))
        );
        // Once copy mode is over, a late notice is ignored.
        let mut done = streamer(0x100_0000, None);
        done.client_copy_done(&mut BytesMut::new());
        done.timeline_ended(Lsn(0x100_0180), 2);
        assert_eq!(done.plan.switch, None);
    }

    #[test]
    fn client_copy_done_while_streaming() {
        let mut s = streamer(0x100_0000, None);
        let mut out = BytesMut::new();
        s.client_copy_done(&mut out);
        assert!(out.starts_with(b"c\0\0\0\x04C"));
        assert_eq!(s.next_piece(Lsn(0x200_0000)), None);
    }

    #[test]
    fn keepalives_and_timeout() {
        let mut s = streamer(0, None);
        assert_eq!(s.keepalive_due(1), None);
        assert_eq!(s.keepalive_due(IDLE_KEEPALIVE_US), Some(false));
        assert_eq!(s.keepalive_due(REPLY_REQUEST_US), Some(true));
        // Asked once until the standby answers.
        assert_eq!(s.keepalive_due(REPLY_REQUEST_US + 1), None);
        assert!(!s.timed_out(CLIENT_TIMEOUT_US - 1));
        assert!(s.timed_out(CLIENT_TIMEOUT_US));
        let status = StandbyMessage::Status {
            write: Lsn(10),
            flush: Lsn(8),
            apply: Lsn(0),
            reply_requested: true,
        };
        assert!(s.on_standby(&status, CLIENT_TIMEOUT_US));
        assert!(!s.timed_out(CLIENT_TIMEOUT_US + 1));
        assert_eq!(s.reported.flush, Lsn(8));
    }

    #[test]
    fn configured_keepalive_and_sender_timeout() {
        const S: i64 = 1_000_000;
        // --serve-keepalive-interval 2 --serve-sender-timeout 8.
        let mut s = streamer(0, None).with_keepalive(Keepalive::from_secs(2, 8));
        assert_eq!(s.keepalive_due(2 * S - 1), None);
        assert_eq!(s.keepalive_due(2 * S), Some(false));
        assert_eq!(s.keepalive_due(3 * S), None);
        // Half the timeout without a word: a reply request, once.
        assert_eq!(s.keepalive_due(4 * S), Some(true));
        assert_eq!(s.keepalive_due(5 * S), None);
        assert_eq!(s.keepalive_due(6 * S), Some(false));
        assert!(!s.timed_out(8 * S - 1));
        assert!(s.timed_out(8 * S));
        // A client that answers is kept past the timeout.
        s.heard(7 * S);
        assert!(!s.timed_out(14 * S));
        assert!(s.timed_out(15 * S));
        // --serve-sender-timeout 0: never dropped, never asked.
        let mut s = streamer(0, None).with_keepalive(Keepalive::from_secs(10, 0));
        assert!(!s.timed_out(i64::MAX / 2));
        assert_eq!(s.keepalive_due(10 * S), Some(false));
        assert_eq!(s.keepalive_due(1000 * S), Some(false));
    }

    #[test]
    fn standby_messages() {
        let mut r = vec![b'r'];
        for v in [3u64, 2, 1, 9] {
            r.extend_from_slice(&v.to_be_bytes());
        }
        r.push(1);
        assert_eq!(
            parse_standby(Bytes::from(r)).unwrap(),
            StandbyMessage::Status {
                write: Lsn(3),
                flush: Lsn(2),
                apply: Lsn(1),
                reply_requested: true
            }
        );
        let mut h = vec![b'h'];
        h.extend_from_slice(&7i64.to_be_bytes());
        for v in [100u32, 0, 0, 0] {
            h.extend_from_slice(&v.to_be_bytes());
        }
        let m = parse_standby(Bytes::from(h)).unwrap();
        let mut s = streamer(0, None);
        s.on_standby(&m, 1);
        assert_eq!(s.reported.xmin, Some((100, 0)));
        assert_eq!(s.reported.catalog_xmin, None);
        assert!(parse_standby(Bytes::from_static(b"r12")).is_err());
        assert_eq!(
            parse_standby(Bytes::from_static(b"z")),
            Err(StandbyError::Type('z'))
        );
    }
}
