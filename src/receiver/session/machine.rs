//! The receive loop of one stream (the CopyBoth phase of one
//! START_REPLICATION) as a sans-IO state machine: events in (a message
//! received, nothing more readable, the time asked for, a write, completion
//! or fsync done or failed, a timer, a stop request), actions out (note what
//! the server has, write, complete a filled segment, fsync, send a status,
//! read more, wait until, end). The driver ([`super::driver`]) does the IO;
//! unit tests drive the machine directly with a controlled clock.
//!
//! One batch: the first message after a wait, then every message readable
//! without waiting (cut at [`MAX_BATCH_BYTES`] of WAL, or when a timer is
//! due), each XLogData verified and written as it comes; then one fsync for
//! the whole batch, then the status update if flush advanced or the server
//! asked. A segment the stream fills is reported (flush stops one byte short
//! of its end), completed (renamed), reported again. A failed write, fsync
//! or completion ends the stream at once: no status is sent after it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::incomplete::IncompleteRecordWatch;
use super::steps::LoopEnd;
use crate::lsn::Lsn;
use crate::pgwire::{BackendMessage, PgError};
use crate::receiver::feedback::{Feedback, Positions, Status, TimerAction};
use crate::receiver::sink::SinkError;
use crate::receiver::ReceiverError;
use crate::replication::ReplicationMessage;

/// A batch is cut after this many bytes of WAL even when more is already
/// readable, so that a continuous stream (catch-up) is still fsynced,
/// acknowledged and checked for timers and signals regularly.
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// In a long batch, the clock is read once every this many messages.
pub const CLOCK_EVERY: u32 = 16;

/// What the sink's positions were at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub at: Instant,
    pub positions: Positions,
}

/// What happened.
#[derive(Debug)]
pub enum Event {
    /// A message arrived after a wait: the first of a batch, at `at`.
    Arrived { msg: BackendMessage, at: Instant },
    /// A message read without waiting ([`Action::ReadMore`]).
    AlsoReady(BackendMessage),
    /// Nothing more is readable without waiting.
    Drained,
    /// The time, asked for by [`Action::ReadClock`].
    Clock(Instant),
    /// [`Action::Write`] took `n` bytes; `filled` when that filled a
    /// segment (fdatasynced, waiting for its completion).
    Wrote { n: usize, filled: Option<Report> },
    /// [`Action::CompleteFilled`] renamed the filled segment.
    Completed(Report),
    /// [`Action::Sync`] made the batch durable; it began at `started`.
    Synced { started: Instant, report: Report },
    /// A write, completion or fsync failed: the stream ends.
    SinkFailed(SinkError),
    /// A timer fired (or [`Action::Tick`] was done): `bytes_arrived` when
    /// part of a message arrived since the last tick.
    Timer {
        now: Instant,
        bytes_arrived: bool,
        positions: Positions,
        /// Where the record the verifier is inside begins (its bytes are
        /// written, not yet verified); `None` between records.
        record_in_progress: Option<Lsn>,
    },
    /// SIGINT or SIGTERM.
    Stop,
}

/// What to do.
#[derive(Debug)]
pub enum Action {
    /// The server has WAL up to here (the sink writes a segment direct when
    /// the server has it whole).
    ServerHas(Lsn),
    /// XLogData ending at `end` (`bytes` long) arrived at `arrived`: count it
    /// (before it is verified: a scrape never sees verified past received).
    Received {
        arrived: Instant,
        end: Lsn,
        bytes: u64,
    },
    /// Verify and write `data`, which begins at `at` (answer: [`Event::Wrote`]).
    Write { at: Lsn, data: Bytes },
    /// Rename the filled segment (answer: [`Event::Completed`]).
    CompleteFilled,
    /// fdatasync what was written (answer: [`Event::Synced`]).
    Sync,
    /// Send this status update.
    Send(Status),
    /// Read the next message if one is readable without waiting (answer:
    /// [`Event::AlsoReady`] or [`Event::Drained`]).
    ReadMore,
    /// Tell the time (answer: [`Event::Clock`]).
    ReadClock,
    /// Check the timers now (answer: [`Event::Timer`]).
    Tick,
    /// Nothing to do before a message, a stop, or `until`.
    Wait { until: Instant },
    /// The stream ended.
    End(LoopEnd),
    /// The stream failed.
    Fail(ReceiverError),
}

/// What the machine needs to know of the session.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// `--endpos`.
    pub endpos: Option<Lsn>,
    /// Where the stream starts (the sink's position).
    pub start: Lsn,
    /// For the timeout's message.
    pub receive_timeout: Duration,
    /// The server, named in its errors.
    pub target: String,
    /// The server's WAL block size (see [`super::incomplete`]).
    pub block_size: u64,
}

