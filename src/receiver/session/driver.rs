//! The IO around the stream machine ([`super::machine`]): one thin loop that
//! waits for the socket, a timer or a stop request, hands what happened to
//! the machine, and does what it asks on the connection and the
//! [`WalSink`], all on this task (the commit path: see the README's "Design
//! notes: the commit path"). Then the stream's close ([`super::steps::closing`])
//! and the CopyDone sequence with the server.

use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::watch;

use super::machine::{Action, Event, Report, StreamMachine};
use super::steps::{closing, Closing, LoopEnd};
use crate::archive::live::LiveEnd;
use crate::lsn::{pg_now, Lsn, TimeLineId};
use crate::metrics::AckClock;
use crate::pgwire::{BackendMessage, Connection, PgError, QueryResult};
use crate::receiver::feedback::Status;
use crate::receiver::sink::WalSink;
use crate::receiver::ReceiverError;
use crate::replication::{self, StatusUpdate};
use crate::service;
use crate::shutdown::{stop_requested, unless_stopped};

/// How the CopyBoth phase of one START_REPLICATION ended (successfully).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyEnd {
    Stopped,
    Endpos,
    TimelineEnded {
        next_tli: TimeLineId,
        next_start: Lsn,
        received: Lsn,
    },
}

/// What one stream left: how it ended, and whether WAL was written.
pub struct StreamEnd {
    pub result: Result<CopyEnd, ReceiverError>,
    pub streamed: bool,
}

/// The CopyBoth phase of one START_REPLICATION.
pub struct Stream<'a> {
    pub conn: &'a mut Connection,
    pub sink: WalSink,
    pub machine: StreamMachine<'a>,
    /// Measures `walrcv_flush_ack_latency_seconds`.
    pub acks: AckClock,
    /// `stream --serve`: where each flush position sent is published.
    pub live: Option<Published>,
}

/// Where and on which timeline the flush positions sent to the server are
/// published for the walsender (`stream --serve`).
#[derive(Debug, Clone)]
pub struct Published {
    pub end: LiveEnd,
    /// The stream's timeline: a new timeline's first report replaces the old
    /// timeline's end ([`LiveEnd::publish`]).
    pub timeline: TimeLineId,
}

impl Published {
    /// Publishes a flush position once the server was sent it: durable and
    /// verified (the sink's flush is `min(durable, verified)`). An invalid
    /// position (not known yet) publishes nothing. A watch send: never waits.
    fn sent(&self, flush: Lsn) {
        if flush.is_valid() {
            self.end.publish(self.timeline, flush);
        }
    }
}

