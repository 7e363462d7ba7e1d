//! A CGI/1.1 server (RFC 3875) on hyper, and the libuv guide's raw mode in which the
//! program's stdin and stdout are the TCP connection itself ([`Raw`]).
//!
//! [`Cgi`] maps `PREFIX/script/extra?query` to an executable file under a root directory
//! (or every path to one script), reads the request body whole (memory, then a temporary
//! file), runs the script it opened and checked (the file that runs is the file that was
//! checked) in a process group of its own with every RFC 3875 meta-variable and
//! `CONTENT_LENGTH`, parses the header block it prints (`Status`, `Location`,
//! `Content-Type`, any other header) and streams the rest of its stdout to the client,
//! coalesced. Scripts named `nph-*` write their own status line.
//!
//! Safe by default: `REMOTE_USER` only for users checked against [`Cgi::htpasswd`]; a
//! query never puts a word starting with `-` in argv; [`DEFAULT_TIMEOUT`],
//! [`default_max_children`], [`DEFAULT_MAX_BODY`] and [`DEFAULT_BODY_TIMEOUT`] bound what
//! one client can hold. Faults are answered, never hung on: a script that ends before its
//! headers or prints a malformed block gives 502, one that outlives the timeout is ended
//! with its whole process group (504 when nothing was sent yet), more than
//! [`Cgi::max_children`] at once gives 503. A client that goes away before its response is
//! complete ends its script's group (SIGTERM, then SIGKILL); a script whose response is
//! complete is never signalled. Paths never leave the root: `..` in any spelling is
//! refused, and symlinks may only lead to files inside it.
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

mod answer;
mod auth;
mod body;
mod config;
pub(crate) mod fastcgi;
mod load;
mod log;
pub(crate) mod map;
pub(crate) mod meta;
mod raw;
pub(crate) mod response;
mod runner;
mod script;
pub(crate) mod server;
mod state;
mod tasks;
mod time;
mod upload;

use std::ffi::OsString;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::error::{Error, Result, from_io};
use config::check_env;
use log::{Log, default_log};

