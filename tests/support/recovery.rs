//! Base backups and servers restored from them in archive recovery (for the
//! `restore_command` tests): [`PgServer::base_backup`] while the primary runs,
//! [`BaseBackup::start_recovery`] once the primary is gone.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

/// A `pg_basebackup` of a primary in its own temporary directory (owned by the
/// server user), not started.
pub struct BaseBackup {
    dir: tempfile::TempDir,
    major: u32,
    wal_segsize_mb: u32,
    auth: Auth,
    bin_dir: PathBuf,
}

impl PgServer {
    /// `pg_basebackup -X stream -c fast` of this (running, major <= 15) primary.
    pub fn base_backup(&self) -> BaseBackup {
        self.base_backup_wal("stream")
    }

    /// `pg_basebackup -X none -c fast`: the backup's WAL must come from an
    /// archive at restore.
    pub fn base_backup_without_wal(&self) -> BaseBackup {
        self.base_backup_wal("none")
    }

    fn base_backup_wal(&self, wal_method: &str) -> BaseBackup {
        assert!(self.running && self.major <= DEBIAN_MAJOR);
        let dir = server_tempdir("walrcv-pg-restored-");
        let data = dir.path().join("data");
        self.pg_basebackup(dir.path(), &data, wal_method);
        BaseBackup {
            dir,
            major: self.major,
            wal_segsize_mb: self.wal_segsize_mb,
            auth: self.auth,
            bin_dir: self.bin_dir.clone(),
        }
    }
}

/// A server that was started from a base backup in archive recovery.
pub enum Recovery {
    /// `pg_ctl start -w` succeeded: the server accepts connections (it may
    /// still be replaying, or have promoted already).
    Started(PgServer),
    /// The server exited during recovery; its log.
    Failed { log: String },
}

impl BaseBackup {
    /// Starts the backup in archive recovery (`recovery.signal`) with these
    /// extra settings (`restore_command`, `recovery_target_timeline`, ...),
    /// written last in postgresql.auto.conf so that they win.
    pub fn start_recovery(self, settings: &[String]) -> Recovery {
        let root = self.dir.path().to_path_buf();
        let data = root.join("data");
        write_as_server_user(&data.join("recovery.signal"), "");
        let mut auto = fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.auto.conf"))
            .expect("open postgresql.auto.conf");
        for line in settings {
            writeln!(auto, "{line}").expect("write postgresql.auto.conf");
        }
        drop(auto);
        let _ = fs::remove_file(data.join("postmaster.opts"));
        let mut server = PgServer {
            major: self.major,
            wal_segsize_mb: self.wal_segsize_mb,
            auth: self.auth,
            replication_hba: true,
            port: free_port(),
            bin_dir: self.bin_dir,
            log: root.join("server.log"),
            dir: Some(self.dir),
            root,
            data,
            running: false,
            watchdog: None,
        };
        server.start_watchdog();
        server.write_port_conf();
        match server.pg_ctl_start() {
            Ok(()) => {
                server.running = true;
                Recovery::Started(server)
            }
            Err(e) => Recovery::Failed {
                log: format!("{e}\n--- whole log ---\n{}", server.full_log()),
            },
        }
    }
}

impl PgServer {
    /// The whole server log.
    pub fn full_log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until archive recovery has ended and the server promoted.
    pub fn wait_for_promotion(&self, timeout: Duration) {
        wait_until(timeout, "archive recovery to end (promotion)", || {
            !self.is_in_recovery()
        });
    }
}

/// Hands a directory tree over to the server user (restore_command runs as it).
pub fn give_to_server_user(path: &Path) {
    chown_to_server_user(path);
    for entry in fs::read_dir(path).expect("read_dir") {
        let entry = entry.expect("read_dir entry");
        if entry.file_type().expect("file type").is_dir() {
            give_to_server_user(&entry.path());
        } else {
            chown_to_server_user(&entry.path());
        }
    }
}

/// Archive recovery from a walrcv archive: `walrcv restore` as the
/// restore_command, to the end of the newest timeline, and no synchronous
/// standby to wait for once promoted.
pub fn walrcv_recovery_settings(archive: &Path) -> Vec<String> {
    vec![
        format!(
            "restore_command = '{} restore %f %p -D {}'",
            walrcv_bin().display(),
            archive.display()
        ),
        "recovery_target_timeline = 'latest'".into(),
        "synchronous_standby_names = ''".into(),
    ]
}
