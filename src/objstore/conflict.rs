//! What a create-only PUT's answer means (pure).
//!
//! A PUT with `If-None-Match: *` either creates the object, finds it there
//! already (412), or ends without a clear answer (a timeout, a reset, a 5xx:
//! the object may or may not have been written). The last two are resolved
//! the same way: read the object back and compare it with ours. Identical
//! content is success (the same name may be written twice only with the
//! same bytes: PostgreSQL's and pgBackRest's rule for a shared archive);
//! different content is a conflict, reported loudly, and nothing is
//! overwritten; no object after an ambiguous answer means "try again".

/// What was read back after a 412 or an ambiguous answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBack<'a> {
    Missing,
    Found(&'a [u8]),
}

/// The resolution of one upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The object holds our bytes.
    Stored,
    /// The object holds other bytes: never overwritten.
    Conflict,
    /// Not stored (yet): upload again later.
    Retry,
}

/// Decides from what was read back. A 412 followed by a missing object (a
/// delete in between) is retried like an ambiguous answer.
pub fn resolve(ours: &[u8], read_back: ReadBack<'_>) -> Resolution {
    match read_back {
        ReadBack::Found(theirs) if theirs == ours => Resolution::Stored,
        ReadBack::Found(_) => Resolution::Conflict,
        ReadBack::Missing => Resolution::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_is_success() {
        assert_eq!(resolve(b"wal", ReadBack::Found(b"wal")), Resolution::Stored);
    }

    #[test]
    fn different_is_a_conflict() {
        assert_eq!(
            resolve(b"wal", ReadBack::Found(b"wax")),
            Resolution::Conflict
        );
        assert_eq!(
            resolve(b"wal", ReadBack::Found(b"wa")),
            Resolution::Conflict
        );
        assert_eq!(resolve(b"", ReadBack::Found(b"x")), Resolution::Conflict);
    }

    #[test]
    fn missing_is_retried_never_assumed() {
        assert_eq!(resolve(b"wal", ReadBack::Missing), Resolution::Retry);
    }
}
