//! Parsing `walrcv cleanup`'s `--older-than DURATION` and `--keep-size SIZE`
//! values (pure; fuzzed by `fuzz/fuzz_targets/cleanup_args.rs`).
//!
//! Durations: a whole number and a unit, `s`, `m` (minutes), `h`, `d`, `w`
//! (`30d`, `12h`, `90m`); several may follow each other (`1d12h`). Sizes: a
//! whole or decimal number and a unit, decimal (`kB`, `MB`, `GB`, `TB`: powers
//! of 1000) or binary (`KiB`, `MiB`, `GiB`, `TiB`: powers of 1024), or `B`
//! (`10GB`, `512MiB`, `1.5GiB`). Units are matched case-insensitively except
//! that the binary ones need their `i`. A bare number is refused: no unit to
//! guess wrong.

use std::time::Duration;

/// A `--older-than` or `--keep-size` value that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("invalid duration {value:?}: {why} (examples: 30d, 12h, 90m, 1d12h)")]
    Duration { value: String, why: &'static str },
    #[error("invalid size {value:?}: {why} (examples: 10GB, 512MiB, 1.5GiB)")]
    Size { value: String, why: &'static str },
}

/// Parses `30d`, `12h`, `90m`, `45s`, `2w`, or a sequence of them (`1d12h`).
pub fn parse_duration(value: &str) -> Result<Duration, ArgError> {
    let err = |why| ArgError::Duration {
        value: value.to_owned(),
        why,
    };
    let text = value.trim();
    if text.is_empty() {
        return Err(err("empty"));
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err("expected a number"));
        }
        let (number, after) = rest.split_at(digits);
        let number: u64 = number.parse().map_err(|_| err("number too large"))?;
        let unit_len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphabetic())
            .count();
        let (unit, after) = after.split_at(unit_len);
        let seconds = match unit {
            "s" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            "" => return Err(err("missing unit (s, m, h, d or w)")),
            _ => return Err(err("unknown unit (s, m, h, d or w)")),
        };
        total = number
            .checked_mul(seconds)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| err("too large"))?;
        rest = after;
    }
    Ok(Duration::from_secs(total))
}

/// Parses `10GB`, `512MiB`, `1.5GiB`, `100B` into bytes.
pub fn parse_size(value: &str) -> Result<u64, ArgError> {
    let err = |why| ArgError::Size {
        value: value.to_owned(),
        why,
    };
    let text = value.trim();
    let number_len = text
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (number, unit) = text.split_at(number_len);
    if number.is_empty() || number.bytes().filter(|&b| b == b'.').count() > 1 {
        return Err(err("expected a number"));
    }
    if number.starts_with('.') || number.ends_with('.') {
        return Err(err("expected a number"));
    }
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "b" => 1,
        "kb" => 1000,
        "mb" => 1000_u64.pow(2),
        "gb" => 1000_u64.pow(3),
        "tb" => 1000_u64.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "" => return Err(err("missing unit (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)")),
        _ => return Err(err("unknown unit (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)")),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let whole: u64 = whole.parse().map_err(|_| err("number too large"))?;
    let whole_bytes = whole
        .checked_mul(multiplier)
        .ok_or_else(|| err("too large"))?;
    // The fraction in integer arithmetic (rounded down to a byte): exact, and
    // no float rounding surprises.
    if fraction.len() > 9 {
        return Err(err("too many decimals"));
    }
    let digits: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| err("expected a number"))?
    };
    let fraction_bytes = digits * u128::from(multiplier) / 10u128.pow(fraction.len() as u32);
    let bytes = u64::try_from(fraction_bytes)
        .ok()
        .and_then(|f| whole_bytes.checked_add(f))
        .ok_or_else(|| err("too large"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |s| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(d("30d"), Ok(30 * 86_400));
        assert_eq!(d("12h"), Ok(12 * 3600));
        assert_eq!(d("90m"), Ok(90 * 60));
        assert_eq!(d("45s"), Ok(45));
        assert_eq!(d("2w"), Ok(14 * 86_400));
        assert_eq!(d("1d12h"), Ok(86_400 + 12 * 3600));
        assert_eq!(d(" 0s "), Ok(0));
        for bad in [
            "",
            "30",
            "d",
            "30x",
            "1.5d",
            "-1d",
            "30d5",
            "99999999999999999999d",
        ] {
            assert!(d(bad).is_err(), "{bad}");
        }
        assert!(d("999999999999999w").is_err());
        let msg = parse_duration("30").unwrap_err().to_string();
        assert!(
            msg.contains("\"30\"") && msg.contains("missing unit"),
            "{msg}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("100B"), Ok(100));
        assert_eq!(parse_size("16 MB"), Ok(16_000_000));
        assert_eq!(parse_size("2kb"), Ok(2000));
        assert_eq!(parse_size("0.25KiB"), Ok(256));
        for bad in [
            "",
            "10",
            "GB",
            "1..5GB",
            ".5GB",
            "5.GB",
            "10XB",
            "-1GB",
            "99999999999TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
