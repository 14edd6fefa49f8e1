//! Arbitrary name lists into the restore planner: no panic, and every answer
//! is consistent with the names (a file served exists in the listing and is
//! what was asked for; the order of the listing does not matter).
//!
//! Input: UTF-8 text, first line the requested name (`%f`), the other lines
//! the archive's names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walrcv::archive::names::ArchiveName;
use walrcv::tools::restore::plan::{plan, Plan, Request};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let requested = lines.next().unwrap_or("");
    let names: Vec<&str> = lines.collect();
    let Some(request) = Request::parse(requested) else {
        return;
    };
    let answer = plan(&request, names.iter().copied());
    let reversed = plan(&request, names.iter().rev().copied());
    assert_eq!(answer, reversed, "the listing's order changed the plan");
    let sources = match &answer {
        Plan::Complete(s) | Plan::Partial(s) => s.clone(),
        Plan::History { sources, .. } => sources.clone(),
        Plan::Backup(s) => vec![s.clone()],
        Plan::NotFound | Plan::Hole { .. } => Vec::new(),
    };
    for s in &sources {
        assert!(names.contains(&s.file_name.as_str()), "{s:?} not listed");
        match (ArchiveName::classify(&s.file_name), &request, &answer) {
            (
                ArchiveName::Segment {
                    name,
                    compression,
                    partial,
                },
                Request::Segment(wanted),
                Plan::Complete(_) | Plan::Partial(_),
            ) => {
                assert_eq!(&name, wanted);
                assert_eq!(compression, s.compression);
                assert_eq!(partial, matches!(answer, Plan::Partial(_)));
            }
            (
                ArchiveName::History {
                    timeline,
                    compression,
                },
                Request::History(t),
                Plan::History { .. },
            ) => {
                assert_eq!(timeline, *t);
                assert_eq!(compression, s.compression);
            }
            (ArchiveName::Backup { .. }, Request::Backup(b), Plan::Backup(_)) => {
                assert_eq!(&s.file_name, b)
            }
            other => panic!("inconsistent: {other:?}"),
        }
    }
    if matches!(answer, Plan::NotFound) {
        for n in &names {
            let c = ArchiveName::classify(n);
            let answers = match (&c, &request) {
                (ArchiveName::Segment { name, .. }, Request::Segment(w)) => name == w,
                (ArchiveName::History { timeline, .. }, Request::History(t)) => timeline == t,
                (ArchiveName::Backup { .. }, Request::Backup(b)) => n == b,
                _ => false,
            };
            assert!(!answers, "{n} answers {requested} but the plan is NotFound");
        }
    }
});
