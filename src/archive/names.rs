//! The archive's vocabulary: what every name in an archive directory is.
//!
//! One place decides, for the stream's start-point scan, `verify`, `restore`
//! and `cleanup` alike, which names are WAL and what they hold, so that no two
//! of them can disagree about a file (a compressed segment taken for a foreign
//! file by one and for WAL by another is how silent gaps happen).
//!
//! Names as pg_receivewal 15+ writes them (`walmethods.c`): a segment is 24
//! upper-case hex digits (`XLogFileName`), then the compression suffix
//! (`.gz`, `.lz4`; walrcv adds `.zst`), then `.partial` while it is being
//! written. A timeline history file is `TTTTTTTT.history`, compressed like
//! segments (`00000002.history.gz`). Backup history files
//! (`<segment>.<offset>.backup`) come from `archive_command` rather than from
//! streaming, but `pg_archivecleanup` accepts them as a cut-off, and so does
//! `walrcv cleanup`. Temporary files end in `.tmp`. Lower-case hex, other
//! suffixes and anything else is foreign: never read, never removed.
//!
//! Classification is pure (a name in, an [`ArchiveName`] out); turning a
//! segment name into a segment number needs the segment size and is
//! [`SegmentName::segno`].

use crate::lsn::{parse_history_file_name, parse_wal_file_name, SegNo, TimeLineId};

use super::durable::TMP_SUFFIX;

/// Suffix of a segment (or history file) still being written.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// Suffix that sets a divergent segment file aside (see
/// [`ArchiveName::Divergent`]). It ends in `.tmp` because Barman's archiver
/// ignores such names and moves any other unknown name to its errors
/// directory; the `.divergent` before it keeps walrcv from ever taking it for
/// an interrupted write (those are removed at start-up).
pub const DIVERGENT_SUFFIX: &str = ".divergent.tmp";

/// Suffix of a backup history file (`<segment>.<8 hex offset>.backup`).
pub const BACKUP_SUFFIX: &str = ".backup";

/// How a WAL file's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Compression {
    None,
    Gzip,
    Lz4,
    Zstd,
}

impl Compression {
    /// Every kind, uncompressed first.
    pub const ALL: [Compression; 4] = [
        Compression::None,
        Compression::Gzip,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// The file name suffix (`""` for uncompressed), before any `.partial`.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Lz4 => ".lz4",
            Compression::Zstd => ".zst",
        }
    }

    /// The method's name as `-Z` spells it.
    pub fn method_name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// Splits a compression suffix off `name`: `("X", Gzip)` for `"X.gz"`,
    /// `(name, None)` when there is none.
    fn strip(name: &str) -> (&str, Compression) {
        for c in [Compression::Gzip, Compression::Lz4, Compression::Zstd] {
            if let Some(base) = name.strip_suffix(c.suffix()) {
                return (base, c);
            }
        }
        (name, Compression::None)
    }
}

/// A valid 24-character segment file name (`XLogFileName`), not yet tied to
/// a segment size.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentName(String);

impl SegmentName {
    /// `Some` when `s` is 24 upper-case hex digits with a non-zero timeline.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = s.len() == 24
            && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
            && &s[..8] != "00000000";
        ok.then(|| SegmentName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The timeline (first 8 digits).
    pub fn timeline(&self) -> TimeLineId {
        // Checked to be 8 hex digits by `parse`.
        u32::from_str_radix(&self.0[..8], 16).unwrap_or(0)
    }

    /// `(timeline, segment number)` for `segment_size`; `None` when the name
    /// is not valid for that size (its low field too large).
    pub fn segno(&self, segment_size: u64) -> Option<(TimeLineId, SegNo)> {
        parse_wal_file_name(&self.0, segment_size)
    }

    /// The part that orders segments independently of the timeline (the last
    /// 16 digits), which is what `pg_archivecleanup` compares.
    pub fn position_digits(&self) -> &str {
        &self.0[8..]
    }
}

/// What a name in an archive directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveName {
    /// A WAL segment: complete, or `.partial` while (or since) being written.
    Segment {
        name: SegmentName,
        compression: Compression,
        partial: bool,
    },
    /// `TTTTTTTT.history`, possibly compressed.
    History {
        timeline: TimeLineId,
        compression: Compression,
    },
    /// `<segment>.<offset>.backup`: a backup history file.
    Backup { segment: SegmentName, offset: u32 },
    /// A segment file set aside because it holds WAL past the point where the
    /// server's history left its timeline (`NAME[.gz|.lz4|.zst][.partial]`
    /// followed by [`DIVERGENT_SUFFIX`]). Never streamed into, restored,
    /// taken as a start point or removed; `verify` reports it.
    Divergent {
        name: SegmentName,
        compression: Compression,
        partial: bool,
    },
    /// A temporary (`.tmp`) of a WAL or history name: an interrupted write,
    /// never WAL.
    Temporary,
    /// Anything else: never read, never removed.
    Foreign,
}

