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
//! It also names, for each local `.partial`, the object of its newest
//! confirmed version (`partial LOCAL OBJECT`; the object's name carries the
//! receiver id and the content's length and CRC-32C, see
//! [`crate::objstore::partial`]). After a restart each such object is
//! checked with one HEAD (one the store does not have is dropped); the
//! first pass reads the local `.partial` (it would anyway, to upload it)
//! and skips it when its content gives that same object name: no PUT, no
//! 412, no GET and compare.
//! A `.partial` that changed, or a receiver id that did, gives another
//! name and is offered as before.
//!
//! What it may never do is make a file skipped that is not in the store, so
//! anything doubtful falls back to offering the file again (the
//! create-only upload then reads it back and compares, which is today's
//! behaviour on a restart): a missing file, a damaged one (its last line is
//! a CRC-32C of the rest), one written for another URL, an entry whose size
//! differs from the local file's, and a whole state whose newest entry the
//! store does not have (a bucket emptied or replaced: checked with one HEAD
//! at start; of the newest `.partial` object when there is no complete
//! file).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use super::plan::{kind, segment_of, Kind};
use crate::objstore::partial;

/// The state file's name in the archive directory.
pub const FILE_NAME: &str = ".walrcv-uploaded";
const TMP_NAME: &str = ".walrcv-uploaded.tmp";
const HEADER: &str = "walrcv-upload-state 1";

/// Confirmed files: name → size in bytes.
pub type Confirmed = BTreeMap<String, u64>;

/// Local `.partial` name → the object of its newest confirmed version.
pub type Partials = BTreeMap<String, String>;

/// What the state file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Saved {
    pub files: Confirmed,
    pub partials: Partials,
}

impl Saved {
    /// The object whose presence vouches for the whole state at start: the
    /// newest complete file, else the newest `.partial`'s object.
    pub fn newest_object(&self) -> Option<&str> {
        match self.files.last_key_value() {
            Some((name, _)) => Some(name),
            None => self.partials.last_key_value().map(|(_, o)| o.as_str()),
        }
    }
}

/// Why a state file is not used (every file is offered again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("it does not start with \"{HEADER}\"")]
    Header,
    #[error("it is about {found}, not {expected}")]
    OtherUrl { found: String, expected: String },
    #[error(
        "line {line}: {text:?} is neither \"file NAME SIZE\" for a complete segment or history \
         file nor \"partial LOCAL OBJECT\" for a .partial and a copy of it"
    )]
    Line { line: usize, text: String },
    #[error("its checksum line is missing or does not match (a torn or edited file)")]
    Checksum,
}

/// The file's text for `url` (pure).
pub fn format(url: &str, saved: &Saved) -> String {
    let mut body = format!("{HEADER}\nurl {url}\n");
    for (name, size) in &saved.files {
        body.push_str(&format!("file {name} {size}\n"));
    }
    for (local, object) in &saved.partials {
        body.push_str(&format!("partial {local} {object}\n"));
    }
    let crc = crc32c::crc32c(body.as_bytes());
    body.push_str(&format!("crc32c {crc:08x}\n"));
    body
}

/// Parses a state file written for `url` (pure).
pub fn parse(text: &str, url: &str) -> Result<Saved, StateError> {
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
    let mut saved = Saved::default();
    for (i, text) in lines.enumerate() {
        let known = match text.split_once(' ') {
            Some(("file", rest)) => file_entry(rest).map(|(n, size)| {
                saved.files.insert(n, size);
            }),
            Some(("partial", rest)) => partial_entry(rest).map(|(l, o)| {
                saved.partials.insert(l, o);
            }),
            _ => None,
        };
        if known.is_none() {
            return Err(StateError::Line {
                line: i + 3,
                text: text.to_owned(),
            });
        }
    }
    Ok(saved)
}

/// `NAME SIZE` of a complete segment or history file.
fn file_entry(rest: &str) -> Option<(String, u64)> {
    let (name, size) = rest.split_once(' ')?;
    let size = size.parse::<u64>().ok()?;
    (kind(name) == Kind::Final).then(|| (name.to_owned(), size))
}

