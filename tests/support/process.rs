//! Running the walrcv binary from tests: one-shot runs with a timeout, and
//! background processes that are killed when the test ends (also on panic, and
//! when the test thread dies: `PR_SET_PDEATHSIG`), so a walrcv that reconnects
//! forever can never outlive its test.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{tail, walrcv_command};

/// How long a [`Walrcv`] run may take unless the test says otherwise.
pub const WALRCV_TIMEOUT: Duration = Duration::from_secs(120);

/// What a finished process printed.
#[derive(Debug)]
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    /// Exit code (None when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// stdout and stderr, for assertion messages.
    pub fn text(&self) -> String {
        format!(
            "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    /// Panics (with the output) unless the exit status is 0.
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "expected success:\n{}", self.text());
        self
    }

    /// Panics unless the exit status is non-zero and stderr contains `needle`.
    pub fn assert_failure_with(&self, needle: &str) -> &Self {
        assert!(
            !self.success() && self.status.code().is_some(),
            "expected a non-zero exit:\n{}",
            self.text()
        );
        assert!(
            self.stderr.contains(needle),
            "expected stderr to contain {needle:?}:\n{}",
            self.text()
        );
        self
    }
}

/// Every invocation of the walrcv binary in the tests: `walrcv ARGS` with the
/// caller's `PG*` environment removed (see [`walrcv_command`]), stdin null,
/// and a timeout ([`WALRCV_TIMEOUT`] unless set) after which a run is killed
/// and the test fails with what walrcv printed, so no test hangs on a walrcv
/// that never exits.
///
/// ```ignore
/// let out = Walrcv::new(["stream", "-D", dir, "-d", &conn, "-n", "-E", &end])
///     .env("FAILPOINTS", "install-rename=return")
///     .timeout(Duration::from_secs(60))
///     .run();
/// out.assert_failure_with("could not rename");
/// let mut rcv = Walrcv::new(["stream", "-D", dir, "-d", &conn]).spawn();
/// ```
#[must_use]
#[derive(Debug)]
pub struct Walrcv {
    cmd: Command,
    timeout: Duration,
}

impl Walrcv {
    /// `walrcv ARGS`.
    pub fn new<I, S>(args: I) -> Walrcv
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = walrcv_command();
        cmd.args(args);
        Walrcv {
            cmd,
            timeout: WALRCV_TIMEOUT,
        }
    }

    /// The binary run through `program` (a `pg_receivewal` symlink to it: the
    /// drop-in reads its name from argv[0]), with the same environment.
    pub fn via<I, S>(program: &Path, args: I) -> Walrcv
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut w = Walrcv::new(args);
        let mut cmd = Command::new(program);
        cmd.args(w.cmd.get_args());
        for (key, value) in w.cmd.get_envs() {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        cmd.stdin(Stdio::null());
        w.cmd = cmd;
        w
    }

    /// One more argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Walrcv {
        self.cmd.arg(arg);
        self
    }

    /// More arguments.
    pub fn args<I, S>(mut self, args: I) -> Walrcv
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// An environment variable for walrcv.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Walrcv {
        self.cmd.env(key, value);
        self
    }

    /// Several environment variables.
    pub fn envs<I, K, V>(mut self, vars: I) -> Walrcv
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        self.cmd.envs(vars);
        self
    }

    /// Removes a variable from walrcv's environment.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Walrcv {
        self.cmd.env_remove(key);
        self
    }

    /// The working directory (default: a temporary one).
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Walrcv {
        self.cmd.current_dir(dir);
        self
    }

    /// `RLIMIT_NOFILE` of the walrcv process (set between fork and exec).
    pub fn max_open_files(mut self, max: u64) -> Walrcv {
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            self.cmd.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: max,
                    rlim_max: max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self
    }

    /// The umask of the walrcv process (set between fork and exec: the test
    /// process's own umask, shared by its threads, stays as it is).
    pub fn umask(mut self, mask: u32) -> Walrcv {
        // SAFETY: umask is async-signal-safe; nothing else runs between fork
        // and exec.
        unsafe {
            self.cmd.pre_exec(move || {
                libc::umask(mask as libc::mode_t);
                Ok(())
            });
        }
        self
    }

    /// The command itself, for a helper that configures a `Command` (the
    /// object store's environment, say); start it with [`spawn`](Self::spawn)
    /// or [`run`](Self::run) all the same.
    pub fn command_mut(&mut self) -> &mut Command {
        &mut self.cmd
    }

    /// How long [`run`](Self::run) waits before it kills walrcv and fails.
    pub fn timeout(mut self, timeout: Duration) -> Walrcv {
        self.timeout = timeout;
        self
    }

    /// Runs walrcv to completion; kills it and panics after the timeout.
    pub fn run(self) -> RunOutput {
        run_with_timeout(self.cmd, self.timeout)
    }

    /// Starts walrcv in the background (see [`BackgroundProcess`]: killed
    /// when dropped; bound its waits with its `wait_*` methods).
    pub fn spawn(self) -> BackgroundProcess {
        BackgroundProcess::spawn(self.cmd)
    }
}

