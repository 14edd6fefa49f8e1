//! The process environment (`PG*` variables, home directory, OS user), behind
//! a trait so that tests inject their own.

use std::ffi::{CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The process environment and home directory, injectable for tests.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
    fn home_dir(&self) -> Option<PathBuf>;
    fn os_user(&self) -> Option<String>;
    /// The contents of a configuration file (connection service files).
    fn read_file(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// The real process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    /// `$HOME`, else the passwd entry's home directory (libpq's
    /// `pqGetHomeDirectory` order).
    fn home_dir(&self) -> Option<PathBuf> {
        match std::env::var_os("HOME") {
            Some(home) if !home.is_empty() => Some(PathBuf::from(home)),
            _ => effective_passwd().and_then(|(_, dir)| dir),
        }
    }

    /// The effective user's name from the passwd database (what libpq uses as
    /// the default user), else `$USER` (e.g. a uid without a passwd entry in a
    /// container).
    fn os_user(&self) -> Option<String> {
        effective_passwd()
            .map(|(name, _)| name)
            .filter(|name| !name.is_empty())
            .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
    }
}

/// The effective user's passwd entry: (name, home directory).
fn effective_passwd() -> Option<(String, Option<PathBuf>)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let mut buf_len = 1024usize;
    loop {
        let mut buf: Vec<libc::c_char> = vec![0; buf_len];
        // SAFETY: passwd is a plain C struct for which all-zero bytes (null
        // pointers, zero ids) is a valid value; getpwuid_r overwrites it.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for writes for the whole call and
        // buf.len() is the true length of buf.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        // Entries with very long fields need a bigger buffer; the cap stops a
        // broken NSS module from making us allocate without bound.
        if rc == libc::ERANGE && buf_len < (1 << 20) {
            buf_len *= 2;
            continue;
        }
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name and pw_dir (when non-null) point to
        // NUL-terminated strings inside `buf`, which is still alive here.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) }
            .to_str()
            .ok()?
            .to_owned();
        let dir = if pwd.pw_dir.is_null() {
            None
        } else {
            // SAFETY: as above.
            let bytes = unsafe { CStr::from_ptr(pwd.pw_dir) }.to_bytes();
            (!bytes.is_empty()).then(|| PathBuf::from(OsStr::from_bytes(bytes)))
        };
        return Some((name, dir));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_env_os_user_matches_passwd() {
        let expected = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name);
        match expected {
            Some(name) => assert_eq!(ProcessEnv.os_user(), Some(name)),
            // No passwd entry (some containers): $USER or nothing.
            None => assert_eq!(
                ProcessEnv.os_user(),
                std::env::var("USER").ok().filter(|u| !u.is_empty())
            ),
        }
    }
}
