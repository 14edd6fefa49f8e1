//! Choosing among several hosts, sans-IO: whether an authenticated server
//! fits `target_session_attrs`, and the host order for
//! `load_balance_hosts=random`.
//!
//! The rules are libpq's (`PQconnectPoll`, states `CONNECTION_CHECK_TARGET`,
//! `CONNECTION_CHECK_WRITABLE` and `CONNECTION_CHECK_STANDBY` in
//! fe-connect.c), with one difference forced by the replication protocol:
//!
//! - Servers 14+ report `in_hot_standby` and `default_transaction_read_only`
//!   as ParameterStatus at start-up (GUC_REPORT variables; a walsender reports
//!   them too), so no query is needed.
//! - For older servers (13), libpq asks `SHOW transaction_read_only` for
//!   `read-write`/`read-only` (the walsender runs `SHOW` in a transaction, so
//!   the answer is the same as on a normal connection: on when the server is
//!   in recovery or `default_transaction_read_only` is on) and
//!   `SELECT pg_catalog.pg_is_in_recovery()` for `primary`/`standby`, which a
//!   physical replication connection cannot run. walrcv derives hot standby
//!   from two `SHOW`s instead: `transaction_read_only` off means not in
//!   recovery; on, with `default_transaction_read_only` off, means in
//!   recovery; both on cannot be told apart, and the server is refused for
//!   `primary` and `standby` alike ([`Rejection::HotStandbyUnknown`]), rather
//!   than guessed.
//!
//! [`check`] is called with what is known so far; it accepts, rejects, or
//! names one setting to `SHOW` next. It never asks for a setting already
//! known, so the caller's loop ends after at most two questions.

use std::fmt;

use crate::conninfo::TargetSessionAttrs;

/// What is known of a server's state, from ParameterStatus or `SHOW`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerState {
    /// `in_hot_standby` (reported by servers 14+).
    pub in_hot_standby: Option<bool>,
    /// `default_transaction_read_only` (reported by 14+, else asked).
    pub default_transaction_read_only: Option<bool>,
    /// `transaction_read_only` (asked when the above are not reported).
    pub transaction_read_only: Option<bool>,
}

impl ServerState {
    /// The state as the server's start-up ParameterStatus messages give it.
    pub fn reported<'a>(parameter: impl Fn(&str) -> Option<&'a str>) -> Self {
        ServerState {
            in_hot_standby: parameter("in_hot_standby").map(is_on),
            default_transaction_read_only: parameter("default_transaction_read_only").map(is_on),
            transaction_read_only: None,
        }
    }

    /// Records the answer to `SHOW setting`.
    pub fn learn(&mut self, setting: Setting, value: &str) {
        let slot = match setting {
            Setting::TransactionReadOnly => &mut self.transaction_read_only,
            Setting::DefaultTransactionReadOnly => &mut self.default_transaction_read_only,
        };
        *slot = Some(is_on(value));
    }
}

/// libpq reads a boolean ParameterStatus as "on" or not (`strcmp(value, "on")`).
fn is_on(value: &str) -> bool {
    value == "on"
}

/// Which pass over the host list: `prefer-standby` makes a second one that
/// accepts any server when no standby answered (libpq's
/// `SERVER_TYPE_PREFER_STANDBY_PASS2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    First,
    AnyServer,
}

/// The passes `attrs` makes over the host list.
pub fn passes(attrs: TargetSessionAttrs) -> &'static [Pass] {
    match attrs {
        TargetSessionAttrs::PreferStandby => &[Pass::First, Pass::AnyServer],
        _ => &[Pass::First],
    }
}

/// A setting to ask the server with `SHOW`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    TransactionReadOnly,
    DefaultTransactionReadOnly,
}

impl Setting {
    /// The `SHOW` command that reads it (valid on a replication connection).
    pub fn show_command(self) -> &'static str {
        match self {
            Setting::TransactionReadOnly => "SHOW transaction_read_only",
            Setting::DefaultTransactionReadOnly => "SHOW default_transaction_read_only",
        }
    }
}

