//! Raw mode, the libuv guide's CGI: every TCP connection runs the program with the
//! connection itself as its stdin and stdout, as inetd does.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::config::{DEFAULT_TIMEOUT, check_env, default_max_children};
use super::log::{Access, Log, LogLine, default_log};
use super::meta;
use super::script::{GroupKill, KILL_GRACE, log_stderr};
use super::tasks::{AbortOnDrop, ConnectionCap, Tasks, accept_loop};
use crate::error::{Error, Result};
use crate::{Command, Stdio};

/// Runs a program per TCP connection with stdin and stdout set to the connection
/// (`UV_INHERIT_STREAM`), `TCPREMOTEIP`, `TCPREMOTEPORT`, `TCPLOCALIP`, `TCPLOCALPORT` and
/// `PROTO=TCP` in its environment (the UCSPI names), and its stderr in the log. The
/// connection closes when the program (and whatever it gave the socket to) exits.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tokio::io::AsyncReadExt;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let addr = listener.local_addr()?;
/// let server = tokio::spawn(
///     brood::cgi::Raw::new("sh")
///         .args(["-c", "echo hello $TCPREMOTEIP"])
///         .serve(listener),
/// );
/// let mut tcp = tokio::net::TcpStream::connect(addr).await?;
/// let mut text = String::new();
/// tcp.read_to_string(&mut text).await?; // EOF when `sh` exits
/// assert_eq!(text, "hello 127.0.0.1\n");
/// server.abort();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Raw {
    program: OsString,
    args: Vec<OsString>,
    timeout: Option<Duration>,
    max_children: Option<usize>,
    max_connections: Option<usize>,
    queue: Duration,
    env: Vec<(OsString, OsString)>,
    pass_env: Vec<OsString>,
    log: Log,
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Raw")
            .field("program", &self.program)
            .field("args", &self.args)
            .finish_non_exhaustive()
    }
}

