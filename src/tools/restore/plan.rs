//! The restore planner (pure): from the name PostgreSQL asks for (`%f`) and
//! the names in the archive, which files may answer and how.
//!
//! What the startup process asks for (`RestoreArchivedFile` callers in
//! PostgreSQL's `xlogrecovery.c` / `timeline.c`): segment names
//! (`XLogFileName`, one per timeline of the expected history, newest timeline
//! first: `XLogFileReadAnyTLI`) and history files `TTTTTTTT.history`
//! (`existsTimeLineHistory`, `readTimeLineHistory`, with the next timelines
//! probed until one is missing when `recovery_target_timeline = 'latest'`).
//! Backup history files (`<segment>.<offset>.backup`) are not requested by
//! recovery since 9.x, but are served as they are when asked for by hand. No
//! other name is ever asked for: anything else is a misconfigured
//! `restore_command` (for example `%p` and `%f` swapped).
//!
//! Rules for a segment `S`:
//! 1. a complete `S`, in any compression, uncompressed first;
//! 2. else a `.partial` of `S` (any compression) when it is the newest file of
//!    its timeline: the live end of the stream, or the last segment of a
//!    timeline before a switch. It is served under the name asked for, valid
//!    WAL then zeros;
//! 3. a `.partial` of `S` followed by later segments of the same timeline is a
//!    hole in the archive: refused, since serving it (or answering "not
//!    found") would end recovery early and promote there.
//!
//! 4. the switch segment: when the `.partial` chosen for segment `k` of
//!    timeline `N` is the segment holding `N`'s switch point `S` (from
//!    `N`'s history file) and its valid WAL ends before `S` (a `walrcv
//!    stream` killed while it streamed `N` from `k`'s start), the parent
//!    timeline's file of `k` is served instead, up to `S`, zeros after: what
//!    PostgreSQL itself writes at promotion (`XLogInitNewTimeline`), provided
//!    its bytes up to `S` verify ([`switch_segment_copy`]). Serving the short
//!    `.partial` would end recovery before `S`, and lose commits up to `S`
//!    that were acknowledged.
//!
//! Files set aside after a failover (`*.divergent.tmp`,
//! [`ArchiveName::Divergent`]) hold WAL of a timeline past the point where
//! the history left it: they never answer a request under any name, and are
//! not "later segments" for rule 3 either (the classification does not call
//! them segments). Their original name gets "not found", and recovery
//! follows the history to the new timeline's file.

use crate::archive::names::{ArchiveName, Compression, SegmentName};
use crate::lsn::{segment_start_lsn, Lsn, TimeLineId};
use crate::wal::history::HistoryEntry;

/// What `%f` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Segment(SegmentName),
    History(TimeLineId),
    Backup(String),
}

impl Request {
    /// Parses `%f`: a plain segment, history or backup history file name.
    pub fn parse(requested: &str) -> Option<Request> {
        match ArchiveName::classify(requested) {
            ArchiveName::Segment {
                name,
                compression: Compression::None,
                partial: false,
            } => Some(Request::Segment(name)),
            ArchiveName::History {
                timeline,
                compression: Compression::None,
            } => Some(Request::History(timeline)),
            ArchiveName::Backup { .. } => Some(Request::Backup(requested.to_owned())),
            _ => None,
        }
    }
}

/// One archive file that may answer the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub file_name: String,
    pub compression: Compression,
}

/// What to do for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Serve the first of these complete segments that passes its checks
    /// (copies of the same segment in several compressions, uncompressed
    /// first).
    Complete(Vec<Source>),
    /// Serve the newest `.partial` of the timeline, padded: the candidate with
    /// the most valid WAL wins.
    Partial(Vec<Source>),
    /// Serve the first of these history files that parses.
    History {
        timeline: TimeLineId,
        sources: Vec<Source>,
    },
    /// Serve this backup history file as it is.
    Backup(Source),
    /// Nothing in the archive answers: recovery may end here.
    NotFound,
    /// Only a `.partial` exists, yet the timeline goes on after it.
    Hole { partial: String, later: String },
}

/// Plans the answer to `request` from the archive's file `names`.
pub fn plan<'a>(request: &Request, names: impl IntoIterator<Item = &'a str>) -> Plan {
    let classified = names
        .into_iter()
        .map(|n| (n, ArchiveName::classify(n)))
        .collect::<Vec<_>>();
    match request {
        Request::Segment(wanted) => plan_segment(wanted, &classified),
        Request::History(timeline) => {
            let sources = by_compression(classified.iter().filter_map(|(n, c)| match c {
                ArchiveName::History {
                    timeline: t,
                    compression,
                } if t == timeline => Some(source(n, *compression)),
                _ => None,
            }));
            if sources.is_empty() {
                Plan::NotFound
            } else {
                Plan::History {
                    timeline: *timeline,
                    sources,
                }
            }
        }
        Request::Backup(wanted) => classified
            .iter()
            .find(|(n, _)| n == wanted)
            .map_or(Plan::NotFound, |(n, _)| {
                Plan::Backup(source(n, Compression::None))
            }),
    }
}

fn plan_segment(wanted: &SegmentName, classified: &[(&str, ArchiveName)]) -> Plan {
    plan_known(known_of(wanted, classified))
}

/// What is known about one segment name, from whichever tier: the one input
/// of rules 1 to 3, the same for the local archive (built from its listing,
/// [`known`]) and for the object store (built by `remote` from GETs by exact
/// name, the LIST of `partial/SEG/` and a probe of the next segment), or
/// both merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// Complete copies, in the order they are to be tried.
    pub complete: Vec<Source>,
    /// `.partial` copies.
    pub partial: Vec<Source>,
    /// A file of a later segment of the same timeline, when one is known.
    pub later: Option<String>,
}

