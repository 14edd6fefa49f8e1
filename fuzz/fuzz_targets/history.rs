//! Arbitrary bytes into the timeline history parser and its lookups: no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walrcv::wal::history::{
    check_history_for, parse_history, switchpoint_into, timeline_of, timeline_range,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = parse_history(data) {
        let tip = entries.last().map_or(1, |e| e.parent.saturating_add(1));
        let _ = check_history_for(tip, &entries);
        for e in &entries {
            assert_ne!(timeline_of(&entries, tip, e.switchpoint), e.parent);
            let _ = timeline_range(&entries, tip, e.parent);
            let _ = switchpoint_into(&entries, tip, e.parent);
        }
        for w in entries.windows(2) {
            assert!(w[0].parent < w[1].parent);
        }
    }
});
