//! `Channel`: bytes and open handles over a Unix stream socket (libuv's `ipc` pipe).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

#[cfg(feature = "json")]
use serde::Serialize;
#[cfg(feature = "json")]
use serde::de::DeserializeOwned;
use tokio::io::Interest;
use tokio::net::UnixStream;

use super::handle::{FromHandle, Handle, HandleType, check_kind};
use super::wire;
use crate::error::{Error, Result, from_io};

/// The environment variable through which a child learns its channel's fd (as Node's
/// `NODE_CHANNEL_FD`): set by [`Stdio::ipc`](crate::Stdio::ipc), read by
/// [`Channel::from_env`].
pub const CHANNEL_FD_ENV: &str = "BROOD_CHANNEL_FD";

/// How much one read asks the kernel for.
const READ_CHUNK: usize = 64 * 1024;
/// Default limit of handles that may arrive with one write.
const DEFAULT_MAX_HANDLES: usize = 64;
/// Default limit of one message line of the typed layer.
const DEFAULT_MAX_MESSAGE: usize = 16 * 1024 * 1024;

struct Io {
    stream: UnixStream,
    /// Serialises writers so the bytes of two sends never interleave.
    write: tokio::sync::Mutex<()>,
}

/// An IPC channel: a Unix stream socket that carries bytes and open handles (TCP and Unix
/// streams and listeners, UDP sockets, pipes, files), as libuv's `uv_pipe_t` with `ipc = 1`.
///
/// - Send with [`send`](Sender::send) (`uv_write`) and
///   [`send_with_handles`](Sender::send_with_handles) (`uv_write2`), through the channel's
///   own [`Sender`] (`Deref`); the sender keeps its
///   own copies of the handles and may close them at once.
/// - Receive bytes with [`recv`](Channel::recv); handles that came with those bytes become
///   pending: [`pending_count`](Channel::pending_count), [`pending_type`](Channel::pending_type),
///   [`accept`](Channel::accept) as the right tokio type (`uv_pipe_pending_count`,
///   `uv_pipe_pending_type`, `uv_accept`).
/// - Or use the typed layer (feature `json`): `send_msg` / `recv_msg`, one JSON object per
///   line with its handles bound to it.
///
/// Every received fd is close-on-exec. Sends wait while the peer is slow to read (the
/// kernel's socket buffer is the only buffer), so memory never grows without bound.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
/// use brood::ipc::{Channel, HandleType};
/// use std::os::fd::AsFd;
///
/// let (a, mut b) = Channel::pair()?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// a.send_with_handles(b"L", &[listener.as_fd()]).await?;
/// drop(listener); // the receiver has its own copy
///
/// let mut byte = [0u8; 1];
/// assert_eq!(b.recv(&mut byte).await?, 1);
/// assert_eq!(b.pending_count(), 1);
/// assert_eq!(b.pending_type(), Some(HandleType::TcpListener));
/// let listener: tokio::net::TcpListener = b.accept()?;
/// assert!(listener.local_addr().is_ok());
/// # Ok(()) }
/// ```
pub struct Channel {
    /// The sending half; the socket lives in it.
    tx: Sender,
    /// Bytes read but not yet consumed; `rbuf[rpos..]` is unread.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Stream offset of `rbuf[0]`.
    base: u64,
    /// Received fds with the stream offset of the byte they came with, in order.
    attached: VecDeque<(u64, OwnedFd)>,
    /// Handles whose byte has been consumed by `recv`.
    pending: VecDeque<Handle>,
    max_handles: usize,
    max_message: usize,
    eof: bool,
}

/// A clonable sending half of a [`Channel`], for other tasks.
#[derive(Clone)]
pub struct Sender {
    io: Arc<Io>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("fd", &self.io.stream.as_raw_fd())
            .finish()
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("fd", &self.tx.io.stream.as_raw_fd())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// A channel over a connected Unix stream socket (for example one accepted from a
    /// [`UnixListener`](tokio::net::UnixListener): IPC between unrelated processes).
    pub fn new(stream: UnixStream) -> Channel {
        Channel {
            tx: Sender {
                io: Arc::new(Io {
                    stream,
                    write: tokio::sync::Mutex::new(()),
                }),
            },
            rbuf: Vec::new(),
            rpos: 0,
            base: 0,
            attached: VecDeque::new(),
            pending: VecDeque::new(),
            max_handles: DEFAULT_MAX_HANDLES,
            max_message: DEFAULT_MAX_MESSAGE,
            eof: false,
        }
    }

