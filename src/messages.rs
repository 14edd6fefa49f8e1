//! The one place that decides how walrcv's own messages on stderr begin.
//!
//! Invoked as `walrcv`: `walrcv: error: ...`, and log lines as
//! tracing-subscriber writes them. Invoked as `pg_receivewal` (a symlink, the
//! Barman drop-in): PostgreSQL's frontend format (`pg_log_error`,
//! `pg_log_warning`, `pg_log_error_hint` in `src/common/logging.c`), so
//! scripts and alerts written against pg_receivewal keep matching:
//!
//! ```text
//! pg_receivewal: error: could not connect to server ...
//! pg_receivewal: warning: ...
//! pg_receivewal: hint: Try "pg_receivewal --help" for more information.
//! pg_receivewal: starting log streaming at 0/3000000 (timeline 1)
//! ```
//!
//! Informational lines carry no level word, as `pg_log_info` prints them;
//! debug lines say `debug:` as `pg_log_debug` does.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Under which name the binary runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    Walrcv,
    PgReceivewal,
}

impl Program {
    /// From argv[0]'s base name.
    pub fn from_invoked_name(name: &str) -> Program {
        if name == crate::cli::PG_RECEIVEWAL {
            Program::PgReceivewal
        } else {
            Program::Walrcv
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Program::Walrcv => "walrcv",
            Program::PgReceivewal => crate::cli::PG_RECEIVEWAL,
        }
    }

    /// `NAME: error: MESSAGE`.
    pub fn error_line(self, message: impl fmt::Display) -> String {
        format!("{}: error: {message}", self.name())
    }

    /// `NAME: warning: MESSAGE`.
    pub fn warning_line(self, message: impl fmt::Display) -> String {
        format!("{}: warning: {message}", self.name())
    }

    /// The "more information" hint after a usage error: pg_receivewal's own
    /// wording under its name (`pg_log_error_hint`), walrcv's otherwise.
    pub fn usage_hint(self) -> String {
        match self {
            Program::Walrcv => "Try \"walrcv stream --help\" for more information.".into(),
            Program::PgReceivewal => {
                "pg_receivewal: hint: Try \"pg_receivewal --help\" for more information.".into()
            }
        }
    }

    /// The word PostgreSQL's frontend logging puts after the program name.
    fn level_word(level: Level) -> &'static str {
        match level {
            Level::ERROR => "error: ",
            Level::WARN => "warning: ",
            Level::INFO => "",
            Level::DEBUG | Level::TRACE => "debug: ",
        }
    }
}

/// Log lines as PostgreSQL's frontend programs write them (`PROGRAM: error:
/// message key=value ...`), for the text log format under the pg_receivewal
/// name: no timestamp, no colour.
#[derive(Debug, Clone, Copy)]
pub struct PgFrontendFormat(pub Program);

impl<S, N> FormatEvent<S, N> for PgFrontendFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = Program::level_word(*event.metadata().level());
        write!(writer, "{}: {level}", self.0.name())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The text of a clap error without clap's own `error: ` and usage block:
/// its first line, for a `NAME: error:` line.
pub fn clap_error_message(rendered: &str) -> String {
    let first = rendered.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn lines_under_each_name() {
        let pg = Program::from_invoked_name("pg_receivewal");
        assert_eq!(pg, Program::PgReceivewal);
        assert_eq!(pg.error_line("x y"), "pg_receivewal: error: x y");
        assert_eq!(pg.warning_line("w"), "pg_receivewal: warning: w");
        assert_eq!(
            pg.usage_hint(),
            "pg_receivewal: hint: Try \"pg_receivewal --help\" for more information."
        );
        let w = Program::from_invoked_name("walrcv");
        assert_eq!(w.error_line("x"), "walrcv: error: x");
        assert_eq!(
            Program::from_invoked_name("pg_receivewal15"),
            Program::Walrcv
        );
    }

    #[test]
    fn clap_errors_lose_their_decoration() {
        let e = "error: unexpected argument '--bogus' found\n\nUsage: pg_receivewal [OPTIONS]\n";
        assert_eq!(clap_error_message(e), "unexpected argument '--bogus' found");
        assert_eq!(clap_error_message(""), "");
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn log_events_in_postgresql_frontend_format() {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::DEBUG)
            .with_writer(move || out.clone())
            .with_ansi(false)
            .event_format(PgFrontendFormat(Program::PgReceivewal))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!("could not connect");
            tracing::warn!(segment = "000000010000000000000001", "gap");
            tracing::info!("starting log streaming");
            tracing::debug!("detail");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "pg_receivewal: error: could not connect\n\
             pg_receivewal: warning: gap segment=\"000000010000000000000001\"\n\
             pg_receivewal: starting log streaming\n\
             pg_receivewal: debug: detail\n"
        );
    }
}
