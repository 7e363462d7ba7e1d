//! A CGI/1.1 server (RFC 3875) on hyper, and the libuv guide's raw mode in which the
//! program's stdin and stdout are the TCP connection itself ([`Raw`]).
//!
//! [`Cgi`] maps `PREFIX/script/extra?query` to an executable file under a root directory
//! (or every path to one script), runs it in a process group of its own with every
//! RFC 3875 meta-variable, streams the request body to its stdin, parses the header block
//! it prints (`Status`, `Location`, `Content-Type`, any other header) and streams the rest
//! of its stdout to the client. Scripts named `nph-*` write their own status line.
//!
//! Faults are answered, never hung on: a script that ends before its headers or prints a
//! malformed block gives 502, one that outlives [`Cgi::timeout`] is killed with its whole
//! process group (504 when nothing was sent yet), more than [`Cgi::max_children`] at once
//! gives 503, and a client that goes away kills the script it was waiting for. Paths never
//! leave the root: `..` in any spelling is refused, and symlinks may only lead to files
//! inside it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::os::unix::fs::PermissionsExt;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! // A root with one script.
//! let root = std::env::temp_dir().join(format!("brood-cgi-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&root)?;
//! let script = root.join("hello");
//! std::fs::write(&script, "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nhello %s\\n' \"$QUERY_STRING\"\n")?;
//! std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let server = tokio::spawn(brood::cgi::Cgi::root(&root).serve(listener));
//!
//! let mut tcp = tokio::net::TcpStream::connect(addr).await?;
//! // HTTP/1.0: the body ends with the connection, no chunked framing to read through.
//! tcp.write_all(b"GET /cgi-bin/hello?world HTTP/1.0\r\nHost: x\r\n\r\n").await?;
//! let mut answer = String::new();
//! tcp.read_to_string(&mut answer).await?;
//! assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"));
//! assert!(answer.ends_with("hello world\n"));
//!
//! server.abort();
//! # std::fs::remove_dir_all(&root)?;
//! # Ok(()) }
//! ```

mod body;
pub(crate) mod map;
pub(crate) mod meta;
mod raw;
pub(crate) mod response;
mod script;
pub(crate) mod server;

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::Exit;
use crate::error::{Error, Result, from_io};

pub use raw::Raw;

/// Where log lines go.
pub(crate) type Log = Arc<dyn Fn(&LogLine) + Send + Sync>;

/// One line of a CGI server's log, given to [`Cgi::on_log`] (printed to stderr by default).
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
pub struct Access {
    /// The client.
    pub remote: SocketAddr,
    /// The request method (`-` in raw mode).
    pub method: String,
    /// The request target, path and query (the program, in raw mode).
    pub target: String,
    /// The status the client got (0 in raw mode).
    pub status: u16,
    /// Body bytes sent to the client.
    pub bytes: u64,
    /// From the request to the script's end.
    pub elapsed: Duration,
    /// How the script ended, when one ran.
    pub exit: Option<Exit>,
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

fn default_log() -> Log {
    Arc::new(|line: &LogLine| eprintln!("{line}"))
}

#[derive(Debug, Clone)]
enum Source {
    Root(PathBuf),
    Script(PathBuf),
}

/// A CGI server's configuration; [`serve`](Cgi::serve) runs it on a listener.
///
/// Scripts get an environment made only of the meta-variables, the server's `PATH`, and
/// what [`env`](Cgi::env) and [`pass_env`](Cgi::pass_env) add; they run with their own
/// directory as cwd, in a new process group.
#[derive(Clone)]
pub struct Cgi {
    source: Source,
    prefix: String,
    timeout: Option<Duration>,
    max_children: Option<usize>,
    queue: Duration,
    env: Vec<(OsString, OsString)>,
    pass_env: Vec<OsString>,
    max_header: usize,
    log: Log,
}

impl fmt::Debug for Cgi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cgi")
            .field("source", &self.source)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("max_children", &self.max_children)
            .finish_non_exhaustive()
    }
}

impl Cgi {
    fn new(source: Source, prefix: &str) -> Cgi {
        Cgi {
            source,
            prefix: prefix.to_string(),
            timeout: None,
            max_children: None,
            queue: Duration::ZERO,
            env: Vec::new(),
            pass_env: Vec::new(),
            max_header: 64 * 1024,
            log: default_log(),
        }
    }

    /// Serves the executables under `dir`: `/cgi-bin/name/extra?q` runs `dir/name` with
    /// `SCRIPT_NAME=/cgi-bin/name`, `PATH_INFO=/extra`, `QUERY_STRING=q`. Subdirectories
    /// work (`/cgi-bin/sub/name`). Change the prefix with [`prefix`](Cgi::prefix).
    pub fn root(dir: impl AsRef<Path>) -> Cgi {
        Cgi::new(Source::Root(dir.as_ref().to_path_buf()), "/cgi-bin")
    }

