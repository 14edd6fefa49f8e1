//! Connection services end to end: `service=NAME` and `PGSERVICE` with a
//! service file (`PGSERVICEFILE`) against a real server.

use std::process::{Command, Output, Stdio};

use crate::support::{walrcv_bin, PgServer};

fn walrcv(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(walrcv_bin());
    c.args(args).stdin(Stdio::null());
    for var in ["PGSERVICE", "PGSERVICEFILE", "PGHOST", "PGPORT", "PGUSER"] {
        c.env_remove(var);
    }
    c.envs(env.iter().copied());
    let out = c.output().unwrap();
    eprintln!(
        "walrcv {args:?} -> {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn service_file_settings_connect() {
    let pg = PgServer::builder().start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pg_service.conf");
    std::fs::write(
        &file,
        format!(
            "# archive servers\n[other]\nhost=192.0.2.1\n\n[arch]\nhost = 127.0.0.1\nport={}\n\
             user=postgres\nsslmode=disable\n",
            pg.port()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let env = [("PGSERVICEFILE", file)];
    let out = walrcv(
        &[
            "stream",
            "-d",
            "service=arch",
            "--create-slot",
            "-S",
            "svc1",
        ],
        &env,
    );
    assert!(out.status.success());
    assert!(pg.slot_exists("svc1"));
    // PGSERVICE names the service when -d does not.
    let env = [("PGSERVICEFILE", file), ("PGSERVICE", "arch")];
    let out = walrcv(&["stream", "--create-slot", "-S", "svc2"], &env);
    assert!(out.status.success());
    assert!(pg.slot_exists("svc2"));
    // A service no file defines: exit 2 with libpq's message, nothing done.
    let out = walrcv(
        &[
            "stream",
            "-d",
            "service=nosuch",
            "--create-slot",
            "-S",
            "svc3",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("definition of service \"nosuch\" not found")
    );
    assert!(!pg.slot_exists("svc3"));
}
