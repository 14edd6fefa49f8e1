//! Arbitrary connection strings (`key=value` and `postgresql://` URIs) into the
//! conninfo parser and [`resolve`] with an empty environment.
//!
//! Properties:
//! - neither `parse` nor `resolve` panics, and their errors format;
//! - a parsed string, written back in canonical form (`key='value'`, `\` and `'`
//!   escaped), parses to the same pairs and resolves to the same result;
//! - a password placed before the fuzzed text never appears in an error.
//!
//! Input layout: 1 byte of mode, then UTF-8 text (invalid UTF-8 is skipped).
//! Mode bit 0: prefix the text with a known password (`key=value` or URI form,
//! bit 1). Bit 2: the text is `dbname\x01host\x01port\x01user`, as from the
//! `-d`, `-h`, `-p` and `-U` flags.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use walrcv::conninfo::{parse, resolve, ConnInfoError, ConnParams, Environment, Overrides};

/// A password that the fuzzed text cannot produce by accident unless it contains it.
const SECRET: &str = "Zq9sEcReT";

/// No `PG*` variables, no home directory (so no `.pgpass`), no files, a fixed
/// OS user.
struct EmptyEnv;

impl Environment for EmptyEnv {
    fn var(&self, _name: &str) -> Option<String> {
        None
    }
    fn home_dir(&self) -> Option<PathBuf> {
        None
    }
    fn os_user(&self) -> Option<String> {
        Some("fuzzer".to_owned())
    }
    /// No service file exists, so `service=` never reads the machine's files.
    fn read_file(&self, _path: &Path) -> std::io::Result<String> {
        Err(std::io::ErrorKind::NotFound.into())
    }
}

/// The canonical `key='value'` form of parsed pairs.
fn canonical(pairs: &[(String, String)]) -> String {
    let mut out = String::new();
    for (key, value) in pairs {
        out.push_str(key);
        out.push_str("='");
        for c in value.chars() {
            if c == '\\' || c == '\'' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push_str("' ");
    }
    out
}

fn resolve_dbname(dbname: &str, rest: &Overrides) -> Result<ConnParams, ConnInfoError> {
    let overrides = Overrides {
        dbname: Some(dbname.to_owned()),
        ..rest.clone()
    };
    resolve(&overrides, &EmptyEnv)
}

fn assert_no_secret(err: &ConnInfoError, input: &str) {
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains(SECRET),
        "the password leaked into an error for {input:?}: {shown}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let secret_first = mode & 1 != 0 && !text.contains(SECRET);
    let dbname = match (secret_first, mode & 2 != 0) {
        (false, _) => text.to_owned(),
        (true, false) => format!("password={SECRET} {text}"),
        (true, true) => format!("postgresql://u:{SECRET}@{text}"),
    };
    let mut overrides = Overrides::default();
    let mut dbname = dbname.as_str();
    if mode & 4 != 0 {
        let mut parts = dbname.split('\x01');
        dbname = parts.next().unwrap_or("");
        overrides.host = parts.next().map(str::to_owned);
        overrides.port = parts.next().map(str::to_owned);
        overrides.user = parts.next().map(str::to_owned);
    }

    let parsed = parse(dbname);
    match &parsed {
        Ok(pairs) => {
            let again = parse(&canonical(pairs));
            assert_eq!(again.as_ref(), Ok(pairs), "canonical form of {dbname:?}");
        }
        Err(e) if secret_first => assert_no_secret(e, dbname),
        Err(e) => {
            let _ = e.to_string();
        }
    }

    let resolved = resolve_dbname(dbname, &overrides);
    if let Err(e) = &resolved {
        if secret_first {
            assert_no_secret(e, dbname);
        }
        let _ = e.to_string();
    }
    if let Ok(pairs) = &parsed {
        // resolve reads a `-d` value as a conninfo string when it is a URI or has
        // an '='; otherwise it is a database name.
        let uri = ["postgresql://", "postgres://"]
            .iter()
            .any(|p| dbname.starts_with(p));
        if uri || dbname.contains('=') {
            let same = resolve_dbname(&canonical(pairs), &overrides);
            assert_eq!(
                same, resolved,
                "resolve of the canonical form of {dbname:?}"
            );
        }
    }
    if let Ok(params) = &resolved {
        assert!(!params.targets.is_empty());
        for t in &params.targets {
            let _ = (t.to_string(), t.socket_path(), t.port());
        }
    }
});
