//! Names of uploaded `.partial` copies (pure).
//!
//! Uploads are create-only, so a `.partial` that grows cannot be written
//! again under one name. Each upload is a new object whose name carries the
//! receiver that wrote it and a version taken from the content (its length
//! and CRC-32C): `partial/SEG/LOCAL.RECEIVER.VERSION`, where `LOCAL` is the
//! local file name (`SEG[.gz|.lz4|.zst].partial`). The same content gives
//! the same name (a retry meets the create-only + compare rule), other
//! content another name. Once a new version is confirmed the uploader
//! deletes the older versions of the same receiver and segment, and once
//! the complete segment is confirmed every version of its own: at most a
//! couple of objects per receiver at any time, never a pile of versions
//! (the failure mode of re-uploading one name under bucket versioning).
//! Grouping under `partial/SEG/` lets restore list the copies of one
//! segment (one LIST, only when the complete segment is not there).

/// The directory (relative to the prefix) holding the copies of `segment`.
pub fn dir(segment: &str) -> String {
    format!("partial/{segment}/")
}

/// The object name of one version of a receiver's `.partial`.
pub fn object_name(segment: &str, local: &str, receiver: &str, content: &[u8]) -> String {
    format!("{}{local}.{receiver}.{}", dir(segment), version(content))
}

/// Content version: length and CRC-32C, in hex.
pub fn version(content: &[u8]) -> String {
    format!("{:x}-{:08x}", content.len(), crc32c::crc32c(content))
}

/// One listed copy, parsed back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// The local `.partial` name it was uploaded from.
    pub local: String,
    pub receiver: String,
    pub version: String,
}

/// Parses the file part of a copy's name (after `partial/SEG/`).
pub fn parse(file: &str) -> Option<Copy> {
    let (rest, version) = file.rsplit_once('.')?;
    let (local, receiver) = rest.rsplit_once('.')?;
    // The local name becomes a file name when restore stages the copy: only
    // a segment's `.partial` name (24 hex digits, an optional compression
    // suffix), never a path, whatever object a bucket holds.
    let plain_name = local.len() >= 24
        && local.as_bytes()[..24].iter().all(u8::is_ascii_hexdigit)
        && local
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'.');
    if !plain_name
        || !local.ends_with(".partial")
        || !valid_receiver(receiver)
        || version.is_empty()
    {
        return None;
    }
    Some(Copy {
        local: local.to_string(),
        receiver: receiver.to_string(),
        version: version.to_string(),
    })
}

/// A receiver id: 1 to 64 of `A-Z a-z 0-9 _ -` (no dot: it separates the
/// parts of a copy's name).
pub fn valid_receiver(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: &str = "000000010000000000000003";

    #[test]
    fn round_trip() {
        let name = object_name(SEG, &format!("{SEG}.zst.partial"), "walrcv_a", b"abc");
        let file = name.strip_prefix(&dir(SEG)).unwrap();
        let copy = parse(file).unwrap();
        assert_eq!(copy.local, format!("{SEG}.zst.partial"));
        assert_eq!(copy.receiver, "walrcv_a");
        assert_eq!(copy.version, version(b"abc"));
    }

    #[test]
    fn versions_follow_content() {
        assert_eq!(version(b"abc"), version(b"abc"));
        assert_ne!(version(b"abc"), version(b"abd"));
        assert_ne!(version(b"abc"), version(b"abc\0"));
    }

    #[test]
    fn bad_names() {
        assert_eq!(parse(&format!("{SEG}.a.b")), None);
        assert_eq!(parse(&format!("{SEG}.partial.a.b.c")), None);
        assert_eq!(parse(&format!("{SEG}.partial.a")), None);
        assert!(!valid_receiver(""));
        assert!(!valid_receiver("a.b"));
        assert!(!valid_receiver(&"x".repeat(65)));
        assert!(valid_receiver("walrcv-b_2"));
    }

    #[test]
    fn an_object_name_that_is_not_a_segment_name_is_no_copy() {
        for file in [
            "../../etc/passwd.partial.walrcv_a.10-0",
            "sub/000000010000000000000003.partial.walrcv_a.10-0",
            "x.partial.walrcv_a.10-0",
            "00000001000000000000000/.partial.walrcv_a.10-0",
        ] {
            assert_eq!(parse(file), None, "{file}");
        }
        assert!(parse("000000010000000000000003.zst.partial.walrcv_a.10-0").is_some());
    }
}
