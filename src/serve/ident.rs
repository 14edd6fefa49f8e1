//! `--serve-ident FILE`: user name maps in pg_ident.conf syntax, parsed and
//! matched sans-IO, for the `map=` option of `cert` lines (and of lines with
//! `clientcert=verify-full`) in `--serve-hba`. A line is
//! `MAPNAME SYSTEM-USERNAME DATABASE-USERNAME`; the system user name is the
//! client certificate's common name. As in PostgreSQL, a system user name
//! that starts with `/` is a regular expression (not anchored unless it says
//! so; Rust `regex` syntax, which covers the usual `^...$`, classes and
//! groups), whose first capture group replaces `\1` in the database user
//! name; `all` as the database user name matches any user. A connection is
//! allowed when some line of the map matches both names.

use std::path::Path;

use regex::Regex;

/// A refused file: line and reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} of the ident file: {what}")]
pub struct IdentError {
    pub line: usize,
    pub what: String,
}

#[derive(Debug, Clone)]
enum SystemUser {
    Exact(String),
    Pattern(Regex),
}

#[derive(Debug, Clone)]
struct Entry {
    map: String,
    system: SystemUser,
    database_user: String,
}

/// The maps of a file.
#[derive(Debug, Clone, Default)]
pub struct IdentMaps {
    entries: Vec<Entry>,
}

/// Reads and parses `path`.
pub fn load(path: &Path) -> Result<IdentMaps, String> {
    super::conf::load(path, parse)
}

/// Parses the text of a file.
pub fn parse(text: &str) -> Result<IdentMaps, IdentError> {
    let mut entries = Vec::new();
    for (line, fields) in super::conf::rules(text) {
        let err = |what: String| IdentError { line, what };
        let [map, system, database_user] = fields.as_slice() else {
            return Err(err(format!(
                "expected MAPNAME SYSTEM-USERNAME DATABASE-USERNAME, found {} fields",
                fields.len()
            )));
        };
        if database_user.starts_with('+') {
            return Err(err(format!(
                "group membership (\"{database_user}\") is not supported by walrcv serve, which has no roles"
            )));
        }
        let system = match system.strip_prefix('/') {
            Some(pattern) => SystemUser::Pattern(
                Regex::new(pattern)
                    .map_err(|e| err(format!("invalid regular expression \"{pattern}\": {e}")))?,
            ),
            None => SystemUser::Exact((*system).to_owned()),
        };
        entries.push(Entry {
            map: (*map).to_owned(),
            system,
            database_user: (*database_user).to_owned(),
        });
    }
    Ok(IdentMaps { entries })
}

impl IdentMaps {
    /// Whether the file has a line for `map`.
    pub fn has_map(&self, map: &str) -> bool {
        self.entries.iter().any(|e| e.map == map)
    }

    /// Whether `map` lets the system user `system_user` (the certificate's
    /// CN) connect as `database_user`.
    pub fn allows(&self, map: &str, system_user: &str, database_user: &str) -> bool {
        self.entries
            .iter()
            .filter(|e| e.map == map)
            .any(|e| e.allows(system_user, database_user))
    }
}

impl Entry {
    fn allows(&self, system_user: &str, database_user: &str) -> bool {
        let wanted = match &self.system {
            SystemUser::Exact(name) if name == system_user => self.database_user.clone(),
            SystemUser::Exact(_) => return false,
            SystemUser::Pattern(re) => {
                let Some(caps) = re.captures(system_user) else {
                    return false;
                };
                match caps.get(1) {
                    Some(group) => self.database_user.replacen("\\1", group.as_str(), 1),
                    None => self.database_user.clone(),
                }
            }
        };
        wanted == "all" || wanted == database_user
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# MAPNAME   SYSTEM-USERNAME          DATABASE-USERNAME
certs       alice.example.org        replicator
certs       /^(.*)\\.standby\\.example$  \\1
ops         /^admin-                 all   # any user for admin-* certificates
";

    #[test]
    fn exact_names_patterns_and_all() {
        let m = parse(FILE).unwrap();
        assert!(m.has_map("certs") && m.has_map("ops") && !m.has_map("other"));
        assert!(m.allows("certs", "alice.example.org", "replicator"));
        assert!(!m.allows("certs", "alice.example.org", "postgres"));
        assert!(!m.allows("ops", "alice.example.org", "replicator"));
        // The capture replaces \1.
        assert!(m.allows("certs", "s1.standby.example", "s1"));
        assert!(!m.allows("certs", "s1.standby.example", "s2"));
        assert!(!m.allows("certs", "s1.standby.example.evil", "s1"));
        // Not anchored at the end unless the pattern says so.
        assert!(m.allows("ops", "admin-bob", "anyone"));
        assert!(!m.allows("ops", "bob-admin-", "anyone"));
    }

    #[test]
    fn refused_lines() {
        for (bad, needle) in [
            ("certs alice", "found 2 fields"),
            ("certs alice bob extra", "found 4 fields"),
            ("certs /(unclosed bob", "invalid regular expression"),
            ("certs alice +admins", "group membership"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.to_string().contains(needle), "{bad}: {e}");
            assert_eq!(e.line, 1);
        }
        assert!(!parse("# nothing\n\n").unwrap().has_map("x"));
    }
}
