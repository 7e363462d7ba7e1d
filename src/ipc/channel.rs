//! `Channel`: bytes and open handles over a Unix stream socket (libuv's `ipc` pipe).

use std::io;
#[cfg(any(feature = "cluster", feature = "cgi"))]
use std::os::fd::FromRawFd;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(feature = "json")]
use serde::Serialize;
#[cfg(feature = "json")]
use serde::de::DeserializeOwned;
use tokio::io::Interest;
use tokio::net::UnixStream;

use super::framing::{Framer, Truncated};
use super::handle::{FromHandle, Handle, HandleType, check_kind};
use super::node::{self, Protocol};
use super::wire;
use crate::error::{Error, Result, from_io};

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
    /// Node.js's protocol on the JSON lines (`Protocol::Node`) when set.
    node: AtomicBool,
    /// Node's protocol: the handle sent and not yet acknowledged.
    acks: node::Acks,
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
/// - Or use the typed layer (feature `json`): `send_msg` / `recv_msg`,
///   one JSON object per line with its handles bound to it.
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
    /// Bytes read but not yet consumed, the handles bound to them, the pending queue.
    rx: Framer<Handle>,
    /// Where `recvmsg` puts the fds of one read (kept to reuse its allocation).
    fds: Vec<OwnedFd>,
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
            .field("pending", &self.rx.pending_len())
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
                    node: AtomicBool::new(false),
                    acks: node::Acks::default(),
                }),
            },
            rx: Framer::default(),
            fds: Vec::new(),
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
    /// found through the `BROOD_CHANNEL_FD` variable (as Node's `NODE_CHANNEL_FD`). Needs a
    /// tokio runtime.
    ///
    /// In a child of a Node.js parent (`child_process.fork`, or `'ipc'` in `spawn`'s
    /// `stdio`), the channel is found through `NODE_CHANNEL_FD` instead and speaks
    /// [`Protocol::Node`]; `NODE_CHANNEL_SERIALIZATION_MODE` must be `json` (the default):
    /// `advanced` (V8's structured clone) is `EPROTONOSUPPORT`. Both variables are removed.
    ///
    /// The fd is taken once per process: the first call removes the variable from the
    /// environment (so this process's children do not inherit a stale one), checks the fd,
    /// and owns it, close-on-exec. Errors, which never close or take the fd:
    /// - `ENOENT`: the variable is not set;
    /// - `EALREADY`: an earlier call took (or rejected) it;
    /// - `EBADF`: the fd is not open, or is close-on-exec (so this process made it: an fd
    ///   inherited through exec has the flag clear), i.e. the variable is stale;
    /// - `ENOTSOCK`: the fd is not a connected Unix stream socket;
    /// - `EINVAL`: the value is not an fd number.
    ///
    /// Call it at start-up, before starting threads that read the environment through C
    /// (`getenv` in C libraries, DNS lookups): removing a variable while another thread
    /// reads the environment through libc is a data race, which is why
    /// `std::env::remove_var` is `unsafe` (Rust code reading through `std::env` is safe).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
    /// // In the child: the channel the parent made with `Stdio::ipc()`.
    /// let mut channel = brood::ipc::Channel::from_env()?;
    /// assert!(std::env::var_os("BROOD_CHANNEL_FD").is_none());
    /// let again = brood::ipc::Channel::from_env().unwrap_err();
    /// assert_eq!(again.name(), "EALREADY");
    /// let mut buf = [0u8; 64];
    /// let n = channel.recv(&mut buf).await?;
    /// # let _ = n; Ok(()) }
    /// ```
    pub fn from_env() -> Result<Channel> {
        let (fd, protocol) = super::inherit::take_channel_fd()?;
        let mut ch =
            Channel::from_fd(fd).map_err(|e| e.context("ipc channel from the environment"))?;
        ch.set_protocol(protocol);
        Ok(ch)
    }

    /// The protocol of the JSON-lines layer: [`Protocol::Brood`] unless set, or
    /// [`Protocol::Node`] for a channel [`from_env`](Channel::from_env) found through
    /// `NODE_CHANNEL_FD`.
    pub fn protocol(&self) -> Protocol {
        if self.tx.io.node.load(Ordering::Relaxed) {
            Protocol::Node
        } else {
            Protocol::Brood
        }
    }

    /// Speaks `protocol` on the JSON-lines layer (`send_msg`, `recv_msg`: feature `json`);
    /// the byte layer is never changed. With
    /// [`Protocol::Node`], the peer is a Node.js process (`process.send`, `child.send`):
    ///
    /// - `send_msg` with one handle wraps the message in Node's
    ///   `{"cmd":"NODE_HANDLE","type":"net.Socket"|"net.Server"|"dgram.Socket","msg":..}`;
    ///   only TCP, Unix and UDP sockets, one per message (else `EINVAL`). The next handle
    ///   waits for Node's `NODE_HANDLE_ACK`, which `recv_msg` reads: keep receiving while
    ///   sending handles, as Node itself does. A `NODE_HANDLE_NACK` sends it again (three
    ///   times at most).
    /// - `recv_msg` unwraps Node's `NODE_HANDLE` messages into the user's message and its
    ///   handle and acknowledges them (or asks again when the fd was lost on the way); Node's
    ///   internal messages (`cmd` starting with `NODE_`) never reach the caller.
    pub fn set_protocol(&mut self, protocol: Protocol) {
        self.tx
            .io
            .node
            .store(protocol == Protocol::Node, Ordering::Relaxed);
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

    /// Reads bytes into `buf`; 0 means the peer closed the channel (also when it closed with
    /// data of ours unread, which the kernel reports as `ECONNRESET`). Handles that came
    /// with these bytes become pending.
    ///
    /// A read's handles are bound to the last byte of that read (see the
    /// [module docs](super#which-bytes-a-handle-belongs-to)): they become pending once that
    /// byte is consumed. If some of them were lost on the way (`MSG_CTRUNC`), the `recv`
    /// that would return that byte fails instead, once: `EMFILE` when this process was at
    /// its fd limit, `EMSGSIZE` when more than [`set_max_handles`](Channel::set_max_handles)
    /// came; the ones that did arrive were closed. The next `recv` goes on with the bytes.
    pub async fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.rx.read(buf) {
                Ok(0) => {}
                Ok(n) => return Ok(n),
                Err(lost) => return Err(self.lost("recv", lost)),
            }
            if !self.fill().await? {
                return Ok(0);
            }
        }
    }

    #[cfg(feature = "json")]
    #[cfg_attr(docsrs, doc(cfg(feature = "json")))]
    /// Receives one message of the typed layer with the handles sent with it, or `None` when
    /// the peer closed the channel between messages.
    ///
    /// A message that is not valid JSON for `T` is `EINVAL`; one whose handles were lost on
    /// the way (`MSG_CTRUNC`: this process at its fd limit, `EMFILE`, or more handles than
    /// [`set_max_handles`](Channel::set_max_handles), `EMSGSIZE`) is an error too. Either
    /// way that message is consumed, its handles are closed, and the next call receives the
    /// next message.
    pub async fn recv_msg<T: DeserializeOwned>(&mut self) -> Result<Option<(T, Vec<Handle>)>> {
        if self.tx.io.node.load(Ordering::Relaxed) {
            return self.recv_node_msg().await;
        }
        loop {
            let max_handles = self.max_handles;
            let line = self.rx.take_line(|bytes, bound| {
                if let Some(lost) = bound.lost {
                    return Err(lost_error("recv_msg", lost, max_handles));
                }
                match serde_json::from_slice::<T>(bytes) {
                    Ok(msg) => Ok((msg, bound.handles)),
                    // The handles are dropped, so closed: nothing leaks.
                    Err(e) => Err(Error::invalid("recv_msg", format!("bad message: {e}"))),
                }
            });
            if let Some(line) = line {
                return line.map(Some);
            }
            self.check_partial()?;
            if !self.fill().await? {
                if self.rx.buffered() == 0 {
                    return Ok(None);
                }
                return Err(Error::new(libc::EPIPE, "recv_msg")
                    .with_detail("the peer closed the channel in the middle of a message"));
            }
        }
    }

    #[cfg(feature = "json")]
    /// `recv_msg` in Node's protocol: unwraps `NODE_HANDLE`, answers it, handles Node's
    /// internal messages.
    async fn recv_node_msg<T: DeserializeOwned>(&mut self) -> Result<Option<(T, Vec<Handle>)>> {
        loop {
            let line = self
                .rx
                .take_line(|bytes, bound| (node::classify(bytes), bound));
            let Some((line, bound)) = line else {
                self.check_partial()?;
                if !self.fill().await? {
                    if self.rx.buffered() == 0 {
                        return Ok(None);
                    }
                    return Err(Error::new(libc::EPIPE, "recv_msg")
                        .with_detail("the peer closed the channel in the middle of a message"));
                }
                continue;
            };
            let user = match line? {
                node::Line::User(v) => v,
                node::Line::Handle(_) | node::Line::InternalHandle if bound.handles.is_empty() => {
                    // The fd did not arrive (or was lost): Node sends it again.
                    send(&self.tx.io, node::NACK, &[]).await?;
                    continue;
                }
                node::Line::Handle(v) => {
                    send(&self.tx.io, node::ACK, &[]).await?;
                    v
                }
                // Node's own message with a handle: acknowledged, its handle closed.
                node::Line::InternalHandle => {
                    send(&self.tx.io, node::ACK, &[]).await?;
                    continue;
                }
                node::Line::Ack => {
                    self.tx.io.acks.ack();
                    continue;
                }
                node::Line::Nack => {
                    if let Some((line, fd)) = self.tx.io.acks.nack() {
                        send(&self.tx.io, &line, &[fd.as_fd()]).await?;
                    }
                    continue;
                }
                node::Line::Internal => continue,
            };
            if let Some(lost) = bound.lost {
                return Err(self.lost("recv_msg", lost));
            }
            return match serde_json::from_value::<T>(user) {
                Ok(msg) => Ok(Some((msg, bound.handles))),
                Err(e) => Err(Error::invalid("recv_msg", format!("bad message: {e}"))),
            };
        }
    }

    /// How many received handles wait to be accepted (`uv_pipe_pending_count`).
    pub fn pending_count(&self) -> usize {
        self.rx.pending_len()
    }

    /// The kind of the next pending handle (`uv_pipe_pending_type`), looked up from the fd
    /// each time it is asked: a socket the sender binds, sends and then listens on (libuv's
    /// `ipc_listen_after_write`) shows as a listener once it listens.
    pub fn pending_type(&self) -> Option<HandleType> {
        self.rx.peek_pending().map(Handle::kind)
    }

    /// Takes the next pending handle as `T` (`uv_accept`). A handle of another kind is an
    /// error and stays pending, so it can be accepted as the right type; no pending handle
    /// is `EAGAIN`. A TCP or Unix stream socket that is bound but neither listening nor
    /// connected is accepted as a listener: `accept::<TcpListener>()` listens on it.
    pub fn accept<T: FromHandle>(&mut self) -> Result<T> {
        let next = self.rx.peek_pending().ok_or_else(|| {
            Error::new(libc::EAGAIN, format!("accept {}", T::NAME)).with_detail("no pending handle")
        })?;
        check_kind::<T>(next.as_fd())?;
        match self.rx.pop_pending() {
            Some(h) => h.accept(),
            None => Err(Error::new(libc::EAGAIN, "accept")),
        }
    }

    /// Takes the next pending handle whatever its kind.
    pub fn accept_handle(&mut self) -> Option<Handle> {
        self.rx.pop_pending()
    }

    /// The socket underneath.
    pub fn as_stream(&self) -> &UnixStream {
        &self.tx.io.stream
    }

    #[cfg(feature = "json")]
    /// Bounds a line still coming: its length, and the handles bound to it (a peer sending
    /// one byte at a time, each with fds, would otherwise grow the queue without end).
    fn check_partial(&self) -> Result<()> {
        if self.rx.unterminated() > self.max_message {
            return Err(Error::new(libc::EMSGSIZE, "recv_msg")
                .with_detail(format!("no end of line within {} bytes", self.max_message)));
        }
        if self.rx.bound() > self.max_handles {
            return Err(Error::new(libc::EMSGSIZE, "recv_msg").with_detail(format!(
                "more than {} handles came with one message",
                self.max_handles
            )));
        }
        Ok(())
    }

    fn lost(&self, op: &str, lost: Truncated) -> Error {
        lost_error(op, lost, self.max_handles)
    }

    /// The peer is gone: a Node-protocol handle send waiting for an ACK fails (`EPIPE`).
    fn set_eof(&mut self) {
        self.eof = true;
        self.tx.io.acks.permit.close();
    }

    /// Reads more from the socket. `false` at end of stream.
    async fn fill(&mut self) -> Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let result = loop {
            let ready = self.tx.io.stream.readable().await;
            if let Err(e) = ready {
                break Err(e);
            }
            let max = self.max_handles;
            let sock = self.tx.io.stream.as_raw_fd();
            let buf = self.rx.space(READ_CHUNK);
            let fds = &mut self.fds;
            match self
                .tx
                .io
                .stream
                .try_io(Interest::READABLE, || wire::recv(sock, buf, max, fds))
            {
                Ok(r) => break Ok(r),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => break Err(e),
            }
        };
        let r = match result {
            Ok(r) => r,
            // A Unix socket whose peer closed with our data unread reports ECONNRESET once,
            // after everything the peer sent has been read: that is the end of the stream.
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {
                self.set_eof();
                return Ok(false);
            }
            Err(e) => return Err(from_io(e, "recv")),
        };
        if r.bytes == 0 {
            self.fds.clear();
            self.set_eof();
            return Ok(false);
        }
        let lost = r.truncated.then_some(Truncated {
            arrived: self.fds.len(),
            room: max_room(self.max_handles),
        });
        // On a loss the fds that did arrive are dropped (closed) by `commit`.
        self.rx
            .commit(r.bytes, self.fds.drain(..).map(Handle::new), lost);
        Ok(true)
    }
}