/// Rules 1 to 3 over what is known about a segment (pure): a complete copy
/// wins; else a `.partial` is served unless the timeline goes on after it
/// (a hole); else nothing answers.
pub fn plan_known(known: Known) -> Plan {
    if !known.complete.is_empty() {
        return Plan::Complete(known.complete);
    }
    let Some(first) = known.partial.first() else {
        return Plan::NotFound;
    };
    match known.later {
        Some(later) => Plan::Hole {
            partial: first.file_name.clone(),
            later,
        },
        None => Plan::Partial(known.partial),
    }
}

/// What the archive file `names` tell about segment `wanted`.
pub fn known<'a>(wanted: &SegmentName, names: impl IntoIterator<Item = &'a str>) -> Known {
    let classified = names
        .into_iter()
        .map(|n| (n, ArchiveName::classify(n)))
        .collect::<Vec<_>>();
    known_of(wanted, &classified)
}

fn known_of(wanted: &SegmentName, classified: &[(&str, ArchiveName)]) -> Known {
    let copies = |want_partial: bool| {
        by_compression(classified.iter().filter_map(|(n, c)| match c {
            ArchiveName::Segment {
                name,
                compression,
                partial,
            } if name == wanted && *partial == want_partial => Some(source(n, *compression)),
            _ => None,
        }))
    };
    Known {
        complete: copies(false),
        partial: copies(true),
        later: later_on_same_timeline(wanted, classified).map(str::to_owned),
    }
}

/// The first segment file of `wanted`'s timeline after it, if any.
fn later_on_same_timeline<'a>(
    wanted: &SegmentName,
    classified: &[(&'a str, ArchiveName)],
) -> Option<&'a str> {
    classified
        .iter()
        .filter_map(|(n, c)| match c {
            ArchiveName::Segment { name, .. }
                if name.timeline() == wanted.timeline()
                    && name.position_digits() > wanted.position_digits() =>
            {
                Some((name.position_digits(), *n))
            }
            _ => None,
        })
        .min()
        .map(|(_, n)| n)
}

/// Rule 4: serve the parent timeline's copy of the switch segment, cut at the
/// switch point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchCopy {
    /// The parent timeline's file of the requested segment.
    pub parent_segment: SegmentName,
    /// Where the requested timeline begins (from its history file).
    pub switchpoint: Lsn,
    /// Bytes of the segment before the switch point: the part served from
    /// the parent's file; zeros follow.
    pub upto: u64,
}

/// Rule 4 (pure): whether the `.partial` chosen for `wanted`, whose valid WAL
/// ends at `partial_end`, must give way to the parent timeline's copy of the
/// segment up to the switch point. `history` is the parsed history file of
/// `wanted`'s timeline. `None`: serve the `.partial` as it is (the switch
/// point is not inside this segment, or the `.partial` reaches it).
pub fn switch_segment_copy(
    wanted: &SegmentName,
    segment_size: u64,
    history: &[HistoryEntry],
    partial_end: Lsn,
) -> Option<SwitchCopy> {
    let (_, segno) = wanted.segno(segment_size)?;
    // The last entry: the parent this timeline forked from, and where.
    let fork = history.last()?;
    let start = segment_start_lsn(segno, segment_size);
    let upto = fork.switchpoint.0.checked_sub(start.0)?;
    if upto == 0 || upto >= segment_size || partial_end >= fork.switchpoint {
        return None;
    }
    let parent_segment =
        SegmentName::parse(&format!("{:08X}{}", fork.parent, wanted.position_digits()))?;
    Some(SwitchCopy {
        parent_segment,
        switchpoint: fork.switchpoint,
        upto,
    })
}

/// Every copy of `segment` that rule 4 may cut at the switch point: complete
/// ones first, then `.partial` ones, each uncompressed first (only the bytes
/// before the switch point are used, and they are verified before).
pub fn switch_segment_sources<'a>(
    segment: &SegmentName,
    names: impl IntoIterator<Item = &'a str>,
) -> Vec<Source> {
    let (mut complete, mut partial): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
    for n in names {
        if let ArchiveName::Segment {
            name,
            compression,
            partial: p,
        } = ArchiveName::classify(n)
        {
            if &name == segment {
                if p { &mut partial } else { &mut complete }.push(source(n, compression));
            }
        }
    }
    let mut all = by_compression(complete.into_iter());
    all.extend(by_compression(partial.into_iter()));
    all
}

/// The set-aside (divergent) files of the segment `request` names, for the
/// log line of a "not found": they are never served, but a DBA reading the
/// server's log should know they are there.
pub fn set_aside_copies<'a>(
    request: &Request,
    names: impl IntoIterator<Item = &'a str>,
) -> Vec<&'a str> {
    let Request::Segment(wanted) = request else {
        return Vec::new();
    };
    let mut copies: Vec<&str> = names
        .into_iter()
        .filter(|n| {
            matches!(ArchiveName::classify(n), ArchiveName::Divergent { name, .. } if &name == wanted)
        })
        .collect();
    copies.sort_unstable();
    copies
}

fn source(file_name: &str, compression: Compression) -> Source {
    Source {
        file_name: file_name.to_owned(),
        compression,
    }
}

/// Sources in a fixed order (uncompressed first, then gzip, lz4, zstd), so
/// that the answer does not depend on the directory's order.
fn by_compression(sources: impl Iterator<Item = Source>) -> Vec<Source> {
    let mut v: Vec<Source> = sources.collect();
    v.sort_by(|a, b| (a.compression, &a.file_name).cmp(&(b.compression, &b.file_name)));
    v
}

#[cfg(test)]
mod tests;
