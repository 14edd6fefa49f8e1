use super::*;

const S3: &str = "000000010000000000000003";

fn seg(s: &str) -> Request {
    Request::Segment(SegmentName::parse(s).unwrap())
}

fn src(file_name: &str, compression: Compression) -> Source {
    Source {
        file_name: file_name.into(),
        compression,
    }
}

#[test]
fn only_names_postgresql_asks_for_are_requests() {
    assert_eq!(Request::parse(S3), Some(seg(S3)));
    assert_eq!(
        Request::parse("00000002.history"),
        Some(Request::History(2))
    );
    assert_eq!(
        Request::parse("000000010000000000000002.00000028.backup"),
        Some(Request::Backup(
            "000000010000000000000002.00000028.backup".into()
        ))
    );
    for bad in [
        "",
        "pg_wal/RECOVERYXLOG",
        "RECOVERYXLOG",
        "000000010000000000000003.partial",
        "000000010000000000000003.gz",
        "000000010000000000000003.zst.partial",
        "00000002.history.gz",
        "00000001000000000000000a",
        "000000000000000000000003",
        "000000010000000000000003.partial.tmp",
        "../000000010000000000000003",
    ] {
        assert_eq!(Request::parse(bad), None, "{bad:?}");
    }
}

#[test]
fn a_complete_segment_in_any_compression() {
    for c in Compression::ALL {
        let file = format!("{S3}{}", c.suffix());
        assert_eq!(
            plan(&seg(S3), [file.as_str(), "000000010000000000000004"]),
            Plan::Complete(vec![src(&file, c)]),
            "{c:?}"
        );
    }
}

#[test]
fn several_copies_are_tried_uncompressed_first() {
    let names = [
        "000000010000000000000003.zst",
        "000000010000000000000003.gz",
        "000000010000000000000003",
        "000000010000000000000003.lz4",
    ];
    assert_eq!(
        plan(&seg(S3), names),
        Plan::Complete(vec![
            src("000000010000000000000003", Compression::None),
            src("000000010000000000000003.gz", Compression::Gzip),
            src("000000010000000000000003.lz4", Compression::Lz4),
            src("000000010000000000000003.zst", Compression::Zstd),
        ])
    );
}

#[test]
fn a_complete_file_wins_over_a_partial_of_the_same_name() {
    let names = [
        "000000010000000000000003.partial",
        "000000010000000000000003.gz",
    ];
    assert_eq!(
        plan(&seg(S3), names),
        Plan::Complete(vec![src("000000010000000000000003.gz", Compression::Gzip)])
    );
}

#[test]
fn the_newest_partial_in_any_compression() {
    for c in Compression::ALL {
        let file = format!("{S3}{}.partial", c.suffix());
        let names = [
            "000000010000000000000001",
            "000000010000000000000002.gz",
            file.as_str(),
            "00000001.history.tmp",
        ];
        assert_eq!(
            plan(&seg(S3), names),
            Plan::Partial(vec![src(&file, c)]),
            "{c:?}"
        );
    }
}

#[test]
fn a_timelines_last_partial_before_a_switch() {
    // pg_receivewal's layout after following a switch in segment C.
    let names = [
        "00000001000000000000000B",
        "00000001000000000000000C.partial",
        "00000002.history",
        "00000002000000000000000C",
        "00000002000000000000000D.lz4.partial",
    ];
    assert_eq!(
        plan(&seg("00000001000000000000000C"), names),
        Plan::Partial(vec![src(
            "00000001000000000000000C.partial",
            Compression::None
        )])
    );
    assert_eq!(
        plan(&seg("00000002000000000000000C"), names),
        Plan::Complete(vec![src("00000002000000000000000C", Compression::None)])
    );
    assert_eq!(
        plan(&seg("00000002000000000000000D"), names),
        Plan::Partial(vec![src(
            "00000002000000000000000D.lz4.partial",
            Compression::Lz4
        )])
    );
    // Timeline 1 never had D, timeline 3 does not exist.
    assert_eq!(
        plan(&seg("00000001000000000000000D"), names),
        Plan::NotFound
    );
    assert_eq!(
        plan(&seg("00000003000000000000000D"), names),
        Plan::NotFound
    );
}

#[test]
fn a_partial_with_later_segments_on_its_timeline_is_a_hole() {
    let names = [
        "000000010000000000000003.gz.partial",
        "000000010000000000000005",
        "000000010000000000000004.partial",
        "000000020000000000000009",
    ];
    assert_eq!(
        plan(&seg(S3), names),
        Plan::Hole {
            partial: "000000010000000000000003.gz.partial".into(),
            later: "000000010000000000000004.partial".into()
        }
    );
}

