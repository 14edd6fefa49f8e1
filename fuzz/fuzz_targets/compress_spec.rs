//! Arbitrary `-Z/--compress` values into the specification parser.
//!
//! Properties:
//! - no panic, and every error formats;
//! - an accepted spec has a level inside its method's range (or the
//!   method's default), and its display form (`METHOD:LEVEL`) parses back to
//!   the same method with the effective level.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walrcv::archive::compress_spec::CompressionSpec;
use walrcv::archive::names::Compression;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match CompressionSpec::parse(text) {
        Err(e) => {
            let _ = e.to_string();
        }
        Ok(spec) => {
            let level = spec.effective_level();
            let ok = match spec.method {
                Compression::None => level == 0,
                Compression::Gzip => (1..=9).contains(&level),
                Compression::Lz4 => (0..=12).contains(&level),
                Compression::Zstd => (1..=22).contains(&level),
            };
            assert!(ok, "{text:?} accepted as {spec:?}");
            let again = CompressionSpec::parse(&spec.to_string()).expect("display form parses");
            assert_eq!(again.method, spec.method);
            assert_eq!(again.effective_level(), level);
        }
    }
});
