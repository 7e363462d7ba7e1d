//! The defaults of the CGI server's limits and the checks of its settings that every front
//! (HTTP, FastCGI, raw) shares.

use std::ffi::OsString;
use std::time::Duration;

use crate::error::{Error, Result};

/// The default [`Cgi::timeout`](super::Cgi::timeout) and [`Raw::timeout`](super::Raw::timeout).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The default [`Cgi::body_timeout`](super::Cgi::body_timeout).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The default [`Cgi::max_body`](super::Cgi::max_body): 1 GiB, as Apache's `LimitRequestBody`.
pub const DEFAULT_MAX_BODY: u64 = 1 << 30;

/// The default [`Cgi::max_children`](super::Cgi::max_children) and [`Raw::max_children`](super::Raw::max_children): 16 per CPU.
pub fn default_max_children() -> usize {
    16 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The default [`Cgi::max_spool`](super::Cgi::max_spool): a quarter of the space free (to
/// unprivileged users) on the temporary directory's filesystem now, 4 GiB if it cannot be
/// read.
pub fn default_max_spool() -> u64 {
    match rustix::fs::statvfs(std::env::temp_dir()) {
        Ok(s) => s.f_bavail.saturating_mul(s.f_frsize) / 4,
        Err(_) => 4 << 30,
    }
}

/// The default [`Cgi::max_connections`](super::Cgi::max_connections) and
/// [`Raw::max_connections`](super::Raw::max_connections): half the soft fd limit
/// (`RLIMIT_NOFILE`; the other half stays for scripts' pipes, bodies and the log), at
/// least 16, at most 65536.
pub fn default_max_connections() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(65536 * 2);
    (soft / 2).clamp(16, 65536) as usize
}

/// Variable names given to `env`/`pass_env` are non-empty and hold no `=` or NUL.
pub(crate) fn check_env(env: &[(OsString, OsString)], pass: &[OsString]) -> Result<()> {
    for k in env.iter().map(|(k, _)| k).chain(pass) {
        let b = k.as_encoded_bytes();
        if b.is_empty() || b.contains(&b'=') || b.contains(&0) {
            return Err(Error::invalid(
                format!("cgi: env {k:?}"),
                "a variable name is not empty and has no = or NUL",
            ));
        }
    }
    Ok(())
}
