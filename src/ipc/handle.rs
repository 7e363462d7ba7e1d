//! Received handles: what kind each one is, and turning it into the right tokio type.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::error::{Error, Result, from_io};

/// What a passed handle is (`uv_pipe_pending_type`), found from the fd itself with
/// `SO_DOMAIN`, `SO_TYPE` and `SO_ACCEPTCONN`, or `fstat` for what is not a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandleType {
    /// A TCP stream socket that is not listening: connected, or bound and not yet listening
    /// (`accept::<TcpListener>()` listens on that one).
    Tcp,
    /// A listening TCP socket.
    TcpListener,
    /// A UDP socket.
    Udp,
    /// A Unix stream socket that is not listening: connected (a brood pipe, an IPC channel, a
    /// socketpair end), or bound and not yet listening (`accept::<UnixListener>()` listens).
    Unix,
    /// A listening Unix stream socket.
    UnixListener,
    /// A Unix datagram socket.
    UnixDatagram,
    /// A FIFO or a kernel pipe.
    Fifo,
    /// A regular file.
    File,
    /// Anything else (a character device, a socket of another family, ...).
    Other,
}

impl fmt::Display for HandleType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandleType::Tcp => "a TCP stream",
            HandleType::TcpListener => "a TCP listener",
            HandleType::Udp => "a UDP socket",
            HandleType::Unix => "a Unix stream",
            HandleType::UnixListener => "a Unix listener",
            HandleType::UnixDatagram => "a Unix datagram socket",
            HandleType::Fifo => "a FIFO",
            HandleType::File => "a file",
            HandleType::Other => "some other fd",
        })
    }
}

fn sockopt(fd: BorrowedFd<'_>, opt: libc::c_int) -> Option<libc::c_int> {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one int into `val`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(val)
}

/// The kind of handle `fd` is. A socket answers `SO_DOMAIN`, anything else fails it
/// (`ENOTSOCK`) and `fstat` then says what it is: a socket, the common case (every
/// handed-off connection), costs three calls, as many as a libuv receiver makes per handle
/// (`fstat`, `getsockopt` and `getsockname` under strace).
pub fn handle_type(fd: BorrowedFd<'_>) -> HandleType {
    if let Some(domain) = sockopt(fd, libc::SO_DOMAIN) {
        let ty = sockopt(fd, libc::SO_TYPE);
        let stream = ty == Some(libc::SOCK_STREAM);
        let listening = stream && sockopt(fd, libc::SO_ACCEPTCONN).is_some_and(|v| v != 0);
        return match (domain, ty) {
            (libc::AF_INET | libc::AF_INET6, Some(libc::SOCK_STREAM)) if listening => {
                HandleType::TcpListener
            }
            (libc::AF_INET | libc::AF_INET6, Some(libc::SOCK_STREAM)) => HandleType::Tcp,
            (libc::AF_INET | libc::AF_INET6, Some(libc::SOCK_DGRAM)) => HandleType::Udp,
            (libc::AF_UNIX, Some(libc::SOCK_STREAM)) if listening => HandleType::UnixListener,
            (libc::AF_UNIX, Some(libc::SOCK_STREAM)) => HandleType::Unix,
            (libc::AF_UNIX, Some(libc::SOCK_DGRAM)) => HandleType::UnixDatagram,
            _ => HandleType::Other,
        };
    }
    // SAFETY: fstat fills a zeroed stat struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above, for an fd we borrow.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return HandleType::Other;
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => HandleType::File,
        libc::S_IFIFO => HandleType::Fifo,
        _ => HandleType::Other,
    }
}

/// A handle received over an IPC channel: an open fd. Its [`kind`](Handle::kind) is looked
/// up from the fd whenever asked, so it follows what the sender does with its own copy (a
/// bound socket it then listens on becomes a listener).
pub struct Handle {
    fd: OwnedFd,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handle({}, fd {})", self.kind(), self.fd.as_raw_fd())
    }
}

impl Handle {
    pub(crate) fn new(fd: OwnedFd) -> Handle {
        Handle { fd }
    }

    /// What kind of handle this is now (a few `fstat`/`getsockopt` calls).
    pub fn kind(&self) -> HandleType {
        handle_type(self.fd.as_fd())
    }

    /// Turns the handle into `T` (`uv_accept` on the channel): a `tokio::net::TcpStream`,
    /// `TcpListener`, `UdpSocket`, `UnixStream`, `UnixListener`, a `std::fs::File` or a
    /// plain `OwnedFd`. A handle of another kind is an error (`EINVAL`, saying what the
    /// handle is) and is closed; check [`kind`](Handle::kind) first to choose.
    ///
    /// A TCP or Unix stream socket that is neither listening nor connected (bound, and sent
    /// before anyone called `listen`) becomes a `TcpListener`/`UnixListener`: brood calls
    /// `listen` on it with a backlog of [`LISTEN_BACKLOG`], as libuv's receiver may
    /// `uv_listen` on a received `uv_tcp_t`.
    pub fn accept<T: FromHandle>(self) -> Result<T> {
        check_kind::<T>(self.fd.as_fd())?;
        T::from_fd(self.fd)
    }

