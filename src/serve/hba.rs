//! `--serve-hba FILE`: who may connect, in pg_hba.conf syntax (the subset
//! that applies to walrcv), parsed and matched sans-IO. Lines are
//! `host|hostssl|hostnossl DATABASE USER ADDRESS METHOD [clientcert=...]`,
//! the address as CIDR (`10.0.0.0/8`, `::1/128`), an address and a mask in
//! two columns, or `all`; methods `trust`, `reject`, `scram-sha-256`, `cert`
//! (hostssl only; the certificate's CN must be the user name, PostgreSQL's
//! default without a map); `clientcert=verify-ca|verify-full` on hostssl
//! lines asks for a verified client certificate on top of the method;
//! `map=NAME` on a `cert` or `clientcert=verify-full` line maps the CN to
//! user names through `--serve-ident` ([`super::ident`]). As in
//! PostgreSQL, the first line matching the connection decides, only the
//! database keyword `replication` matches a replication connection (not
//! `all`), and a connection no line matches is refused.

use std::net::IpAddr;
use std::path::Path;

/// How a matching line authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Trust,
    Reject,
    ScramSha256,
    Cert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnType {
    Host,
    HostSsl,
    HostNoSsl,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Addr {
    All,
    Net { ip: IpAddr, prefix: u32 },
}

/// What a line's `clientcert` option (or the `cert` method) asks of the
/// client's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    /// A certificate the CA (`--serve-ssl-ca`) verifies.
    VerifyCa,
    /// That, and its common name equal to the user name.
    VerifyFull,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    conn: ConnType,
    users: Vec<String>,
    addr: Addr,
    pub method: Method,
    /// A client certificate required (always `VerifyFull` for `cert`).
    pub clientcert: Option<ClientCert>,
    /// `map=`: the user name map (`--serve-ident`) from the certificate's
    /// CN to user names, instead of the CN itself.
    pub map: Option<String>,
    /// Line number in the file, for the logs.
    pub line: usize,
}

/// A refused file: line and reason, as PostgreSQL reports pg_hba.conf errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} of the hba file: {what}")]
pub struct HbaError {
    pub line: usize,
    pub what: String,
}

/// The rules of a file.
#[derive(Debug, Clone, Default)]
pub struct Hba {
    rules: Vec<Rule>,
}

/// Reads and parses `path`.
pub fn load(path: &Path) -> Result<Hba, String> {
    super::conf::load(path, parse)
}

/// Parses the text of a file.
pub fn parse(text: &str) -> Result<Hba, HbaError> {
    let mut rules = Vec::new();
    for (line, fields) in super::conf::rules(text) {
        let err = |what: String| HbaError { line, what };
        let conn = match fields[0] {
            "host" => ConnType::Host,
            "hostssl" => ConnType::HostSsl,
            "hostnossl" => ConnType::HostNoSsl,
            // walrcv listens on TCP only: a local line can never match.
            "local" => continue,
            other => {
                return Err(err(format!(
                    "connection type \"{other}\" is not supported (host, hostssl, hostnossl)"
                )))
            }
        };
        let [_, database, users, rest @ ..] = fields.as_slice() else {
            return Err(err("end-of-line before the address".into()));
        };
        let (addr, method_at) = parse_addr(rest).map_err(err)?;
        let method = match rest.get(method_at).copied() {
            Some("trust") => Method::Trust,
            Some("reject") => Method::Reject,
            Some("scram-sha-256") => Method::ScramSha256,
            Some("cert") => Method::Cert,
            Some(other) => {
                return Err(err(format!(
                    "authentication method \"{other}\" is not supported by walrcv serve (trust, reject, scram-sha-256, cert)"
                )))
            }
            None => return Err(err("end-of-line before authentication method".into())),
        };
        let Options { clientcert, map } =
            parse_options(conn, method, &rest[method_at + 1..]).map_err(err)?;
        // Only `replication` matches a replication connection; lines for
        // other databases never apply to walrcv.
        if !database.split(',').any(|d| d == "replication") {
            continue;
        }
        rules.push(Rule {
            conn,
            users: users.split(',').map(str::to_owned).collect(),
            addr,
            method,
            clientcert,
            map,
            line,
        });
    }
    Ok(Hba { rules })
}

