//! The connection flags every subcommand that connects takes (`-d`, `-h`,
//! `-p`, `-U`, pg_receivewal's spelling), as one clap struct that `stream` and
//! `status` flatten, and the one function that turns them into [`Overrides`].
//! Kept beside [`Overrides`] so that both commands spell the flags, and
//! their precedence over `-d`, in a single place.

use super::Overrides;

/// `-d`, `-h`, `-p`, `-U`: the connection string and the keys that override
/// its own (pg_receivewal's precedence, see [`resolve`](super::resolve)).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectionArgs {
    /// Connection string. Without -d, taken from the environment variable
    /// WALRCV_CONNINFO when set (off the command line, where every local
    /// user can read it: the systemd units do this).
    #[arg(
        short = 'd',
        long = "dbname",
        value_name = "CONNSTR",
        env = "WALRCV_CONNINFO",
        hide_env_values = true
    )]
    pub dbname: Option<String>,
    /// Database server host or socket directory.
    #[arg(short = 'h', long = "host", value_name = "HOSTNAME")]
    pub host: Option<String>,
    /// Database server port number.
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    pub port: Option<String>,
    /// Connect as the specified database user.
    #[arg(short = 'U', long = "username", value_name = "NAME")]
    pub username: Option<String>,
}

impl ConnectionArgs {
    /// The connection keys given by flags, which override the same keys of
    /// `-d` (pg_receivewal's precedence). The password is left to the caller
    /// (`stream -W` prompts for it).
    pub fn overrides(&self) -> Overrides {
        Overrides {
            dbname: self.dbname.clone(),
            host: self.host.clone(),
            port: self.port.clone(),
            user: self.username.clone(),
            password: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    #[command(disable_help_flag = true)]
    struct Cmd {
        #[command(flatten)]
        conn: ConnectionArgs,
    }

    #[test]
    fn each_flag_lands_in_its_override_and_no_password() {
        let c = Cmd::try_parse_from([
            "x",
            "-d",
            "host=a user=b",
            "-h",
            "db",
            "-p",
            "5433",
            "-U",
            "u",
        ])
        .unwrap();
        let o = c.conn.overrides();
        assert_eq!(o.dbname.as_deref(), Some("host=a user=b"));
        assert_eq!(o.host.as_deref(), Some("db"));
        assert_eq!(o.port.as_deref(), Some("5433"));
        assert_eq!(o.user.as_deref(), Some("u"));
        assert!(o.password.is_none());
        let o = Cmd::try_parse_from(["x", "--host=h", "--username=v"])
            .unwrap()
            .conn
            .overrides();
        assert_eq!(
            (o.host.as_deref(), o.user.as_deref()),
            (Some("h"), Some("v"))
        );
        assert!(o.port.is_none());
    }
}