    /// The fd itself.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for Handle {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The backlog brood listens with when a received socket that is bound but not listening
/// is accepted as a listener (tokio's `TcpListener::bind` uses the same).
pub const LISTEN_BACKLOG: i32 = 1024;

/// `EINVAL` unless the handle `fd` can become a `T`.
pub(crate) fn check_kind<T: FromHandle>(fd: BorrowedFd<'_>) -> Result<()> {
    if T::accepts_fd(fd) {
        return Ok(());
    }
    Err(Error::new(libc::EINVAL, format!("accept {}", T::NAME))
        .with_detail(format!("the pending handle is {}", handle_type(fd))))
}

/// Types a received [`Handle`] can become.
pub trait FromHandle: Sized {
    /// The type's name, for errors.
    const NAME: &'static str;
    /// Whether a handle of `kind` can become this type.
    fn accepts(kind: HandleType) -> bool;
    /// Whether the handle `fd` can become this type: by default, whether its kind
    /// [`accepts`](FromHandle::accepts). The listeners also take a socket that is bound but
    /// neither listening nor connected.
    fn accepts_fd(fd: BorrowedFd<'_>) -> bool {
        Self::accepts(handle_type(fd))
    }
    /// Builds the value from the fd (registering it with tokio where needed).
    fn from_fd(fd: OwnedFd) -> Result<Self>;
}

/// A stream socket that is not listening and has no peer: one that was bound and sent
/// before `listen`. A TCP socket must be bound to a port (`listen` on an unbound one would
/// pick a port on every address); a Unix one may be unbound (then Linux autobinds it).
fn unconnected(fd: BorrowedFd<'_>) -> bool {
    let sock = socket2::SockRef::from(&fd);
    let bound = match sock.local_addr() {
        Ok(a) => a.as_socket().is_none_or(|s| s.port() != 0),
        Err(_) => false,
    };
    bound
        && matches!(sock.is_listener(), Ok(false))
        && sock
            .peer_addr()
            .is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
}

/// Listens on `fd` unless it already does.
fn listen_if_needed(fd: &OwnedFd, op: &str) -> Result<()> {
    let sock = socket2::SockRef::from(fd);
    if !sock.is_listener().map_err(|e| from_io(e, op))? {
        sock.listen(LISTEN_BACKLOG).map_err(|e| from_io(e, op))?;
    }
    Ok(())
}

macro_rules! tokio_handle {
    ($ty:ty, $std:ty, $name:literal, $($kind:ident)|+) => {
        impl FromHandle for $ty {
            const NAME: &'static str = $name;
            fn accepts(kind: HandleType) -> bool {
                matches!(kind, $(HandleType::$kind)|+)
            }
            fn from_fd(fd: OwnedFd) -> Result<Self> {
                let std = <$std>::from(fd);
                std.set_nonblocking(true)
                    .map_err(|e| from_io(e, concat!("accept ", $name)))?;
                <$ty>::from_std(std).map_err(|e| from_io(e, concat!("accept ", $name)))
            }
        }
    };
}

/// A listener type: also takes a socket of `$stream` kind that is not yet listening, and
/// listens on it.
macro_rules! tokio_listener {
    ($ty:ty, $std:ty, $name:literal, $kind:ident, $stream:ident) => {
        impl FromHandle for $ty {
            const NAME: &'static str = $name;
            fn accepts(kind: HandleType) -> bool {
                matches!(kind, HandleType::$kind)
            }
            fn accepts_fd(fd: BorrowedFd<'_>) -> bool {
                match handle_type(fd) {
                    HandleType::$kind => true,
                    HandleType::$stream => unconnected(fd),
                    _ => false,
                }
            }
            fn from_fd(fd: OwnedFd) -> Result<Self> {
                let op = concat!("accept ", $name);
                listen_if_needed(&fd, op)?;
                let std = <$std>::from(fd);
                std.set_nonblocking(true).map_err(|e| from_io(e, op))?;
                <$ty>::from_std(std).map_err(|e| from_io(e, op))
            }
        }
    };
}

tokio_handle!(tokio::net::TcpStream, std::net::TcpStream, "TcpStream", Tcp);
tokio_listener!(
    tokio::net::TcpListener,
    std::net::TcpListener,
    "TcpListener",
    TcpListener,
    Tcp
);
tokio_handle!(tokio::net::UdpSocket, std::net::UdpSocket, "UdpSocket", Udp);
tokio_handle!(
    tokio::net::UnixStream,
    std::os::unix::net::UnixStream,
    "UnixStream",
    Unix
);
tokio_listener!(
    tokio::net::UnixListener,
    std::os::unix::net::UnixListener,
    "UnixListener",
    UnixListener,
    Unix
);

impl FromHandle for std::fs::File {
    const NAME: &'static str = "File";
    fn accepts(kind: HandleType) -> bool {
        matches!(
            kind,
            HandleType::File | HandleType::Fifo | HandleType::Other
        )
    }
    fn from_fd(fd: OwnedFd) -> Result<Self> {
        Ok(std::fs::File::from(fd))
    }
}

impl FromHandle for OwnedFd {
    const NAME: &'static str = "OwnedFd";
    fn accepts(_: HandleType) -> bool {
        true
    }
    fn from_fd(fd: OwnedFd) -> Result<Self> {
        Ok(fd)
    }
}
