//! The table of libpq's connection keywords: which exist, which environment
//! variable feeds each, which are ignored and which hold secrets.

/// A libpq connection keyword and the environment variable libpq reads for it.
pub(super) struct Keyword {
    pub(super) name: &'static str,
    pub(super) env: Option<&'static str>,
}

const fn kw(name: &'static str, env: Option<&'static str>) -> Keyword {
    Keyword { name, env }
}

/// Every keyword libpq 18 knows. Anything else is [`ConnInfoError::UnknownKey`],
/// as in libpq. `dbname` deliberately has no `PGDATABASE`: pg_receivewal always
/// sets dbname itself, so libpq never reads `PGDATABASE` for it.
/// `fallback_application_name` is accepted and ignored: pg_receivewal's own
/// fallback replaces it.
pub(super) const KEYWORDS: &[Keyword] = &[
    kw("host", Some("PGHOST")),
    kw("hostaddr", Some("PGHOSTADDR")),
    kw("port", Some("PGPORT")),
    kw("user", Some("PGUSER")),
    kw("password", Some("PGPASSWORD")),
    kw("passfile", Some("PGPASSFILE")),
    kw("dbname", None),
    kw("application_name", Some("PGAPPNAME")),
    kw("fallback_application_name", None),
    kw("options", Some("PGOPTIONS")),
    kw("client_encoding", Some("PGCLIENTENCODING")),
    kw("connect_timeout", Some("PGCONNECT_TIMEOUT")),
    kw("keepalives", None),
    kw("keepalives_idle", None),
    kw("keepalives_interval", None),
    kw("keepalives_count", None),
    kw("tcp_user_timeout", None),
    kw("replication", None),
    kw("sslmode", Some("PGSSLMODE")),
    kw("sslnegotiation", Some("PGSSLNEGOTIATION")),
    kw("sslcompression", Some("PGSSLCOMPRESSION")),
    kw("sslcert", Some("PGSSLCERT")),
    kw("sslkey", Some("PGSSLKEY")),
    kw("sslcertmode", Some("PGSSLCERTMODE")),
    kw("sslpassword", None),
    kw("sslrootcert", Some("PGSSLROOTCERT")),
    kw("sslcrl", Some("PGSSLCRL")),
    kw("sslcrldir", Some("PGSSLCRLDIR")),
    kw("sslsni", Some("PGSSLSNI")),
    kw("sslkeylogfile", None),
    kw("ssl_min_protocol_version", Some("PGSSLMINPROTOCOLVERSION")),
    kw("ssl_max_protocol_version", Some("PGSSLMAXPROTOCOLVERSION")),
    kw("min_protocol_version", None),
    kw("max_protocol_version", None),
    kw("requirepeer", Some("PGREQUIREPEER")),
    kw("require_auth", Some("PGREQUIREAUTH")),
    kw("channel_binding", Some("PGCHANNELBINDING")),
    kw("gssencmode", Some("PGGSSENCMODE")),
    kw("krbsrvname", Some("PGKRBSRVNAME")),
    kw("gsslib", Some("PGGSSLIB")),
    kw("gssdelegation", Some("PGGSSDELEGATION")),
    kw("target_session_attrs", Some("PGTARGETSESSIONATTRS")),
    kw("load_balance_hosts", Some("PGLOADBALANCEHOSTS")),
    kw("service", Some("PGSERVICE")),
    kw("scram_client_key", None),
    kw("scram_server_key", None),
    kw("oauth_issuer", None),
    kw("oauth_client_id", None),
    kw("oauth_client_secret", None),
    kw("oauth_scope", None),
];

/// Keywords accepted and ignored because they change nothing about the
/// connections walrcv makes: GSSAPI and OAuth details (walrcv uses neither),
/// `sslcompression` (servers refuse compression since PostgreSQL 14).
pub(super) const IGNORED_KEYWORDS: &[&str] = &[
    "fallback_application_name",
    "sslcompression",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "oauth_issuer",
    "oauth_client_id",
    "oauth_client_secret",
    "oauth_scope",
];

/// Keywords whose values are secrets: never echoed in errors or logs.
pub(super) const SECRET_KEYWORDS: &[&str] = &[
    "password",
    "sslpassword",
    "oauth_client_secret",
    "scram_client_key",
    "scram_server_key",
];

pub(super) fn keyword(name: &str) -> Option<&'static Keyword> {
    KEYWORDS.iter().find(|k| k.name == name)
}

pub(super) fn is_secret(name: &str) -> bool {
    SECRET_KEYWORDS.contains(&name)
}