/// `LOCAL OBJECT`: a local `.partial` and an object name that is a copy of
/// it (`partial/SEG/LOCAL.RECEIVER.VERSION`).
fn partial_entry(rest: &str) -> Option<(String, String)> {
    let (local, object) = rest.split_once(' ')?;
    if kind(local) != Kind::Partial {
        return None;
    }
    let file = object.strip_prefix(&partial::dir(&segment_of(local)?))?;
    let copy = partial::parse(file)?;
    (copy.local == local).then(|| (local.to_owned(), object.to_owned()))
}

/// The state of `dir` for `url`; `None` (offer everything again) when
/// there is none or it cannot be used (logged).
pub fn load(dir: &Path, url: &str) -> Option<Saved> {
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
pub fn save(dir: &Path, url: &str, saved: &Saved) -> std::io::Result<()> {
    let tmp = dir.join(TMP_NAME);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(format(url, saved).as_bytes())?;
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

    const S3: &str = "000000020000000000000003";

    fn copy_of(local: &str, content: &[u8]) -> String {
        partial::object_name(S3, local, "walrcv_a", content)
    }

    fn sample() -> Saved {
        Saved {
            files: [
                ("000000010000000000000001".to_string(), 16 << 20),
                ("000000010000000000000002.zst".to_string(), 1234),
                ("00000002.history".to_string(), 42),
            ]
            .into_iter()
            .collect(),
            partials: [(
                format!("{S3}.zst.partial"),
                copy_of(&format!("{S3}.zst.partial"), b"wal"),
            )]
            .into_iter()
            .collect(),
        }
    }

    fn files_only(files: Confirmed) -> Saved {
        Saved {
            files,
            ..Saved::default()
        }
    }

    #[test]
    fn round_trip() {
        let text = format(URL, &sample());
        assert!(text.contains(&format!("partial {S3}.zst.partial partial/{S3}/")));
        assert_eq!(parse(&text, URL), Ok(sample()));
        assert_eq!(
            parse(&format(URL, &Saved::default()), URL),
            Ok(Saved::default())
        );
    }

    #[test]
    fn the_newest_object_vouches_for_the_state() {
        assert_eq!(sample().newest_object(), Some("00000002.history"));
        let partials_only = Saved {
            files: Confirmed::new(),
            ..sample()
        };
        let object = copy_of(&format!("{S3}.zst.partial"), b"wal");
        assert_eq!(partials_only.newest_object(), Some(object.as_str()));
        assert_eq!(Saved::default().newest_object(), None);
    }

    #[test]
    fn a_partial_entry_must_name_a_copy_of_itself() {
        let local = format!("{S3}.partial");
        let bad = [
            // Not a copy of this local file.
            (local.clone(), copy_of(&format!("{S3}.zst.partial"), b"wal")),
            // Not under its segment's directory.
            (
                local.clone(),
                format!("partial/000000020000000000000004/{local}.walrcv_a.3-00000000"),
            ),
            // No version, a path, a complete segment as the local name.
            (local.clone(), format!("partial/{S3}/{local}.walrcv_a")),
            (local.clone(), "../../etc/passwd".to_string()),
            (S3.to_string(), copy_of(S3, b"wal")),
        ];
        for (l, o) in bad {
            let saved = Saved {
                files: Confirmed::new(),
                partials: [(l.clone(), o.clone())].into_iter().collect(),
            };
            assert!(
                matches!(
                    parse(&format(URL, &saved), URL),
                    Err(StateError::Line { line: 3, .. })
                ),
                "{l} {o}"
            );
        }
        // A line the format does not know.
        let body = format!("{HEADER}\nurl {URL}\nobject x y\n");
        let crc = crc32c::crc32c(body.as_bytes());
        let unknown = format!("{body}crc32c {crc:08x}\n");
        assert!(matches!(parse(&unknown, URL), Err(StateError::Line { .. })));
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
            parse(&format(URL, &files_only(foreign.clone())), URL),
            Err(StateError::Line { line: 3, .. })
        ));
        foreign.clear();
        foreign.insert("../etc/passwd".into(), 1);
        assert!(parse(&format(URL, &files_only(foreign)), URL).is_err());
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