impl Stream<'_> {
    pub async fn run(mut self, shutdown: &mut watch::Receiver<bool>) -> StreamEnd {
        let result = self.receive_loop(shutdown).await;
        crate::metrics::global().stream_ended();
        let streamed = self.machine.streamed();
        let received = self.sink.position();
        let Stream {
            conn,
            sink,
            mut machine,
            live,
            ..
        } = self;
        let closed = sink.close();
        let plan = closing(result, closed, machine.feedback(), now());
        StreamEnd {
            result: say_goodbye(conn, plan, received, live.as_ref(), shutdown).await,
            streamed,
        }
    }

    /// Waits for the network, a timer or a signal; hands it to the machine;
    /// does what the machine asks until it waits again.
    async fn receive_loop(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<LoopEnd, ReceiverError> {
        let first = self.machine.start(now(), self.sink.positions());
        self.send(first).await?;
        // Both long-lived, so that waiting for the next message costs no
        // timer registration nor signal subscription per commit. The policy's
        // deadlines only move later, so the armed timer fires early at worst
        // (then the tick does nothing) and is re-armed.
        let mut stop = std::pin::pin!(stop_requested(shutdown));
        let mut timer = std::pin::pin!(tokio::time::sleep_until(self.deadline()));
        loop {
            let mut fired = false;
            let event = tokio::select! {
                biased;
                () = &mut stop => Event::Stop,
                msg = self.conn.read_message() => Event::Arrived { msg: msg?, at: now() },
                () = &mut timer => {
                    fired = true;
                    self.tick()
                }
            };
            self.machine.handle(event);
            let until = loop {
                let event = match self.machine.poll() {
                    Action::Wait { until } => break until,
                    Action::End(end) => return Ok(end),
                    Action::Fail(e) => return Err(e),
                    Action::Send(status) => {
                        self.send(status).await?;
                        continue;
                    }
                    Action::ReadMore => match self.conn.try_read_message()? {
                        Some(msg) => Event::AlsoReady(msg),
                        None => Event::Drained,
                    },
                    Action::Tick => self.tick(),
                    Action::Received {
                        arrived,
                        end,
                        bytes,
                    } => {
                        self.acks.wal_arrived(arrived, end);
                        crate::metrics::global().wal_received(end, bytes);
                        continue;
                    }
                    action => match on_sink(&mut self.sink, action) {
                        Some(event) => event,
                        None => continue,
                    },
                };
                self.machine.handle(event);
            };
            // After a timer: re-armed at the next deadline. After a batch:
            // only sooner (the timers were just checked).
            let deadline = with_watchdog(until);
            if fired || deadline < timer.deadline() {
                timer.as_mut().reset(deadline);
            }
        }
    }

    /// The policy's next deadline, or the watchdog's when sooner (an idle
    /// stream still pings it).
    fn deadline(&self) -> tokio::time::Instant {
        with_watchdog(self.machine.deadline())
    }

    fn tick(&mut self) -> Event {
        let at = now();
        // Here, not in a task of its own: a stuck loop stops pinging.
        service::watchdog_tick(at);
        Event::Timer {
            now: at,
            bytes_arrived: self.conn.take_bytes_arrived(),
            positions: self.sink.positions(),
            record_in_progress: self.sink.record_in_progress(),
        }
    }

    /// Sends a status update, and measures the acknowledge latency of the
    /// WAL its flush position covers.
    async fn send(&mut self, status: Status) -> Result<(), ReceiverError> {
        send_status(self.conn, status).await?;
        if let Some(live) = &self.live {
            live.sent(status.flush);
        }
        if let Some(latency) = self.acks.status_sent(now(), status.flush) {
            crate::metrics::global().flush_acknowledged(latency);
        }
        Ok(())
    }
}

/// Does an action that concerns the sink (and the metrics of WAL received),
/// and says what happened; `None` for actions that need no answer or are not
/// the sink's. Synchronous: the sink verifies, writes and fsyncs on the
/// caller's task. The property test's harness drives the machine with it too.
pub fn on_sink(sink: &mut WalSink, action: Action) -> Option<Event> {
    let report = |sink: &WalSink| Report {
        at: now(),
        positions: sink.positions(),
    };
    match action {
        Action::ServerHas(lsn) => {
            sink.server_has(lsn);
            None
        }
        Action::Received { end, bytes, .. } => {
            crate::metrics::global().wal_received(end, bytes);
            None
        }
        Action::Write { at, data } => Some(match sink.write(at, &data) {
            Ok(n) => Event::Wrote {
                n,
                filled: sink.has_filled_segment().then(|| report(sink)),
            },
            Err(e) => Event::SinkFailed(e),
        }),
        Action::CompleteFilled => Some(match sink.complete_filled() {
            Ok(()) => Event::Completed(report(sink)),
            Err(e) => Event::SinkFailed(e),
        }),
        Action::Sync => {
            let started = now();
            Some(match sink.sync() {
                Ok(()) => Event::Synced {
                    started,
                    report: report(sink),
                },
                Err(e) => Event::SinkFailed(e),
            })
        }
        Action::ReadClock => Some(Event::Clock(now())),
        _ => None,
    }
}