/// How many fds one read has room for.
fn max_room(max_handles: usize) -> usize {
    max_handles.min(wire::MAX_FDS)
}

/// The error for a message whose handles were lost on the way (`MSG_CTRUNC`).
fn lost_error(op: &str, lost: Truncated, max_handles: usize) -> Error {
    if lost.arrived >= lost.room {
        Error::new(libc::EMSGSIZE, op).with_detail(format!(
            "more than {max_handles} handles came with one write; the {} that arrived were closed",
            lost.arrived
        ))
    } else {
        Error::new(libc::EMFILE, op).with_detail(format!(
            "handles sent with this data were lost (MSG_CTRUNC): only {} could be received, \
             most likely because this process is at its fd limit (RLIMIT_NOFILE); \
             they were closed",
            lost.arrived
        ))
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
    if io.node.load(Ordering::Relaxed) && !handles.is_empty() {
        return send_node_handle(io, msg, handles).await;
    }
    let mut line =
        serde_json::to_vec(msg).map_err(|e| Error::invalid("send_msg", e.to_string()))?;
    line.push(b'\n');
    send(io, &line, handles).await
}

#[cfg(feature = "json")]
/// `send_msg` with a handle in Node's protocol: wrapped, one at a time, kept until the ACK.
async fn send_node_handle<T: Serialize>(
    io: &Io,
    msg: &T,
    handles: &[BorrowedFd<'_>],
) -> Result<()> {
    let op = "send_msg";
    let [handle] = handles else {
        return Err(Error::invalid(op, "Node takes one handle per message"));
    };
    let kind = super::handle_type(*handle);
    let ipv6 = socket2::SockRef::from(handle)
        .domain()
        .is_ok_and(|d| d == socket2::Domain::IPV6);
    let line = node::wrap(msg, kind, ipv6)?;
    let keep = handle.try_clone_to_owned().map_err(|e| {
        from_io(
            e,
            format!("{op}: keep the handle until Node acknowledges it"),
        )
    })?;
    // Wait until the previous handle was acknowledged (recv_msg reads the ACK).
    io.acks
        .permit
        .acquire()
        .await
        .map_err(|_| Error::new(libc::EPIPE, op))?
        .forget();
    *io.acks.in_flight.lock().unwrap_or_else(|e| e.into_inner()) = Some(node::InFlight {
        line: line.clone(),
        fd: keep,
        tries: 0,
    });
    let sent = send(io, &line, handles).await;
    if sent.is_err() {
        io.acks.ack(); // nothing in flight after all
    }
    sent
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
#[cfg(any(feature = "cluster", feature = "cgi"))]
pub(crate) fn own_inherited(fd: RawFd) -> Result<OwnedFd> {
    if !crate::fd::is_open(fd) {
        return Err(Error::new(libc::EBADF, format!("fd {fd}")));
    }
    // SAFETY: F_SETFD changes only the flags of `fd`.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the caller hands us an inherited fd that nothing else in the process owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
