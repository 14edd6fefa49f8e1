//! Fault injection into the archive's IO, for tests: the cargo feature
//! `failpoints` (never in release builds) turns every operation of
//! [`super::durable`] into a named failpoint of the `fail` crate.
//!
//! Names are `"{site}-{op}"` for every [`Site`] and [`Op`] (`wal-pwrite`,
//! `wal-fdatasync`, `complete-rename`, `complete-fsync-dir`, `prepare-open`,
//! `history-fsync`, `startup-fsync`, ...; [`names`] lists them). Actions use
//! the `fail` crate's syntax; the only task that matters here is `return`:
//!
//! - `return` fails the operation with EIO;
//! - `return(ENOSPC)` with that errno (EIO, ENOSPC, EDQUOT, EROFS);
//! - `return(EIO@TEXT)` only when the path concerned contains `TEXT`.
//!
//! Counts make one-shot faults: `3*off->1*return->off` lets three calls
//! through, fails the fourth, then never again.
//!
//! The binary reads them at start from the `FAILPOINTS` environment variable
//! (`name=actions` pairs separated by `;`), so integration tests can inject
//! faults into the real program: `FAILPOINTS='wal-fdatasync=3*off->1*return->off'`.

use std::path::Path;

use super::site::{Op, Site};

/// Environment variable read by [`setup_from_env`].
pub const ENV: &str = "FAILPOINTS";

/// Every failpoint name.
pub fn names() -> Vec<String> {
    Site::ALL
        .iter()
        .flat_map(|site| Op::ALL.iter().map(move |op| name(*site, *op)))
        .collect()
}

fn name(site: Site, op: Op) -> String {
    format!("{}-{}", site.name(), op.name())
}

/// Configures the failpoints listed in `$FAILPOINTS`. Unknown names and
/// unknown errnos are refused, so that a typo cannot make a test pass.
pub fn setup_from_env() -> Result<(), String> {
    let Ok(spec) = std::env::var(ENV) else {
        return Ok(());
    };
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, actions) = entry
            .split_once('=')
            .ok_or_else(|| format!("{ENV}: {entry:?} is not name=actions"))?;
        let name = name.trim();
        if !names().iter().any(|n| n == name) {
            return Err(format!("{ENV}: unknown failpoint {name:?}"));
        }
        for arg in return_args(actions) {
            parse_arg(arg).map_err(|e| format!("{ENV}: {name}: {e}"))?;
        }
        fail::cfg(name, actions).map_err(|e| format!("{ENV}: {name}: {e}"))?;
        tracing::warn!(failpoint = name, actions, "failpoint configured");
    }
    Ok(())
}

/// The arguments of every `return(...)` task in an actions string.
fn return_args(actions: &str) -> impl Iterator<Item = &str> {
    actions.split("->").filter_map(|task| {
        let rest = &task[task.find("return(")? + "return(".len()..];
        rest.strip_suffix(')')
    })
}

/// `ERRNO[@TEXT]` -> (errno, path filter).
fn parse_arg(arg: &str) -> Result<(i32, Option<&str>), String> {
    let (errno, filter) = match arg.split_once('@') {
        Some((e, f)) => (e, Some(f)),
        None => (arg, None),
    };
    let errno = match errno {
        "" | "EIO" => libc::EIO,
        "ENOSPC" => libc::ENOSPC,
        "EDQUOT" => libc::EDQUOT,
        "EROFS" => libc::EROFS,
        other => {
            return Err(format!(
                "unknown errno {other:?} (EIO, ENOSPC, EDQUOT, EROFS)"
            ))
        }
    };
    Ok((errno, filter))
}

/// The error to inject for (`site`, `op`) on `path`, when its failpoint fires.
pub(super) fn injected_error(site: Site, op: Op, path: &Path) -> Option<std::io::Error> {
    let name = name(site, op);
    let arg = fail::eval(&name, |arg| arg)?;
    let arg = arg.unwrap_or_default();
    let (errno, filter) = parse_arg(&arg).unwrap_or((libc::EIO, None));
    if filter.is_some_and(|f| !path.to_string_lossy().contains(f)) {
        return None;
    }
    let err = std::io::Error::from_raw_os_error(errno);
    tracing::warn!(failpoint = %name, path = %path.display(), error = %err, "failpoint fired");
    Some(err)
}

/// Unit tests: a failpoint that fires (without counts) only on paths under
/// one directory, so that tests running in parallel do not see each
/// other's faults. Removed when dropped.
#[cfg(test)]
pub(crate) struct ScopedFailpoint(&'static str);

#[cfg(test)]
impl ScopedFailpoint {
    pub(crate) fn new(name: &'static str, errno: &str, dir: &Path) -> ScopedFailpoint {
        assert!(
            names().iter().any(|n| n == name),
            "unknown failpoint {name}"
        );
        fail::cfg(name, &format!("return({errno}@{})", dir.display())).unwrap();
        ScopedFailpoint(name)
    }
}

#[cfg(test)]
impl Drop for ScopedFailpoint {
    fn drop(&mut self) {
        fail::remove(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_every_site_and_operation() {
        let all = names();
        assert_eq!(all.len(), Site::ALL.len() * Op::ALL.len());
        for expected in [
            "wal-pwrite",
            "wal-fdatasync",
            "complete-rename",
            "complete-fsync-dir",
        ] {
            assert!(all.iter().any(|n| n == expected), "{expected}");
        }
    }

    #[test]
    fn arguments_parse() {
        assert_eq!(parse_arg(""), Ok((libc::EIO, None)));
        assert_eq!(parse_arg("ENOSPC"), Ok((libc::ENOSPC, None)));
        assert_eq!(parse_arg("EIO@/x/y"), Ok((libc::EIO, Some("/x/y"))));
        assert!(parse_arg("EAGAIN").is_err());
        let args: Vec<_> = return_args("3*off->1*return(ENOSPC)->return->off").collect();
        assert_eq!(args, ["ENOSPC"]);
    }

    #[test]
    fn a_filtered_failpoint_fires_only_on_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().to_string_lossy().into_owned();
        fail::cfg("history-rename", &format!("return(EROFS@{marker})")).unwrap();
        assert!(injected_error(Site::History, Op::Rename, Path::new("/elsewhere")).is_none());
        let err = injected_error(Site::History, Op::Rename, &dir.path().join("x")).unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        fail::remove("history-rename");
    }
}
