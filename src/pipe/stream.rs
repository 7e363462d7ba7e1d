//! The client side and the connection itself: connect, open an fd, who and where the peer is.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::net::{UnixSocket, UnixStream};

use super::name::{self, Name};
use super::{check_runtime, check_unix_stream, probe};
use crate::error::{Error, Result, from_io};

/// Connects to the server at `name` (a path, or `@name` for an abstract socket), as
/// `uv_pipe_connect`. Needs a tokio runtime.
///
/// Errors: `ENOENT` when nothing is at the path, `ECONNREFUSED` when nobody accepts there (a
/// stale socket file, or a file that is not a socket: the detail says which),
/// `ENAMETOOLONG` for a path over `sun_path`, `EAGAIN` when the server's backlog is full.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let err = brood::pipe::connect("/nonexistent/brood.sock").await.unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "connect \"/nonexistent/brood.sock\": ENOENT: no such file or directory"
/// );
/// # }
/// ```
pub async fn connect(name: impl AsRef<OsStr>) -> Result<UnixStream> {
    let name = Name::parse(name);
    let op = name::op("connect", &name);
    check_runtime(&op)?;
    let sun_path = name.sun_path(&op)?;
    let attempt = match UnixSocket::new_stream() {
        Ok(socket) => socket.connect(&sun_path).await,
        Err(e) => Err(e),
    };
    attempt.map_err(|e| {
        let err = from_io(e, &op);
        match (err.errno(), name.as_path()) {
            (libc::ECONNREFUSED, Some(path)) => match probe::what_is_at(path) {
                probe::Found::NotSocket => err.with_detail("the path is not a socket"),
                probe::Found::Stale => {
                    err.with_detail("nobody accepts on it: a stale socket file?")
                }
                _ => err,
            },
            _ => err,
        }
    })
}

/// Makes a stream of a connected Unix stream socket the program already has (`uv_pipe_open`),
/// such as an inherited fd 3 or one half of a `socketpair`. The fd is made non-blocking.
/// `ENOTSOCK` for an fd that is not a socket (a `pipe(2)` or FIFO: use
/// `tokio::net::unix::pipe` for those), `EINVAL` for another kind of socket or a listening
/// one (see [`Listener::open`](super::Listener::open)). Needs a tokio runtime.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
/// use std::os::fd::OwnedFd;
/// let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
/// let stream = brood::pipe::open(OwnedFd::from(a))?;
/// assert_eq!(brood::pipe::peer_credentials(&stream)?.pid, Some(std::process::id() as i32));
///
/// let file = std::fs::File::open("/dev/null").unwrap();
/// assert_eq!(brood::pipe::open(file.into()).unwrap_err().name(), "ENOTSOCK");
/// # Ok(()) }
/// ```
pub fn open(fd: OwnedFd) -> Result<UnixStream> {
    let op = format!("open fd {}", fd.as_raw_fd());
    check_runtime(&op)?;
    let sock = socket2::SockRef::from(&fd);
    check_unix_stream(&sock, &op)?;
    if sock.is_listener().map_err(|e| from_io(e, &op))? {
        return Err(Error::invalid(
            op,
            "the socket is listening: use Listener::open",
        ));
    }
    sock.set_nonblocking(true).map_err(|e| from_io(e, &op))?;
    UnixStream::from_std(fd.into()).map_err(|e| from_io(e, op))
}

/// Who is at the other end of a connection: from `SO_PEERCRED`, as the kernel recorded
/// it when the connection was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// The peer's process id (absent only on systems that do not report it).
    pub pid: Option<i32>,
    /// The peer's effective user id.
    pub uid: u32,
    /// The peer's effective group id.
    pub gid: u32,
}

/// The peer's process id, user id and group id (`SO_PEERCRED`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
/// use std::os::unix::fs::MetadataExt;
///
/// let (a, _b) = tokio::net::UnixStream::pair().unwrap();
/// let cred = brood::pipe::peer_credentials(&a)?;
/// // /proc/self belongs to this process's effective uid and gid.
/// let me = std::fs::metadata("/proc/self").unwrap();
/// assert_eq!((cred.pid, cred.uid, cred.gid), (Some(std::process::id() as i32), me.uid(), me.gid()));
/// # Ok(()) }
/// ```
pub fn peer_credentials(stream: &UnixStream) -> Result<Credentials> {
    let cred = stream
        .peer_cred()
        .map_err(|e| from_io(e, format!("peer credentials of fd {}", stream.as_raw_fd())))?;
    Ok(Credentials {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    })
}

/// The name of this end of a connection (`uv_pipe_getsockname`): usually
/// [`Name::Unnamed`] for a client, the server's name for an accepted stream.
pub fn local_name(stream: &UnixStream) -> Result<Name> {
    stream
        .local_addr()
        .map(|a| Name::from_tokio(&a))
        .map_err(|e| from_io(e, format!("getsockname fd {}", stream.as_raw_fd())))
}

/// The name of the other end (`uv_pipe_getpeername`): the server's name for a client.
pub fn peer_name(stream: &UnixStream) -> Result<Name> {
    stream
        .peer_addr()
        .map(|a| Name::from_tokio(&a))
        .map_err(|e| from_io(e, format!("getpeername fd {}", stream.as_raw_fd())))
}