impl Raw {
    /// Runs `program` (searched in `PATH` without a slash) for each connection.
    pub fn new(program: impl Into<OsString>) -> Raw {
        Raw {
            program: program.into(),
            args: Vec::new(),
            timeout: Some(DEFAULT_TIMEOUT),
            max_children: Some(default_max_children()),
            max_connections: None,
            queue: Duration::ZERO,
            env: Vec::new(),
            pass_env: Vec::new(),
            log: default_log(),
        }
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Raw
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Ends the program's process group (SIGTERM, SIGKILL 2 s later) and shuts the
    /// connection down after `timeout`, even if a process outside the group holds it.
    /// [`DEFAULT_TIMEOUT`](super::DEFAULT_TIMEOUT) by default; `None` for no limit.
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Raw {
        self.timeout = timeout.into();
        self
    }

    /// At most `n` programs at once; a connection over the limit waits up to
    /// [`queue`](Raw::queue), then is closed.
    /// [`default_max_children`](super::default_max_children) by default.
    pub fn max_children(mut self, n: usize) -> Raw {
        self.max_children = Some(n);
        self
    }

    /// At most `n` connections open at once, the ones waiting for a slot included
    /// ([`default_max_connections`](super::default_max_connections) by default); beyond,
    /// new connections wait in the listen backlog.
    pub fn max_connections(mut self, n: usize) -> Raw {
        self.max_connections = Some(n);
        self
    }

    /// How long a connection over the limit waits (zero by default).
    pub fn queue(mut self, wait: Duration) -> Raw {
        self.queue = wait;
        self
    }

    /// Sets a variable in the program's environment.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Raw {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Passes the server's own variable `name` on, when it is set.
    pub fn pass_env(mut self, name: impl Into<OsString>) -> Raw {
        self.pass_env.push(name.into());
        self
    }

    /// Sends log lines to `f` instead of stderr.
    pub fn on_log(mut self, f: impl Fn(&LogLine) + Send + Sync + 'static) -> Raw {
        self.log = Arc::new(f);
        self
    }

    /// Checks the configuration as [`serve`](Raw::serve) does first: the program must
    /// exist and be executable (searched in `PATH` without a slash).
    pub fn check(&self) -> Result<()> {
        check_env(&self.env, &self.pass_env)?;
        if self.max_children == Some(0) || self.max_connections == Some(0) {
            return Err(Error::invalid(
                "cgi raw",
                "max_children and max_connections must be 1 or more",
            ));
        }
        let what = format!("cgi raw: program {}", self.program.to_string_lossy());
        let prog = std::path::Path::new(&self.program);
        let candidates: Vec<std::path::PathBuf> = if self.program.as_encoded_bytes().contains(&b'/')
        {
            vec![prog.to_path_buf()]
        } else {
            let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
            std::env::split_paths(&path).map(|d| d.join(prog)).collect()
        };
        // Why the last candidate that exists cannot run, else that none exists.
        let mut why = Error::new(libc::ENOENT, what.clone()).with_detail("no such executable file");
        for c in &candidates {
            match std::fs::metadata(c) {
                Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => return Ok(()),
                Ok(m) if m.is_dir() => {
                    why = Error::new(libc::EISDIR, what.clone())
                        .with_detail(format!("{} is a directory", c.display()));
                }
                Ok(_) => {
                    why = Error::new(libc::EACCES, what.clone())
                        .with_detail(format!("{} is not an executable file", c.display()));
                }
                Err(_) => {}
            }
        }
        Err(why)
    }

    /// Accepts connections until an error on the listener. Drop the future to stop: every
    /// program still running is killed with its process group.
    pub async fn serve(self, listener: TcpListener) -> Result<()> {
        self.check()?;
        let max_connections = self
            .max_connections
            .unwrap_or_else(super::config::default_max_connections);
        let limit = self.max_children.map(|n| Arc::new(Semaphore::new(n)));
        let env = Arc::new(meta::base_env(&self.env, &self.pass_env));
        let this = Arc::new(self);
        let tasks = Tasks::default();
        let _stop = AbortOnDrop(tasks.clone());
        let connections = ConnectionCap::new(max_connections);
        let serve = |(tcp, remote), slot| {
            let (this, env, limit) = (this.clone(), env.clone(), limit.clone());
            tasks.spawn(async move {
                this.connection(tcp, remote, &env, limit).await;
                drop(slot);
            });
        };
        let bound = &listener;
        let accept = move || bound.accept();
        accept_loop(
            &connections,
            &this.log,
            "cgi raw: accept",
            accept,
            serve,
            std::future::pending(),
        )
        .await
    }

    async fn connection(
        &self,
        tcp: TcpStream,
        remote: std::net::SocketAddr,
        env: &[(OsString, OsString)],
        limit: Option<Arc<Semaphore>>,
    ) {
        let start = Instant::now();
        let name = self.program.to_string_lossy().into_owned();
        let _permit = match limit {
            None => None,
            Some(sem) => {
                let p = if self.queue.is_zero() {
                    sem.try_acquire_owned().ok()
                } else {
                    tokio::time::timeout(self.queue, sem.acquire_owned())
                        .await
                        .ok()
                        .and_then(|r| r.ok())
                };
                if p.is_none() {
                    (self.log)(&LogLine::Error(format!(
                        "{remote}: over max_children, connection closed"
                    )));
                    return;
                }
                p
            }
        };
        let local = tcp.local_addr().ok();
        // The spawn engine makes stdio 0-2 blocking in the child, as libuv does (programs
        // expect it: a non-blocking socket makes a big write fail with EAGAIN).
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("PROTO", "TCP")
            .env("TCPREMOTEIP", remote.ip().to_string())
            .env("TCPREMOTEPORT", remote.port().to_string())
            .process_group(0)
            .kill_on_drop(true)
            .stdin(Stdio::inherit_stream(&tcp))
            .stdout(Stdio::inherit_stream(&tcp))
            .stderr(Stdio::pipe_writable());
        if let Some(local) = local {
            cmd.env("TCPLOCALIP", local.ip().to_string())
                .env("TCPLOCALPORT", local.port().to_string());
        }
        let spawned = cmd.spawn();
        // The program holds the connection now; ours closes so that its exit ends it. A
        // duplicate is kept to see the client leave (it is never read: the bytes are the
        // program's) and to shut the connection down at the timeout (closing it sends
        // nothing while a process outside the group still holds it).
        let cut = tcp;
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                (self.log)(&LogLine::Error(format!("{remote}: {e}")));
                return;
            }
        };
        let mut group =
            GroupKill::new(child.id().expect("a child not waited for has its pid") as i32);
        let errs = log_stderr(child.stderr.take(), name.clone(), self.log.clone());
        let wait = async {
            let far = Instant::now() + Duration::from_secs(86400 * 365);
            let deadline = self.timeout.map_or(far, |t| start + t);
            let why = tokio::select! {
                r = child.wait() => return (r.ok(), written(&cut)),
                () = tokio::time::sleep_until(deadline) => "timed out",
                () = client_gone(&cut) => "client gone",
            };
            // As in HTTP mode: SIGTERM to the group, SIGKILL once the program has exited
            // or after the grace.
            (self.log)(&LogLine::Error(format!("{name}: {remote}: {why}, ended")));
            let bytes = written(&cut);
            let _ = socket2::SockRef::from(&cut).shutdown(std::net::Shutdown::Both);
            group.term();
            let exit = match tokio::time::timeout(KILL_GRACE, child.wait()).await {
                Ok(r) => r.ok(),
                Err(_) => {
                    group.kill();
                    child.wait().await.ok()
                }
            };
            group.kill();
            (exit, bytes)
        };
        let ((exit, bytes), ()) = tokio::join!(wait, errs);
        drop(cut);
        group.disarm();
        (self.log)(&LogLine::Access(Access {
            remote,
            method: "-".into(),
            target: name.clone(),
            status: 0,
            bytes,
            elapsed: start.elapsed(),
            exit,
            protocol: "-".into(),
            user: None,
            referer: None,
            user_agent: None,
            time: std::time::SystemTime::now(),
        }));
    }
}

/// The bytes the program (and anyone else holding the connection) wrote to it so far, as
/// the kernel counts them; 0 where it does not say.
fn written(sock: &TcpStream) -> u64 {
    crate::fd::tcp_bytes_written(std::os::fd::AsFd::as_fd(sock)).unwrap_or(0)
}

/// Resolves when the client has closed its side of the connection (a FIN, as nginx takes
/// it for a client that went away, or a reset); never without a socket to watch. Only
/// readiness is looked at: the program reads the bytes.
async fn client_gone(sock: &TcpStream) {
    loop {
        let Ok(ready) = sock.ready(tokio::io::Interest::READABLE).await else {
            return std::future::pending().await;
        };
        if ready.is_read_closed() {
            return;
        }
        // Bytes for the program: forget this readiness (reading nothing) and wait for the
        // next change.
        let _ = sock.try_io(tokio::io::Interest::READABLE, || {
            Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
        });
    }
}
