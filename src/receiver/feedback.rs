//! The feedback and liveness policy of a replication connection, sans-IO:
//! when to send a standby status update (`'r'`), what it says, when to ping,
//! and when the connection is dead. The session feeds it the clock and the
//! sink's positions and sends what it returns.
//!
//! Rules:
//! - a status update at stream start, after every batch that advanced the
//!   flush position (the moment it advances), at once when the server asks
//!   (after the batch was made durable), and every `--status-interval`;
//! - a ping (a status update asking for a reply) once the server has been
//!   silent for half of `--receive-timeout`, and the connection is dead after
//!   the whole of it;
//! - the positions sent never go backwards on one timeline, and `flush <=
//!   write`. Across a timeline switch at `S` (where the new timeline begins)
//!   the floor carried over is capped at `S`: the old timeline's WAL up to
//!   `S` is the new one's too, so a position at or below it stays reported
//!   (the new timeline restarts at a segment start below it); but WAL of the
//!   old timeline past `S` is not the new timeline's WAL, so a position past
//!   `S` reported on the old timeline is never repeated on the new one (the
//!   new primary would release commits walrcv does not have). Then, and only
//!   then, the positions go back to `S` at the switch: a status update cannot
//!   be taken back, and every later one must still be true;
//! - the silence clock counts only time spent waiting for the server: time
//!   walrcv spends in its own fdatasync (or a segment's padding) is not the
//!   server's silence, so a slow disk does not end a healthy connection;
//! - timers are checked after every batch, so a continuous stream cannot starve
//!   them.

use std::time::{Duration, Instant};

use crate::lsn::Lsn;

/// What the sink has: `write` is verified and written to the file, `flush` is
/// verified and durable. [`Lsn::INVALID`] (0/0) when not known yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Positions {
    pub write: Lsn,
    pub flush: Lsn,
}

/// A status update to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub write: Lsn,
    pub flush: Lsn,
    /// Ask the server to answer at once (our ping).
    pub reply_requested: bool,
}

/// What a timer expiry calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerAction {
    Nothing,
    Send(Status),
    /// Nothing received for the whole receive timeout.
    TimedOut,
}

/// The two settings the policy follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedbackConfig {
    /// Periodic status updates (`None`: only on events).
    pub status_interval: Option<Duration>,
    pub receive_timeout: Duration,
}

/// The policy's state for one connection.
#[derive(Debug, Clone)]
pub struct Feedback {
    config: FeedbackConfig,
    last_sent: Option<Positions>,
    last_status_at: Instant,
    last_receive: Instant,
    pinged: bool,
}

impl Feedback {
    pub fn new(config: FeedbackConfig, now: Instant) -> Feedback {
        Feedback {
            config,
            last_sent: None,
            last_status_at: now,
            last_receive: now,
            pinged: false,
        }
    }

    /// The server entered streaming: the silence clock restarts, and the first
    /// status update goes out at once (as pg_receivewal and the walreceiver do).
    pub fn stream_started(&mut self, now: Instant, current: Positions) -> Status {
        self.message_received(now);
        self.make(now, current, false)
    }

    /// Any message from the server proves it alive.
    pub fn message_received(&mut self, now: Instant) {
        self.last_receive = now;
        self.pinged = false;
    }

    /// walrcv worked on its own from `started` to `ended` (an fdatasync, a
    /// segment's padding) without reading the connection: that time is not the
    /// server's silence. The silence measured so far is kept, the part that
    /// overlaps the work is taken out.
    pub fn worked(&mut self, started: Instant, ended: Instant) {
        let from = started.max(self.last_receive);
        if ended > from {
            self.last_receive += ended - from;
        }
    }

    /// The stream moved onto a new timeline that begins at `switchpoint`:
    /// from now on nothing past it is reported that the new timeline's WAL
    /// does not back (see the module documentation).
    pub fn timeline_switched(&mut self, switchpoint: Lsn) {
        if let Some(floor) = &mut self.last_sent {
            floor.write = floor.write.min(switchpoint);
            floor.flush = floor.flush.min(switchpoint);
        }
    }

    /// After a batch was made durable (or a full segment fsynced): a status
    /// update when flush advanced, or when the server asked for a reply.
    pub fn after_sync(
        &mut self,
        now: Instant,
        current: Positions,
        reply_requested: bool,
    ) -> Option<Status> {
        let advanced = self.last_sent.is_none_or(|s| current.flush > s.flush);
        (advanced || reply_requested).then(|| self.make(now, current, false))
    }

    /// The last status update of a stream, sent whatever changed.
    pub fn final_status(&mut self, now: Instant, current: Positions) -> Status {
        self.make(now, current, false)
    }

