//! How long to wait before the next session, after a failure: a sans-IO
//! policy.
//!
//! The rule: the delay starts at [`BackoffPolicy::min`] and doubles (up to
//! [`BackoffPolicy::max`]) while failures of the same [`FailureKind`] follow
//! each other, even when the sessions in between streamed some WAL: a full
//! disk or WAL that fails verification makes every session stream a little
//! and fail the same way, and each of those sessions costs an fsync of the
//! archive and re-streaming up to a segment. The delay goes back to the
//! minimum only after a session that streamed for at least
//! [`BackoffPolicy::healthy_after`], or when the failure is of another kind
//! than the previous one.

use std::time::Duration;

/// What failed; defined with the metrics that count it (a layer below).
pub use crate::metrics::FailureKind;

/// The numbers of the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub min: Duration,
    pub max: Duration,
    /// A session that streamed at least this long was healthy: the next
    /// failure starts again from `min`.
    pub healthy_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            min: Duration::from_secs(1),
            max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
        }
    }
}

/// How a failed session went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedSession {
    pub kind: FailureKind,
    /// How long it streamed WAL (zero when it received none).
    pub streamed_for: Duration,
}

/// The backoff state between sessions.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    last_kind: Option<FailureKind>,
    /// Failures of `last_kind` in a row.
    repeats: u32,
    next: Duration,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Backoff {
        Backoff {
            policy,
            last_kind: None,
            repeats: 0,
            next: policy.min,
        }
    }

    /// The delay before the next session, after `failed`.
    pub fn after_failure(&mut self, failed: FailedSession) -> Duration {
        let healthy = failed.streamed_for >= self.policy.healthy_after;
        if healthy || self.last_kind != Some(failed.kind) {
            self.next = self.policy.min;
            self.repeats = 0;
        }
        self.last_kind = Some(failed.kind);
        self.repeats += 1;
        let delay = self.next;
        self.next = delay.saturating_mul(2).min(self.policy.max);
        delay
    }

    /// Failures of the last kind in a row, the last one included.
    pub fn repeats(&self) -> u32 {
        self.repeats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn failed(kind: FailureKind, streamed_secs: u64) -> FailedSession {
        FailedSession {
            kind,
            streamed_for: Duration::from_secs(streamed_secs),
        }
    }

    fn delays(backoff: &mut Backoff, sessions: &[FailedSession]) -> Vec<u64> {
        sessions
            .iter()
            .map(|s| backoff.after_failure(*s).as_secs())
            .collect()
    }

    #[test]
    fn repeated_failures_double_up_to_the_maximum() {
        let mut b = Backoff::new(BackoffPolicy::default());
        let s = [failed(FailureKind::Network, 0); 8];
        assert_eq!(delays(&mut b, &s), [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(b.repeats(), 8);
    }

    #[test]
    fn a_short_session_that_streamed_does_not_reset_the_same_kind() {
        // A full disk: every session streams a few seconds, then fails to write.
        let mut b = Backoff::new(BackoffPolicy::default());
        let s = [failed(FailureKind::Archive, 5); 6];
        assert_eq!(delays(&mut b, &s), [1, 2, 4, 8, 16, 30]);
        // Verification failures likewise.
        let mut b = Backoff::new(BackoffPolicy::default());
        let s = [failed(FailureKind::Verification, 1); 4];
        assert_eq!(delays(&mut b, &s), [1, 2, 4, 8]);
    }

    #[test]
    fn a_healthy_session_resets() {
        let mut b = Backoff::new(BackoffPolicy::default());
        let s = [
            failed(FailureKind::Archive, 0),
            failed(FailureKind::Archive, 0),
            failed(FailureKind::Archive, 0),
            failed(FailureKind::Archive, 60),
            failed(FailureKind::Archive, 0),
        ];
        assert_eq!(delays(&mut b, &s), [1, 2, 4, 1, 2]);
    }

    #[test]
    fn another_kind_resets() {
        let mut b = Backoff::new(BackoffPolicy::default());
        let s = [
            failed(FailureKind::Network, 0),
            failed(FailureKind::Network, 0),
            failed(FailureKind::Network, 0),
            failed(FailureKind::Archive, 0),
            failed(FailureKind::Archive, 0),
            failed(FailureKind::Network, 0),
        ];
        assert_eq!(delays(&mut b, &s), [1, 2, 4, 1, 2, 1]);
        assert_eq!(b.repeats(), 1);
    }

    #[test]
    fn custom_policy() {
        let policy = BackoffPolicy {
            min: 2 * SEC,
            max: 5 * SEC,
            healthy_after: 10 * SEC,
        };
        let mut b = Backoff::new(policy);
        let s = [
            failed(FailureKind::Server, 9),
            failed(FailureKind::Server, 9),
            failed(FailureKind::Server, 9),
            failed(FailureKind::Server, 10),
        ];
        assert_eq!(delays(&mut b, &s), [2, 4, 5, 2]);
    }
}
