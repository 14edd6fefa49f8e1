//! Helpers shared by the conninfo unit tests: an injectable environment and
//! short constructors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::*;

/// An injectable environment: no real `PG*` variable leaks into a test.
#[derive(Default)]
pub(super) struct FakeEnv {
    pub(super) vars: HashMap<String, String>,
    pub(super) home: Option<PathBuf>,
    pub(super) user: Option<String>,
    /// Files `read_file` can see; any other path does not exist.
    pub(super) files: HashMap<PathBuf, String>,
}

impl FakeEnv {
    pub(super) fn new() -> Self {
        FakeEnv {
            user: Some("osuser".to_owned()),
            ..Default::default()
        }
    }
    pub(super) fn with(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.to_owned(), value.to_owned());
        self
    }
    pub(super) fn with_file(mut self, path: &str, text: &str) -> Self {
        self.files.insert(PathBuf::from(path), text.to_owned());
        self
    }
}

impl Environment for FakeEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
    fn home_dir(&self) -> Option<PathBuf> {
        self.home.clone()
    }
    fn os_user(&self) -> Option<String> {
        self.user.clone()
    }
    fn read_file(&self, path: &Path) -> std::io::Result<String> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }
}

pub(super) fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) fn d(conninfo: &str) -> Overrides {
    Overrides {
        dbname: Some(conninfo.to_owned()),
        ..Default::default()
    }
}

pub(super) fn resolve_d(conninfo: &str) -> Result<ConnParams, ConnInfoError> {
    resolve(&d(conninfo), &FakeEnv::new())
}

pub(super) fn unix(dir: &str, port: u16) -> Target {
    Target::Unix {
        dir: PathBuf::from(dir),
        port,
    }
}

pub(super) fn tcp(host: &str, port: u16) -> Target {
    Target::Tcp {
        host: host.to_owned(),
        hostaddr: None,
        port,
    }
}