    /// Two connected channels in this process (a socketpair).
    pub fn pair() -> Result<(Channel, Channel)> {
        let (a, b) = UnixStream::pair().map_err(|e| from_io(e, "socketpair"))?;
        Ok((Channel::new(a), Channel::new(b)))
    }

    /// Connects to a named Unix socket whose server speaks IPC.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Channel> {
        let path = path.as_ref();
        let s = UnixStream::connect(path)
            .await
            .map_err(|e| from_io(e, format!("connect {:?}", path.display().to_string())))?;
        Ok(Channel::new(s))
    }

    /// A channel on an fd this process owns (a child's end given by its parent). The fd
    /// must be a connected Unix stream socket. Needs a tokio runtime.
    pub fn from_fd(fd: OwnedFd) -> Result<Channel> {
        let op = format!("ipc channel on fd {}", fd.as_raw_fd());
        let kind = super::handle::handle_type(fd.as_fd());
        if kind != HandleType::Unix {
            return Err(Error::new(libc::ENOTSOCK, op)
                .with_detail(format!("fd is {kind}, not a Unix stream socket")));
        }
        let std = std::os::unix::net::UnixStream::from(fd);
        std.set_nonblocking(true)
            .map_err(|e| from_io(e, op.clone()))?;
        let stream = UnixStream::from_std(std).map_err(|e| from_io(e, op))?;
        Ok(Channel::new(stream))
    }

    /// In a child spawned with [`Stdio::ipc`](crate::Stdio::ipc): the channel to the parent,
    /// found through the `BROOD_CHANNEL_FD` variable. The fd is made close-on-exec so the
    /// child's own children do not inherit it, and the variable is left for them to ignore.
    pub fn from_env() -> Result<Channel> {
        let op = "ipc channel from BROOD_CHANNEL_FD";
        let value = std::env::var(CHANNEL_FD_ENV)
            .map_err(|_| Error::new(libc::ENOENT, op).with_detail("the variable is not set"))?;
        let fd: RawFd = value
            .parse()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| Error::invalid(op, format!("{value:?} is not an fd number")))?;
        Channel::from_fd(own_inherited(fd).map_err(|e| e.context(op))?)
    }

    /// At most this many handles may arrive with one write (default 64, at most 253, the
    /// kernel's limit). More is an error that closes every fd that came with it.
    pub fn set_max_handles(&mut self, n: usize) {
        self.max_handles = n.clamp(1, wire::MAX_FDS);
    }

    /// The longest line `recv_msg` (feature `json`) accepts (default 16 MiB).
    pub fn set_max_message(&mut self, bytes: usize) {
        self.max_message = bytes.max(1);
    }

    /// A sending half that other tasks can hold (a `Channel` sends through its own, by
    /// `Deref`: `channel.send(..)` is `channel.sender().send(..)` without the clone).
    pub fn sender(&self) -> Sender {
        self.tx.clone()
    }

    /// Reads bytes into `buf`; 0 means the peer closed the channel. Handles that came with
    /// these bytes become pending.
    pub async fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.rpos == self.rbuf.len() && !self.fill().await? {
            return Ok(0);
        }
        let n = buf.len().min(self.rbuf.len() - self.rpos);
        buf[..n].copy_from_slice(&self.rbuf[self.rpos..self.rpos + n]);
        self.rpos += n;
        let consumed_to = self.base + self.rpos as u64;
        while self
            .attached
            .front()
            .is_some_and(|(at, _)| *at < consumed_to)
        {
            if let Some((_, fd)) = self.attached.pop_front() {
                self.pending.push_back(Handle::new(fd));
            }
        }
        self.compact();
        Ok(n)
    }

    #[cfg(feature = "json")]
    #[cfg_attr(docsrs, doc(cfg(feature = "json")))]
    /// Receives one message of the typed layer with the handles sent with it, or `None` when
    /// the peer closed the channel between messages.
    pub async fn recv_msg<T: DeserializeOwned>(&mut self) -> Result<Option<(T, Vec<Handle>)>> {
        let mut scanned = self.rpos;
        loop {
            if let Some(i) = self.rbuf[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + i; // index of the newline
                let line_end = self.base + end as u64 + 1;
                let mut handles = Vec::new();
                while self.attached.front().is_some_and(|(at, _)| *at < line_end) {
                    if let Some((_, fd)) = self.attached.pop_front() {
                        handles.push(Handle::new(fd));
                    }
                }
                let parsed = serde_json::from_slice::<T>(&self.rbuf[self.rpos..end]);
                self.rpos = end + 1;
                self.compact();
                return match parsed {
                    Ok(msg) => Ok(Some((msg, handles))),
                    // The handles are dropped, so closed: nothing leaks.
                    Err(e) => Err(Error::invalid("recv_msg", format!("bad message: {e}"))),
                };
            }
            scanned = self.rbuf.len();
            if scanned - self.rpos > self.max_message {
                return Err(Error::new(libc::EMSGSIZE, "recv_msg")
                    .with_detail(format!("no end of line within {} bytes", self.max_message)));
            }
            if !self.fill().await? {
                if self.rpos == self.rbuf.len() {
                    return Ok(None);
                }
                return Err(Error::new(libc::EPIPE, "recv_msg")
                    .with_detail("the peer closed the channel in the middle of a message"));
            }
        }
    }

    /// How many received handles wait to be accepted (`uv_pipe_pending_count`).
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// The kind of the next pending handle (`uv_pipe_pending_type`).
    pub fn pending_type(&self) -> Option<HandleType> {
        self.pending.front().map(Handle::kind)
    }

    /// Takes the next pending handle as `T` (`uv_accept`). A handle of another kind is an
    /// error and stays pending, so it can be accepted as the right type; no pending handle
    /// is `EAGAIN`.
    pub fn accept<T: FromHandle>(&mut self) -> Result<T> {
        let kind = self.pending_type().ok_or_else(|| {
            Error::new(libc::EAGAIN, format!("accept {}", T::NAME)).with_detail("no pending handle")
        })?;
        check_kind::<T>(kind)?;
        match self.pending.pop_front() {
            Some(h) => h.accept(),
            None => Err(Error::new(libc::EAGAIN, "accept")),
        }
    }

    /// Takes the next pending handle whatever its kind.
    pub fn accept_handle(&mut self) -> Option<Handle> {
        self.pending.pop_front()
    }

    /// The socket underneath.
    pub fn as_stream(&self) -> &UnixStream {
        &self.tx.io.stream
    }

    /// Reads more from the socket into `rbuf`. `false` at end of stream.
    async fn fill(&mut self) -> Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let start = self.rbuf.len();
        // Read into spare capacity: zeroing 64 KiB for every small message would cost more
        // than the message.
        self.rbuf.reserve(READ_CHUNK);
        let mut fds = Vec::new();
        let result = loop {
            let ready = self.tx.io.stream.readable().await;
            if let Err(e) = ready {
                break Err(from_io(e, "recv"));
            }
            let max = self.max_handles;
            let sock = self.tx.io.stream.as_raw_fd();
            let buf = self.rbuf.spare_capacity_mut();
            match self
                .tx
                .io
                .stream
                .try_io(Interest::READABLE, || wire::recv(sock, buf, max, &mut fds))
            {
                Ok(r) => break Ok(r),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => break Err(from_io(e, "recv")),
            }
        };
        let r = result?;
        // SAFETY: recvmsg wrote `r.bytes` bytes at the start of the spare capacity.
        unsafe { self.rbuf.set_len(start + r.bytes) };
        if r.truncated {
            // `fds` are dropped (closed) here; the kernel dropped the ones that did not fit.
            return Err(Error::new(libc::EMSGSIZE, "recv").with_detail(format!(
                "more than {} handles arrived with one write; all of them were closed",
                self.max_handles
            )));
        }
        if r.bytes == 0 {
            self.eof = true;
            return Ok(false);
        }
        // The kernel ends a read right after the piece of a write that carried fds, but may
        // glue earlier writes in front of it. A typed message is one write that starts a
        // line, so its fds belong to the last line that begins in this read; raw bytes get
        // them on the read's first byte.
        let end = start + r.bytes;
        let first = self.rbuf[start..end - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(start, |i| start + i + 1);
        let at = self.base + first as u64;
        self.attached.extend(fds.into_iter().map(|fd| (at, fd)));
        Ok(true)
    }

    /// Drops consumed bytes from the front of the buffer when that is cheap.
    fn compact(&mut self) {
        if self.rpos == self.rbuf.len() {
            self.base += self.rpos as u64;
            self.rbuf.clear();
            self.rpos = 0;
        } else if self.rpos > READ_CHUNK {
            self.base += self.rpos as u64;
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
    }
}

