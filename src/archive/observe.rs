//! What the archive observes that a layer above it counts: today the time
//! each fdatasync of a segment took. The archive reports through the
//! [`Observer`] installed here (the metrics install theirs when they are
//! first used, see `crate::metrics::global`), so that it depends on no
//! layer above it. Without an observer, nothing is reported.

use std::sync::OnceLock;
use std::time::Duration;

/// Receives what the archive observed. Called on the writing thread, right
/// after the system call: it must not block.
pub trait Observer: Send + Sync {
    /// An fdatasync of a segment file (plain or compressed) took `took`,
    /// whether it succeeded or not.
    fn fdatasync_done(&self, took: Duration);
}

/// Where the observer is kept: one per process ([`OBSERVER`]); the tests
/// make their own.
struct Slot(OnceLock<&'static dyn Observer>);

impl Slot {
    const fn new() -> Slot {
        Slot(OnceLock::new())
    }

    fn set(&self, observer: &'static dyn Observer) -> bool {
        self.0.set(observer).is_ok()
    }

    fn fdatasync_done(&self, took: Duration) {
        if let Some(observer) = self.0.get() {
            observer.fdatasync_done(took);
        }
    }
}

static OBSERVER: Slot = Slot::new();

/// Installs the process's observer. The first one stays: returns false (and
/// changes nothing) when one was already installed.
pub fn set_observer(observer: &'static dyn Observer) -> bool {
    OBSERVER.set(observer)
}

/// Reports an fdatasync's duration to the observer, if there is one.
pub(crate) fn fdatasync_done(took: Duration) {
    OBSERVER.fdatasync_done(took);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Count(AtomicU64);

    impl Observer for Count {
        fn fdatasync_done(&self, took: Duration) {
            self.0.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        }
    }

    #[test]
    fn the_first_observer_installed_receives_the_reports() {
        static FIRST: Count = Count(AtomicU64::new(0));
        static SECOND: Count = Count(AtomicU64::new(0));
        // A slot of its own: the process's may hold the metrics already.
        let slot = Slot::new();
        slot.fdatasync_done(Duration::from_micros(3)); // nobody to tell
        assert!(slot.set(&FIRST));
        assert!(!slot.set(&SECOND), "a second observer is refused");
        slot.fdatasync_done(Duration::from_micros(7));
        assert_eq!(FIRST.0.load(Ordering::Relaxed), 7);
        assert_eq!(SECOND.0.load(Ordering::Relaxed), 0);
    }
}