impl ArchiveName {
    /// Classifies one directory entry name.
    pub fn classify(name: &str) -> ArchiveName {
        if let Some(base) = name.strip_suffix(DIVERGENT_SUFFIX) {
            return match ArchiveName::classify(base) {
                ArchiveName::Segment {
                    name,
                    compression,
                    partial,
                } => ArchiveName::Divergent {
                    name,
                    compression,
                    partial,
                },
                _ => ArchiveName::Foreign,
            };
        }
        if let Some(base) = name.strip_suffix(TMP_SUFFIX) {
            return match ArchiveName::classify(base) {
                ArchiveName::Segment { .. } | ArchiveName::History { .. } => ArchiveName::Temporary,
                _ => ArchiveName::Foreign,
            };
        }
        if let Some(backup) = classify_backup(name) {
            return backup;
        }
        let (rest, partial) = match name.strip_suffix(PARTIAL_SUFFIX) {
            Some(rest) => (rest, true),
            None => (name, false),
        };
        let (base, compression) = Compression::strip(rest);
        if let Some(seg) = SegmentName::parse(base) {
            return ArchiveName::Segment {
                name: seg,
                compression,
                partial,
            };
        }
        if !partial {
            if let Some(timeline) = parse_history_file_name(base) {
                return ArchiveName::History {
                    timeline,
                    compression,
                };
            }
        }
        ArchiveName::Foreign
    }

    /// Whether this is a segment (complete or partial, any compression).
    pub fn is_segment(&self) -> bool {
        matches!(self, ArchiveName::Segment { .. })
    }
}

/// `<24 hex>.<8 hex>.backup` (pg_archivecleanup's `IsBackupHistoryFileName`).
fn classify_backup(name: &str) -> Option<ArchiveName> {
    let rest = name.strip_suffix(BACKUP_SUFFIX)?;
    let (segment, offset) = rest.split_once('.')?;
    let segment = SegmentName::parse(segment)?;
    if offset.len() != 8
        || !offset
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
    {
        return None;
    }
    let offset = u32::from_str_radix(offset, 16).ok()?;
    Some(ArchiveName::Backup { segment, offset })
}

/// The file name of a segment: `NAME[.gz|.lz4|.zst][.partial]`.
pub fn segment_file_name(name: &SegmentName, compression: Compression, partial: bool) -> String {
    let partial = if partial { PARTIAL_SUFFIX } else { "" };
    format!("{}{}{partial}", name.as_str(), compression.suffix())
}

/// The name a divergent segment file is set aside under: its own name
/// followed by [`DIVERGENT_SUFFIX`].
pub fn divergent_file_name(segment_file_name: &str) -> String {
    format!("{segment_file_name}{DIVERGENT_SUFFIX}")
}

