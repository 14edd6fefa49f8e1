//! The `walrcv` binary: parse the command line, set up logging and signals,
//! dispatch, and map results to documented exit codes.

use std::ffi::OsString;
use std::fmt::Display;
use std::path::Path;
use std::sync::OnceLock;

use clap::Parser;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use walrcv::cli::{self, Cli, Command, LogFormat, PgReceivewalCli, StreamAction, StreamArgs};
use walrcv::conninfo::{self, ProcessEnv};
use walrcv::messages::{self, PgFrontendFormat, Program};
use walrcv::receiver::{self, exit, Outcome, ReceiverError, StreamOptions};
use walrcv::shutdown::Shutdown;

fn main() {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let invoked_as = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let program = Program::from_invoked_name(&invoked_as);
    let _ = PROGRAM.set(program);
    let code = if program == Program::PgReceivewal {
        if argv.iter().skip(1).any(|a| a == "-V" || a == "--version") {
            println!("{}", cli::pg_receivewal_version());
            std::process::exit(0);
        }
        let cli = parse_pg_receivewal_cli(argv);
        stream_command(cli.stream, cli.log_format)
    } else {
        let cli = parse_cli(argv);
        match cli.command {
            Command::Stream(args) => stream_command(*args, cli.log_format),
            Command::Verify(args) => {
                init_logging(0, cli.log_format);
                walrcv::tools::verify::run(&args)
            }
            Command::GenerateAssets(args) => walrcv::assets::run(&args),
            Command::Status(args) => {
                init_logging(0, cli.log_format);
                walrcv::tools::status::run(&args)
            }
            Command::Restore(args) => {
                init_logging(0, cli.log_format);
                walrcv::tools::restore::run(&args)
            }
            Command::Cleanup(args) => {
                init_logging(0, cli.log_format);
                walrcv::tools::cleanup::run(&args)
            }
            Command::Serve(args) => {
                // A server: its connections and standbys' positions are news.
                init_logging(1, cli.log_format);
                walrcv::serve::run(&args)
            }
        }
    };
    std::process::exit(code);
}

/// Parses `walrcv SUBCOMMAND ...`. A usage error exits with clap's status 2,
/// except under `status`, where 2 is CRITICAL in the Nagios convention: there
/// it is UNKNOWN (3), with a summary line a monitoring system can show, and
/// under `restore`, where it is "refused" (200) so that recovery stops.
fn parse_cli(argv: Vec<OsString>) -> Cli {
    let is_status = argv.get(1).is_some_and(|a| a == "status");
    let is_restore = argv.get(1).is_some_and(|a| a == "restore");
    match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) if is_status && e.use_stderr() => {
            let msg = e.kind().to_string();
            let _ = e.print();
            std::process::exit(walrcv::tools::status::usage_error(&msg));
        }
        // A restore_command with a usage error must stop recovery, not be
        // taken for "file not found" (clap's 2) and end it.
        Err(e) if is_restore && e.use_stderr() => {
            let _ = e.print();
            std::process::exit(walrcv::tools::restore::status::REFUSED);
        }
        Err(e) => e.exit(),
    }
}

/// Under the pg_receivewal name, a usage error is reported as pg_receivewal
/// reports one (`pg_receivewal: error: ...` then its hint), with walrcv's
/// exit status for a usage error (2; pg_receivewal says 1, see `docs/src/exit-status.md`);
/// `--help` is printed by clap as usual.
fn parse_pg_receivewal_cli(argv: Vec<OsString>) -> PgReceivewalCli {
    match PgReceivewalCli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            let program = Program::PgReceivewal;
            let message = messages::clap_error_message(&e.render().to_string());
            eprintln!("{}", program.error_line(message));
            eprintln!("{}", program.usage_hint());
            std::process::exit(exit::CONFIG);
        }
        Err(e) => e.exit(),
    }
}

/// The name the binary runs under: it decides how messages on stderr begin.
static PROGRAM: OnceLock<Program> = OnceLock::new();

fn program() -> Program {
    PROGRAM.get().copied().unwrap_or(Program::Walrcv)
}

/// The log format chosen, once logging is set up: errors printed outside the
/// log follow it too.
static LOG_FORMAT: OnceLock<LogFormat> = OnceLock::new();

fn init_logging(verbose: u8, format: LogFormat) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_env("WALRCV_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    match format {
        // Under the pg_receivewal name: PostgreSQL's frontend line format.
        LogFormat::Text if program() == Program::PgReceivewal => builder
            .with_ansi(false)
            .event_format(PgFrontendFormat(Program::PgReceivewal))
            .init(),
        LogFormat::Text => builder
            // Barman and log collectors read stderr through a pipe: no colour codes there.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // The event's fields (message first) at top level beside timestamp
        // and level, as log shippers expect; never colour codes.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_ansi(false)
            .init(),
    }
    let _ = LOG_FORMAT.set(format);
}

/// An error for the operator, whatever the log level: a plain
/// `walrcv: error:` line on stderr, or with `--log-format json` an ERROR
/// object like every other line (it is at the level every filter but "off"
/// shows).
fn print_error(message: impl Display) {
    if LOG_FORMAT.get() == Some(&LogFormat::Json) {
        tracing::error!("{message}");
    } else {
        eprintln!("{}", program().error_line(message));
    }
}