/// The options after the method.
#[derive(Debug, Default)]
struct Options {
    clientcert: Option<ClientCert>,
    map: Option<String>,
}

/// The options after the method (`clientcert`, `map`), checked as
/// PostgreSQL checks them when it loads pg_hba.conf.
fn parse_options(conn: ConnType, method: Method, options: &[&str]) -> Result<Options, String> {
    let mut clientcert = None;
    let mut map = None;
    for option in options {
        let (name, value) = option
            .split_once('=')
            .ok_or_else(|| format!("authentication option not in name=value format: {option}"))?;
        if name == "map" {
            map = Some(value.to_owned());
            continue;
        }
        if name != "clientcert" {
            return Err(format!(
                "authentication option \"{name}\" is not supported by walrcv serve (clientcert, map)"
            ));
        }
        if conn != ConnType::HostSsl {
            return Err("clientcert can only be configured for \"hostssl\" rows".into());
        }
        clientcert =
            Some(match value {
                "verify-full" => ClientCert::VerifyFull,
                "verify-ca" if method == Method::Cert => return Err(
                    "clientcert only accepts \"verify-full\" when using \"cert\" authentication"
                        .into(),
                ),
                "verify-ca" => ClientCert::VerifyCa,
                other => {
                    return Err(format!(
                        "invalid value for clientcert: \"{other}\" (verify-ca, verify-full)"
                    ))
                }
            });
    }
    if method == Method::Cert {
        if conn != ConnType::HostSsl {
            return Err("cert authentication is only supported on hostssl connections".into());
        }
        clientcert = Some(ClientCert::VerifyFull);
    }
    // The only name walrcv maps is a certificate's CN.
    if map.is_some() && clientcert != Some(ClientCert::VerifyFull) {
        return Err(
            "authentication option \"map\" applies only to cert lines and clientcert=verify-full in walrcv serve"
                .into(),
        );
    }
    Ok(Options { clientcert, map })
}

/// The address (one or two columns) and where the method column is.
fn parse_addr(rest: &[&str]) -> Result<(Addr, usize), String> {
    let first = rest
        .first()
        .ok_or_else(|| "end-of-line before the address".to_owned())?;
    if *first == "all" {
        return Ok((Addr::All, 1));
    }
    if let Some((ip, prefix)) = first.split_once('/') {
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("invalid IP address \"{ip}\""))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix
            .parse::<u32>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("invalid CIDR mask in address \"{first}\""))?;
        return Ok((Addr::Net { ip, prefix }, 1));
    }
    let ip: IpAddr = first.parse().map_err(|_| {
        format!("invalid IP address \"{first}\" (host names are not supported by walrcv serve)")
    })?;
    let mask: IpAddr = rest
        .get(1)
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| "an IP address without a CIDR mask needs a mask column".to_owned())?;
    let prefix = match mask {
        IpAddr::V4(m) => u32::from(m).leading_ones(),
        IpAddr::V6(m) => u128::from(m).leading_ones(),
    };
    Ok((Addr::Net { ip, prefix }, 2))
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u32) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V4(_)) => a
            .to_ipv4_mapped()
            .is_some_and(|a4| in_net(IpAddr::V4(a4), net, prefix)),
        _ => false,
    }
}

impl Hba {
    /// The first rule matching a replication connection of `user` from
    /// `addr`, over TLS or not.
    pub fn find(&self, user: &str, addr: IpAddr, tls: bool) -> Option<&Rule> {
        self.rules.iter().find(|r| {
            let conn_ok = match r.conn {
                ConnType::Host => true,
                ConnType::HostSsl => tls,
                ConnType::HostNoSsl => !tls,
            };
            let user_ok = r.users.iter().any(|u| u == "all" || u == user);
            let addr_ok = match &r.addr {
                Addr::All => true,
                Addr::Net { ip, prefix } => in_net(addr, *ip, *prefix),
            };
            conn_ok && user_ok && addr_ok
        })
    }

