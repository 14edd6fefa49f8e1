//! Arbitrary `pg_service.conf` text into the service file parser
//! ([`find_service`]).
//!
//! Properties:
//! - it never panics, and its errors format;
//! - every setting found is a known keyword other than `service`, its line
//!   number is within the text, and its key and value carry no surrounding
//!   whitespace;
//! - a value from the file never appears in an error (a file may hold
//!   passwords): errors show line numbers and keys only.
//!
//! Input layout: 1 byte `n`, then UTF-8 text (invalid UTF-8 is skipped). The
//! service looked up is the first section name in the text when `n` is even,
//! else `mydb`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walrcv::conninfo::{find_service, ServiceFileError};

/// C's `isspace` in the C locale, what the parser trims.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

fn first_section(text: &str) -> Option<&str> {
    let line = text.lines().map(str::trim).find(|l| l.starts_with('['))?;
    line[1..].split(']').next()
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let service = match first_section(text) {
        Some(name) if n % 2 == 0 => name,
        _ => "mydb",
    };
    let lines = text.split('\n').count();
    match find_service(text, service) {
        Ok(Some(settings)) => {
            for s in settings {
                assert_ne!(s.key, "service");
                assert!(s.line >= 1 && s.line <= lines, "line {} of {lines}", s.line);
                assert!(!s.value.starts_with(is_space) && !s.value.ends_with(is_space));
            }
        }
        Ok(None) => {}
        Err(e) => {
            let line = match &e {
                ServiceFileError::MissingEquals { line }
                | ServiceFileError::UnknownKey { line, .. }
                | ServiceFileError::NestedService { line } => *line,
            };
            assert!(line >= 1 && line <= lines);
            // The offending line's value part (after '=') is never shown.
            let shown = e.to_string();
            if let Some(raw) = text.split('\n').nth(line - 1) {
                if let Some((key, value)) = raw.split_once('=') {
                    let value = value.trim();
                    // The key is shown (quoted): a value that overlaps it
                    // and its quotes is no leak (found by the fuzzer).
                    let without_key = shown.replace(key.trim(), "");
                    if value.len() >= 8 && !key.contains(value) {
                        assert!(!without_key.contains(value), "value leaked: {shown}");
                    }
                }
            }
        }
    }
});
