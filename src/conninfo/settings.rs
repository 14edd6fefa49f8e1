//! The combined settings of a connection (key, value and where each came
//! from) and the errors that name that origin. [`super::resolve`] builds
//! them; the keyword groups resolved on their own ([`super::auth`],
//! [`super::tls`]) read them: all three depend on this file, none on another.

use std::collections::BTreeMap;
use std::fmt;

use super::ConnInfoError;

/// Where a setting came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    Conninfo,
    Flag,
    /// A line of the connection service file in use.
    Service {
        line: usize,
    },
    Env(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Conninfo => f.write_str("set in the connection string"),
            Origin::Flag => f.write_str("set by a command-line option"),
            Origin::Service { line } => {
                write!(f, "set by the connection service file, line {line}")
            }
            Origin::Env(var) => write!(f, "set by environment variable {var}"),
        }
    }
}

/// The combined settings; the last insert for a key wins. Empty values are
/// kept (a later empty value still hides an earlier one) but read as unset.
#[derive(Default)]
pub(super) struct Settings {
    values: BTreeMap<&'static str, (String, Origin)>,
}

impl Settings {
    pub(super) fn set(&mut self, key: &'static str, value: String, origin: Origin) {
        self.values.insert(key, (value, origin));
    }

    pub(super) fn get(&self, key: &str) -> Option<(&str, Origin)> {
        self.values
            .get(key)
            .filter(|(v, _)| !v.is_empty())
            .map(|(v, o)| (v.as_str(), *o))
    }
}

pub(super) fn bad_value(
    key: &str,
    value: &str,
    what: impl fmt::Display,
    origin: Origin,
) -> ConnInfoError {
    ConnInfoError::BadValue {
        key: key.to_owned(),
        value: value.to_owned(),
        what: format!("{what}; {origin}"),
    }
}

pub(super) fn unsupported(key: &str, what: impl fmt::Display, origin: Origin) -> ConnInfoError {
    ConnInfoError::Unsupported {
        key: key.to_owned(),
        what: format!("{what} ({origin})"),
    }
}
