//! Committing clients that record what the server acknowledged (Jepsen's
//! history, reduced to what matters here: the set of acknowledged commits).
//!
//! Client `c` of `n` inserts ids `c`, `c + n`, `c + 2n`, ... into `acked`, one
//! autocommit INSERT at a time through a long-lived psql in lockstep: it writes
//! a statement and waits for psql's `INSERT 0 1` before the next. The server
//! sends a commit's CommandComplete only after the synchronous-replication
//! wait, so each `INSERT 0 1` read is an acknowledged commit. An id whose
//! INSERT got no `INSERT 0 1` (connection lost, server stopped) is never
//! counted nor reused. When psql exits (the server went away) the client starts
//! a new one against the current primary's port, until the clients finish.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::support::{debian_bin, SUPERUSER};

struct Shared {
    port: AtomicU16,
    stop: AtomicBool,
    /// The running psql of each client (0: none).
    pids: Vec<AtomicU32>,
    acked: Mutex<Vec<i64>>,
}

/// The committing clients of one cycle.
pub struct Clients {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// The SQL the clients need, run once on the primary before they start.
pub const CREATE_TABLE: &str =
    "SET synchronous_commit = local; CREATE TABLE acked (id bigint PRIMARY KEY, client int NOT NULL)";

impl Clients {
    pub fn start(n: usize, port: u16) -> Clients {
        let shared = Arc::new(Shared {
            port: AtomicU16::new(port),
            stop: AtomicBool::new(false),
            pids: (0..n).map(|_| AtomicU32::new(0)).collect(),
            acked: Mutex::new(Vec::new()),
        });
        let threads = (0..n)
            .map(|c| {
                let s = shared.clone();
                std::thread::spawn(move || client(c, n, &s))
            })
            .collect();
        Clients { shared, threads }
    }

    /// Clients connect to this port from their next psql on.
    pub fn set_port(&self, port: u16) {
        self.shared.port.store(port, Ordering::SeqCst);
    }

    /// Commits acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.shared
            .acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Stops the clients (SIGKILL to their psql) and returns every
    /// acknowledged id.
    pub fn finish(mut self) -> Vec<i64> {
        self.stop();
        std::mem::take(&mut *self.shared.acked.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for pid in &self.shared.pids {
            let p = pid.load(Ordering::SeqCst);
            if p != 0 {
                // SAFETY: kill(2) on a psql this process started and has not reaped
                // (the client thread clears the pid before it waits for it).
                unsafe {
                    libc::kill(p as libc::pid_t, libc::SIGKILL);
                }
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop();
    }
}

fn client(c: usize, n: usize, shared: &Shared) {
    let mut k: i64 = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let port = shared.port.load(Ordering::SeqCst);
        let mut cmd = Command::new("stdbuf");
        cmd.arg("-oL")
            .arg(debian_bin("psql"))
            .args([
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                SUPERUSER,
            ])
            .args(["-d", "postgres", "-p", &port.to_string()])
            .env("PGCONNECT_TIMEOUT", "5")
            .env("PGPASSFILE", "/nonexistent/walrcv-torture-pgpass")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let Ok(mut child) = cmd.spawn() else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        shared.pids[c].store(child.id(), Ordering::SeqCst);
        let mut stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        'session: while !shared.stop.load(Ordering::SeqCst) {
            let id = (c + 1) as i64 + k * n as i64;
            k += 1;
            if writeln!(stdin, "INSERT INTO acked VALUES ({id}, {});", c + 1).is_err()
                || stdin.flush().is_err()
            {
                break;
            }
            loop {
                line.clear();
                match stdout.read_line(&mut line) {
                    Ok(0) | Err(_) => break 'session,
                    Ok(_) if line.trim_end() == "INSERT 0 1" => {
                        shared
                            .acked
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(id);
                        break;
                    }
                    Ok(_) => {}
                }
            }
        }
        shared.pids[c].store(0, Ordering::SeqCst);
        drop(stdin);
        let _ = child.kill();
        let _ = child.wait();
        if !shared.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