pub use config::{
    DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BODY, DEFAULT_TIMEOUT, default_max_children,
    default_max_connections, default_max_spool,
};
pub use fastcgi::FastCgiListener;
pub use load::Load;
pub use log::{Access, LogFormat, LogLine};
pub use raw::Raw;

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
    htpasswd: Option<PathBuf>,
    /// Set once the htpasswd file's skipped lines were logged (by `check` or `serve`).
    htpasswd_warned: Arc<std::sync::atomic::AtomicBool>,
    realm: String,
    max_body: u64,
    max_spool: Option<u64>,
    max_connections: Option<usize>,
    scripts_by_fd: bool,
    load: Load,
    body_timeout: Duration,
    stderr_to_client: bool,
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
            timeout: Some(DEFAULT_TIMEOUT),
            max_children: Some(default_max_children()),
            queue: Duration::ZERO,
            env: Vec::new(),
            pass_env: Vec::new(),
            max_header: 64 * 1024,
            htpasswd: None,
            htpasswd_warned: Arc::default(),
            realm: "brood".to_string(),
            max_body: DEFAULT_MAX_BODY,
            max_spool: None,
            max_connections: None,
            scripts_by_fd: false,
            load: Load::default(),
            body_timeout: DEFAULT_BODY_TIMEOUT,
            stderr_to_client: false,
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

    /// Ends a script's whole process group `timeout` after it started (SIGTERM, SIGKILL
    /// 2 s later), and stops reading its output even if a process outside the group holds
    /// it open; the client gets 504 if nothing was sent yet, a cut response otherwise.
    /// [`DEFAULT_TIMEOUT`] (5 minutes) by default; `None` for no limit.
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Cgi {
        self.timeout = timeout.into();
        self
    }

    /// At most `n` scripts at once; a request over the limit waits up to
    /// [`queue`](Cgi::queue) for a free slot, then gets 503.
    /// [`default_max_children`] (16 per CPU) by default.
    pub fn max_children(mut self, n: usize) -> Cgi {
        self.max_children = Some(n);
        self
    }

    /// Requires HTTP Basic credentials of a user in the Apache `htpasswd` file `path`
    /// (bcrypt, apr1-MD5 or SHA-1 hashes) for every request: 401 with `WWW-Authenticate`
    /// otherwise. The user becomes the script's `REMOTE_USER`. Without it, no script ever
    /// gets a `REMOTE_USER`, whatever `Authorization` header the client sends. The file is
    /// read when the server starts; a line it cannot use (a crypt(3) or plain-text hash, no
    /// `:`) is skipped with a warning in the log naming its number (that user cannot log
    /// in), and a file with no usable line is an error. An unknown user takes as long to
    /// refuse as a wrong password (a dummy hash of the file's usual scheme and cost is
    /// checked), so the time of a 401 does not tell which users exist.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = std::env::temp_dir().join(format!("brood-htpasswd-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// // `htpasswd -nbs alice password` (apr1 and bcrypt lines work the same way).
    /// std::fs::write(dir.join("users"), "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")?;
    /// let cgi = brood::cgi::Cgi::root(&dir).htpasswd(dir.join("users")).realm("staff");
    /// cgi.check()?; // the file is read: a user at least
    /// assert!(brood::cgi::Cgi::root(&dir).htpasswd(dir.join("missing")).check().is_err());
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    pub fn htpasswd(mut self, path: impl AsRef<Path>) -> Cgi {
        self.htpasswd = Some(path.as_ref().to_path_buf());
        self.htpasswd_warned = Arc::default();
        self
    }

    /// The realm named in the 401 challenge (`brood` by default).
    pub fn realm(mut self, realm: impl Into<String>) -> Cgi {
        self.realm = realm.into();
        self
    }

    /// The largest request body taken (413 beyond); [`DEFAULT_MAX_BODY`] by default.
    /// Bodies are read whole before the script starts: in memory up to 256 KiB, then in
    /// an unnamed temporary file; the script gets `CONTENT_LENGTH`.
    pub fn max_body(mut self, bytes: u64) -> Cgi {
        self.max_body = bytes;
        self
    }

    /// The most disk that request bodies in temporary files take, all requests together
    /// ([`default_max_spool`]: a quarter of the temporary directory's free space when the
    /// server starts). A body that would take more gets 503 with a body saying why; a
    /// file's share is given back when its script has ended.
    pub fn max_spool(mut self, bytes: u64) -> Cgi {
        self.max_spool = Some(bytes);
        self
    }

    /// At most `n` client connections open at once, idle keep-alive ones included
    /// ([`default_max_connections`]: half the fd limit); beyond, new connections wait in
    /// the listen backlog until one closes.
    pub fn max_connections(mut self, n: usize) -> Cgi {
        self.max_connections = Some(n);
        self
    }

    /// Hands `#!` scripts to their interpreter as `/dev/fd/3`, the very file brood opened
    /// and checked, instead of by their real path: then no swap of a name inside the root
    /// can make the interpreter read another file; but the script sees `/dev/fd/3` as its
    /// `$0` (`__file__`, `$PROGRAM_NAME`), so one that finds its files next to itself that
    /// way breaks (`SCRIPT_FILENAME` still has the real path). Off by default: the path
    /// is re-checked (no symlink on it, the same file) just before the exec, which leaves
    /// the time until the interpreter opens it; see docs/cgi.md. Compiled programs always
    /// run from the open file.
    pub fn scripts_by_fd(mut self, yes: bool) -> Cgi {
        self.scripts_by_fd = yes;
        self
    }

    /// A live view of the scripts running and the requests waiting for a slot, for
    /// metrics; shared by every server started from this `Cgi` (or a clone).
    pub fn load(&self) -> Load {
        self.load.clone()
    }

    /// How long a request body may stall between two pieces before the request ends with
    /// 408 ([`DEFAULT_BODY_TIMEOUT`] by default). No script runs until the body is whole.
    pub fn body_timeout(mut self, idle: Duration) -> Cgi {
        self.body_timeout = idle;
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

    /// FastCGI only: also sends the script's stderr lines to the web server as
    /// `FCGI_STDERR` (nginx writes them to its error log), besides brood's log. The end of
    /// the response waits up to 1 s for the script's stderr to close; lines written
    /// after that, or more than 64 waiting, are only logged.
    pub fn stderr_to_client(mut self, yes: bool) -> Cgi {
        self.stderr_to_client = yes;
        self
    }

    /// Sends log lines to `f` instead of stderr.
    pub fn on_log(mut self, f: impl Fn(&LogLine) + Send + Sync + 'static) -> Cgi {
        self.log = Arc::new(f);
        self
    }

    fn state(self) -> Result<state::State> {
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
        if self.max_connections == Some(0) {
            return Err(Error::invalid(op, "max_connections must be 1 or more"));
        }
        let auth = match &self.htpasswd {
            None => None,
            Some(path) => {
                let (users, skipped) = auth::Htpasswd::load(path)?;
                let warned = &self.htpasswd_warned;
                if !warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    for line in skipped {
                        (self.log)(&LogLine::Error(line));
                    }
                }
                Some(Arc::new(users))
            }
        };
        Ok(state::State {
            auth,
            realm: self.realm,
            max_body: self.max_body,
            scripts_by_fd: self.scripts_by_fd,
            load: self.load.clone(),
            disk: upload::Budget::new(self.max_spool.unwrap_or_else(default_max_spool)),
            connections: tasks::ConnectionCap::new(
                self.max_connections.unwrap_or_else(default_max_connections),
            ),
            body_timeout: self.body_timeout,
            mapping,
            env: meta::base_env(&self.env, &self.pass_env),
            timeout: self.timeout,
            limit: self
                .max_children
                .map(|n| Arc::new(tokio::sync::Semaphore::new(n))),
            queue: self.queue,
            max_header: self.max_header,
            log: self.log,
            tasks: tasks::Tasks::default(),
            stopping: tokio::sync::watch::channel(false).0,
            live: Arc::new(tokio::sync::watch::channel(0).0),
            // (Opened with O_CLOEXEC, as std opens every file; without it each script opens
            // its own.)
            dev_null: std::fs::File::open("/dev/null").ok().map(Into::into),
        })
    }

    /// Checks the configuration (root, script, htpasswd file, limits) as
    /// [`serve`](Cgi::serve) does first, so a program can report errors before it says it
    /// is listening.
    pub fn check(&self) -> Result<()> {
        self.clone().state().map(drop)
    }

    /// Serves HTTP/1.1 (keep-alive) on `listener` until an error on the listener itself.
    /// Drop the future (or abort its task) to stop: every script still running is killed
    /// with its process group. Configuration errors (no such root, bad prefix) come back at
    /// once.
    pub async fn serve(self, listener: TcpListener) -> Result<()> {
        self.serve_until(listener, std::future::pending()).await
    }

    /// [`serve`](Cgi::serve) until `shutdown` resolves, then stops gracefully: no new
    /// connection, every running script's process group gets SIGTERM and, 2 s later,
    /// SIGKILL (as lighttpd does); returns once they are gone (or after 4 s at most), with
    /// whatever is still open aborted.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let server = tokio::spawn(
    ///     brood::cgi::Cgi::root(std::env::temp_dir()).serve_until(listener, async {
    ///         let _ = stopped.await;
    ///     }),
    /// );
    /// stop.send(()).unwrap();
    /// server.await??;
    /// # Ok(()) }
    /// ```
    pub async fn serve_until(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let state = Arc::new(self.state()?);
        server::serve(state, listener, shutdown).await
    }
    /// Serves FastCGI (responder role) on `listener` until an error on the listener
    /// itself, as fcgiwrap does behind nginx, with the same runner, checks, limits,
    /// timeouts and access log as [`serve`](Cgi::serve).
    ///
    /// The script is `SCRIPT_FILENAME` when the web server sends it; else, with
    /// [`Cgi::script`], that script; else `DOCUMENT_ROOT` + `SCRIPT_NAME`, split into the
    /// script and `PATH_INFO` at the first file; else the path of `REQUEST_URI` mapped as
    /// in HTTP mode. Whichever it is, the file that runs must be inside the root (or be
    /// the script). The params are the script's CGI variables (except `HTTP_PROXY`,
    /// `HTTP_AUTHORIZATION` and the body's framing), plus `PATH`, [`pass_env`](Cgi::pass_env)
    /// and [`env`](Cgi::env). The web server authenticates: its `REMOTE_USER` param is
    /// trusted, and [`htpasswd`](Cgi::htpasswd) is refused here. One request at a time per
    /// connection (`FCGI_MPXS_CONNS=0`); `FCGI_KEEP_CONN` is honoured.
    ///
    /// The requests are not served on the runtime that awaits this: it starts one thread
    /// per core, each with an `epoll` loop of its own, and waits. Dropped (or aborted), it
    /// stops them and kills every script still running.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use brood::cgi::{Cgi, FastCgiListener};
    /// let listener = FastCgiListener::bind("127.0.0.1:0").await?;
    /// let server = tokio::spawn(Cgi::root(std::env::temp_dir()).serve_fastcgi(listener));
    /// // nginx: fastcgi_pass 127.0.0.1:PORT;
    /// server.abort();
    /// # Ok(()) }
    /// ```
    pub async fn serve_fastcgi(self, listener: impl Into<FastCgiListener>) -> Result<()> {
        self.serve_fastcgi_until(listener, std::future::pending())
            .await
    }

    /// [`serve_fastcgi`](Cgi::serve_fastcgi) until `shutdown` resolves, then stops as
    /// [`serve_until`](Cgi::serve_until) does. From then on a listener
    /// [`bind`](FastCgiListener::bind) made refuses new connections (and its socket file is
    /// gone): the web server fails over at once.
    pub async fn serve_fastcgi_until(
        self,
        listener: impl Into<FastCgiListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        if self.htpasswd.is_some() {
            return Err(Error::invalid(
                "cgi: fastcgi",
                "htpasswd is for HTTP mode; behind a web server, the web server authenticates",
            ));
        }
        let settings = fastcgi::Settings {
            stderr_to_client: self.stderr_to_client,
            max_conns: self.max_children.unwrap_or(1024),
        };
        let state = Arc::new(self.state()?);
        fastcgi::serve(state, settings, listener.into(), shutdown).await
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