/// After the sink closed: the status and CopyDone the closing calls for,
/// then the server's side of the end of the stream.
async fn say_goodbye(
    conn: &mut Connection,
    plan: Closing,
    received: Lsn,
    live: Option<&Published>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<CopyEnd, ReceiverError> {
    let end = match plan {
        Closing::Fail(e) => return Err(e),
        Closing::Goodbye { status, error } => {
            // Best effort, bounded: the connection may be what failed.
            let goodbye = async {
                send_status(conn, status).await?;
                conn.send_copy_done().await.map_err(ReceiverError::from)
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), goodbye).await;
            return Err(error);
        }
        Closing::TimelineEnded => LoopEnd::ServerCopyDone,
        Closing::Report { status, end } => {
            send_status(conn, status).await?;
            if let Some(live) = live {
                live.sent(status.flush);
            }
            end
        }
    };
    match end {
        LoopEnd::Signal | LoopEnd::Endpos => {
            conn.send_copy_done().await?;
            drain_after_copy_done(conn).await;
            Ok(if end == LoopEnd::Signal {
                CopyEnd::Stopped
            } else {
                CopyEnd::Endpos
            })
        }
        LoopEnd::ServerCopyDone => {
            conn.send_copy_done().await?;
            let Some(result) =
                unless_stopped(shutdown, service::pinging(read_until_ready(conn))).await
            else {
                return Ok(CopyEnd::Stopped);
            };
            let (next_tli, next_start) = replication::parse_next_timeline(&result?)?;
            Ok(CopyEnd::TimelineEnded {
                next_tli,
                next_start,
                received,
            })
        }
        LoopEnd::ServerClosed => Err(ReceiverError::StreamEnded),
    }
}

/// `until`, or the watchdog's deadline when sooner (an idle stream still
/// pings it).
fn with_watchdog(until: std::time::Instant) -> tokio::time::Instant {
    let next = service::watchdog_deadline().map_or(until, |w| w.min(until));
    tokio::time::Instant::from_std(next)
}

fn now() -> std::time::Instant {
    std::time::Instant::now()
}

/// Sends one standby status update (apply is always 0: walrcv replays nothing).
pub async fn send_status(conn: &mut Connection, status: Status) -> Result<(), ReceiverError> {
    let update = StatusUpdate {
        write: status.write,
        flush: status.flush,
        apply: Lsn::INVALID,
        now: pg_now(),
        reply_requested: status.reply_requested,
    };
    let mut buf = BytesMut::with_capacity(34);
    update.encode(&mut buf);
    // Before sending: the server can never show a position that a scrape
    // made after it does not (a thread preempted right after the send would
    // otherwise lag behind the server).
    crate::metrics::global().status_sent(update.write, update.flush);
    conn.send_copy_data(&buf).await?;
    tracing::trace!("sent status write={} flush={}", update.write, update.flush);
    Ok(())
}

/// After our CopyDone: the server may still send queued WAL (ignored), then its
/// CopyDone, CommandCompletes and ReadyForQuery. Bounded in time.
async fn drain_after_copy_done(conn: &mut Connection) {
    let drain = async {
        loop {
            match conn.read_message().await {
                Ok(BackendMessage::ReadyForQuery) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
}

/// Reads the result set that follows the end of a timeline, up to
/// ReadyForQuery; each message waits at most the receive timeout.
async fn read_until_ready(conn: &mut Connection) -> Result<QueryResult, ReceiverError> {
    let mut result = QueryResult::default();
    loop {
        match conn
            .read_reply("the result set after the end of the timeline")
            .await?
        {
            BackendMessage::RowDescription { columns } => result.columns = columns,
            BackendMessage::DataRow { values } => result.rows.push(values),
            BackendMessage::CommandComplete { .. }
            | BackendMessage::CopyData(_)
            | BackendMessage::CopyDone => {}
            BackendMessage::Error(message) => {
                return Err(PgError::server(conn.target().to_string(), message).into())
            }
            BackendMessage::ReadyForQuery => return Ok(result),
            other => return Err(ReceiverError::Unexpected(other.summary())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_flush_positions_only_once_known_and_on_the_streams_timeline() {
        let end = LiveEnd::default();
        let rx = end.subscribe();
        let old = Published {
            end: end.clone(),
            timeline: 1,
        };
        old.sent(Lsn::INVALID);
        assert_eq!(
            *rx.borrow(),
            None,
            "an unknown flush position is not published"
        );
        old.sent(Lsn(0x300));
        assert_eq!(*rx.borrow(), Some((1, Lsn(0x300))));
        // The next timeline's stream: its first known flush replaces the old end.
        let new = Published { end, timeline: 2 };
        new.sent(Lsn::INVALID);
        assert_eq!(*rx.borrow(), Some((1, Lsn(0x300))));
        new.sent(Lsn(0x280));
        assert_eq!(*rx.borrow(), Some((2, Lsn(0x280))));
    }
}