impl std::ops::Deref for Channel {
    type Target = Sender;
    fn deref(&self) -> &Sender {
        &self.tx
    }
}

impl Sender {
    /// Closes the sending direction (`shutdown(SHUT_WR)`): the peer reads to the end of
    /// what was sent and then sees end-of-stream, while it can still send to us.
    pub fn shutdown(&self) -> Result<()> {
        shutdown_write(&self.io)
    }

    /// Sends bytes (`uv_write`). Waits while the peer's buffer is full.
    pub async fn send(&self, data: &[u8]) -> Result<()> {
        send(&self.io, data, &[]).await
    }

    /// Sends bytes with handles attached to their first byte (`uv_write2`). `data` must not
    /// be empty. The handles stay open here; the receiver gets its own copies.
    pub async fn send_with_handles(&self, data: &[u8], handles: &[BorrowedFd<'_>]) -> Result<()> {
        send(&self.io, data, handles).await
    }

    #[cfg(feature = "json")]
    #[cfg_attr(docsrs, doc(cfg(feature = "json")))]
    /// Sends `msg` as one JSON line, with `handles` bound to it.
    pub async fn send_msg<T: Serialize>(&self, msg: &T, handles: &[BorrowedFd<'_>]) -> Result<()> {
        send_msg(&self.io, msg, handles).await
    }
}

fn shutdown_write(io: &Io) -> Result<()> {
    // SAFETY: shutdown(2) on the socket we own.
    if unsafe { libc::shutdown(io.stream.as_raw_fd(), libc::SHUT_WR) } < 0 {
        return Err(Error::last("shutdown"));
    }
    Ok(())
}

#[cfg(feature = "json")]
async fn send_msg<T: Serialize>(io: &Io, msg: &T, handles: &[BorrowedFd<'_>]) -> Result<()> {
    let mut line =
        serde_json::to_vec(msg).map_err(|e| Error::invalid("send_msg", e.to_string()))?;
    line.push(b'\n');
    send(io, &line, handles).await
}

/// Writes all of `data`, the fds with the first byte. Not cancel-safe once started (as
/// `write_all`): a dropped send may leave part of a message on the wire.
async fn send(io: &Io, data: &[u8], handles: &[BorrowedFd<'_>]) -> Result<()> {
    let op = if handles.is_empty() {
        "send"
    } else {
        "send_with_handles"
    };
    if !handles.is_empty() && data.is_empty() {
        return Err(Error::invalid(
            op,
            "handles need at least one byte of data to travel with",
        ));
    }
    if handles.len() > wire::MAX_FDS {
        return Err(Error::invalid(
            op,
            format!("at most {} handles per write", wire::MAX_FDS),
        ));
    }
    // Few handles per write is the rule: keep them on the stack then.
    let mut small = [0 as RawFd; 16];
    let many: Vec<RawFd>;
    let mut fds: &[RawFd] = if handles.len() <= small.len() {
        for (slot, h) in small.iter_mut().zip(handles) {
            *slot = h.as_raw_fd();
        }
        &small[..handles.len()]
    } else {
        many = handles.iter().map(|h| h.as_raw_fd()).collect();
        &many
    };
    // The common case is an uncontended lock and a socket with room: take both without
    // building futures (a small message costs about one system call, as a raw write).
    let _guard = match io.write.try_lock() {
        Ok(g) => g,
        Err(_) => io.write.lock().await,
    };
    let sock = io.stream.as_raw_fd();
    let mut off = 0;
    while off < data.len() {
        // `try_io` answers WouldBlock without a system call while tokio knows the socket is
        // full; then wait for room.
        match io
            .stream
            .try_io(Interest::WRITABLE, || wire::send(sock, &data[off..], fds))
        {
            Ok(n) => {
                off += n;
                fds = &[]; // the fds went with the first byte written
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                io.stream.writable().await.map_err(|e| from_io(e, op))?;
            }
            Err(e) => return Err(from_io(e, op)),
        }
    }
    Ok(())
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.tx.io.stream.as_fd()
    }
}

/// Marks `fd` close-on-exec and takes ownership of it. `fd` must be an fd this process owns
/// and nothing else will close (one inherited from the parent for this purpose).
pub(crate) fn own_inherited(fd: RawFd) -> Result<OwnedFd> {
    if !crate::fd::is_open(fd) {
        return Err(Error::new(libc::EBADF, format!("fd {fd}")));
    }
    // SAFETY: F_SETFD changes only the flags of `fd`.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the caller hands us an inherited fd that nothing else in the process owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
