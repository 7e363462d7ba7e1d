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
