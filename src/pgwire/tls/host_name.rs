//! libpq's check of the server certificate's names against the host name
//! (`verify-full`), as a pure function: `pq_verify_peer_name_matches_certificate`
//! and its helpers in fe-secure-common.c, and
//! `pgtls_verify_peer_name_matches_certificate_guts` in fe-secure-openssl.c.
//!
//! The rules: every subjectAltName of type dNSName or iPAddress is examined in
//! order, and the first match (or error) ends the search; the Common Name is
//! examined only when no SAN has the host's type (an IP address host looks
//! at iPAddress SANs, any other host at dNSName SANs). A dNSName matches
//! case-insensitively, or as a wildcard `*.rest` standing for exactly one
//! leftmost label; an iPAddress matches when the host, read as an address,
//! has the same bytes. The host compared is the `host` given, never the
//! `hostaddr`.

use std::net::Ipv6Addr;

/// The names of a certificate libpq looks at, as raw bytes (a name may hold
/// anything, including a NUL, which is an error).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateNames {
    /// The subjectAltName entries of type dNSName and iPAddress, in order.
    pub alt_names: Vec<AltName>,
    /// The first Common Name of the subject, if any.
    pub common_name: Option<Vec<u8>>,
}

/// One subjectAltName entry libpq examines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AltName {
    Dns(Vec<u8>),
    /// The address bytes: 4 (IPv4) or 16 (IPv6); anything else is an error.
    Ip(Vec<u8>),
}

/// Why the host name check failed, in libpq's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostNameError {
    #[error("host name must be specified for a verified SSL connection")]
    NoHostName,
    #[error("SSL certificate's name contains embedded null")]
    EmbeddedNull,
    #[error("certificate contains IP address with invalid length {0}")]
    BadIpLength(usize),
    #[error("server certificate for \"{first}\" does not match host name \"{host}\"")]
    Mismatch { first: String, host: String },
    #[error(
        "server certificate for \"{first}\" (and {others} other name{}) does not match host name \"{host}\"",
        if *.others == 1 { "" } else { "s" }
    )]
    MismatchMany {
        first: String,
        others: usize,
        host: String,
    },
    #[error("could not get server's host name from server certificate")]
    NoNames,
}

/// Whether `host` is named by the certificate, as libpq decides for
/// `sslmode=verify-full`. `host` is `None` when only `hostaddr` was given.
pub fn check(host: Option<&str>, names: &CertificateNames) -> Result<(), HostNameError> {
    let host = host
        .filter(|h| !h.is_empty())
        .ok_or(HostNameError::NoHostName)?;
    let host_address = host_address(host);
    let mut examined = 0usize;
    let mut first: Option<String> = None;
    let mut check_common_name = true;
    for alt in &names.alt_names {
        let is_ip = matches!(alt, AltName::Ip(_));
        if is_ip == host_address.is_some() {
            // A SAN of the host's own type: the CN is not looked at.
            check_common_name = false;
        }
        examined += 1;
        let (matched, shown) = match alt {
            AltName::Dns(name) => name_matches(host, name)?,
            AltName::Ip(bytes) => ip_matches(host_address.as_deref(), bytes)?,
        };
        first.get_or_insert(shown);
        if matched {
            return Ok(());
        }
    }
    if check_common_name {
        if let Some(cn) = &names.common_name {
            examined += 1;
            let (matched, shown) = name_matches(host, cn)?;
            first.get_or_insert(shown);
            if matched {
                return Ok(());
            }
        }
    }
    let host = host.to_string();
    Err(match (first, examined) {
        (Some(first), 1) => HostNameError::Mismatch { first, host },
        (Some(first), n) => HostNameError::MismatchMany {
            first,
            others: n - 1,
            host,
        },
        (None, _) => HostNameError::NoNames,
    })
}

/// The host as address bytes when it is an IP address: IPv4 as `inet_aton`
/// reads it (libpq accepts `127.1` and the other old notations), else IPv6.
fn host_address(host: &str) -> Option<Vec<u8>> {
    if let Some(v4) = inet_aton(host) {
        return Some(v4.to_vec());
    }
    host.parse::<Ipv6Addr>().ok().map(|a| a.octets().to_vec())
}

/// `inet_aton`'s reading of an IPv4 address: one to four parts, each decimal,
/// octal (leading 0) or hexadecimal (0x), the last filling the remaining bytes.
fn inet_aton(text: &str) -> Option<[u8; 4]> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        let (digits, radix) =
            if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
                (hex, 16)
            } else if part.len() > 1 && part.starts_with('0') {
                (&part[1..], 8)
            } else {
                (*part, 10)
            };
        if digits.is_empty() && radix != 16 || !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        values.push(if digits.is_empty() {
            0
        } else {
            u64::from_str_radix(digits, radix).ok()?
        });
    }
    let (last, leading) = values.split_last()?;
    if leading.iter().any(|&v| v > 255) {
        return None;
    }
    let last_bytes = 4 - leading.len();
    if *last >= 1u64 << (8 * last_bytes) {
        return None;
    }
    let mut out = [0u8; 4];
    for (i, v) in leading.iter().enumerate() {
        out[i] = *v as u8;
    }
    let tail = (*last as u32).to_be_bytes();
    out[leading.len()..].copy_from_slice(&tail[4 - last_bytes..]);
    Some(out)
}

/// A dNSName or Common Name against the host: exact (ignoring ASCII case)
/// or as a wildcard. Returns the name as it is shown in messages.
fn name_matches(host: &str, name: &[u8]) -> Result<(bool, String), HostNameError> {
    if name.contains(&0) {
        return Err(HostNameError::EmbeddedNull);
    }
    let shown = String::from_utf8_lossy(name).into_owned();
    let matched = name.eq_ignore_ascii_case(host.as_bytes()) || wildcard_matches(name, host);
    Ok((matched, shown))
}