    /// Runs `file` for every path: `SCRIPT_NAME` is the prefix (empty by default) and
    /// `PATH_INFO` the rest of the path.
    pub fn script(file: impl AsRef<Path>) -> Cgi {
        Cgi::new(Source::Script(file.as_ref().to_path_buf()), "")
    }

    /// The URL path scripts live under: `/cgi-bin` (the default for [`root`](Cgi::root)),
    /// or `/` for the whole URL space. Paths outside it get 404.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Cgi {
        self.prefix = prefix.into();
        self
    }

    /// Kills a script's whole process group `timeout` after it started; the client gets
    /// 504 if nothing was sent yet, a cut connection otherwise. None by default.
    pub fn timeout(mut self, timeout: Duration) -> Cgi {
        self.timeout = Some(timeout);
        self
    }

    /// At most `n` scripts at once; a request over the limit waits up to
    /// [`queue`](Cgi::queue) for a free slot, then gets 503. Unlimited by default.
    pub fn max_children(mut self, n: usize) -> Cgi {
        self.max_children = Some(n);
        self
    }

    /// How long a request over [`max_children`](Cgi::max_children) waits for a slot before
    /// 503 (zero, the default: at once).
    pub fn queue(mut self, wait: Duration) -> Cgi {
        self.queue = wait;
        self
    }

    /// Sets a variable in every script's environment.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Cgi {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Passes the server's own variable `name` on to scripts, when it is set.
    pub fn pass_env(mut self, name: impl Into<OsString>) -> Cgi {
        self.pass_env.push(name.into());
        self
    }

    /// The largest header block a script may print (64 KiB by default); more is a 502.
    pub fn max_header_bytes(mut self, n: usize) -> Cgi {
        self.max_header = n;
        self
    }

    /// Sends log lines to `f` instead of stderr.
    pub fn on_log(mut self, f: impl Fn(&LogLine) + Send + Sync + 'static) -> Cgi {
        self.log = Arc::new(f);
        self
    }

    fn state(self) -> Result<server::State> {
        let op = "cgi";
        let prefix = normalize_prefix(&self.prefix)?;
        let mapping = match &self.source {
            Source::Root(dir) => {
                let root = std::fs::canonicalize(dir)
                    .map_err(|e| from_io(e, format!("{op}: root {}", dir.display())))?;
                if !root.is_dir() {
                    return Err(Error::new(
                        libc::ENOTDIR,
                        format!("{op}: root {}", dir.display()),
                    ));
                }
                map::Mapping::Root { root, prefix }
            }
            Source::Script(file) => {
                let real = std::fs::canonicalize(file)
                    .map_err(|e| from_io(e, format!("{op}: script {}", file.display())))?;
                let meta = std::fs::metadata(&real)
                    .map_err(|e| from_io(e, format!("{op}: script {}", file.display())))?;
                if !meta.is_file() {
                    return Err(Error::invalid(
                        format!("{op}: script {}", file.display()),
                        "not a regular file",
                    ));
                }
                if meta.permissions().mode() & 0o111 == 0 {
                    return Err(Error::new(
                        libc::EACCES,
                        format!("{op}: script {}", file.display()),
                    )
                    .with_detail("not executable"));
                }
                map::Mapping::Script { file: real, prefix }
            }
        };
        check_env(&self.env, &self.pass_env)?;
        if self.max_children == Some(0) {
            return Err(Error::invalid(op, "max_children must be 1 or more"));
        }
        Ok(server::State {
            mapping,
            env: meta::base_env(&self.env, &self.pass_env),
            timeout: self.timeout,
            limit: self
                .max_children
                .map(|n| Arc::new(tokio::sync::Semaphore::new(n))),
            queue: self.queue,
            max_header: self.max_header,
            log: self.log,
            tasks: server::Tasks::default(),
        })
    }

    /// Serves HTTP/1.1 (keep-alive) on `listener` until an error on the listener itself.
    /// Drop the future (or abort its task) to stop: every script still running is killed
    /// with its process group. Configuration errors (no such root, bad prefix) come back at
    /// once.
    pub async fn serve(self, listener: TcpListener) -> Result<()> {
        let state = Arc::new(self.state()?);
        server::serve(state, listener).await
    }
}

/// `/cgi-bin/` → `/cgi-bin`, `/` → ``.
fn normalize_prefix(p: &str) -> Result<String> {
    if !(p.is_empty() || p.starts_with('/')) || p.contains(['?', '#', '%']) {
        return Err(Error::invalid(
            format!("cgi: prefix {p:?}"),
            "a prefix is a path that starts with /, without ? # or %",
        ));
    }
    Ok(p.trim_end_matches('/').to_string())
}

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