#[test]
fn missing_segments_temporaries_and_foreign_files() {
    let names = [
        "000000010000000000000003.partial.tmp",
        "000000010000000000000003.gz.partial.tmp",
        "000000010000000000000003.bz2",
        "000000020000000000000003",
        "000000010000000000000002",
        "00000001000000000000000300",
    ];
    assert_eq!(plan(&seg(S3), names), Plan::NotFound);
    assert_eq!(plan(&seg(S3), []), Plan::NotFound);
    // A compressed segment streamed again aside: only the old file counts.
    let partial = "000000010000000000000003.lz4.partial";
    assert_eq!(
        plan(
            &seg(S3),
            [partial, "000000010000000000000003.lz4.partial.tmp"]
        ),
        plan(&seg(S3), [partial])
    );
}

#[test]
fn history_files_in_any_compression() {
    let names = [
        "00000002.history.zst",
        "00000003.history",
        "00000002.history",
    ];
    assert_eq!(
        plan(&Request::History(2), names),
        Plan::History {
            timeline: 2,
            sources: vec![
                src("00000002.history", Compression::None),
                src("00000002.history.zst", Compression::Zstd)
            ]
        }
    );
    assert_eq!(plan(&Request::History(4), names), Plan::NotFound);
}

#[test]
fn backup_history_files_as_they_are() {
    let name = "000000010000000000000002.00000028.backup";
    let request = Request::parse(name).unwrap();
    assert_eq!(
        plan(&request, [name]),
        Plan::Backup(src(name, Compression::None))
    );
    assert_eq!(plan(&request, [S3]), Plan::NotFound);
}

/// Files set aside after a failover hold WAL the continuing history does not
/// have: no request is ever answered from one, in any form.
#[test]
fn divergent_files_never_answer() {
    use crate::archive::names::{divergent_file_name, segment_file_name};
    let name = SegmentName::parse(S3).unwrap();
    for c in Compression::ALL {
        for partial in [false, true] {
            let aside = divergent_file_name(&segment_file_name(&name, c, partial));
            assert_eq!(
                plan(&seg(S3), [aside.as_str(), "000000010000000000000002"]),
                Plan::NotFound,
                "{aside}"
            );
            assert_eq!(Request::parse(&aside), None, "{aside}");
        }
    }
    let names = [
        "000000010000000000000003.partial.divergent.tmp",
        "000000010000000000000003.gz.divergent.tmp",
        "000000010000000000000004.divergent.tmp",
        "000000020000000000000003.divergent.tmp",
        S3,
    ];
    assert_eq!(
        set_aside_copies(&seg(S3), names),
        [
            "000000010000000000000003.gz.divergent.tmp",
            "000000010000000000000003.partial.divergent.tmp"
        ]
    );
    assert!(set_aside_copies(&Request::History(2), names).is_empty());
    // The new timeline's copy of the segment is served beside them.
    let s2 = "000000020000000000000003";
    assert_eq!(
        plan(
            &seg(s2),
            [
                "000000010000000000000003.partial.divergent.tmp",
                "000000010000000000000003.divergent.tmp",
                s2
            ]
        ),
        Plan::Complete(vec![src(s2, Compression::None)])
    );
    // The newest `.partial` of a timeline: a set-aside later file is not
    // "later WAL" (no hole), and a set-aside `.partial` is not a candidate.
    assert_eq!(
        plan(
            &seg(S3),
            [
                "000000010000000000000003.partial",
                "000000010000000000000004.divergent.tmp",
                "000000010000000000000003.gz.partial.divergent.tmp",
            ]
        ),
        Plan::Partial(vec![src(
            "000000010000000000000003.partial",
            Compression::None
        )])
    );
}

const MB16: u64 = 16 << 20;

fn forked_at(parent: TimeLineId, switchpoint: u64) -> Vec<HistoryEntry> {
    vec![HistoryEntry {
        parent,
        switchpoint: Lsn(switchpoint),
    }]
}

#[test]
fn a_switch_segment_partial_cut_before_the_switch_point_gives_way_to_the_parent() {
    // Timeline 2 begins at 0/3000200, inside segment 3.
    let tl2 = SegmentName::parse("000000020000000000000003").unwrap();
    let history = forked_at(1, 0x300_0200);
    assert_eq!(
        switch_segment_copy(&tl2, MB16, &history, Lsn(0x300_0100)),
        Some(SwitchCopy {
            parent_segment: SegmentName::parse(S3).unwrap(),
            switchpoint: Lsn(0x300_0200),
            upto: 0x200,
        })
    );
    // Nothing valid at all: the segment's start.
    assert!(switch_segment_copy(&tl2, MB16, &history, Lsn(0x300_0000)).is_some());
    // Reaches the switch point, or goes past it: served as it is.
    for end in [0x300_0200, 0x300_0300] {
        assert_eq!(switch_segment_copy(&tl2, MB16, &history, Lsn(end)), None);
    }
    // Over several forks, the last (the one into timeline 3) counts.
    let tl3 = SegmentName::parse("000000030000000000000003").unwrap();
    let chain = vec![
        HistoryEntry {
            parent: 1,
            switchpoint: Lsn(0x100_0080),
        },
        HistoryEntry {
            parent: 2,
            switchpoint: Lsn(0x300_0200),
        },
    ];
    assert_eq!(
        switch_segment_copy(&tl3, MB16, &chain, Lsn(0x300_0100)).map(|c| c.parent_segment),
        SegmentName::parse("000000020000000000000003")
    );
}

