//! `Channel`: bytes and open handles over a Unix stream socket (libuv's `ipc` pipe).

#[cfg(any(feature = "cluster", feature = "cgi"))]
use std::os::fd::FromRawFd;
#[cfg(any(feature = "cluster", feature = "cgi"))]
use std::os::fd::RawFd;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

#[cfg(feature = "json")]
use serde::Serialize;
#[cfg(feature = "json")]
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::handle::{FromHandle, Handle, HandleType, check_kind};
use super::io::{Io, ReadHalf, lost_error, send, shutdown_write};
use super::node::Protocol;
#[cfg(feature = "json")]
use super::node_reader::{self, Inbox};
use super::wire;
use crate::error::{Error, Result, from_io};

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
    /// Bytes read but not yet consumed, the handles bound to them, the pending queue
    /// (handed to the reader task when the channel speaks Node's protocol).
    rd: ReadHalf,
    /// Node's protocol: the messages the reader task read.
    #[cfg(feature = "json")]
    inbox: Option<Inbox>,
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
            .field("pending", &self.rd.rx.pending_len())
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// A channel over a connected Unix stream socket (for example one accepted from a
    /// [`UnixListener`](tokio::net::UnixListener): IPC between unrelated processes).
    pub fn new(stream: UnixStream) -> Channel {
        Channel {
            tx: Sender {
                io: Arc::new(Io::new(stream)),
            },
            rd: ReadHalf::default(),
            #[cfg(feature = "json")]
            inbox: None,
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
        ch.set_protocol(protocol)?;
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

    /// Speaks `protocol` on the JSON-lines layer (`send_msg`, `recv_msg`: feature `json`).
    /// With [`Protocol::Node`], the peer is a Node.js process (`process.send`,
    /// `child.send`), and the channel behaves as Node's own:
    ///
    /// - A task of the channel's own reads it from now on, as Node's event loop does: it
    ///   acknowledges the peer's handles, takes the peer's acknowledgements, drops Node's
    ///   internal messages (`cmd` starting with `NODE_`), and keeps the user's messages for
    ///   `recv_msg` (at most about 1 MiB of them: beyond that it stops reading until
    ///   `recv_msg` takes some). The byte layer ([`recv`](Channel::recv)) is then `EINVAL`.
    /// - `send_msg` with one handle wraps the message in Node's
    ///   `{"cmd":"NODE_HANDLE","type":"net.Socket"|"net.Server"|"dgram.Socket","msg":..}`;
    ///   only TCP, Unix and UDP sockets, one per message (else `EINVAL`). As in Node, while
    ///   a handle waits for the peer's `NODE_HANDLE_ACK`, later messages wait in a queue
    ///   (in order) and `send_msg` returns at once; the reader's ACK releases them. The
    ///   queue holds 1,024 messages: a send to a full queue waits for room, or fails with
    ///   `ENOBUFS` when no ACK can come (the peer's unread messages fill the inbox: call
    ///   `recv_msg`). A `NODE_HANDLE_NACK` sends the handle again (three times at most).
    /// - `recv_msg` gives the user's messages, each `NODE_HANDLE` unwrapped into its
    ///   message and its handle; `None` once the peer closed the channel.
    ///
    /// Switching to Node needs a tokio runtime (for the reader task); switching a Node
    /// channel back is `EINVAL` (what its reader read is Node's). `set_max_handles` and
    /// `set_max_message` apply to the reader too.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
    /// use brood::ipc::{Channel, Protocol};
    /// use std::os::fd::AsFd;
    ///
    /// let (mut a, mut b) = Channel::pair()?;
    /// a.set_protocol(Protocol::Node)?;
    /// b.set_protocol(Protocol::Node)?;
    /// // Three handles sent back to back: the second and third wait for the ACKs, which
    /// // b's reader sends and a's reader takes; nobody calls recv_msg on `a`.
    /// let (x, y, z) = (std::os::unix::net::UnixStream::pair().unwrap(),
    ///                  std::os::unix::net::UnixStream::pair().unwrap(),
    ///                  std::os::unix::net::UnixStream::pair().unwrap());
    /// for (i, s) in [&x.0, &y.0, &z.0].into_iter().enumerate() {
    ///     a.send_msg(&i, &[s.as_fd()]).await?;
    /// }
    /// for i in 0..3 {
    ///     let (m, handles) = b.recv_msg::<usize>().await?.unwrap();
    ///     assert_eq!((m, handles.len()), (i, 1));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn set_protocol(&mut self, protocol: Protocol) -> Result<()> {
        let io = &self.tx.io;
        let node = io.node.load(Ordering::Relaxed);
        match (node, protocol) {
            (true, Protocol::Node) | (false, Protocol::Brood) => Ok(()),
            (true, Protocol::Brood) => Err(Error::invalid(
                "set_protocol",
                "a channel that speaks Node's protocol keeps it (its reader task reads it)",
            )),
            (false, Protocol::Node) => {
                #[cfg(feature = "json")]
                {
                    if tokio::runtime::Handle::try_current().is_err() {
                        return Err(Error::invalid(
                            "set_protocol",
                            "Node's protocol needs a tokio runtime for the channel's reader",
                        ));
                    }
                    let rd = std::mem::take(&mut self.rd);
                    self.inbox = Some(node_reader::start(io, rd));
                }
                io.node.store(true, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// At most this many handles may arrive with one write (default 64, at most 253, the
    /// kernel's limit). More is an error that closes every fd that came with it.
    pub fn set_max_handles(&mut self, n: usize) {
        self.tx
            .io
            .max_handles
            .store(n.clamp(1, wire::MAX_FDS), Ordering::Relaxed);
    }

    /// The longest line `recv_msg` (feature `json`) accepts (default 16 MiB).
    pub fn set_max_message(&mut self, bytes: usize) {
        self.tx
            .io
            .max_message
            .store(bytes.max(1), Ordering::Relaxed);
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
        if self.node_reader_runs() {
            return Err(Error::invalid(
                "recv",
                "a channel that speaks Node's protocol is read by messages: use recv_msg",
            ));
        }
        loop {
            match self.rd.rx.read(buf) {
                Ok(0) => {}
                Ok(n) => return Ok(n),
                Err(lost) => return Err(self.lost("recv", lost)),
            }
            if !self.rd.fill(&self.tx.io).await? {
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
    /// [`set_max_handles`](Channel::set_max_handles), `EMSGSIZE`) is an error too, and so is
    /// a line longer than [`set_max_message`](Channel::set_max_message) (`EMSGSIZE`, at
    /// once: the rest of it is dropped as it arrives, unbuffered). Either way that message is
    /// consumed, its handles are closed, and the next call receives the next message.
    pub async fn recv_msg<T: DeserializeOwned>(&mut self) -> Result<Option<(T, Vec<Handle>)>> {
        if let Some(inbox) = &mut self.inbox {
            return match inbox.recv().await {
                None => Ok(None),
                Some(Err(e)) => Err(e),
                Some(Ok((v, handles))) => match serde_json::from_value::<T>(v) {
                    Ok(msg) => Ok(Some((msg, handles))),
                    Err(e) => Err(Error::invalid("recv_msg", format!("bad message: {e}"))),
                },
            };
        }
        loop {
            let max_handles = self.tx.io.max_handles();
            let max_message = self.tx.io.max_message.load(Ordering::Relaxed);
            let line = self.rd.rx.take_line(|bytes, bound| {
                if let Some(lost) = bound.lost {
                    return Err(lost_error("recv_msg", lost, max_handles));
                }
                if bytes.len() > max_message {
                    // (Arrived whole in one read: as one that is still coming, refused.)
                    return Err(Error::new(libc::EMSGSIZE, "recv_msg").with_detail(format!(
                        "a line over {max_message} bytes; that line is dropped"
                    )));
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
            self.rd.check_partial(&self.tx.io)?;
            if !self.rd.fill(&self.tx.io).await? {
                if self.rd.rx.buffered() == 0 {
                    return Ok(None);
                }
                return Err(Error::new(libc::EPIPE, "recv_msg")
                    .with_detail("the peer closed the channel in the middle of a message"));
            }
        }
    }

    /// How many received handles wait to be accepted (`uv_pipe_pending_count`).
    pub fn pending_count(&self) -> usize {
        self.rd.rx.pending_len()
    }

    /// The kind of the next pending handle (`uv_pipe_pending_type`), looked up from the fd
    /// each time it is asked: a socket the sender binds, sends and then listens on (libuv's
    /// `ipc_listen_after_write`) shows as a listener once it listens.
    pub fn pending_type(&self) -> Option<HandleType> {
        self.rd.rx.peek_pending().map(Handle::kind)
    }

    /// Takes the next pending handle as `T` (`uv_accept`). A handle of another kind is an
    /// error and stays pending, so it can be accepted as the right type; no pending handle
    /// is `EAGAIN`. A TCP or Unix stream socket that is bound but neither listening nor
    /// connected is accepted as a listener: `accept::<TcpListener>()` listens on it.
    pub fn accept<T: FromHandle>(&mut self) -> Result<T> {
        let next = self.rd.rx.peek_pending().ok_or_else(|| {
            Error::new(libc::EAGAIN, format!("accept {}", T::NAME)).with_detail("no pending handle")
        })?;
        check_kind::<T>(next.as_fd())?;
        match self.rd.rx.pop_pending() {
            // Checked just above (a wrong kind stays pending): not asked again.
            Some(h) => T::from_fd(h.into_fd()),
            None => Err(Error::new(libc::EAGAIN, "accept")),
        }
    }

    /// Takes the next pending handle whatever its kind.
    pub fn accept_handle(&mut self) -> Option<Handle> {
        self.rd.rx.pop_pending()
    }

    /// The socket underneath.
    pub fn as_stream(&self) -> &UnixStream {
        &self.tx.io.stream
    }

    /// Whether a reader task reads the channel (Node's protocol).
    fn node_reader_runs(&self) -> bool {
        #[cfg(feature = "json")]
        return self.inbox.is_some();
        #[cfg(not(feature = "json"))]
        false
    }

    fn lost(&self, op: &str, lost: super::framing::Truncated) -> Error {
        lost_error(op, lost, self.tx.io.max_handles())
    }
}

impl std::ops::Deref for Channel {
    type Target = Sender;
    fn deref(&self) -> &Sender {
        &self.tx
    }
}

impl Drop for Sender {
    /// The last `Sender` (or `Channel`) of a Node-protocol channel shuts the socket down
    /// (the peer sees the channel close at once) and stops its reader task, which holds the
    /// socket too: the fd is closed when the runtime drops that task, on its next turn.
    fn drop(&mut self) {
        // The reader holds one reference, this one is another: no other holder is left, and
        // none can appear (a holder is needed to clone one).
        if Arc::strong_count(&self.io) == 2 {
            let reader = self
                .io
                .acks
                .reader
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(reader) = reader {
                // SAFETY: shutdown(2) on the socket `io` owns, which is open (io is alive).
                unsafe { libc::shutdown(self.io.stream.as_raw_fd(), libc::SHUT_RDWR) };
                reader.abort();
            }
        }
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

    /// Sends bytes with handles attached to their first byte if it can be done now, without
    /// waiting (`uv_try_write2`): `EAGAIN`, with nothing sent, when the peer's buffer is full
    /// (a peer that stopped reading) or another send on this channel is under way. A master
    /// handing connections out uses it to pass a busy worker by instead of waiting on it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
    /// use brood::ipc::Channel;
    ///
    /// let (a, _b) = Channel::pair()?; // `_b` never reads
    /// let mut sent = 0;
    /// let full = loop {
    ///     match a.try_send_with_handles(&[7; 1000], &[]) {
    ///         Ok(()) => sent += 1,
    ///         Err(e) => break e,
    ///     }
    /// };
    /// assert_eq!(full.name(), "EAGAIN");
    /// assert!(sent > 0);
    /// # Ok(()) }
    /// ```
    pub fn try_send_with_handles(&self, data: &[u8], handles: &[BorrowedFd<'_>]) -> Result<()> {
        super::io::try_send(&self.io, data, handles)
    }

    #[cfg(feature = "json")]
    #[cfg_attr(docsrs, doc(cfg(feature = "json")))]
    /// Sends `msg` as one JSON line, with `handles` bound to it.
    pub async fn send_msg<T: Serialize>(&self, msg: &T, handles: &[BorrowedFd<'_>]) -> Result<()> {
        send_msg(&self.io, msg, handles).await
    }
}

#[cfg(feature = "json")]
async fn send_msg<T: Serialize>(io: &Io, msg: &T, handles: &[BorrowedFd<'_>]) -> Result<()> {
    let op = "send_msg";
    if io.node.load(Ordering::Relaxed) {
        let line = match handles {
            [] => {
                let mut line =
                    serde_json::to_vec(msg).map_err(|e| Error::invalid(op, e.to_string()))?;
                line.push(b'\n');
                line
            }
            [handle] => {
                let kind = super::handle_type(*handle);
                let ipv6 = socket2::SockRef::from(handle)
                    .domain()
                    .is_ok_and(|d| d == socket2::Domain::IPV6);
                super::node::wrap(msg, kind, ipv6)?
            }
            _ => return Err(Error::invalid(op, "Node takes one handle per message")),
        };
        return node_reader::send(io, line, handles.first().copied()).await;
    }
    let mut line = serde_json::to_vec(msg).map_err(|e| Error::invalid(op, e.to_string()))?;
    line.push(b'\n');
    send(io, &line, handles).await
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