/// What the current batch has seen and asked for.
#[derive(Debug, Default)]
struct Batch {
    arrived: Option<Instant>,
    wal_bytes: usize,
    reply_requested: bool,
    handled: u32,
    end: Option<LoopEnd>,
}

/// The receive loop's state for one stream. The [`Feedback`] policy is the
/// connection's (it outlives the stream, across timeline switches).
#[derive(Debug)]
pub struct StreamMachine<'f> {
    config: MachineConfig,
    feedback: &'f mut Feedback,
    /// The next byte the stream must bring.
    position: Lsn,
    /// What is left to write of the current XLogData.
    writing: Option<(Lsn, Bytes)>,
    batch: Batch,
    actions: VecDeque<Action>,
    streamed: bool,
    ended: bool,
    incomplete: IncompleteRecordWatch,
}

impl<'f> StreamMachine<'f> {
    pub fn new(config: MachineConfig, feedback: &'f mut Feedback) -> StreamMachine<'f> {
        StreamMachine {
            position: config.start,
            incomplete: IncompleteRecordWatch::new(config.block_size),
            config,
            feedback,
            writing: None,
            batch: Batch::default(),
            actions: VecDeque::with_capacity(8),
            streamed: false,
            ended: false,
        }
    }

    /// The server entered streaming: the first status update goes out at once.
    pub fn start(&mut self, now: Instant, positions: Positions) -> Status {
        self.feedback.stream_started(now, positions)
    }

    /// Whether WAL was written in this stream (the supervisor resets its
    /// backoff then).
    pub fn streamed(&self) -> bool {
        self.streamed
    }

    /// The next byte the stream must bring.
    pub fn position(&self) -> Lsn {
        self.position
    }

    /// When the policy has something to do next, with no message.
    pub fn deadline(&self) -> Instant {
        let policy = self.feedback.next_deadline();
        self.incomplete
            .deadline()
            .map_or(policy, |stuck| stuck.min(policy))
    }

    /// The connection's policy (for the stream's last status).
    pub fn feedback(&mut self) -> &mut Feedback {
        self.feedback
    }

    /// The next thing to do: [`Action::Wait`] when nothing is pending.
    pub fn poll(&mut self) -> Action {
        match self.actions.pop_front() {
            Some(action) => action,
            None => Action::Wait {
                until: self.deadline(),
            },
        }
    }

    /// Takes in what happened.
    pub fn handle(&mut self, event: Event) {
        if self.ended {
            return;
        }
        match event {
            Event::Arrived { msg, at } => {
                self.batch = Batch {
                    arrived: Some(at),
                    ..Batch::default()
                };
                self.message(msg);
            }
            Event::AlsoReady(msg) => self.message(msg),
            Event::Drained => self.push(Action::Sync),
            Event::Clock(at) => {
                // Messages were received: the server is alive.
                self.feedback.message_received(at);
                if at >= self.feedback.next_deadline() {
                    self.push(Action::Sync);
                } else {
                    self.push(Action::ReadMore);
                }
            }
            Event::Wrote { n, filled } => self.wrote(n, filled),
            Event::Completed(report) => {
                self.report(report);
                self.write_rest();
            }
            Event::Synced { started, report } => self.synced(started, report),
            Event::SinkFailed(e) => self.fail(ReceiverError::Writer(e)),
            Event::Timer {
                now,
                bytes_arrived,
                positions,
                record_in_progress,
            } => self.timer(now, bytes_arrived, positions, record_in_progress),
            Event::Stop => self.end(LoopEnd::Signal),
        }
    }

    fn push(&mut self, action: Action) {
        self.actions.push_back(action);
    }

    /// Ends the stream: whatever was pending is dropped.
    fn end(&mut self, end: LoopEnd) {
        self.actions.clear();
        self.push(Action::End(end));
        self.ended = true;
    }

    /// Fails the stream: nothing pending is done, no status is sent.
    fn fail(&mut self, error: ReceiverError) {
        self.actions.clear();
        self.push(Action::Fail(error));
        self.ended = true;
    }

    /// One message of the stream.
    fn message(&mut self, msg: BackendMessage) {
        let payload = match msg {
            BackendMessage::CopyData(payload) => payload,
            BackendMessage::CopyDone => return self.batch_ends(LoopEnd::ServerCopyDone),
            BackendMessage::CommandComplete { .. } => {
                return self.batch_ends(LoopEnd::ServerClosed)
            }
            BackendMessage::Error(message) => {
                return self.fail(PgError::server(self.config.target.clone(), message).into())
            }
            other => return self.fail(ReceiverError::Unexpected(other.summary())),
        };
        match ReplicationMessage::parse(payload) {
            Err(e) => self.fail(e.into()),
            Ok(ReplicationMessage::XLogData {
                data_start,
                wal_end,
                data,
                ..
            }) => self.xlogdata(data_start, wal_end, data),
            Ok(ReplicationMessage::Keepalive {
                wal_end,
                reply_requested,
                ..
            }) => {
                self.push(Action::ServerHas(wal_end));
                self.incomplete.server_has(wal_end);
                self.batch.reply_requested |= reply_requested;
                self.message_done();
            }
        }
    }

    fn xlogdata(&mut self, data_start: Lsn, wal_end: Lsn, data: Bytes) {
        self.push(Action::ServerHas(wal_end));
        self.incomplete.server_has(wal_end);
        let arrived = self.batch.arrived.unwrap_or_else(Instant::now);
        let end = Lsn(data_start.0.saturating_add(data.len() as u64));
        self.push(Action::Received {
            arrived,
            end,
            bytes: data.len() as u64,
        });
        if data_start != self.position {
            return self.fail(ReceiverError::Unexpected(format!(
                "got WAL data at {data_start}, expected {}",
                self.position
            )));
        }
        self.batch.wal_bytes += data.len();
        self.writing = Some((data_start, data));
        self.write_rest();
    }

    /// Writes what is left of the current XLogData, or, all of it written,
    /// goes on with the batch.
    fn write_rest(&mut self) {
        match self.writing.take() {
            Some((at, data)) if !data.is_empty() => {
                self.writing = Some((at, data.clone()));
                self.push(Action::Write { at, data });
            }
            _ => {
                // Stop once the WAL received reaches endpos. (pg_receivewal
                // waits for a message ending strictly past it, which on an
                // idle server may never come.)
                if self.config.endpos.is_some_and(|e| e <= self.position) {
                    return self.batch_ends(LoopEnd::Endpos);
                }
                self.message_done();
            }
        }
    }

    fn wrote(&mut self, n: usize, filled: Option<Report>) {
        self.streamed = true;
        let Some((at, data)) = self.writing.take() else {
            return self.fail(ReceiverError::Unexpected(
                "a write that was not asked for".into(),
            ));
        };
        let n = n.min(data.len());
        self.position = Lsn(at.0 + n as u64);
        self.writing = Some((self.position, data.slice(n..)));
        match filled {
            // Its WAL is fdatasynced: report before the rename (a segment
            // written direct becomes durable with the rename).
            Some(report) => {
                self.report(report);
                self.push(Action::CompleteFilled);
            }
            None => self.write_rest(),
        }
    }

    /// A status update if the flush position advanced.
    fn report(&mut self, report: Report) {
        if let Some(status) = self.feedback.after_sync(report.at, report.positions, false) {
            self.push(Action::Send(status));
        }
    }

    /// One message was handled: read the next, unless the batch is full.
    fn message_done(&mut self) {
        self.batch.handled += 1;
        if self.batch.wal_bytes >= MAX_BATCH_BYTES {
            self.push(Action::Sync);
        } else if self.batch.handled % CLOCK_EVERY == 0 {
            // A stream of small messages that never drains must not hold
            // back the timers.
            self.push(Action::ReadClock);
        } else {
            self.push(Action::ReadMore);
        }
    }

    /// The stream ends after this batch: it is still made durable and
    /// reported first.
    fn batch_ends(&mut self, end: LoopEnd) {
        self.batch.end = Some(end);
        self.push(Action::Sync);
    }

    /// The batch is durable: flush first, then answer; then end, or check
    /// the timers (a continuous stream never starves them).
    fn synced(&mut self, started: Instant, report: Report) {
        self.feedback.message_received(started);
        // A long fdatasync is walrcv's own time, not the server's silence.
        self.feedback.worked(started, report.at);
        let reply = self.batch.reply_requested;
        if let Some(status) = self.feedback.after_sync(report.at, report.positions, reply) {
            self.push(Action::Send(status));
        }
        match self.batch.end.take() {
            Some(end) => {
                self.push(Action::End(end));
                self.ended = true;
            }
            None => self.push(Action::Tick),
        }
    }

    fn timer(
        &mut self,
        now: Instant,
        bytes_arrived: bool,
        positions: Positions,
        record_in_progress: Option<Lsn>,
    ) {
        // Part of a message counts: the connection is not dead while bytes flow.
        if bytes_arrived {
            self.feedback.message_received(now);
        }
        match self.feedback.on_timer(now, positions) {
            TimerAction::Nothing => {}
            TimerAction::Send(status) => self.push(Action::Send(status)),
            TimerAction::TimedOut => {
                return self.fail(ReceiverError::Timeout(
                    self.config.receive_timeout.as_secs(),
                ))
            }
        }
        if let Some(stuck) = self
            .incomplete
            .check(now, self.position, record_in_progress)
        {
            self.fail(ReceiverError::IncompleteRecord {
                record: stuck.record,
                received: stuck.received,
                waited_secs: stuck.waited.as_secs(),
            });
        }
    }
}

#[cfg(test)]
mod tests;