#[test]
fn other_segments_and_switch_points_on_a_boundary_are_served_as_they_are() {
    let history = forked_at(1, 0x300_0200);
    // A later segment of timeline 2: the switch point is not in it.
    let later = SegmentName::parse("000000020000000000000004").unwrap();
    assert_eq!(
        switch_segment_copy(&later, MB16, &history, Lsn(0x400_0000)),
        None
    );
    // An earlier one (not a segment of timeline 2 at all).
    let earlier = SegmentName::parse("000000020000000000000002").unwrap();
    assert_eq!(
        switch_segment_copy(&earlier, MB16, &history, Lsn(0x200_0000)),
        None
    );
    // A timeline beginning at a segment boundary has nothing of its parent in it.
    let tl2 = SegmentName::parse("000000020000000000000003").unwrap();
    let at_boundary = forked_at(1, 0x300_0000);
    assert_eq!(
        switch_segment_copy(&tl2, MB16, &at_boundary, Lsn(0x300_0000)),
        None
    );
    // No history (timeline 1): nothing to fall back on.
    assert_eq!(switch_segment_copy(&tl2, MB16, &[], Lsn(0x300_0000)), None);
    // A segment size the name does not fit.
    assert_eq!(switch_segment_copy(&tl2, 3, &history, Lsn(0)), None);
}

#[test]
fn the_parents_copies_complete_first_then_partial_uncompressed_first() {
    let parent = SegmentName::parse(S3).unwrap();
    let names = [
        "000000010000000000000003.gz.partial",
        "000000010000000000000003.partial",
        "000000010000000000000003.zst",
        "000000010000000000000003",
        "000000010000000000000003.partial.divergent.tmp",
        "000000020000000000000003.partial",
        "000000010000000000000004",
    ];
    assert_eq!(
        switch_segment_sources(&parent, names),
        vec![
            src("000000010000000000000003", Compression::None),
            src("000000010000000000000003.zst", Compression::Zstd),
            src("000000010000000000000003.partial", Compression::None),
            src("000000010000000000000003.gz.partial", Compression::Gzip),
        ]
    );
}

/// What both tiers know about a name, merged: the same rules as a listing.
fn merged(local: &[&str], bucket_complete: &[&str], bucket_partial: &[&str]) -> Known {
    let wanted = SegmentName::parse(S3).unwrap();
    let mut k = known(&wanted, local.iter().copied());
    k.complete
        .extend(bucket_complete.iter().map(|n| src(n, Compression::None)));
    k.partial
        .extend(bucket_partial.iter().map(|n| src(n, Compression::None)));
    k
}

#[test]
fn known_from_a_listing_plans_like_the_listing() {
    let names = [
        "000000010000000000000003.gz.partial",
        "000000010000000000000004.partial",
        "000000010000000000000002",
    ];
    let wanted = SegmentName::parse(S3).unwrap();
    assert_eq!(plan_known(known(&wanted, names)), plan(&seg(S3), names));
    let k = known(&wanted, names);
    assert!(k.complete.is_empty());
    assert_eq!(k.later.as_deref(), Some("000000010000000000000004.partial"));
}

#[test]
fn a_complete_copy_in_the_bucket_wins_over_a_local_partial() {
    let bucket = "000000010000000000000003.zst";
    assert_eq!(
        plan_known(merged(
            &["000000010000000000000003.partial"],
            &[bucket],
            &[]
        )),
        Plan::Complete(vec![src(bucket, Compression::None)])
    );
    // Even over a local hole: the complete copy fills it.
    let local = [
        "000000010000000000000003.partial",
        "000000010000000000000004",
    ];
    assert_eq!(
        plan_known(merged(&local, &[bucket], &[])),
        Plan::Complete(vec![src(bucket, Compression::None)])
    );
}

#[test]
fn bucket_partials_compete_with_the_local_one_unless_the_timeline_goes_on() {
    let copy = "partial/000000010000000000000003/000000010000000000000003.partial.b.1-2";
    let local = "000000010000000000000003.partial";
    assert_eq!(
        plan_known(merged(&[local], &[], &[copy])),
        Plan::Partial(vec![
            src(local, Compression::None),
            src(copy, Compression::None)
        ])
    );
    let mut k = merged(&[], &[], &[copy]);
    assert_eq!(
        plan_known(k.clone()),
        Plan::Partial(vec![src(copy, Compression::None)])
    );
    // The next segment found in the bucket: a hole.
    k.later = Some("000000010000000000000004.gz".into());
    assert_eq!(
        plan_known(k),
        Plan::Hole {
            partial: copy.into(),
            later: "000000010000000000000004.gz".into()
        }
    );
    // A later local segment makes a bucket partial a hole as well.
    assert!(matches!(
        plan_known(merged(&["000000010000000000000007"], &[], &[copy])),
        Plan::Hole { .. }
    ));
    assert_eq!(plan_known(merged(&[], &[], &[])), Plan::NotFound);
}