fn stream_command(args: StreamArgs, log_format: LogFormat) -> i32 {
    init_logging(args.verbose, log_format);
    walrcv::service::init();
    #[cfg(feature = "failpoints")]
    if let Err(e) = walrcv::archive::failpoints::setup_from_env() {
        print_error(e);
        return exit::CONFIG;
    }
    let action = match args.validate() {
        Ok(a) => a,
        Err(msg) => {
            print_error(msg);
            if LOG_FORMAT.get() != Some(&LogFormat::Json) {
                eprintln!("{}", program().usage_hint());
            }
            return exit::CONFIG;
        }
    };
    let mut overrides = receiver::conn_overrides(&args);
    if args.password {
        match rpassword::prompt_password("Password: ") {
            Ok(p) => overrides.password = Some(p),
            Err(e) => {
                print_error(format_args!("could not read the password: {e}"));
                return exit::CONFIG;
            }
        }
    }
    let conn = match conninfo::resolve(&overrides, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            print_error(e);
            return exit::CONFIG;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            print_error(format_args!("could not start the runtime: {e}"));
            return exit::DISCONNECTED;
        }
    };
    let mut opts = StreamOptions::from_args(&args, conn);
    if action == StreamAction::Stream {
        if let Some(listen) = &args.serve {
            match start_serving(&opts.directory, listen, &args) {
                Ok(live) => opts.live = Some(live),
                Err(e) => {
                    print_error(format_args!("--serve: {e}"));
                    return exit::CONFIG;
                }
            }
        }
    }
    runtime.block_on(async move {
        let result = match action {
            StreamAction::CreateSlot => receiver::slots::create(&opts, args.if_not_exists)
                .await
                .map(|_| None),
            StreamAction::DropSlot => receiver::slots::drop(&opts).await.map(|_| None),
            StreamAction::Stream => {
                let shutdown = match signals() {
                    Ok(s) => s,
                    Err(e) => {
                        // Without them a stop could never be seen: refuse to run.
                        print_error(format_args!(
                            "could not install the SIGINT and SIGTERM handlers: {e}"
                        ));
                        return exit::DISCONNECTED;
                    }
                };
                let uploader = match start_uploader(&args) {
                    Ok(u) => u,
                    Err(e) => {
                        print_error(e);
                        return exit::CONFIG;
                    }
                };
                let result = receiver::run(opts, shutdown).await.map(Some);
                if let Some(uploader) = uploader {
                    uploader.finish(UPLOAD_FINISH_LIMIT);
                }
                result
            }
        };
        match result {
            Ok(Some(Outcome::EndposReached)) => {
                tracing::info!("end position reached");
                exit::OK
            }
            Ok(_) => exit::OK,
            Err(e) => report(&e),
        }
    })
}

/// The longest wait for the uploader's last pass at a stop.
const UPLOAD_FINISH_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// `--upload`: the uploader thread, started beside the receiver.
fn start_uploader(args: &StreamArgs) -> Result<Option<walrcv::upload::Uploader>, String> {
    let Some(url) = &args.upload else {
        return Ok(None);
    };
    let store = walrcv::objstore::Store::from_env(url).map_err(|e| e.to_string())?;
    let receiver_id = match &args.upload_receiver_id {
        Some(id) if walrcv::objstore::partial::valid_receiver(id) => id.clone(),
        Some(id) => {
            return Err(format!(
                "invalid --upload-receiver-id \"{id}\": 1 to 64 of A-Z a-z 0-9 _ -"
            ))
        }
        None => walrcv::upload::default_receiver_id(args.slot.as_deref()),
    };
    let directory = args.directory.clone().unwrap_or_default();
    let opts = walrcv::upload::UploadOptions {
        directory,
        partial_interval: std::time::Duration::from_secs(args.upload_partial_interval.into()),
        keep_local: args.upload_keep_local,
        receiver_id,
    };
    walrcv::upload::Uploader::start(store, opts)
        .map(Some)
        .map_err(|e| format!("could not start the uploader: {e}"))
}

/// `stream --serve`: the walsender on the archive directory, on a thread of
/// its own, capped at what the receiver publishes into the returned end.
fn start_serving(
    dir: &std::path::Path,
    listen: &str,
    args: &StreamArgs,
) -> Result<walrcv::archive::live::LiveEnd, walrcv::serve::server::ServeError> {
    let live = walrcv::archive::live::LiveEnd::default();
    walrcv::serve::spawn_live(
        dir.to_path_buf(),
        listen.to_owned(),
        args.serve_options.clone(),
        live.subscribe(),
    )?;
    Ok(live)
}

fn report(e: &ReceiverError) -> i32 {
    // Not an ordinary log line: it must show whatever the log level.
    print_error(e);
    e.exit_code()
}

/// A watch that turns true on SIGINT or SIGTERM. The handlers are installed
/// here, before anything else runs: a failure is an error, not a watch whose
/// sender is gone (which used to turn the reconnection backoff into a busy
/// loop: a closed watch reports a change at once, forever).
fn signals() -> std::io::Result<Shutdown> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("received a stop signal: finishing the current write, then exiting");
        walrcv::service::stopping();
        let _ = tx.send(true);
        // Keep the sender: the watch stays open (and true) until the exit.
        std::future::pending::<()>().await;
    });
    Ok(rx)
}
