//! The server side: bind, listen with a backlog, accept, chmod; the socket file goes when
//! the listener does.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixSocket, UnixStream};

use super::name::{Name, op};
use super::{Mode, check_runtime, probe};
use crate::error::{Error, Result, from_io};

/// The backlog [`Listener::bind`] uses, as libuv's examples pass to `uv_listen`.
pub const DEFAULT_BACKLOG: u32 = 128;

/// A Unix domain socket server (`uv_pipe_t` after `uv_pipe_bind` and `uv_listen`).
///
/// Connections come from [`accept`](Listener::accept) as `tokio::net::UnixStream`s. When
/// the listener is dropped, its socket file is removed (if it is still the file this
/// listener made), so a stopped server leaves nothing behind.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
/// use brood::pipe::{self, Listener};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// let path = std::env::temp_dir().join(format!("brood-doc-{}.sock", std::process::id()));
/// let listener = Listener::bind(&path)?;
/// let mut client = pipe::connect(&path).await?;
/// let mut server_side = listener.accept().await?;
/// client.write_all(b"ping").await.unwrap();
/// let mut buf = [0; 4];
/// server_side.read_exact(&mut buf).await.unwrap();
/// assert_eq!(&buf, b"ping");
/// drop(listener);
/// assert!(!path.exists()); // the socket file went with the listener
/// # Ok(()) }
/// ```
pub struct Listener {
    inner: UnixListener,
    name: Name,
    /// The file to remove on drop: absolute path, device and inode as bound.
    file: Option<(PathBuf, u64, u64)>,
}

/// Options for [`Listener`]: the backlog, and whether a stale socket file may be replaced.
/// Made by [`Listener::builder`].
#[derive(Clone, Debug)]
pub struct Bind {
    name: OsString,
    backlog: u32,
    replace_stale: bool,
}

impl Bind {
    /// The length of the queue of connections not yet accepted (`uv_listen`'s backlog);
    /// the kernel caps it at `net.core.somaxconn`. Default [`DEFAULT_BACKLOG`].
    pub fn backlog(mut self, backlog: u32) -> Bind {
        self.backlog = backlog;
        self
    }

    /// When the path is taken by the socket file of a server that is gone (nothing accepts
    /// on it), remove it and bind anew. Without this, such a file gives `EADDRINUSE` saying
    /// it is stale. A live server's socket, or a file that is not a socket, is never removed.
    ///
    /// To tell a stale file from a live one, a `bind` that finds its path taken by a socket
    /// connects to it once (without blocking); a live server sees that connection open and
    /// close at once.
    pub fn replace_stale(mut self, replace: bool) -> Bind {
        self.replace_stale = replace;
        self
    }

    /// Binds and listens. Needs a tokio runtime.
    ///
    /// Errors: `EADDRINUSE` when a server listens there, when a stale socket file is there
    /// (unless [`replace_stale`](Bind::replace_stale)) or when a file that is not a socket is
    /// there; `ENAMETOOLONG` for a path over `sun_path`; `ENOENT`/`EACCES` for a directory
    /// that is missing or closed to us.
    pub fn bind(self) -> Result<Listener> {
        let name = Name::parse(&self.name);
        let op = op("bind", &name);
        check_runtime(&op)?;
        let sun_path = name.sun_path(&op)?;
        // Where to find the file again to remove it, even if the cwd changes meanwhile.
        let abs = match &name {
            Name::Path(p) => Some(std::path::absolute(p).map_err(|e| from_io(e, &op))?),
            _ => None,
        };
        let inner = match (listen_at(&sun_path, self.backlog), name.as_path()) {
            (Ok(l), _) => l,
            (Err(e), Some(path)) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
                match probe::what_is_at(path) {
                    probe::Found::Stale if self.replace_stale => {
                        std::fs::remove_file(path)
                            .map_err(|e| from_io(e, format!("{op}: remove stale socket")))?;
                        listen_at(&sun_path, self.backlog).map_err(|e| from_io(e, &op))?
                    }
                    found => {
                        return Err(Error::new(libc::EADDRINUSE, op).with_detail(found.why()));
                    }
                }
            }
            (Err(e), None) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
                return Err(from_io(e, op).with_detail("another socket holds this abstract name"));
            }
            (Err(e), _) => return Err(from_io(e, op)),
        };
        let file = match abs {
            Some(abs) => match std::fs::symlink_metadata(&abs) {
                Ok(meta) => Some((abs, meta.dev(), meta.ino())),
                Err(e) => {
                    // Just bound, yet not there to see: do not leave it behind.
                    let _ = std::fs::remove_file(&abs);
                    return Err(from_io(e, op));
                }
            },
            None => None,
        };
        Ok(Listener { inner, name, file })
    }
}

fn listen_at(sun_path: &Path, backlog: u32) -> std::io::Result<UnixListener> {
    let socket = UnixSocket::new_stream()?;
    socket.bind(sun_path)?;
    socket.listen(backlog)
}

impl Listener {
    /// Binds `name` (a path, or `@name` for an abstract socket) and listens with the
    /// default backlog (128). See [`Bind::bind`] for the errors.
    pub fn bind(name: impl AsRef<OsStr>) -> Result<Listener> {
        Listener::builder(name).bind()
    }

