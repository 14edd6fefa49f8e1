//! The `-Z/--compress` specification, parsed and checked exactly as
//! pg_receivewal 15+ does (sans-IO: a string in, a [`CompressionSpec`] or an
//! error with PostgreSQL's wording out).
//!
//! The rules come from PostgreSQL 15: `parse_compress_options` in
//! `pg_receivewal.c` (a bare integer means `none` when 0, gzip otherwise;
//! else `METHOD[:DETAIL]`), `parse_compress_algorithm`,
//! `parse_compress_specification` and `validate_compress_specification` in
//! `src/common/compression.c` (DETAIL is a bare integer level or a comma
//! separated list of `level=N` / `workers=N`; levels are checked against the
//! method's range, its default level being accepted too). Integers are read
//! as C's `strtol` reads them (leading blanks, a sign, clamped to the range
//! of `long`) and then stored into an `int`, as PostgreSQL does, so that
//! every string is accepted or refused as pg_receivewal would.
//!
//! Where walrcv differs: pg_receivewal 15 refuses zstd ("compression with
//! ZSTD is not yet supported"); walrcv accepts `zstd[:level]` with levels 1
//! to 22 (default 3), under either name, and refuses zstd's `workers`
//! (one WAL stream has nothing to share between threads).

use super::names::Compression;

/// What `-Z` asked for: a method and its level as PostgreSQL stores it
/// (gzip's `-1` and lz4's `0` mean the method's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressionSpec {
    pub method: Compression,
    pub level: i32,
}

/// zlib's `Z_DEFAULT_COMPRESSION`: gzip's level when none is given.
const GZIP_DEFAULT: i32 = -1;
/// The level `Z_DEFAULT_COMPRESSION` stands for.
const GZIP_DEFAULT_EFFECTIVE: i32 = 6;
/// `ZSTD_CLEVEL_DEFAULT`.
const ZSTD_DEFAULT: i32 = 3;
/// `ZSTD_maxCLevel()`.
const ZSTD_MAX: i32 = 22;

/// Why a `-Z` value is refused. The display text is pg_receivewal's message
/// (without its `pg_receivewal: error:` prefix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("unrecognized compression algorithm: \"{0}\"")]
    UnknownAlgorithm(String),
    #[error("invalid compression specification: {0}")]
    Invalid(SpecDetail),
    /// walrcv's own refusal (pg_receivewal 15 refuses zstd altogether).
    #[error("compression algorithm \"zstd\" does not accept a worker count in walrcv (one WAL stream is compressed on one thread)")]
    ZstdWorkers,
}

/// What is wrong inside a specification (`validate_compress_specification`'s
/// and `parse_compress_specification`'s messages).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecDetail {
    #[error("found empty string where a compression option was expected")]
    EmptyOption,
    #[error("compression option \"{0}\" requires a value")]
    RequiresValue(String),
    #[error("value for compression option \"{0}\" must be an integer")]
    NotAnInteger(String),
    #[error("unrecognized compression option: \"{0}\"")]
    UnrecognizedOption(String),
    #[error("compression algorithm \"{0}\" does not accept a compression level")]
    NoLevel(&'static str),
    #[error("compression algorithm \"{method}\" expects a compression level between {min} and {max} (default at {default})")]
    LevelRange {
        method: &'static str,
        min: i32,
        max: i32,
        default: i32,
    },
    #[error("compression algorithm \"{0}\" does not accept a worker count")]
    NoWorkers(&'static str),
}

impl CompressionSpec {
    /// No compression (no `-Z`, `-Z 0`, `-Z none`).
    pub const NONE: CompressionSpec = CompressionSpec {
        method: Compression::None,
        level: 0,
    };

    /// Parses and checks a `-Z` value (see the module documentation).
    pub fn parse(option: &str) -> Result<CompressionSpec, SpecError> {
        let (algorithm, detail) = split_option(option);
        let method = parse_algorithm(algorithm)
            .ok_or_else(|| SpecError::UnknownAlgorithm(algorithm.to_owned()))?;
        let parsed = parse_detail(method, detail).map_err(SpecError::Invalid)?;
        validate(method, &parsed).map_err(SpecError::Invalid)?;
        if method == Compression::Zstd && parsed.workers {
            return Err(SpecError::ZstdWorkers);
        }
        Ok(CompressionSpec {
            method,
            level: parsed.level,
        })
    }

    /// The level to give the encoder: gzip's default (`-1`) is zlib's 6;
    /// lz4's levels only exist for compatibility (see [`super::compressed`]).
    pub fn effective_level(&self) -> i32 {
        match (self.method, self.level) {
            (Compression::Gzip, GZIP_DEFAULT) => GZIP_DEFAULT_EFFECTIVE,
            (_, level) => level,
        }
    }
}

impl std::fmt::Display for CompressionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.method {
            Compression::None => f.write_str("none"),
            m => write!(f, "{}:{}", m.method_name(), self.effective_level()),
        }
    }
}