/// Why a server does not fit; the texts are libpq's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    InHotStandby,
    NotInHotStandby,
    ReadOnly,
    NotReadOnly,
    /// A server older than 14 with `default_transaction_read_only` on: read
    /// only either way, so whether it is in recovery cannot be told over a
    /// replication connection.
    HotStandbyUnknown,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rejection::InHotStandby => "server is in hot standby mode",
            Rejection::NotInHotStandby => "server is not in hot standby mode",
            Rejection::ReadOnly => "session is read-only",
            Rejection::NotReadOnly => "session is not read-only",
            Rejection::HotStandbyUnknown => {
                "cannot tell whether the server is in hot standby mode: it does not report \
                 in_hot_standby (PostgreSQL 14+) and default_transaction_read_only is on"
            }
        })
    }
}

/// What to do with a server, given what is known of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Reject(Rejection),
    /// Ask the server this setting, [`ServerState::learn`] it, and check again.
    Show(Setting),
}

/// Whether a server in `state` fits `attrs` on this pass.
pub fn check(attrs: TargetSessionAttrs, pass: Pass, state: &ServerState) -> Verdict {
    use TargetSessionAttrs as A;
    if pass == Pass::AnyServer {
        return Verdict::Accept;
    }
    match attrs {
        A::Any => Verdict::Accept,
        A::ReadWrite | A::ReadOnly => match read_only(state) {
            Err(ask) => Verdict::Show(ask),
            Ok(true) if attrs == A::ReadWrite => Verdict::Reject(Rejection::ReadOnly),
            Ok(false) if attrs == A::ReadOnly => Verdict::Reject(Rejection::NotReadOnly),
            Ok(_) => Verdict::Accept,
        },
        A::Primary | A::Standby | A::PreferStandby => match hot_standby(state) {
            Err(ask) => Verdict::Show(ask),
            Ok(None) => Verdict::Reject(Rejection::HotStandbyUnknown),
            Ok(Some(true)) if attrs == A::Primary => Verdict::Reject(Rejection::InHotStandby),
            Ok(Some(false)) if attrs != A::Primary => Verdict::Reject(Rejection::NotInHotStandby),
            Ok(Some(_)) => Verdict::Accept,
        },
    }
}

/// Whether sessions are read-only, or the setting to ask first. libpq: from
/// the two reported parameters when both are known, else from
/// `SHOW transaction_read_only`.
fn read_only(state: &ServerState) -> Result<bool, Setting> {
    match (state.in_hot_standby, state.default_transaction_read_only) {
        (Some(hot), Some(default_ro)) => Ok(hot || default_ro),
        _ => state
            .transaction_read_only
            .ok_or(Setting::TransactionReadOnly),
    }
}

/// Whether the server is in hot standby (`None`: cannot be told), or the
/// setting to ask first. See the module documentation for servers before 14.
fn hot_standby(state: &ServerState) -> Result<Option<bool>, Setting> {
    if let Some(hot) = state.in_hot_standby {
        return Ok(Some(hot));
    }
    // transaction_read_only = default_transaction_read_only || in recovery.
    match state.transaction_read_only {
        None => Err(Setting::TransactionReadOnly),
        Some(false) => Ok(Some(false)),
        Some(true) => match state.default_transaction_read_only {
            None => Err(Setting::DefaultTransactionReadOnly),
            Some(false) => Ok(Some(true)),
            Some(true) => Ok(None),
        },
    }
}

/// Shuffles `items` in place with the "inside-out" Fisher-Yates shuffle
/// libpq uses for `load_balance_hosts=random` (`connectOptions2`), drawing
/// from a SplitMix64 generator seeded with `seed`.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut rng = SplitMix64(seed);
    for i in 1..items.len() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// A small, fast generator (Steele, Lea and Flood's SplitMix64): plenty for
