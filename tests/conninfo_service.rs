//! Connection services end to end: `service=NAME` and `PGSERVICE` with a
//! service file (`PGSERVICEFILE`) against a real server.

use crate::support::{PgServer, RunOutput, Walrcv};

fn walrcv(args: &[&str], env: &[(&str, &str)]) -> RunOutput {
    let out = Walrcv::new(args).envs(env.iter().copied()).run();
    eprintln!("walrcv {args:?} -> {:?}\n{}", out.code(), out.stderr);
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
    assert!(out
        .stderr
        .as_str()
        .contains("definition of service \"nosuch\" not found"));
    assert!(!pg.slot_exists("svc3"));
}