/// `parse_compress_options` (pg_receivewal.c): a bare integer is `none` (0)
/// or a gzip level; otherwise `METHOD` or `METHOD:DETAIL`.
fn split_option(option: &str) -> (&str, Option<&str>) {
    let (value, end) = strtol(option);
    if end == option.len() {
        return if value == 0 {
            ("none", None)
        } else {
            ("gzip", Some(option))
        };
    }
    match option.split_once(':') {
        Some((algorithm, detail)) => (algorithm, Some(detail)),
        None => (option, None),
    }
}

/// `parse_compress_algorithm` (compression.c): exact, case-sensitive names.
fn parse_algorithm(name: &str) -> Option<Compression> {
    Compression::ALL
        .into_iter()
        .find(|c| c.method_name() == name)
}

/// What the detail string says.
struct Parsed {
    level: i32,
    workers: bool,
}

/// The default level of each method (`parse_compress_specification`).
fn default_level(method: Compression) -> i32 {
    match method {
        Compression::None | Compression::Lz4 => 0,
        Compression::Gzip => GZIP_DEFAULT,
        Compression::Zstd => ZSTD_DEFAULT,
    }
}

/// `parse_compress_specification` (compression.c).
fn parse_detail(method: Compression, detail: Option<&str>) -> Result<Parsed, SpecDetail> {
    let mut parsed = Parsed {
        level: default_level(method),
        workers: false,
    };
    let Some(detail) = detail else {
        return Ok(parsed);
    };
    let (bare, end) = strtol(detail);
    if end > 0 && end == detail.len() {
        parsed.level = as_c_int(bare);
        return Ok(parsed);
    }
    // Comma-separated `keyword` or `keyword=value` items; an empty item
    // (including after a trailing comma) is an error.
    for item in detail.split(',') {
        let (keyword, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        if keyword.is_empty() {
            return Err(SpecDetail::EmptyOption);
        }
        match keyword {
            "level" => parsed.level = integer_value(keyword, value)?,
            "workers" => {
                integer_value(keyword, value)?;
                parsed.workers = true;
            }
            other => return Err(SpecDetail::UnrecognizedOption(other.to_owned())),
        }
    }
    Ok(parsed)
}

/// `expect_integer_value` (compression.c).
fn integer_value(keyword: &str, value: Option<&str>) -> Result<i32, SpecDetail> {
    let value = value.ok_or_else(|| SpecDetail::RequiresValue(keyword.to_owned()))?;
    match strtol(value) {
        (n, end) if end > 0 && end == value.len() => Ok(as_c_int(n)),
        _ => Err(SpecDetail::NotAnInteger(keyword.to_owned())),
    }
}

/// `validate_compress_specification` (compression.c), with walrcv's zstd
/// range (1 to 22).
fn validate(method: Compression, parsed: &Parsed) -> Result<(), SpecDetail> {
    let name = method.method_name();
    let (min, max) = match method {
        Compression::None => {
            if parsed.level != 0 {
                return Err(SpecDetail::NoLevel(name));
            }
            (1, 1)
        }
        Compression::Gzip => (1, 9),
        Compression::Lz4 => (1, 12),
        Compression::Zstd => (1, ZSTD_MAX),
    };
    let default = default_level(method);
    if !(min..=max).contains(&parsed.level) && parsed.level != default {
        return Err(SpecDetail::LevelRange {
            method: name,
            min,
            max,
            default,
        });
    }
    if parsed.workers && method != Compression::Zstd {
        return Err(SpecDetail::NoWorkers(name));
    }
    Ok(())
}

/// C's `strtol(s, &end, 10)` on a 64-bit `long`: leading white space, an
/// optional sign, decimal digits; clamped on overflow. Returns the value and
/// the length consumed, which is 0 when there are no digits (C sets `end`
/// back to the start then).
fn strtol(s: &str) -> (i64, usize) {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r') {
        i += 1;
    }
    let negative = match bytes.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let digits_start = i;
    let mut value: i64 = 0;
    let mut overflow = false;
    while let Some(d) = bytes.get(i).filter(|b| b.is_ascii_digit()) {
        let digit = i64::from(d - b'0');
        // Accumulated negatively so that i64::MIN is reachable.
        match value.checked_mul(10).and_then(|v| v.checked_sub(digit)) {
            Some(v) => value = v,
            None => overflow = true,
        }
        i += 1;
    }
    if i == digits_start {
        return (0, 0);
    }
    let value = match (overflow, negative) {
        (true, true) => i64::MIN,
        (true, false) => i64::MAX,
        (false, true) => value,
        (false, false) => value.checked_neg().unwrap_or(i64::MAX),
    };
    (value, i)
}

