//! Arbitrary text into `walrcv cleanup`'s value parsers (`--older-than`,
//! `--keep-size`, `--before`): no panic, and what parses means the same when
//! written back in the plainest unit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walrcv::tools::cleanup::args::{parse_duration, parse_size};
use walrcv::tools::cleanup::cutoff_segment;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = parse_duration(text) {
        assert_eq!(parse_duration(&format!("{}s", d.as_secs())), Ok(d));
    }
    if let Ok(n) = parse_size(text) {
        assert_eq!(parse_size(&format!("{n}B")), Ok(n));
    }
    if let Some(seg) = cutoff_segment(text) {
        assert_eq!(seg.as_str().len(), 24);
    }
});