    /// When [`Feedback::on_timer`] has something to do next.
    pub fn next_deadline(&self) -> Instant {
        let dead_at = self.last_receive + self.config.receive_timeout;
        let silence = if self.pinged {
            dead_at
        } else {
            self.last_receive + self.config.receive_timeout / 2
        };
        match self.config.status_interval {
            Some(i) => silence.min(self.last_status_at + i),
            None => silence,
        }
    }

    /// Timers: the receive timeout, the ping at half of it, the periodic status.
    pub fn on_timer(&mut self, now: Instant, current: Positions) -> TimerAction {
        if now >= self.last_receive + self.config.receive_timeout {
            return TimerAction::TimedOut;
        }
        if !self.pinged && now >= self.last_receive + self.config.receive_timeout / 2 {
            self.pinged = true;
            return TimerAction::Send(self.make(now, current, true));
        }
        match self.config.status_interval {
            Some(i) if now >= self.last_status_at + i => {
                TimerAction::Send(self.make(now, current, false))
            }
            _ => TimerAction::Nothing,
        }
    }

    /// A status update from `current`, never below what was sent before.
    fn make(&mut self, now: Instant, current: Positions, reply_requested: bool) -> Status {
        let floor = self.last_sent.unwrap_or_default();
        let flush = current.flush.max(floor.flush);
        let write = current.write.max(floor.write).max(flush);
        self.last_sent = Some(Positions { write, flush });
        self.last_status_at = now;
        Status {
            write,
            flush,
            reply_requested,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn pos(write: u64, flush: u64) -> Positions {
        Positions {
            write: Lsn(write),
            flush: Lsn(flush),
        }
    }

    fn policy(interval: Option<u64>, timeout: u64) -> (Feedback, Instant) {
        let now = Instant::now();
        let config = FeedbackConfig {
            status_interval: interval.map(Duration::from_secs),
            receive_timeout: Duration::from_secs(timeout),
        };
        (Feedback::new(config, now), now)
    }

    #[test]
    fn first_status_is_sent_at_stream_start_with_what_the_sink_has() {
        let (mut f, t0) = policy(Some(10), 60);
        let s = f.stream_started(t0, pos(0, 0));
        assert_eq!(
            (s.write, s.flush, s.reply_requested),
            (Lsn(0), Lsn(0), false)
        );
    }

    #[test]
    fn status_goes_out_when_flush_advances_and_only_then() {
        let (mut f, t0) = policy(None, 60);
        f.stream_started(t0, pos(100, 100));
        assert_eq!(
            f.after_sync(t0, pos(200, 100), false),
            None,
            "only write moved"
        );
        let s = f.after_sync(t0, pos(200, 200), false).unwrap();
        assert_eq!(s.flush, Lsn(200));
        assert_eq!(f.after_sync(t0, pos(200, 200), false), None);
    }

    #[test]
    fn reply_requests_are_answered_even_without_progress() {
        let (mut f, t0) = policy(None, 60);
        f.stream_started(t0, pos(100, 100));
        let s = f.after_sync(t0, pos(100, 100), true).unwrap();
        assert_eq!((s.flush, s.reply_requested), (Lsn(100), false));
    }

    #[test]
    fn positions_never_go_backwards_and_flush_never_passes_write() {
        let (mut f, t0) = policy(None, 60);
        f.stream_started(t0, pos(5000, 4000));
        // The sink's positions below what was reported (a new timeline
        // restarting at a segment start below a switch point it passed).
        let s = f.final_status(t0, pos(1000, 0));
        assert_eq!((s.write, s.flush), (Lsn(5000), Lsn(4000)));
        let s = f.after_sync(t0, pos(4500, 4500), true).unwrap();
        assert_eq!((s.write, s.flush), (Lsn(5000), Lsn(4500)));
        let s = f.after_sync(t0, pos(6000, 5500), false).unwrap();
        assert_eq!((s.write, s.flush), (Lsn(6000), Lsn(5500)));
    }

    #[test]
    fn a_switch_point_at_or_above_what_was_reported_keeps_the_floor() {
        // A planned switchover: the old timeline was reported up to 4000,
        // the new one begins at 4500 and restarts at its segment start.
        let (mut f, t0) = policy(None, 60);
        f.stream_started(t0, pos(5000, 4000));
        f.timeline_switched(Lsn(4500));
        let s = f.stream_started(t0, pos(0, 0));
        assert_eq!((s.write, s.flush), (Lsn(4500), Lsn(4000)));
        assert_eq!(
            f.after_sync(t0, pos(4200, 4200), false).map(|s| s.flush),
            Some(Lsn(4200))
        );
    }

    #[test]
    fn nothing_past_the_switch_point_is_reported_on_the_new_timeline_before_its_wal_is_durable() {
        // WAL up to 6000 was flushed and reported on the old timeline; the
        // new one begins at 4000. Repeating 6000 would tell the new primary
        // that its WAL in (4000, 6000] is kept.
        let (mut f, t0) = policy(None, 60);
        f.stream_started(t0, pos(6000, 6000));
        f.timeline_switched(Lsn(4000));
        let s = f.stream_started(t0, pos(0, 0));
        assert_eq!((s.write, s.flush), (Lsn(4000), Lsn(4000)));
        // The new timeline's WAL below the switch point advances nothing.
        assert_eq!(f.after_sync(t0, pos(3000, 3000), false), None);
        let s = f.after_sync(t0, pos(3500, 3500), true).unwrap();
        assert_eq!((s.write, s.flush), (Lsn(4000), Lsn(4000)));
        // Past it, only what the new timeline has made durable.
        let s = f.after_sync(t0, pos(5000, 5000), false).unwrap();
        assert_eq!((s.write, s.flush), (Lsn(5000), Lsn(5000)));
        match f.on_timer(t0 + 30 * SEC, pos(5500, 5000)) {
            TimerAction::Send(s) => assert_eq!((s.write, s.flush), (Lsn(5500), Lsn(5000))),
            other => panic!("{other:?}"),
        }
        let s = f.after_sync(t0, pos(7000, 6500), false).unwrap();
        assert_eq!((s.write, s.flush), (Lsn(7000), Lsn(6500)));
        // Before any status on the connection there is no floor to cap.
        let (mut g, t0) = policy(None, 60);
        g.timeline_switched(Lsn(4000));
        let s = g.stream_started(t0, pos(0, 0));
        assert_eq!((s.write, s.flush), (Lsn(0), Lsn(0)));
    }

    #[test]
    fn time_spent_in_walrcvs_own_work_is_not_the_servers_silence() {
        let (mut f, t0) = policy(None, 2);
        f.stream_started(t0, pos(1, 1));
        // A 3 s fdatasync right after a message: neither a ping nor the end.
        f.message_received(t0);
        f.worked(t0, t0 + 3 * SEC);
        assert_eq!(f.on_timer(t0 + 3 * SEC, pos(1, 1)), TimerAction::Nothing);
        assert_eq!(f.next_deadline(), t0 + 4 * SEC);
        // Silence before the work still counts: 1.5 s of it, 3 s of work,
        // then the end 0.5 s later.
        let (mut g, t0) = policy(None, 2);
        g.stream_started(t0, pos(1, 1));
        let ms = Duration::from_millis;
        g.worked(t0 + ms(1500), t0 + ms(4500));
        assert_eq!(
            g.next_deadline(),
            t0 + ms(4000),
            "the ping was due at 1 s of silence"
        );
        assert!(
            matches!(g.on_timer(t0 + ms(4500), pos(1, 1)), TimerAction::Send(s) if s.reply_requested)
        );
        assert_eq!(g.on_timer(t0 + ms(4999), pos(1, 1)), TimerAction::Nothing);
        assert_eq!(g.on_timer(t0 + ms(5000), pos(1, 1)), TimerAction::TimedOut);
        // Work that ended before the last message changes nothing.
        let (mut h, t0) = policy(None, 2);
        h.stream_started(t0, pos(1, 1));
        h.message_received(t0 + 5 * SEC);
        h.worked(t0 + SEC, t0 + 4 * SEC);
        assert_eq!(h.next_deadline(), t0 + 6 * SEC);
    }

    #[test]
    fn silence_brings_a_ping_at_half_the_timeout_then_the_end() {
        let (mut f, t0) = policy(None, 60);
        f.stream_started(t0, pos(1, 1));
        assert_eq!(f.next_deadline(), t0 + 30 * SEC);
        assert_eq!(f.on_timer(t0 + 29 * SEC, pos(1, 1)), TimerAction::Nothing);
        match f.on_timer(t0 + 30 * SEC, pos(1, 1)) {
            TimerAction::Send(s) => assert!(s.reply_requested),
            other => panic!("{other:?}"),
        }
        // One ping per quiet period.
        assert_eq!(f.next_deadline(), t0 + 60 * SEC);
        assert_eq!(f.on_timer(t0 + 45 * SEC, pos(1, 1)), TimerAction::Nothing);
        assert_eq!(f.on_timer(t0 + 60 * SEC, pos(1, 1)), TimerAction::TimedOut);
    }

    #[test]
    fn any_message_restarts_the_silence_clock() {
        let (mut f, t0) = policy(None, 60);
        f.stream_started(t0, pos(1, 1));
        assert!(matches!(
            f.on_timer(t0 + 30 * SEC, pos(1, 1)),
            TimerAction::Send(_)
        ));
        f.message_received(t0 + 40 * SEC);
        assert_eq!(f.next_deadline(), t0 + 70 * SEC);
        assert_eq!(f.on_timer(t0 + 65 * SEC, pos(1, 1)), TimerAction::Nothing);
        assert!(
            matches!(f.on_timer(t0 + 70 * SEC, pos(1, 1)), TimerAction::Send(s) if s.reply_requested)
        );
    }

    #[test]
    fn periodic_status_follows_the_interval_from_the_last_one_sent() {
        let (mut f, t0) = policy(Some(10), 60);
        f.stream_started(t0, pos(1, 1));
        assert_eq!(f.next_deadline(), t0 + 10 * SEC);
        f.message_received(t0 + 9 * SEC);
        assert_eq!(f.on_timer(t0 + 9 * SEC, pos(1, 1)), TimerAction::Nothing);
        match f.on_timer(t0 + 10 * SEC, pos(2, 1)) {
            TimerAction::Send(s) => assert_eq!((s.write, s.reply_requested), (Lsn(2), false)),
            other => panic!("{other:?}"),
        }
        // An event-driven status resets the interval too.
        f.message_received(t0 + 15 * SEC);
        f.after_sync(t0 + 15 * SEC, pos(3, 3), false).unwrap();
        assert_eq!(f.next_deadline(), t0 + 25 * SEC);
    }

    #[test]
    fn a_continuous_stream_still_gets_its_periodic_status() {
        // The session calls on_timer after every batch: messages arriving
        // back to back keep the connection alive but do not hold back the
        // interval.
        let (mut f, t0) = policy(Some(1), 60);
        f.stream_started(t0, pos(1, 1));
        let mut sent = 0;
        for ms in (0..3000).step_by(10) {
            let now = t0 + Duration::from_millis(ms);
            f.message_received(now);
            if let TimerAction::Send(_) = f.on_timer(now, pos(1, 1)) {
                sent += 1;
            }
        }
        assert_eq!(sent, 2, "at 1 s and 2 s");
    }

    /// The times `on_timer` (called after every batch, `step` apart, for
    /// `length`) sends a status update while messages keep arriving; `flush`
    /// gives the sink's flush position after each batch, and a batch that
    /// advanced it sends an update through `after_sync` first.
    fn flood(
        f: &mut Feedback,
        t0: Instant,
        step: Duration,
        length: Duration,
        flush: impl Fn(u32) -> u64,
    ) -> Vec<Instant> {
        let mut sent = vec![t0];
        let mut batch = 0;
        let mut now = t0;
        while now < t0 + length {
            batch += 1;
            now += step;
            f.message_received(now);
            let p = pos(flush(batch) + 1, flush(batch));
            if f.after_sync(now, p, false).is_some() {
                sent.push(now);
            }
            if let TimerAction::Send(s) = f.on_timer(now, p) {
                assert!(!s.reply_requested, "no ping while the server talks");
                sent.push(now);
            }
        }
        sent
    }

    #[test]
    fn a_keepalive_flood_gets_a_periodic_status_every_interval_exactly() {
        // tests/fake_primary.rs fake_primary_status_updates_flow_during_a_flood
        // on a controlled clock: keepalives every 3 ms for 10 s, flush still.
        let (mut f, t0) = policy(Some(1), 60);
        f.stream_started(t0, pos(1, 1));
        let step = Duration::from_millis(3);
        let sent = flood(&mut f, t0, step, 10 * SEC, |_| 1);
        let gaps: Vec<Duration> = sent.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps.len(), 9, "{gaps:?}");
        for gap in gaps {
            assert!(gap >= SEC && gap < SEC + step, "{gap:?}");
        }
    }

    #[test]
    fn a_wal_flood_never_goes_an_interval_without_a_status() {
        // fake_primary_status_updates_flow_during_a_wal_flood on a controlled
        // clock: flush advances only every 500th batch (2.5 s apart), which
        // alone would leave gaps longer than the interval.
        let (mut f, t0) = policy(Some(1), 60);
        f.stream_started(t0, pos(1, 1));
        let step = Duration::from_millis(5);
        let sent = flood(&mut f, t0, step, 10 * SEC, |batch| {
            1 + u64::from(batch / 500)
        });
        assert!(sent.len() >= 10, "{} updates in 10 s", sent.len());
        for w in sent.windows(2) {
            assert!(w[1] - w[0] < SEC + step, "{:?}", w[1] - w[0]);
        }
        // An update for a flush advance restarts the interval: the next
        // periodic one is an interval after it, not after the previous one.
        let (mut g, t0) = policy(Some(1), 60);
        g.stream_started(t0, pos(1, 1));
        g.after_sync(t0 + Duration::from_millis(700), pos(2, 2), false)
            .unwrap();
        assert_eq!(g.on_timer(t0 + SEC, pos(2, 2)), TimerAction::Nothing);
        assert_eq!(g.next_deadline(), t0 + Duration::from_millis(1700));
    }
}