    /// Binds to a unique abstract name the kernel picks (Linux autobind: `bind` with an
    /// empty address) and listens with the default backlog. The name, five hex digits such
    /// as `@0001f`, is in [`name`](Listener::name) and [`local_addr`](Listener::local_addr);
    /// it has no file and vanishes with the socket. Useful when a parent hands the name to
    /// its children: no path to pick, no directory needed, no file to clean up, no clash.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
    /// use brood::pipe::{self, Listener};
    ///
    /// let listener = Listener::autobind()?;
    /// let name = listener.name().to_string(); // "@" and five hex digits
    /// assert_eq!(name.len(), 6);
    /// let _client = pipe::connect(&name).await?;
    /// let _server_side = listener.accept().await?;
    /// # Ok(()) }
    /// ```
    pub fn autobind() -> Result<Listener> {
        Listener::autobind_with_backlog(DEFAULT_BACKLOG)
    }

    /// [`autobind`](Listener::autobind) with a backlog of `backlog`.
    pub fn autobind_with_backlog(backlog: u32) -> Result<Listener> {
        let op = "bind (autobind)";
        check_runtime(op)?;
        // An empty path is an address of the family alone, which Linux takes as "pick a
        // unique abstract name" (unix(7), autobind).
        let inner = listen_at(Path::new(""), backlog).map_err(|e| from_io(e, op))?;
        let name = inner
            .local_addr()
            .map(|a| Name::from_tokio(&a))
            .map_err(|e| from_io(e, op))?;
        if name.as_abstract().is_none() {
            return Err(Error::new(libc::EAFNOSUPPORT, op)
                .with_detail(format!("the kernel did not autobind (got {name})")));
        }
        Ok(Listener {
            inner,
            name,
            file: None,
        })
    }

    /// Options before binding: backlog, stale-file replacement.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
    /// let name = format!("@brood-doc-builder-{}", std::process::id());
    /// let listener = brood::pipe::Listener::builder(&name).backlog(16).bind()?;
    /// assert_eq!(listener.name().to_string(), name);
    /// # Ok(()) }
    /// ```
    pub fn builder(name: impl AsRef<OsStr>) -> Bind {
        Bind {
            name: name.as_ref().to_owned(),
            backlog: DEFAULT_BACKLOG,
            replace_stale: false,
        }
    }

    /// Makes a listener of a listening Unix stream socket this process already has
    /// (`uv_pipe_open` on a server socket, e.g. one inherited as fd 3). brood did not make
    /// its file, so it does not remove it. `ENOTSOCK` for an fd that is not a socket,
    /// `EINVAL` for one that is not a listening Unix stream socket.
    pub fn open(fd: OwnedFd) -> Result<Listener> {
        let op = format!("open fd {}", fd.as_raw_fd());
        check_runtime(&op)?;
        let sock = socket2::SockRef::from(&fd);
        super::check_unix_stream(&sock, &op)?;
        if !sock.is_listener().map_err(|e| from_io(e, &op))? {
            return Err(Error::invalid(op, "the socket is not listening"));
        }
        sock.set_nonblocking(true).map_err(|e| from_io(e, &op))?;
        let inner = UnixListener::from_std(fd.into()).map_err(|e| from_io(e, &op))?;
        let name = inner
            .local_addr()
            .map(|a| Name::from_tokio(&a))
            .map_err(|e| from_io(e, &op))?;
        Ok(Listener {
            inner,
            name,
            file: None,
        })
    }

    /// Waits for the next connection (`uv_accept`). The stream is close-on-exec and ready
    /// for tokio. Cancel-safe.
    pub async fn accept(&self) -> Result<UnixStream> {
        self.inner
            .accept()
            .await
            .map(|(stream, _)| stream)
            .map_err(|e| from_io(e, op("accept", &self.name)))
    }

    /// The name this listener is bound to (`uv_pipe_getsockname`).
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// The name this listener is bound to, as the kernel reports it now (`getsockname`;
    /// tokio's `local_addr`). The same as [`name`](Listener::name) except for a path given
    /// relative, which the kernel reports as given.
    pub fn local_addr(&self) -> Result<Name> {
        self.inner
            .local_addr()
            .map(|a| Name::from_tokio(&a))
            .map_err(|e| from_io(e, op("getsockname", &self.name)))
    }

    /// Opens the socket file to other users (`uv_pipe_chmod`): `Mode::READABLE` adds read
    /// permission for all, `Mode::WRITABLE` write permission for all (connecting needs
    /// write). Bits are only added. `EINVAL` for an abstract socket, which has no file.
    pub fn chmod(&self, mode: Mode) -> Result<()> {
        let op = op("chmod", &self.name);
        let Some((path, _, _)) = &self.file else {
            return Err(Error::invalid(op, "only a socket file has permissions"));
        };
        let meta = std::fs::metadata(path).map_err(|e| from_io(e, &op))?;
        let want = mode.bits();
        let have = meta.permissions().mode();
        if have & want == want {
            return Ok(());
        }
        std::fs::set_permissions(
            path,
            std::fs::Permissions::from_mode((have | want) & 0o7777),
        )
        .map_err(|e| from_io(e, op))
    }

    /// The tokio listener inside, for what brood does not wrap.
    pub fn as_tokio(&self) -> &UnixListener {
        &self.inner
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some((path, dev, ino)) = &self.file {
            // Remove the file only if it is still ours: another server may have replaced it.
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if meta.file_type().is_socket() && meta.dev() == *dev && meta.ino() == *ino {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("name", &self.name)
            .field("fd", &self.inner.as_raw_fd())
            .finish()
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}
