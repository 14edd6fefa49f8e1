//! Running under systemd (`Type=notify`): `READY=1` once walrcv streams (the
//! first START_REPLICATION answered with CopyBoth), watchdog pings
//! (`WATCHDOG=1`) from the loops that do the work, `STATUS=` lines and
//! `STOPPING=1` on a stop request.
//!
//! When the pings are due is decided by the pure [`WatchdogSchedule`]; the
//! rest is a thin shell over the `sd-notify` crate and does nothing when
//! `NOTIFY_SOCKET` is not set. The state is process-wide (set up once by
//! [`init`]), like the environment it comes from, so that the receive loop
//! needs no more than a call per timer to ping.
//!
//! The pings come from the receive loop itself (on its timer and after every
//! batch) and from the waits outside the stream that are bounded by a timeout
//! (connection, replication commands, the reconnection backoff, see
//! [`pinging`]), never from a task of their own: a loop that is stuck (a
//! hung fsync, a wait that never ends) stops pinging and systemd restarts it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// When the next watchdog ping is due: every half of systemd's
/// `WATCHDOG_USEC`, as sd_watchdog_enabled(3) recommends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchdogSchedule {
    every: Duration,
    next: Instant,
}

impl WatchdogSchedule {
    /// The schedule for a watchdog timeout of `watchdog_usec` microseconds;
    /// `None` when it is 0 (no watchdog). The first ping is due at once.
    pub fn new(watchdog_usec: u64, now: Instant) -> Option<Self> {
        let every = Duration::from_micros(watchdog_usec / 2);
        (!every.is_zero()).then_some(WatchdogSchedule { every, next: now })
    }

    /// The interval between pings.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// When the next ping is due.
    pub fn next_due(&self) -> Instant {
        self.next
    }

    /// Whether a ping is due at `now`; if so, the next one is scheduled a
    /// full interval after `now` (a late ping does not cause a burst).
    pub fn take_due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.every;
        true
    }
}

/// The watchdog timeout from `WATCHDOG_USEC` and `WATCHDOG_PID`, as
/// sd_watchdog_enabled(3) reads them: the timeout applies to this process
/// when `WATCHDOG_PID` is unset or names it (a child that inherited the
/// variables must not ping in its parent's stead). The sd-notify crate's own
/// check insists on `WATCHDOG_PID`, which libsystemd does not.
pub fn watchdog_usec(usec: Option<&str>, pid: Option<&str>, my_pid: u32) -> Option<u64> {
    let usec: u64 = usec?.trim().parse().ok()?;
    match pid.map(|p| p.trim().parse::<u32>()) {
        None => Some(usec),
        Some(Ok(p)) if p == my_pid => Some(usec),
        Some(_) => None,
    }
}

/// The process-wide notifier, set up by [`init`].
struct Notifier {
    watchdog: Option<Mutex<WatchdogSchedule>>,
    ready_sent: AtomicBool,
}

static NOTIFIER: OnceLock<Notifier> = OnceLock::new();

/// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (once; later calls do nothing).
/// Without `NOTIFY_SOCKET` every other function here is a no-op.
pub fn init() {
    NOTIFIER.get_or_init(|| {
        let var = |name| std::env::var(name).ok();
        let watchdog = std::env::var_os("NOTIFY_SOCKET")
            .and_then(|_| {
                watchdog_usec(
                    var("WATCHDOG_USEC").as_deref(),
                    var("WATCHDOG_PID").as_deref(),
                    std::process::id(),
                )
            })
            .and_then(|usec| WatchdogSchedule::new(usec, Instant::now()))
            .map(Mutex::new);
        if let Some(w) = &watchdog {
            let every = w.lock().map(|w| w.every()).unwrap_or_default();
            tracing::debug!("systemd watchdog enabled: pinging every {every:?}");
        }
        Notifier {
            watchdog,
            ready_sent: AtomicBool::new(false),
        }
    });
}

