//! The FastCGI front of [`Cgi`](super::Cgi): a responder behind nginx (or any web server
//! with FastCGI), in place of fcgiwrap. Scripts run through the same runner, checks,
//! limits, timeouts and access log as in HTTP mode; see [`Cgi::serve_fastcgi`](super::Cgi::serve_fastcgi).

mod conn;
mod engine;
mod job;
mod out;
mod params;
mod poll;
pub(crate) mod record;
mod shared;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};

use super::state::State;
use crate::error::{Error, Result, from_io};

pub(crate) use shared::Settings;

/// Where a FastCGI server takes connections: a TCP or a Unix socket.
///
/// A Unix socket file made by [`bind`](FastCgiListener::bind) is removed when the server's
/// graceful stop begins (or the listener is dropped unused), as nginx removes its own;
/// unless it is no longer that file (another server bound the path since). A socket `bind`
/// made also refuses new connections from then on (it is shut down), so a web server fails
/// over at once rather than waiting out the grace. A socket passed
/// by systemd ([`from_systemd`](FastCgiListener::from_systemd)) or made by the caller
/// (`From<UnixListener>`) is left where it is: its owner removes it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use brood::cgi::FastCgiListener;
/// let path = std::env::temp_dir().join(format!("brood-fcgi-doc-{}.sock", std::process::id()));
/// let unix = FastCgiListener::bind(&format!("unix:{}", path.display())).await?;
/// assert_eq!(unix.to_string(), format!("unix:{}", path.display()));
/// assert!(path.exists());
/// drop(unix);
/// assert!(!path.exists(), "the socket file bind made goes with the listener");
/// let tcp = FastCgiListener::bind("127.0.0.1:0").await?;
/// assert!(tcp.to_string().starts_with("127.0.0.1:"));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FastCgiListener(Kind);

#[derive(Debug)]
enum Kind {
    /// With whether `bind` made it (no other process holds it).
    Tcp(TcpListener, bool),
    /// With its path when it has one, and the file to remove when `bind` made it.
    Unix(UnixListener, Option<PathBuf>, Option<SocketFile>),
}

/// A socket file `bind` made, removed when this goes if the path still names that file:
/// the same device and inode as just after the bind. `_socket` (a copy of the listening fd)
/// keeps our socket, so its inode cannot be freed and given to another server's file before
/// that check; it closes only after it. A process forked since does not remove it.
#[derive(Debug)]
struct SocketFile {
    /// Absolute: a later `chdir` does not move it.
    path: PathBuf,
    id: (u64, u64),
    _socket: OwnedFd,
    pid: u32,
}

impl SocketFile {
    fn new(path: &Path, listener: &UnixListener) -> Option<SocketFile> {
        let path = std::path::absolute(path).ok()?;
        let id = Self::id(&path)?;
        let socket = listener.as_fd().try_clone_to_owned().ok()?;
        Some(SocketFile {
            path,
            id,
            _socket: socket,
            pid: std::process::id(),
        })
    }

    fn id(path: &Path) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path).ok()?;
        Some((m.dev(), m.ino()))
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // (What stays open: another server that unlinks our file and binds the path
        // between this check and the removal; nginx does not check at all.)
        if std::process::id() == self.pid && Self::id(&self.path) == Some(self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
        // `_socket` closes after this.
    }
}

impl From<TcpListener> for FastCgiListener {
    fn from(l: TcpListener) -> FastCgiListener {
        FastCgiListener(Kind::Tcp(l, false))
    }
}

impl From<UnixListener> for FastCgiListener {
    fn from(l: UnixListener) -> FastCgiListener {
        let path = l
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf));
        FastCgiListener(Kind::Unix(l, path, None))
    }
}

impl fmt::Display for FastCgiListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Tcp(l, _) => match l.local_addr() {
                Ok(a) => write!(f, "{a}"),
                Err(_) => write!(f, "tcp"),
            },
            Kind::Unix(_, Some(p), _) => write!(f, "unix:{}", p.display()),
            Kind::Unix(_, None, _) => write!(f, "unix:(unnamed)"),
        }
    }
}

