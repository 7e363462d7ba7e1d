//! The server's log: access lines, the scripts' stderr lines and errors, and how they are
//! written (brood's format, CLF, combined).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::time;
use crate::Exit;

/// Where log lines go.
pub(crate) type Log = Arc<dyn Fn(&LogLine) + Send + Sync>;

/// One line of a CGI server's log, given to [`Cgi::on_log`](super::Cgi::on_log) (printed to stderr by default).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum LogLine {
    /// A request was answered (written when its script has ended, with its exit).
    Access(Access),
    /// A line the script wrote to its stderr.
    Stderr {
        /// The script's `SCRIPT_NAME` (the program, in raw mode).
        script: String,
        /// The line, without its newline.
        line: String,
    },
    /// Something the operator should know: a refused path, a bad header block, a timeout.
    Error(String),
}

/// The access-log record of one request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Access {
    /// The client.
    pub remote: SocketAddr,
    /// The request method (`-` in raw mode).
    pub method: String,
    /// The request target, path and query (the program, in raw mode).
    pub target: String,
    /// `HTTP/1.1` or `HTTP/1.0` (`-` in raw mode).
    pub protocol: String,
    /// The status the client got: 499 when it sent its whole request and went away before
    /// any answer, 400 when it left mid-request (as nginx logs both), 0 in raw mode.
    pub status: u16,
    /// Body bytes sent to the client (raw mode: every byte the program wrote to the
    /// connection, as the kernel counts them).
    pub bytes: u64,
    /// From the request to the script's end.
    pub elapsed: Duration,
    /// How the script ended, when one ran.
    pub exit: Option<Exit>,
    /// The user brood authenticated (`--htpasswd`).
    pub user: Option<String>,
    /// The `Referer` header.
    pub referer: Option<String>,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
    /// When the line was written.
    pub time: SystemTime,
}

/// How [`LogLine::Access`] lines are written by [`LogLine::format`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// brood's own: `TIME CLIENT "METHOD TARGET" STATUS BYTESB MSms exit=N|signal=N`.
    #[default]
    Brood,
    /// The Common Log Format of Apache, nginx and lighttpd.
    Common,
    /// Common, then `"referer" "user-agent"` (Apache's and nginx's `combined`).
    Combined,
}

impl LogLine {
    /// The line in `format` (which changes only access lines), with a timestamp: RFC 3339
    /// UTC at the start in brood's format, `[day/Mon/year:h:m:s +0000]` in the others.
    ///
    /// ```
    /// use brood::cgi::{Cgi, LogFormat};
    /// // Access lines in the Common Log Format, everything else in brood's own.
    /// let cgi = Cgi::root("/srv/cgi-bin").on_log(|line| {
    ///     eprintln!("{}", line.format(LogFormat::Common));
    /// });
    /// # drop(cgi);
    /// let line = brood::cgi::LogLine::Error("bad header block".into()).format(LogFormat::Brood);
    /// assert!(line.ends_with("Z error: bad header block"));
    /// ```
    pub fn format(&self, format: LogFormat) -> String {
        let LogLine::Access(a) = self else {
            return format!("{} {self}", time::rfc3339(SystemTime::now()));
        };
        let quoted = |v: &Option<String>| {
            v.as_deref()
                .map_or("-".to_string(), |s| s.replace('"', "\\\""))
        };
        match format {
            LogFormat::Brood => format!("{} {self}", time::rfc3339(a.time)),
            LogFormat::Common | LogFormat::Combined => {
                let mut line = format!(
                    "{} - {} [{}] \"{} {} {}\" {} {}",
                    a.remote.ip(),
                    a.user.as_deref().unwrap_or("-").replace([' ', '"'], "_"),
                    time::clf(a.time),
                    a.method,
                    a.target.replace('"', "%22"),
                    a.protocol,
                    a.status,
                    if a.bytes == 0 {
                        "-".to_string()
                    } else {
                        a.bytes.to_string()
                    }
                );
                if format == LogFormat::Combined {
                    line.push_str(&format!(
                        " \"{}\" \"{}\"",
                        quoted(&a.referer),
                        quoted(&a.user_agent)
                    ));
                }
                line
            }
        }
    }
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogLine::Access(a) => {
                write!(
                    f,
                    "{} \"{} {}\" {} {}B {}ms",
                    a.remote,
                    a.method,
                    a.target,
                    a.status,
                    a.bytes,
                    a.elapsed.as_millis()
                )?;
                match a.exit {
                    None => write!(f, " exit=-"),
                    Some(e) if e.signal != 0 => write!(f, " signal={}", e.signal),
                    Some(e) => write!(f, " exit={}", e.status),
                }
            }
            LogLine::Stderr { script, line } => write!(f, "[{script}] {line}"),
            LogLine::Error(msg) => write!(f, "error: {msg}"),
        }
    }
}

/// Writes a line to stderr, ignoring errors: a closed or full stderr must not stop (or
/// panic) the server.
pub(crate) fn write_stderr(text: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.write_all(b"\n");
}

pub(crate) fn default_log() -> Log {
    Arc::new(|line: &LogLine| write_stderr(&line.format(LogFormat::Brood)))
}
