//! With several hosts, the order to try them in after a host turned out to
//! be behind the archive, sans-IO.
//!
//! A standby in the host list that lags the archive refuses the start point
//! ("requested starting point ... is ahead of the WAL flush position of this
//! server": [`super::classify::ServerFault::AheadOfServer`]). With one host
//! that needs an operator (exit 3). With several, another host may well have
//! the WAL (the primary, a standby that is not behind), and the lagging one
//! may catch up: the session is retried with backoff, the hosts that were
//! behind tried last, in the order given otherwise. Once a session streamed,
//! the order given is restored (the host may have caught up meanwhile).

use crate::conninfo::Target;

/// The hosts in the order to try next.
#[derive(Debug, Clone)]
pub struct HostOrder {
    given: Vec<Target>,
    /// Hosts found behind the archive, oldest refusal first.
    behind: Vec<String>,
}

impl HostOrder {
    pub fn new(given: Vec<Target>) -> HostOrder {
        HostOrder {
            given,
            behind: Vec::new(),
        }
    }

    /// Whether there is another host to try.
    pub fn several(&self) -> bool {
        self.given.len() > 1
    }

    /// `target` (as [`Target`]'s `Display` names it) refused the start point
    /// as ahead of its WAL: tried after the others from now on.
    pub fn behind_the_archive(&mut self, target: &str) {
        self.behind.retain(|t| t != target);
        self.behind.push(target.to_string());
    }

    /// A session streamed: back to the order given.
    pub fn streamed(&mut self) {
        self.behind.clear();
    }

    /// The hosts in the order to try: those never found behind first (in the
    /// order given), then those found behind, the most recent refusal last.
    pub fn order(&self) -> Vec<Target> {
        let rank = |t: &Target| {
            let name = t.to_string();
            self.behind.iter().position(|b| *b == name)
        };
        let mut order: Vec<(Option<usize>, &Target)> =
            self.given.iter().map(|t| (rank(t), t)).collect();
        // Stable: equal ranks keep the order given.
        order.sort_by_key(|(r, _)| r.map_or(0, |r| r + 1));
        order.into_iter().map(|(_, t)| t.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> Target {
        Target::Tcp {
            host: name.into(),
            hostaddr: None,
            port: 5432,
        }
    }

    fn names(order: &[Target]) -> Vec<String> {
        order
            .iter()
            .map(|t| match t {
                Target::Tcp { host, .. } => host.clone(),
                other => other.to_string(),
            })
            .collect()
    }

    #[test]
    fn hosts_behind_the_archive_are_tried_last_until_a_session_streams() {
        let mut hosts = HostOrder::new(vec![host("a"), host("b"), host("c")]);
        assert!(hosts.several());
        assert_eq!(names(&hosts.order()), ["a", "b", "c"]);
        hosts.behind_the_archive(&host("a").to_string());
        assert_eq!(names(&hosts.order()), ["b", "c", "a"]);
        hosts.behind_the_archive(&host("b").to_string());
        assert_eq!(names(&hosts.order()), ["c", "a", "b"]);
        // Refused again: the most recent refusal goes last.
        hosts.behind_the_archive(&host("a").to_string());
        assert_eq!(names(&hosts.order()), ["c", "b", "a"]);
        // A name that is none of them changes nothing.
        hosts.behind_the_archive("server at \"z\", port 1");
        assert_eq!(names(&hosts.order()), ["c", "b", "a"]);
        hosts.streamed();
        assert_eq!(names(&hosts.order()), ["a", "b", "c"]);
    }

    #[test]
    fn one_host_is_not_several() {
        assert!(!HostOrder::new(vec![host("a")]).several());
    }
}