/// The file name of a history file: `TTTTTTTT.history[.gz|.lz4|.zst]`.
pub fn history_file_name(timeline: TimeLineId, compression: Compression) -> String {
    format!(
        "{}{}",
        crate::lsn::history_file_name(timeline),
        compression.suffix()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(name: &str, compression: Compression, partial: bool) -> ArchiveName {
        ArchiveName::Segment {
            name: SegmentName::parse(name).unwrap(),
            compression,
            partial,
        }
    }

    const S: &str = "000000010000000000000003";

    #[test]
    fn divergent_files_are_neither_segments_nor_temporaries() {
        for c in Compression::ALL {
            for partial in [false, true] {
                let name = segment_file_name(&SegmentName::parse(S).unwrap(), c, partial);
                let aside = divergent_file_name(&name);
                assert_eq!(
                    ArchiveName::classify(&aside),
                    ArchiveName::Divergent {
                        name: SegmentName::parse(S).unwrap(),
                        compression: c,
                        partial
                    },
                    "{aside}"
                );
            }
        }
        assert_eq!(
            ArchiveName::classify("00000002.history.divergent.tmp"),
            ArchiveName::Foreign
        );
        assert_eq!(
            ArchiveName::classify("notwal.divergent.tmp"),
            ArchiveName::Foreign
        );
    }

    #[test]
    fn every_segment_variant_pg_receivewal_and_walrcv_write() {
        for c in Compression::ALL {
            for partial in [false, true] {
                let name = segment_file_name(&SegmentName::parse(S).unwrap(), c, partial);
                assert_eq!(ArchiveName::classify(&name), seg(S, c, partial), "{name}");
            }
        }
        assert_eq!(
            ArchiveName::classify("000000010000000000000003.gz.partial"),
            seg(S, Compression::Gzip, true)
        );
    }

    #[test]
    fn history_files_plain_and_compressed() {
        for c in Compression::ALL {
            let name = history_file_name(2, c);
            assert_eq!(
                ArchiveName::classify(&name),
                ArchiveName::History {
                    timeline: 2,
                    compression: c
                },
                "{name}"
            );
        }
        assert_eq!(
            ArchiveName::classify("00000002.history.partial"),
            ArchiveName::Foreign
        );
        assert_eq!(
            ArchiveName::classify("00000000.history"),
            ArchiveName::Foreign
        );
    }

    #[test]
    fn temporaries_of_wal_names_only() {
        for name in [
            "000000010000000000000003.partial.tmp",
            "000000010000000000000003.gz.partial.tmp",
            "00000002.history.tmp",
        ] {
            assert_eq!(
                ArchiveName::classify(name),
                ArchiveName::Temporary,
                "{name}"
            );
        }
        assert_eq!(ArchiveName::classify("notes.tmp"), ArchiveName::Foreign);
    }

    #[test]
    fn backup_history_files() {
        assert_eq!(
            ArchiveName::classify("000000010000000000000002.00000028.backup"),
            ArchiveName::Backup {
                segment: SegmentName::parse("000000010000000000000002").unwrap(),
                offset: 0x28
            }
        );
        assert_eq!(
            ArchiveName::classify("000000010000000000000002.0000028.backup"),
            ArchiveName::Foreign
        );
    }

    #[test]
    fn foreign_names() {
        for name in [
            "",
            "00000001000000000000000a",
            "0000000100000000000000031",
            "000000000000000000000003",
            "000000010000000000000003.bz2",
            "000000010000000000000003.partial.gz",
            "000000010000000000000003.gz.gz",
            "archive_status",
            "xlogtemp.123",
            ".lock",
            "00000001000000000000000G",
        ] {
            assert_eq!(
                ArchiveName::classify(name),
                ArchiveName::Foreign,
                "{name:?}"
            );
        }
    }

    #[test]
    fn segment_numbers_depend_on_the_segment_size() {
        let name = SegmentName::parse("0000000200000001000000FF").unwrap();
        assert_eq!(name.timeline(), 2);
        assert_eq!(name.segno(16 << 20), Some((2, 0x100 + 0xFF)));
        // 0xFF is not a valid low field with 1 GiB segments (4 per xlogid).
        assert_eq!(name.segno(1 << 30), None);
        assert_eq!(name.position_digits(), "00000001000000FF");
    }
}
