//! Conflict markers: an upload conflict made visible in the bucket (pure).
//!
//! A conflict (an object that holds other bytes than the local file of its
//! name: see [`super::conflict`]) is a difference between a receiver's disk
//! and the bucket, so nothing in the bucket alone shows it. When the
//! uploader meets one, it also writes, create-only, a small text object
//! `conflicts/OBJECT.RECEIVER.CRC` under the prefix (`OBJECT` the name
//! relative to the prefix, `RECEIVER` the uploader's receiver id, `CRC` the
//! CRC-32C of the local file, so that one receiver's two different local
//! versions of a name leave two markers and a retry of the same one none).
//! `walrcv status` on the bucket finds the markers in its one LIST and is
//! CRITICAL while any is there; restore, verify and cleanup never read or
//! delete them (they are no archive name). A DBA deletes a marker once the
//! conflict is resolved.

use std::time::{SystemTime, UNIX_EPOCH};

use super::partial::valid_receiver;

/// The directory (relative to the prefix) of the markers.
pub const DIR: &str = "conflicts/";

/// Size and CRC-32C of one side of a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side {
    pub size: u64,
    pub crc32c: u32,
}

impl Side {
    pub fn of(bytes: &[u8]) -> Side {
        Side {
            size: bytes.len() as u64,
            crc32c: crc32c::crc32c(bytes),
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes, CRC-32C {:08x}", self.size, self.crc32c)
    }
}

/// One conflict met by one receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// The conflicting object's name relative to the prefix.
    pub object: String,
    pub receiver: String,
    /// The local file.
    pub ours: Side,
    /// The object in the bucket.
    pub theirs: Side,
}

impl Marker {
    /// The marker's object name, relative to the prefix.
    pub fn name(&self) -> String {
        format!(
            "{DIR}{}.{}.{:08x}",
            self.object, self.receiver, self.ours.crc32c
        )
    }

    /// The marker's content: what, who, when, both sides; `key` is the
    /// conflicting object's full key, `marker_key` the marker's own.
    pub fn body(&self, key: &str, marker_key: &str, at: SystemTime) -> String {
        format!(
            "walrcv upload conflict\n\
             object: {key}\n\
             receiver: {}\n\
             found: {}\n\
             local file: {}\n\
             object in the bucket: {}\n\
             Nothing was overwritten: the receiver keeps the local file and retries.\n\
             Once resolved, delete this marker ({marker_key}).\n",
            self.receiver,
            utc(at),
            self.ours,
            self.theirs
        )
    }
}

/// A listed marker's name, parsed back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerName {
    /// The conflicting object's name relative to the prefix.
    pub object: String,
    pub receiver: String,
}

/// Parses a name relative to the prefix (`conflicts/OBJECT.RECEIVER.CRC`);
/// `None` for anything else.
pub fn parse(name: &str) -> Option<MarkerName> {
    let rest = name.strip_prefix(DIR)?;
    let (rest, crc) = rest.rsplit_once('.')?;
    let (object, receiver) = rest.rsplit_once('.')?;
    let crc_ok = crc.len() == 8 && crc.bytes().all(|b| b.is_ascii_hexdigit());
    (crc_ok && valid_receiver(receiver) && !object.is_empty()).then(|| MarkerName {
        object: object.to_string(),
        receiver: receiver.to_string(),
    })
}

/// `2026-12-07T23:40:05Z` (UTC, whole seconds; before 1970: the epoch).
pub fn utc(at: SystemTime) -> String {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`, for days ≥ 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn marker() -> Marker {
        Marker {
            object: "000000010000000000000003.zst".into(),
            receiver: "walrcv_a".into(),
            ours: Side::of(b"ours"),
            theirs: Side::of(b"not this segment"),
        }
    }

    #[test]
    fn name_round_trips() {
        let m = marker();
        let name = m.name();
        assert!(name.starts_with("conflicts/000000010000000000000003.zst.walrcv_a."));
        assert_eq!(
            parse(&name),
            Some(MarkerName {
                object: m.object.clone(),
                receiver: m.receiver.clone()
            })
        );
        // A .partial copy's name (with its own dots and slashes) too.
        let copy = Marker {
            object: "partial/000000010000000000000004/000000010000000000000004.partial.walrcv_b.10-0000000a".into(),
            receiver: "walrcv_b".into(),
            ..m
        };
        assert_eq!(parse(&copy.name()).unwrap().object, copy.object);
    }

    #[test]
    fn other_names_are_no_marker() {
        for name in [
            "000000010000000000000003",
            "conflicts/",
            "conflicts/x.walrcv_a",
            "conflicts/x.walrcv_a.1234567",
            "conflicts/x.walrcv_a.1234567g",
            "conflicts/x.bad.id!.12345678",
            "conflicts/.walrcv_a.12345678",
            "partial/conflicts/x.walrcv_a.12345678",
        ] {
            assert_eq!(parse(name), None, "{name}");
        }
    }

    #[test]
    fn one_marker_per_local_version() {
        let a = marker();
        let b = Marker {
            ours: Side::of(b"ours, changed"),
            ..marker()
        };
        assert_ne!(a.name(), b.name());
        assert_eq!(a.name(), marker().name());
    }

    #[test]
    fn body_says_what_when_and_both_sides() {
        let at = UNIX_EPOCH + Duration::from_secs(1_796_686_805);
        let body = marker().body("db1/000000010000000000000003.zst", "db1/conflicts/m", at);
        assert!(
            body.contains("object: db1/000000010000000000000003.zst\n"),
            "{body}"
        );
        assert!(body.contains("receiver: walrcv_a\n"), "{body}");
        assert!(body.contains("found: 2026-12-07T23:40:05Z\n"), "{body}");
        assert!(
            body.contains(&format!(
                "local file: 4 bytes, CRC-32C {:08x}",
                crc32c::crc32c(b"ours")
            )),
            "{body}"
        );
        assert!(body.contains("object in the bucket: 16 bytes"), "{body}");
        assert!(body.contains("db1/conflicts/m"), "{body}");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc(leap), "2000-02-29T00:00:00Z");
        let end = UNIX_EPOCH + Duration::from_secs(1_798_761_599);
        assert_eq!(utc(end), "2026-12-31T23:59:59Z");
        assert_eq!(
            utc(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
    }
}