/// libpq's `wildcard_certificate_match`: `*.` then at least one character;
/// the host ends with the pattern after `*`, and the part the `*` stands for
/// holds no dot.
fn wildcard_matches(pattern: &[u8], host: &str) -> bool {
    let host = host.as_bytes();
    if pattern.len() < 3 || !pattern.starts_with(b"*.") || pattern.len() > host.len() {
        return false;
    }
    let suffix = &pattern[1..];
    let split = host.len() - suffix.len();
    host[split..].eq_ignore_ascii_case(suffix) && !host[..split].contains(&b'.')
}

/// An iPAddress SAN against the host's address bytes (none when the host is
/// a name: never a match). Returns the address as shown in messages.
fn ip_matches(host: Option<&[u8]>, bytes: &[u8]) -> Result<(bool, String), HostNameError> {
    let shown = match bytes.len() {
        4 => std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string(),
        16 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(bytes);
            Ipv6Addr::from(octets).to_string()
        }
        n => return Err(HostNameError::BadIpLength(n)),
    };
    Ok((host == Some(bytes), shown))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(name: &str) -> AltName {
        AltName::Dns(name.as_bytes().to_vec())
    }

    fn names(alt: Vec<AltName>, cn: Option<&str>) -> CertificateNames {
        CertificateNames {
            alt_names: alt,
            common_name: cn.map(|c| c.as_bytes().to_vec()),
        }
    }

    #[test]
    fn the_common_name_alone_as_the_documentation_recipe_makes() {
        let n = names(vec![], Some("localhost"));
        assert_eq!(check(Some("localhost"), &n), Ok(()));
        assert_eq!(check(Some("LocalHost"), &n), Ok(()));
        assert_eq!(
            check(Some("db.example"), &n).unwrap_err().to_string(),
            "server certificate for \"localhost\" does not match host name \"db.example\""
        );
    }

    #[test]
    fn a_dns_san_hides_the_common_name_from_a_host_name() {
        let n = names(vec![dns("db.example")], Some("localhost"));
        assert_eq!(check(Some("db.example"), &n), Ok(()));
        assert_eq!(
            check(Some("localhost"), &n).unwrap_err().to_string(),
            "server certificate for \"db.example\" does not match host name \"localhost\""
        );
    }

    #[test]
    fn an_ip_host_falls_back_to_the_common_name_without_ip_sans() {
        let n = names(vec![dns("db.example")], Some("127.0.0.1"));
        assert_eq!(check(Some("127.0.0.1"), &n), Ok(()));
        let with_ip = names(
            vec![dns("db.example"), AltName::Ip(vec![10, 0, 0, 1])],
            Some("127.0.0.1"),
        );
        assert_eq!(
            check(Some("127.0.0.1"), &with_ip).unwrap_err().to_string(),
            "server certificate for \"db.example\" (and 1 other name) does not match host name \"127.0.0.1\""
        );
        assert_eq!(check(Some("10.0.0.1"), &with_ip), Ok(()));
        // inet_aton's short form.
        assert_eq!(check(Some("10.1"), &with_ip), Ok(()));
        let v6 = names(
            vec![AltName::Ip(Ipv6Addr::LOCALHOST.octets().to_vec())],
            None,
        );
        assert_eq!(check(Some("::1"), &v6), Ok(()));
    }

    #[test]
    fn wildcards_stand_for_one_leftmost_label() {
        let n = names(vec![dns("*.example.org")], None);
        assert_eq!(check(Some("db.example.org"), &n), Ok(()));
        assert_eq!(check(Some("DB.Example.ORG"), &n), Ok(()));
        assert!(check(Some("a.db.example.org"), &n).is_err());
        assert!(check(Some("example.org"), &n).is_err());
        assert!(!wildcard_matches(b"db*.example.org", "db1.example.org"));
    }

    #[test]
    fn errors_as_libpq_words_them() {
        let n = names(vec![dns("a"), dns("b"), dns("c")], None);
        assert_eq!(
            check(Some("x"), &n).unwrap_err().to_string(),
            "server certificate for \"a\" (and 2 other names) does not match host name \"x\""
        );
        assert_eq!(
            check(None, &n).unwrap_err().to_string(),
            "host name must be specified for a verified SSL connection"
        );
        assert_eq!(check(Some(""), &n), Err(HostNameError::NoHostName));
        assert_eq!(
            check(Some("x"), &CertificateNames::default()),
            Err(HostNameError::NoNames)
        );
        let nul = names(vec![AltName::Dns(b"good\0evil".to_vec())], None);
        assert_eq!(check(Some("good"), &nul), Err(HostNameError::EmbeddedNull));
        let bad_ip = names(vec![AltName::Ip(vec![1, 2, 3])], None);
        assert_eq!(
            check(Some("x"), &bad_ip),
            Err(HostNameError::BadIpLength(3))
        );
    }

    #[test]
    fn inet_aton_notations() {
        assert_eq!(inet_aton("127.0.0.1"), Some([127, 0, 0, 1]));
        assert_eq!(inet_aton("127.1"), Some([127, 0, 0, 1]));
        assert_eq!(inet_aton("0x7f.1"), Some([127, 0, 0, 1]));
        assert_eq!(inet_aton("017.0.0.1"), Some([15, 0, 0, 1]));
        assert_eq!(inet_aton("2130706433"), Some([127, 0, 0, 1]));
        assert_eq!(inet_aton("256.0.0.1"), None);
        assert_eq!(inet_aton("localhost"), None);
        assert_eq!(inet_aton("1.2.3.4.5"), None);
        assert_eq!(inet_aton(""), None);
    }
}
