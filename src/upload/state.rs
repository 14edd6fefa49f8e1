//! The persisted upload state: which complete segments and history files
//! are confirmed in the object store, so that a restart of `walrcv stream
//! --upload` neither uploads nor reads back (one GET each) what an earlier
//! process confirmed.
//!
//! A small text file in the archive directory, `.walrcv-uploaded` (a name
//! no archive reader takes for WAL: restore, verify and cleanup ignore
//! foreign names), rewritten after each pass that confirmed something:
//! written under a temporary name, fsynced, renamed over the old one, and
//! the directory fsynced. A file rather than an extended attribute per
//! segment: it works on every file system (tmpfs before 6.6, NFS, some
//! container overlays have no `user.*` attributes), costs one write per
//! pass instead of one per file, names the store it is about, and a DBA
//! can read or delete it.
//!
//! What it may never do is make a file skipped that is not in the store, so
//! anything doubtful falls back to offering the file again (the
//! create-only upload then reads it back and compares, which is today's
//! behaviour on a restart): a missing file, a damaged one (its last line is
//! a CRC-32C of the rest), one written for another URL, an entry whose size
//! differs from the local file's, and a whole state whose newest entry the
//! store does not have (a bucket emptied or replaced: checked with one HEAD
//! at start).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use super::plan::{kind, Kind};

/// The state file's name in the archive directory.
pub const FILE_NAME: &str = ".walrcv-uploaded";
const TMP_NAME: &str = ".walrcv-uploaded.tmp";
const HEADER: &str = "walrcv-upload-state 1";

/// Confirmed files: name → size in bytes.
pub type Confirmed = BTreeMap<String, u64>;

/// Why a state file is not used (every file is offered again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("it does not start with \"{HEADER}\"")]
    Header,
    #[error("it is about {found}, not {expected}")]
    OtherUrl { found: String, expected: String },
    #[error(
        "line {line}: {text:?} is not \"file NAME SIZE\" for a complete segment or history file"
    )]
    Line { line: usize, text: String },
    #[error("its checksum line is missing or does not match (a torn or edited file)")]
    Checksum,
}

/// The file's text for `url` (pure).
pub fn format(url: &str, confirmed: &Confirmed) -> String {
    let mut body = format!("{HEADER}\nurl {url}\n");
    for (name, size) in confirmed {
        body.push_str(&format!("file {name} {size}\n"));
    }
    let crc = crc32c::crc32c(body.as_bytes());
    body.push_str(&format!("crc32c {crc:08x}\n"));
    body
}

/// Parses a state file written for `url` (pure).
pub fn parse(text: &str, url: &str) -> Result<Confirmed, StateError> {
    let body_end = text
        .strip_suffix('\n')
        .and_then(|t| t.rfind('\n'))
        .map(|i| i + 1)
        .ok_or(StateError::Checksum)?;
    let (body, last) = text.split_at(body_end);
    let expected = format!("crc32c {:08x}\n", crc32c::crc32c(body.as_bytes()));
    if last != expected {
        return Err(StateError::Checksum);
    }
    let mut lines = body.lines();
    if lines.next() != Some(HEADER) {
        return Err(StateError::Header);
    }
    let found = lines
        .next()
        .and_then(|l| l.strip_prefix("url "))
        .unwrap_or("");
    if found != url {
        return Err(StateError::OtherUrl {
            found: found.to_owned(),
            expected: url.to_owned(),
        });
    }
    let mut confirmed = Confirmed::new();
    for (i, text) in lines.enumerate() {
        let entry = text.strip_prefix("file ").and_then(|rest| {
            let (name, size) = rest.split_once(' ')?;
            let size = size.parse::<u64>().ok()?;
            (kind(name) == Kind::Final).then(|| (name.to_owned(), size))
        });
        let (name, size) = entry.ok_or_else(|| StateError::Line {
            line: i + 3,
            text: text.to_owned(),
        })?;
        confirmed.insert(name, size);
    }
    Ok(confirmed)
}

/// The state of `dir` for `url`; `None` (offer everything again) when
/// there is none or it cannot be used (logged).
pub fn load(dir: &Path, url: &str) -> Option<Confirmed> {
    let path = dir.join(FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(
                "upload: cannot read \"{}\" ({e}): every local file is offered again",
                path.display()
            );
            return None;
        }
    };
    match parse(&text, url) {
        Ok(confirmed) => Some(confirmed),
        Err(e) => {
            tracing::warn!(
                "upload: not using \"{}\": {e}; every local file is offered again",
                path.display()
            );
            None
        }
    }
}

/// Writes the state of `dir` durably (temporary file, fsync, rename, fsync
/// of the directory).
pub fn save(dir: &Path, url: &str, confirmed: &Confirmed) -> std::io::Result<()> {
    let tmp = dir.join(TMP_NAME);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(format(url, confirmed).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(FILE_NAME))?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "s3://b/db1";

    fn sample() -> Confirmed {
        [
            ("000000010000000000000001".to_string(), 16 << 20),
            ("000000010000000000000002.zst".to_string(), 1234),
            ("00000002.history".to_string(), 42),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn round_trip() {
        let text = format(URL, &sample());
        assert_eq!(parse(&text, URL), Ok(sample()));
        assert_eq!(
            parse(&format(URL, &Confirmed::new()), URL),
            Ok(Confirmed::new())
        );
    }

    #[test]
    fn anything_doubtful_is_refused() {
        let text = format(URL, &sample());
        // Torn: every strict prefix.
        for cut in 0..text.len() {
            assert!(parse(&text[..cut], URL).is_err(), "prefix of {cut} bytes");
        }
        // Edited without the checksum.
        let edited = text.replace("1234", "1235");
        assert_eq!(parse(&edited, URL), Err(StateError::Checksum));
        assert!(matches!(
            parse(&text, "s3://b/db2"),
            Err(StateError::OtherUrl { .. })
        ));
        // Well-formed, but names no complete segment: refused too.
        let mut foreign = Confirmed::new();
        foreign.insert("000000010000000000000003.partial".into(), 1);
        assert!(matches!(
            parse(&format(URL, &foreign), URL),
            Err(StateError::Line { line: 3, .. })
        ));
        foreign.clear();
        foreign.insert("../etc/passwd".into(), 1);
        assert!(parse(&format(URL, &foreign), URL).is_err());
        let other_header = text.replacen(HEADER, "walrcv-upload-state 2", 1);
        assert!(parse(&other_header, URL).is_err());
    }

    #[test]
    fn save_then_load() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path(), URL), None);
        save(dir.path(), URL, &sample()).unwrap();
        assert_eq!(load(dir.path(), URL), Some(sample()));
        assert_eq!(load(dir.path(), "s3://other/x"), None);
        assert!(!dir.path().join(TMP_NAME).exists());
        std::fs::write(dir.path().join(FILE_NAME), b"garbage").unwrap();
        assert_eq!(load(dir.path(), URL), None);
    }
}