/// spreading connections over hosts; nothing secret depends on it.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`), by multiply-and-shift: the bias is at
    /// most n / 2^64, nothing for a handful of hosts.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use TargetSessionAttrs as A;

    /// A primary and a standby as servers 14+ report them, and as a 13 server
    /// answers SHOW, with default_transaction_read_only off and on.
    #[derive(Debug, Clone, Copy)]
    struct Server {
        standby: bool,
        default_read_only: bool,
        reports_hot_standby: bool,
    }

    fn servers() -> Vec<Server> {
        let mut v = Vec::new();
        for standby in [false, true] {
            for default_read_only in [false, true] {
                for reports_hot_standby in [false, true] {
                    v.push(Server {
                        standby,
                        default_read_only,
                        reports_hot_standby,
                    });
                }
            }
        }
        v
    }

    fn knows(state: &ServerState, setting: Setting) -> bool {
        match setting {
            Setting::TransactionReadOnly => state.transaction_read_only.is_some(),
            Setting::DefaultTransactionReadOnly => state.default_transaction_read_only.is_some(),
        }
    }

    impl Server {
        fn reported(self) -> ServerState {
            let on = |b: bool| if b { "on" } else { "off" };
            ServerState::reported(|name| match name {
                "in_hot_standby" if self.reports_hot_standby => Some(on(self.standby)),
                "default_transaction_read_only" if self.reports_hot_standby => {
                    Some(on(self.default_read_only))
                }
                _ => None,
            })
        }

        /// What the walsender answers to SHOW.
        fn show(self, setting: Setting) -> &'static str {
            let value = match setting {
                Setting::TransactionReadOnly => self.standby || self.default_read_only,
                Setting::DefaultTransactionReadOnly => self.default_read_only,
            };
            if value {
                "on"
            } else {
                "off"
            }
        }

        /// Runs the caller's loop: check, SHOW what is asked, check again.
        fn decide(self, attrs: A, pass: Pass) -> (Verdict, Vec<Setting>) {
            let mut state = self.reported();
            let mut asked = Vec::new();
            loop {
                match check(attrs, pass, &state) {
                    Verdict::Show(s) => {
                        assert!(!knows(&state, s), "{s:?} asked twice for {self:?}");
                        asked.push(s);
                        state.learn(s, self.show(s));
                    }
                    v => return (v, asked),
                }
            }
        }
    }

    /// libpq's answer when it can ask anything (pg_is_in_recovery included).
    fn libpq(attrs: A, pass: Pass, s: Server) -> Verdict {
        let read_only = s.standby || s.default_read_only;
        let reject = Verdict::Reject;
        match (pass, attrs) {
            (Pass::AnyServer, _) | (_, A::Any) => Verdict::Accept,
            (_, A::ReadWrite) if read_only => reject(Rejection::ReadOnly),
            (_, A::ReadOnly) if !read_only => reject(Rejection::NotReadOnly),
            (_, A::Primary) if s.standby => reject(Rejection::InHotStandby),
            (_, A::Standby | A::PreferStandby) if !s.standby => reject(Rejection::NotInHotStandby),
            _ => Verdict::Accept,
        }
    }

    #[test]
    fn every_attr_role_and_version_matches_libpq_except_the_unknowable_case() {
        for attrs in A::ALL {
            for &pass in passes(attrs) {
                for s in servers() {
                    let (got, asked) = s.decide(attrs, pass);
                    let want = libpq(attrs, pass, s);
                    let unknowable = !s.reports_hot_standby
                        && s.default_read_only
                        && pass == Pass::First
                        && matches!(attrs, A::Primary | A::Standby | A::PreferStandby);
                    if unknowable {
                        assert_eq!(
                            got,
                            Verdict::Reject(Rejection::HotStandbyUnknown),
                            "{attrs} {pass:?} {s:?}"
                        );
                    } else {
                        assert_eq!(got, want, "{attrs} {pass:?} {s:?}");
                    }
                    // 14+ needs no query at all; 13 at most two.
                    if s.reports_hot_standby {
                        assert!(asked.is_empty(), "{attrs} {s:?}: {asked:?}");
                    }
                    assert!(asked.len() <= 2);
                }
            }
        }
    }

    #[test]
    fn queries_asked_of_an_old_server() {
        let old = |standby, default_read_only| Server {
            standby,
            default_read_only,
            reports_hot_standby: false,
        };
        // read-write / read-only: SHOW transaction_read_only only, as libpq.
        let (v, asked) = old(false, false).decide(A::ReadWrite, Pass::First);
        assert_eq!(v, Verdict::Accept);
        assert_eq!(asked, [Setting::TransactionReadOnly]);
        // primary on a primary: one SHOW settles it.
        let (v, asked) = old(false, false).decide(A::Primary, Pass::First);
        assert_eq!(v, Verdict::Accept);
        assert_eq!(asked, [Setting::TransactionReadOnly]);
        // standby on a standby: read-only, and not by default: in recovery.
        let (v, asked) = old(true, false).decide(A::Standby, Pass::First);
        assert_eq!(v, Verdict::Accept);
        assert_eq!(
            asked,
            [
                Setting::TransactionReadOnly,
                Setting::DefaultTransactionReadOnly
            ]
        );
        // any: nothing asked.
        assert_eq!(old(true, true).decide(A::Any, Pass::First).1, []);
    }

    #[test]
    fn reported_parameters_decide_without_queries() {
        let state = ServerState::reported(|name| match name {
            "in_hot_standby" => Some("on"),
            "default_transaction_read_only" => Some("off"),
            _ => None,
        });
        assert_eq!(
            check(A::Primary, Pass::First, &state),
            Verdict::Reject(Rejection::InHotStandby)
        );
        assert_eq!(check(A::Standby, Pass::First, &state), Verdict::Accept);
        assert_eq!(
            check(A::ReadWrite, Pass::First, &state),
            Verdict::Reject(Rejection::ReadOnly)
        );
        // Only one of the two reported: libpq asks transaction_read_only.
        let half = ServerState {
            in_hot_standby: Some(false),
            ..ServerState::default()
        };
        assert_eq!(
            check(A::ReadOnly, Pass::First, &half),
            Verdict::Show(Setting::TransactionReadOnly)
        );
        assert_eq!(check(A::Primary, Pass::First, &half), Verdict::Accept);
    }

    #[test]
    fn prefer_standby_makes_a_second_pass_that_takes_any_server() {
        assert_eq!(passes(A::PreferStandby), [Pass::First, Pass::AnyServer]);
        for attrs in [A::Any, A::ReadWrite, A::ReadOnly, A::Primary, A::Standby] {
            assert_eq!(passes(attrs), [Pass::First], "{attrs}");
        }
        let primary = ServerState {
            in_hot_standby: Some(false),
            default_transaction_read_only: Some(false),
            transaction_read_only: None,
        };
        assert_eq!(
            check(A::PreferStandby, Pass::First, &primary),
            Verdict::Reject(Rejection::NotInHotStandby)
        );
        assert_eq!(
            check(A::PreferStandby, Pass::AnyServer, &primary),
            Verdict::Accept
        );
    }

    #[test]
    fn rejection_texts_are_libpqs() {
        assert_eq!(
            Rejection::InHotStandby.to_string(),
            "server is in hot standby mode"
        );
        assert_eq!(
            Rejection::NotInHotStandby.to_string(),
            "server is not in hot standby mode"
        );
        assert_eq!(Rejection::ReadOnly.to_string(), "session is read-only");
        assert_eq!(
            Rejection::NotReadOnly.to_string(),
            "session is not read-only"
        );
        assert!(Rejection::HotStandbyUnknown
            .to_string()
            .contains("default_transaction_read_only is on"));
    }

    #[test]
    fn only_on_reads_as_true() {
        let mut s = ServerState::default();
        for (value, want) in [("on", true), ("off", false), ("", false), ("ON", false)] {
            s.learn(Setting::TransactionReadOnly, value);
            assert_eq!(s.transaction_read_only, Some(want), "{value:?}");
        }
    }

    #[test]
    fn shuffle_is_a_permutation_fixed_by_the_seed() {
        let hosts: Vec<u32> = (0..7).collect();
        for seed in 0..200u64 {
            let mut a = hosts.clone();
            shuffle(&mut a, seed);
            let mut sorted = a.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, hosts, "seed {seed}");
            let mut b = hosts.clone();
            shuffle(&mut b, seed);
            assert_eq!(a, b, "same seed, same order");
        }
        // Zero and one host: nothing to do.
        let mut none: [u32; 0] = [];
        shuffle(&mut none, 1);
        let mut one = [9];
        shuffle(&mut one, 1);
        assert_eq!(one, [9]);
    }

    #[test]
    fn shuffle_reaches_every_order_about_equally() {
        // 3 hosts: 6 orders; 6000 seeds give about 1000 each.
        let mut counts: HashMap<Vec<u8>, u32> = HashMap::new();
        for seed in 0..6000u64 {
            let mut v = vec![0u8, 1, 2];
            shuffle(&mut v, seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
            *counts.entry(v).or_default() += 1;
        }
        assert_eq!(counts.len(), 6, "{counts:?}");
        for (order, n) in &counts {
            assert!((800..1200).contains(n), "{order:?}: {n}");
        }
        // Each host comes first about a third of the time.
        let firsts: HashSet<u8> = counts.keys().map(|o| o[0]).collect();
        assert_eq!(firsts.len(), 3);
    }
}