    /// Whether some line asks for client certificates (which need
    /// `--serve-ssl-ca`).
    pub fn wants_client_certs(&self) -> bool {
        self.rules.iter().any(|r| r.clientcert.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The lines naming a user name map: (line, map).
    pub fn maps(&self) -> impl Iterator<Item = (usize, &str)> {
        self.rules
            .iter()
            .filter_map(|r| Some((r.line, r.map.as_deref()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# TYPE  DATABASE     USER   ADDRESS        METHOD
local   replication  all                   trust
hostssl replication  rep    10.0.0.0/8     scram-sha-256
host    replication  bad    0.0.0.0/0      reject
host    all          all    127.0.0.1/32   trust   # not for replication
hostnossl replication rep   127.0.0.1 255.255.255.255 trust
hostssl replication  a,b    ::1/128        cert
hostssl replication  c      ::1/128        scram-sha-256 clientcert=verify-ca
";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn first_matching_line_decides() {
        let hba = parse(FILE).unwrap();
        let m = |u, a, tls| hba.find(u, ip(a), tls).map(|r| (r.method, r.line));
        assert_eq!(m("rep", "10.1.2.3", true), Some((Method::ScramSha256, 3)));
        assert_eq!(m("rep", "10.1.2.3", false), None);
        assert_eq!(m("bad", "10.1.2.3", true), Some((Method::Reject, 4)));
        // `all` does not match replication: line 5 is skipped.
        assert_eq!(m("other", "127.0.0.1", false), None);
        assert_eq!(m("rep", "127.0.0.1", false), Some((Method::Trust, 6)));
        assert_eq!(m("rep", "127.0.0.1", true), None);
        assert_eq!(m("b", "::1", true), Some((Method::Cert, 7)));
        assert_eq!(m("c", "::1", true), Some((Method::ScramSha256, 8)));
        assert_eq!(m("d", "::1", true), None);
        let cc = |u| hba.find(u, ip("::1"), true).and_then(|r| r.clientcert);
        assert_eq!(cc("a"), Some(ClientCert::VerifyFull));
        assert_eq!(cc("c"), Some(ClientCert::VerifyCa));
        assert_eq!(
            hba.find("rep", ip("10.0.0.1"), true).unwrap().clientcert,
            None
        );
        assert!(hba.wants_client_certs());
        assert!(!parse("host replication all all trust")
            .unwrap()
            .wants_client_certs());
        assert_eq!(
            m("rep", "::ffff:10.0.0.1", true),
            Some((Method::ScramSha256, 3))
        );
    }

    #[test]
    fn maps_on_cert_and_verify_full_lines() {
        let hba = parse(
            "hostssl replication all 10.0.0.0/8 cert map=certs\n\
             hostssl replication rep all scram-sha-256 clientcert=verify-full map=ops\n\
             hostssl replication all all cert\n",
        )
        .unwrap();
        let map = |u, a| hba.find(u, ip(a), true).and_then(|r| r.map.clone());
        assert_eq!(map("anyone", "10.0.0.1").as_deref(), Some("certs"));
        assert_eq!(map("rep", "127.0.0.1").as_deref(), Some("ops"));
        assert_eq!(map("other", "127.0.0.1"), None);
        assert_eq!(hba.maps().collect::<Vec<_>>(), [(1, "certs"), (2, "ops")]);
    }

    #[test]
    fn refused_lines() {
        for (bad, needle) in [
            ("host replication all 10.0.0.0/8 md5", "md5"),
            ("host replication all db.example.org trust", "host names"),
            ("host replication all 10.0.0.0/33 trust", "CIDR"),
            ("hostgssenc replication all all trust", "hostgssenc"),
            ("host replication all", "address"),
            ("host replication all all", "method"),
            ("host replication all all cert", "only supported on hostssl"),
            (
                "host replication all all trust clientcert=verify-ca",
                "hostssl",
            ),
            (
                "hostssl replication all all cert clientcert=verify-ca",
                "verify-full",
            ),
            (
                "hostssl replication all all trust clientcert=yes",
                "invalid value",
            ),
            (
                "hostssl replication all all trust map=x",
                "\"map\" applies only",
            ),
            (
                "hostssl replication all all trust clientcert=verify-ca map=x",
                "\"map\" applies only",
            ),
            ("hostssl replication all all trust ident=x", "\"ident\""),
            ("hostssl replication all all trust junk", "name=value"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.to_string().contains(needle), "{bad}: {e}");
            assert_eq!(e.line, 1);
        }
        assert!(parse("").unwrap().is_empty());
    }
}