/// `Walrcv::new(args).timeout(timeout).run()`.
pub fn walrcv_run(args: &[&str], timeout: Duration) -> RunOutput {
    Walrcv::new(args).timeout(timeout).run()
}

/// Runs a command to completion with its output captured; kills it (SIGKILL)
/// and panics with what it printed after `timeout`.
pub fn run_with_timeout(cmd: Command, timeout: Duration) -> RunOutput {
    let mut p = BackgroundProcess::spawn(cmd);
    match p.wait_timeout(timeout) {
        Some(status) => RunOutput {
            status,
            stdout: p.stdout(),
            stderr: p.stderr(),
        },
        None => {
            p.kill9();
            panic!(
                "{} did not finish within {timeout:?}:\n--- stdout ---\n{}\n--- stderr ---\n{}",
                p.program,
                p.stdout(),
                p.stderr()
            );
        }
    }
}

/// `Walrcv::new(args).spawn()`.
pub fn walrcv_spawn(args: &[&str]) -> BackgroundProcess {
    Walrcv::new(args).spawn()
}

/// A child process whose stdout and stderr go to files (read them at any time),
/// SIGKILLed and reaped on drop, with its output printed when the test panicked.
#[derive(Debug)]
pub struct BackgroundProcess {
    child: Child,
    program: String,
    status: Option<ExitStatus>,
    dir: tempfile::TempDir,
}

impl BackgroundProcess {
    /// Spawns `cmd` with stdout/stderr redirected to files; panics if it cannot start.
    pub fn spawn(mut cmd: Command) -> BackgroundProcess {
        let dir = tempfile::Builder::new()
            .prefix("walrcv-proc-")
            .tempdir()
            .expect("tempdir for process output");
        let out = fs::File::create(dir.path().join("stdout")).expect("create stdout file");
        let err = fs::File::create(dir.path().join("stderr")).expect("create stderr file");
        let program = cmd.get_program().to_string_lossy().into_owned();
        cmd.stdout(out).stderr(err);
        if cmd.get_current_dir().is_none() {
            cmd.current_dir(dir.path());
        }
        // SAFETY: prctl and signal are async-signal-safe; nothing else runs
        // between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // A test run started in the background of a shell without job
                // control inherits SIGINT and SIGQUIT ignored, and a shell
                // cannot trap a signal ignored at its entry: the tests' own
                // signals must reach their processes as on a terminal.
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGQUIT, libc::SIG_DFL);
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        BackgroundProcess {
            child,
            program,
            status: None,
            dir,
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    /// Everything written to stderr so far (walrcv logs there).
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Path of the file collecting stderr.
    pub fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr")
    }

    /// Whether the process is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (e.g. `libc::SIGINT`) if the process is still running.
    pub fn signal(&mut self, sig: i32) {
        if self.is_running() {
            // SAFETY: plain kill(2) on our own child, not yet reaped.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, sig);
            }
        }
    }

    /// SIGINT, then waits (30 s at most, else panics) and returns the exit status.
    pub fn interrupt(&mut self) -> ExitStatus {
        self.signal_and_wait(libc::SIGINT)
    }

    /// SIGTERM, then waits (30 s at most, else panics) and returns the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal_and_wait(libc::SIGTERM)
    }

    fn signal_and_wait(&mut self, sig: i32) -> ExitStatus {
        self.signal(sig);
        match self.wait_timeout(Duration::from_secs(30)) {
            Some(s) => s,
            None => {
                self.kill9();
                panic!(
                    "{} did not exit within 30 s of signal {sig}:\n{}",
                    self.program,
                    self.stderr()
                );
            }
        }
    }

    /// SIGKILL and reap (a crash, as far as the process is concerned).
    pub fn kill9(&mut self) -> ExitStatus {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            self.status = Some(self.child.wait().expect("wait"));
        }
        self.status.expect("status")
    }

    /// Waits until stderr contains `needle`; panics (with stderr) after
    /// `timeout` or if the process exits first.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            if self.stderr().contains(needle) {
                return;
            }
            if let Some(s) = self.try_wait() {
                if self.stderr().contains(needle) {
                    return;
                }
                panic!(
                    "{} exited ({s}) before printing {needle:?}:\n{}",
                    self.program,
                    self.stderr()
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "{} did not print {needle:?} within {timeout:?}:\n{}",
                    self.program,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The signal that ended the process, if any (after it exited).
    pub fn exit_signal(&mut self) -> Option<i32> {
        self.try_wait().and_then(|s| s.signal())
    }

    /// Where stdout/stderr are kept.
    pub fn output_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for BackgroundProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- {} (pid {}) stderr tail ---\n{}\n--- stdout tail ---\n{}",
                self.program,
                self.child.id(),
                tail(&self.dir.path().join("stderr"), 40),
                tail(&self.dir.path().join("stdout"), 20)
            );
        }
    }
}