fn send(states: &[NotifyState]) {
    if NOTIFIER.get().is_none() {
        return;
    }
    // A notification that cannot be sent is no reason to stop receiving WAL:
    // systemd notices a missing READY or watchdog ping by itself.
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!("could not notify systemd: {e}");
    }
}

/// The stream started: `READY=1` the first time, and a `STATUS=` line.
pub fn streaming(status: &str) {
    let first = NOTIFIER
        .get()
        .is_some_and(|n| !n.ready_sent.swap(true, Ordering::Relaxed));
    if first {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    } else {
        send(&[NotifyState::Status(status)]);
    }
}

/// A `STATUS=` line (shown by `systemctl status`).
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// A stop was requested: `STOPPING=1`.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Pings the watchdog if a ping is due at `now`.
pub fn watchdog_tick(now: Instant) {
    let Some(watchdog) = NOTIFIER.get().and_then(|n| n.watchdog.as_ref()) else {
        return;
    };
    let due = watchdog
        .lock()
        .map(|mut w| w.take_due(now))
        .unwrap_or(false);
    if due {
        send(&[NotifyState::Watchdog]);
    }
}

/// When the next watchdog ping is due, if there is a watchdog: the receive
/// loop wakes up for it even when the stream is idle.
pub fn watchdog_deadline() -> Option<Instant> {
    let watchdog = NOTIFIER.get()?.watchdog.as_ref()?;
    watchdog.lock().ok().map(|w| w.next_due())
}

/// Awaits `work`, pinging the watchdog when due meanwhile. For the waits
/// outside the stream that are bounded by a timeout of their own (each
/// reply from the server by `--receive-timeout`, the backoff by its delay):
/// they are waiting, not stuck.
pub async fn pinging<F: Future>(work: F) -> F::Output {
    let mut work = std::pin::pin!(work);
    loop {
        watchdog_tick(Instant::now());
        let Some(due) = watchdog_deadline() else {
            return work.await;
        };
        tokio::select! {
            biased;
            out = &mut work => return out,
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(due)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn watchdog_variables_as_libsystemd_reads_them() {
        assert_eq!(watchdog_usec(Some("30000000"), None, 7), Some(30_000_000));
        assert_eq!(
            watchdog_usec(Some("30000000"), Some("7"), 7),
            Some(30_000_000)
        );
        // Inherited from a parent that systemd watches: not ours.
        assert_eq!(watchdog_usec(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_usec(Some("30000000"), Some("x"), 7), None);
        assert_eq!(watchdog_usec(None, Some("7"), 7), None);
        assert_eq!(watchdog_usec(Some("soon"), None, 7), None);
    }

    #[test]
    fn no_watchdog_when_the_timeout_is_zero() {
        let now = Instant::now();
        assert_eq!(WatchdogSchedule::new(0, now), None);
        assert_eq!(WatchdogSchedule::new(1, now), None);
    }

    #[test]
    fn pings_at_half_the_timeout_first_at_once() {
        let t0 = Instant::now();
        let mut w = WatchdogSchedule::new(10_000_000, t0).unwrap();
        assert_eq!(w.every(), Duration::from_secs(5));
        assert!(w.take_due(t0));
        assert!(!w.take_due(t0));
        assert!(!w.take_due(t0 + 4999 * MS));
        assert_eq!(w.next_due(), t0 + 5000 * MS);
        assert!(w.take_due(t0 + 5000 * MS));
        assert_eq!(w.next_due(), t0 + 10_000 * MS);
    }

    #[test]
    fn a_late_ping_reschedules_from_now_without_a_burst() {
        let t0 = Instant::now();
        let mut w = WatchdogSchedule::new(2_000_000, t0).unwrap();
        assert!(w.take_due(t0));
        // The loop was busy for 7 s (3.5 intervals): one ping, then a full interval.
        let late = t0 + 7000 * MS;
        assert!(w.take_due(late));
        assert!(!w.take_due(late));
        assert_eq!(w.next_due(), late + 1000 * MS);
    }
}