/// C's conversion of a `long` into an `int` (the low 32 bits), which is how
/// PostgreSQL stores a level parsed with `strtol`.
fn as_c_int(value: i64) -> i32 {
    value as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> (Compression, i32) {
        let spec = CompressionSpec::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        (spec.method, spec.level)
    }

    fn err(s: &str) -> String {
        match CompressionSpec::parse(s) {
            Ok(spec) => panic!("{s:?} accepted as {spec:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn accepted_as_pg_receivewal_accepts() {
        use Compression::*;
        for (s, want) in [
            ("", (None, 0)),
            ("0", (None, 0)),
            ("none", (None, 0)),
            ("none:0", (None, 0)),
            ("none:level=0", (None, 0)),
            ("5", (Gzip, 5)),
            (" 5", (Gzip, 5)),
            ("+3", (Gzip, 3)),
            ("-1", (Gzip, -1)),
            ("gzip", (Gzip, -1)),
            ("gzip:-1", (Gzip, -1)),
            ("gzip:9", (Gzip, 9)),
            ("gzip:level=1", (Gzip, 1)),
            ("gzip:level=3,level=4", (Gzip, 4)),
            ("lz4", (Lz4, 0)),
            ("lz4:0", (Lz4, 0)),
            ("lz4:12", (Lz4, 12)),
            ("zstd", (Zstd, 3)),
            ("zstd:1", (Zstd, 1)),
            ("zstd:level=22", (Zstd, 22)),
            // strtol clamps to LONG_MAX, which becomes -1 as an int: gzip's default.
            ("99999999999999999999", (Gzip, -1)),
            // 2^32 + 1 as an int is 1.
            ("4294967297", (Gzip, 1)),
        ] {
            assert_eq!(ok(s), want, "{s:?}");
        }
    }

    #[test]
    fn refused_with_pg_receivewal_wording() {
        let inv = |d: &str| format!("invalid compression specification: {d}");
        for (s, want) in [
            ("x", "unrecognized compression algorithm: \"x\"".to_owned()),
            ("GZIP", "unrecognized compression algorithm: \"GZIP\"".to_owned()),
            ("0x5", "unrecognized compression algorithm: \"0x5\"".to_owned()),
            (
                "none:1",
                inv("compression algorithm \"none\" does not accept a compression level"),
            ),
            (
                "gzip:10",
                inv("compression algorithm \"gzip\" expects a compression level between 1 and 9 (default at -1)"),
            ),
            (
                "10",
                inv("compression algorithm \"gzip\" expects a compression level between 1 and 9 (default at -1)"),
            ),
            (
                "2147483648",
                inv("compression algorithm \"gzip\" expects a compression level between 1 and 9 (default at -1)"),
            ),
            (
                "lz4:13",
                inv("compression algorithm \"lz4\" expects a compression level between 1 and 12 (default at 0)"),
            ),
            (
                "zstd:23",
                inv("compression algorithm \"zstd\" expects a compression level between 1 and 22 (default at 3)"),
            ),
            ("gzip:", inv("found empty string where a compression option was expected")),
            ("gzip:level=3,", inv("found empty string where a compression option was expected")),
            ("gzip:level", inv("compression option \"level\" requires a value")),
            ("gzip:level=", inv("value for compression option \"level\" must be an integer")),
            ("gzip:level=x", inv("value for compression option \"level\" must be an integer")),
            ("gzip:workers=x", inv("value for compression option \"workers\" must be an integer")),
            ("gzip:workers=2", inv("compression algorithm \"gzip\" does not accept a worker count")),
            ("none:workers=1", inv("compression algorithm \"none\" does not accept a worker count")),
            ("lz4:long", inv("unrecognized compression option: \"long\"")),
            ("gzip:foo=1", inv("unrecognized compression option: \"foo\"")),
        ] {
            assert_eq!(err(s), want, "{s:?}");
        }
        assert!(err("zstd:workers=2").contains("worker count"));
    }

    #[test]
    fn strtol_as_c() {
        assert_eq!(strtol(""), (0, 0));
        assert_eq!(strtol("  "), (0, 0));
        assert_eq!(strtol("-"), (0, 0));
        assert_eq!(strtol(" -12x"), (-12, 4));
        assert_eq!(strtol("9223372036854775808"), (i64::MAX, 19));
        assert_eq!(strtol("-9223372036854775808"), (i64::MIN, 20));
        assert_eq!(strtol("-99999999999999999999"), (i64::MIN, 21));
    }

    #[test]
    fn display_and_effective_levels() {
        assert_eq!(
            CompressionSpec::parse("gzip").unwrap().to_string(),
            "gzip:6"
        );
        assert_eq!(CompressionSpec::parse("lz4").unwrap().to_string(), "lz4:0");
        assert_eq!(
            CompressionSpec::parse("zstd:7").unwrap().to_string(),
            "zstd:7"
        );
        assert_eq!(CompressionSpec::NONE.to_string(), "none");
    }
}