impl FastCgiListener {
    /// Listens on `unix:PATH` or `HOST:PORT`. A socket file left at `PATH` by a server that
    /// is gone (nothing accepts on it) is replaced; one in use is `EADDRINUSE`.
    pub async fn bind(addr: &str) -> Result<FastCgiListener> {
        let op = format!("fastcgi: listen {addr}");
        if let Some(path) = addr.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if std::fs::symlink_metadata(&path)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                && std::os::unix::net::UnixStream::connect(&path)
                    .is_err_and(|e| e.raw_os_error() == Some(libc::ECONNREFUSED))
            {
                let _ = std::fs::remove_file(&path);
            }
            let l = UnixListener::bind(&path).map_err(|e| from_io(e, op))?;
            let file = SocketFile::new(&path, &l);
            return Ok(FastCgiListener(Kind::Unix(l, Some(path), file)));
        }
        let addr: SocketAddr = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| from_io(e, op.clone()))?
            .next()
            .ok_or_else(|| Error::new(libc::EADDRNOTAVAIL, op.clone()))?;
        let l = TcpListener::bind(addr).await.map_err(|e| from_io(e, op))?;
        Ok(FastCgiListener(Kind::Tcp(l, true)))
    }

    /// The listening socket systemd passed (`LISTEN_FDS` >= 1 and `LISTEN_PID` = this
    /// process: fd 3, a Unix or TCP listener), as fcgiwrap's socket unit does; `None` when
    /// this process was not started that way. Must run inside a tokio runtime.
    pub fn from_systemd() -> Result<Option<FastCgiListener>> {
        let pid_ok = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            == Some(std::process::id());
        let count = std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0);
        if !pid_ok || count == 0 {
            return Ok(None);
        }
        let fd = crate::ipc::own_inherited(3).map_err(|e| e.context("LISTEN_FDS"))?;
        let op = "fastcgi: LISTEN_FDS";
        match crate::ipc::handle_type(fd.as_fd()) {
            crate::ipc::HandleType::TcpListener => {
                let std = std::net::TcpListener::from(fd);
                std.set_nonblocking(true).map_err(|e| from_io(e, op))?;
                Ok(Some(FastCgiListener(Kind::Tcp(
                    TcpListener::from_std(std).map_err(|e| from_io(e, op))?,
                    false,
                ))))
            }
            crate::ipc::HandleType::UnixListener => {
                let std = std::os::unix::net::UnixListener::from(fd);
                std.set_nonblocking(true).map_err(|e| from_io(e, op))?;
                Ok(Some(
                    UnixListener::from_std(std)
                        .map_err(|e| from_io(e, op))?
                        .into(),
                ))
            }
            _ => {
                // Not systemd's socket: fd 3 is someone else's here (it was not inherited,
                // and the runtime may have opened its own there); leave it open.
                let _ = std::os::fd::IntoRawFd::into_raw_fd(fd);
                Err(Error::new(libc::ENOTSOCK, op)
                    .with_detail("fd 3 is not a listening TCP or Unix socket"))
            }
        }
    }

    /// The listening socket, out of tokio's reactor, for the event loops; whether it is
    /// TCP; whether `bind` made it (so that the stop may refuse new connections on it:
    /// no other process holds it); and the socket file to remove when the stop begins.
    fn into_fd(self) -> io::Result<(OwnedFd, bool, bool, Option<SocketFile>)> {
        match self.0 {
            Kind::Tcp(l, ours) => Ok((l.into_std()?.into(), true, ours, None)),
            Kind::Unix(l, _, file) => {
                let ours = file.is_some();
                Ok((l.into_std()?.into(), false, ours, file))
            }
        }
    }
}

pub(crate) async fn serve(
    state: Arc<State>,
    settings: Settings,
    listener: FastCgiListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let (fd, tcp, ours, file) = listener
        .into_fd()
        .map_err(|e| from_io(e, "fastcgi: listener"))?;
    // The socket file goes when the stop begins (a web server connecting then gets ENOENT
    // at once, and tries its next server), or with this future.
    let shutdown = async move {
        shutdown.await;
        drop(file);
    };
    engine::serve(state, settings, fd, tcp, ours, shutdown).await
}
