//! `HandoffListener`: a TCP listener for a process that only passes its connections on.
//!
//! libuv's master accepts with `uv_accept` into a handle it never reads, and sends it with
//! `uv_write2`; Node's `net.Server` has `pauseOnConnect` for the same. A tokio `TcpListener`
//! cannot do that: every connection it accepts is registered with the reactor and removed
//! again when it is dropped (two `epoll_ctl` and a registration slot per connection, for a
//! socket the process never waits on). Here the listener alone is registered; each
//! connection is one `accept4` and a plain [`std::net::TcpStream`] to send and close.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::LISTEN_BACKLOG;
use crate::error::{Error, Result, from_io};

/// A listening TCP socket whose accepted connections are never registered with the event
/// loop: for a master that hands each connection to another process (a [`Channel`](super::Channel)'s
/// [`send_with_handles`](super::Sender::send_with_handles)) and closes its copy.
///
/// Each connection comes back as a blocking, close-on-exec [`std::net::TcpStream`], as from
/// `accept(2)` on a blocking listener: what a receiver in any language expects (brood's
/// [`Channel::accept`](super::Channel::accept) makes it non-blocking itself).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
/// use brood::ipc::HandoffListener;
/// use std::io::{Read, Write};
///
/// let listener = HandoffListener::bind("127.0.0.1:0".parse().unwrap())?;
/// let addr = listener.local_addr()?;
/// let client = std::thread::spawn(move || {
///     let mut c = std::net::TcpStream::connect(addr).unwrap();
///     c.write_all(b"hi").unwrap();
/// });
/// let (mut conn, _peer) = listener.accept().await?;
/// // A master would now send `conn` to a worker and drop it; here we read it ourselves.
/// let mut buf = [0; 2];
/// conn.read_exact(&mut buf).unwrap();
/// assert_eq!(&buf, b"hi");
/// client.join().unwrap();
/// # Ok(()) }
/// ```
pub struct HandoffListener {
    io: AsyncFd<TcpListener>,
}

impl HandoffListener {
    /// Binds `addr` with `SO_REUSEADDR` (as tokio and libuv do) and listens with a backlog
    /// of [`LISTEN_BACKLOG`].
    ///
    /// # Panics
    /// Outside a tokio runtime this is an error (`EINVAL`); inside a runtime built without
    /// I/O (no `enable_io`) it panics, as tokio's own sockets do, since tokio offers no way to
    /// ask.
    pub fn bind(addr: SocketAddr) -> Result<HandoffListener> {
        let op = format!("bind {addr}");
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .map_err(|e| from_io(e, &op))?;
        sock.set_reuse_address(true).map_err(|e| from_io(e, &op))?;
        sock.bind(&addr.into()).map_err(|e| from_io(e, &op))?;
        sock.listen(LISTEN_BACKLOG).map_err(|e| from_io(e, &op))?;
        HandoffListener::from_std(sock.into())
    }

    /// Takes a listening socket this process already has (bound by the caller, inherited
    /// from systemd, or a tokio listener's `into_std`). `EINVAL` if it is not a listening
    /// TCP socket (a Unix socket's connections have no IP address to return), `ENOTSOCK` if
    /// it is no socket. Panics as [`bind`](HandoffListener::bind) does.
    pub fn from_std(listener: TcpListener) -> Result<HandoffListener> {
        let op = format!("listen fd {}", listener.as_raw_fd());
        let sock = socket2::SockRef::from(&listener);
        let domain = sock.domain().map_err(|e| from_io(e, &op))?;
        let ty = sock.r#type().map_err(|e| from_io(e, &op))?;
        if !(domain == socket2::Domain::IPV4 || domain == socket2::Domain::IPV6)
            || ty != socket2::Type::STREAM
        {
            return Err(Error::invalid(op, "not a TCP socket"));
        }
        if !sock.is_listener().map_err(|e| from_io(e, &op))? {
            return Err(Error::invalid(op, "the socket is not listening"));
        }
        tokio::runtime::Handle::try_current().map_err(|_| {
            Error::invalid(&op, "a listener needs a tokio runtime: call inside one")
        })?;
        let io = register(listener).map_err(|e| from_io(e, op))?;
        Ok(HandoffListener { io })
    }

    /// The address the socket is bound to (`uv_tcp_getsockname`).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.io
            .get_ref()
            .local_addr()
            .map_err(|e| from_io(e, "getsockname"))
    }

    /// Waits for the next connection: one `accept4`, nothing registered. Cancel-safe.
    ///
    /// Errors are the kernel's, as from `uv_accept`. `EMFILE`/`ENFILE` leave the connection
    /// in the kernel's queue and the listener readable, so a loop that retries at once spins:
    /// pause before the next call, as libuv's own accept loop does.
    pub async fn accept(&self) -> Result<(TcpStream, SocketAddr)> {
        loop {
            let mut ready = self.io.readable().await.map_err(|e| from_io(e, "accept"))?;
            // try_io clears the readiness on EAGAIN, so the next `readable` waits for the
            // kernel; an accept that succeeds leaves it set for the next call.
            match ready.try_io(|l| socket2::SockRef::from(l.get_ref()).accept()) {
                Ok(Ok((conn, peer))) => {
                    let peer = peer.as_socket().ok_or_else(|| {
                        Error::invalid("accept", "the peer's address is not an IP address")
                    })?;
                    return Ok((conn.into(), peer));
                }
                Ok(Err(e)) => return Err(from_io(e, "accept")),
                Err(_would_block) => continue,
            }
        }
    }
}

/// The listener registered with the current runtime's reactor for readability only (the
/// cluster master's accept loop uses it directly, with its own batching and backoff).
pub(crate) fn register(listener: TcpListener) -> std::io::Result<AsyncFd<TcpListener>> {
    listener.set_nonblocking(true)?;
    // SAFETY: the `TcpListener` owns its fd and moves into the `AsyncFd`, which deregisters
    // it before dropping (closing) it; nothing else holds or closes that fd while it is
    // registered (callers only borrow it through `get_ref`).
    unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }
        .map_err(std::io::Error::from)
}

impl std::fmt::Debug for HandoffListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandoffListener")
            .field("fd", &self.io.as_raw_fd())
            .field("addr", &self.io.get_ref().local_addr().ok())
            .finish()
    }
}

impl AsFd for HandoffListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.get_ref().as_fd()
    }
}

impl AsRawFd for HandoffListener {
    fn as_raw_fd(&self) -> RawFd {
        self.io.as_raw_fd()
    }
}
