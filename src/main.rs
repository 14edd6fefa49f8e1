//! The `walrcv` binary: parse the command line, set up logging and signals,
//! dispatch, and map results to documented exit codes.

use std::ffi::OsString;
use std::path::Path;

use clap::Parser;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use walrcv::cli::{self, Cli, Command, PgReceivewalCli, StreamAction, StreamArgs};
use walrcv::conninfo::{self, ProcessEnv};
use walrcv::receiver::{self, exit, Outcome, ReceiverError, StreamOptions};
use walrcv::shutdown::Shutdown;

fn main() {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let invoked_as = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let code = if invoked_as == cli::PG_RECEIVEWAL {
        if argv.iter().skip(1).any(|a| a == "-V" || a == "--version") {
            println!("{}", cli::pg_receivewal_version());
            std::process::exit(0);
        }
        let args = PgReceivewalCli::parse_from(argv).stream;
        stream_command(args)
    } else {
        match parse_cli(argv) {
            Command::Stream(args) => stream_command(args),
            Command::Verify(args) => {
                init_logging(0);
                walrcv::tools::verify::run(&args)
            }
            Command::Status(args) => {
                init_logging(0);
                walrcv::tools::status::run(&args)
            }
        }
    };
    std::process::exit(code);
}

/// Parses `walrcv SUBCOMMAND ...`. A usage error exits with clap's status 2,
/// except under `status`, where 2 is CRITICAL in the Nagios convention: there
/// it is UNKNOWN (3), with a summary line a monitoring system can show.
fn parse_cli(argv: Vec<OsString>) -> Command {
    let is_status = argv.get(1).is_some_and(|a| a == "status");
    match Cli::try_parse_from(argv) {
        Ok(cli) => cli.command,
        Err(e) if is_status && e.use_stderr() => {
            let msg = e.kind().to_string();
            let _ = e.print();
            std::process::exit(walrcv::tools::status::usage_error(&msg));
        }
        Err(e) => e.exit(),
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_env("WALRCV_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        // Barman and log collectors read stderr through a pipe: no colour codes there.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn stream_command(args: StreamArgs) -> i32 {
    init_logging(args.verbose);
    #[cfg(feature = "failpoints")]
    if let Err(e) = walrcv::archive::failpoints::setup_from_env() {
        eprintln!("walrcv: error: {e}");
        return exit::CONFIG;
    }
    let action = match args.validate() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("walrcv: error: {msg}");
            eprintln!("Try \"walrcv stream --help\" for more information.");
            return exit::CONFIG;
        }
    };
    let mut overrides = receiver::conn_overrides(&args);
    if args.password {
        match rpassword::prompt_password("Password: ") {
            Ok(p) => overrides.password = Some(p),
            Err(e) => {
                eprintln!("walrcv: error: could not read the password: {e}");
                return exit::CONFIG;
            }
        }
    }
    let conn = match conninfo::resolve(&overrides, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("walrcv: error: {e}");
            return exit::CONFIG;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("walrcv: error: could not start the runtime: {e}");
            return exit::DISCONNECTED;
        }
    };
    let opts = StreamOptions::from_args(&args, conn);
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
                        eprintln!(
                            "walrcv: error: could not install the SIGINT and SIGTERM handlers: {e}"
                        );
                        return exit::DISCONNECTED;
                    }
                };
                receiver::run(opts, shutdown).await.map(Some)
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

fn report(e: &ReceiverError) -> i32 {
    // Plain stderr, not the log: it must show whatever the log level.
    eprintln!("walrcv: error: {e}");
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
        let _ = tx.send(true);
        // Keep the sender: the watch stays open (and true) until the exit.
        std::future::pending::<()>().await;
    });
    Ok(rx)
}
