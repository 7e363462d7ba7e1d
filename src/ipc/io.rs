//! The socket under a channel: `Io` (the socket, the writers' lock, the protocol's state)
//! with the write path, and `ReadHalf` (the framer and the read path). `Channel` reads
//! through a `ReadHalf` it owns; a channel speaking Node's protocol hands it to its reader
//! task (`node_reader.rs`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::Interest;
use tokio::net::UnixStream;

use super::framing::{Framer, Truncated};
use super::handle::Handle;
use super::node;
use super::wire;
use crate::error::{Error, Result, from_io};

/// How much one read asks the kernel for.
const READ_CHUNK: usize = 64 * 1024;
/// Default limit of handles that may arrive with one write.
const DEFAULT_MAX_HANDLES: usize = 64;
/// Default limit of one message line of the typed layer.
const DEFAULT_MAX_MESSAGE: usize = 16 * 1024 * 1024;

pub(crate) struct Io {
    pub stream: UnixStream,
    /// Serialises writers so the bytes of two sends never interleave (in an `Arc` so that
    /// the rest of a partial non-blocking send can be finished by a task that holds it).
    pub write: Arc<tokio::sync::Mutex<()>>,
    /// Node.js's protocol on the JSON lines (`Protocol::Node`) when set.
    pub node: AtomicBool,
    /// Node's protocol: handles sent and not yet acknowledged, the queue behind them.
    pub acks: node::Shared,
    /// At most this many handles may arrive with one write.
    pub max_handles: AtomicUsize,
    /// The longest line of the typed layer.
    pub max_message: AtomicUsize,
}

impl Io {
    pub fn new(stream: UnixStream) -> Io {
        Io {
            stream,
            write: Arc::new(tokio::sync::Mutex::new(())),
            node: AtomicBool::new(false),
            acks: node::Shared::default(),
            max_handles: AtomicUsize::new(DEFAULT_MAX_HANDLES),
            max_message: AtomicUsize::new(DEFAULT_MAX_MESSAGE),
        }
    }

    pub fn max_handles(&self) -> usize {
        self.max_handles.load(Ordering::Relaxed)
    }
}

/// The reading side: bytes read but not yet consumed, the handles bound to them, the
/// pending queue.
#[derive(Default)]
pub(crate) struct ReadHalf {
    pub rx: Framer<Handle>,
    /// Where `recvmsg` puts the fds of one read (kept to reuse its allocation).
    fds: Vec<OwnedFd>,
    pub eof: bool,
}

impl ReadHalf {
    /// Bounds a line still coming: its length, and the handles bound to it (a peer sending
    /// one byte at a time, each with fds, would otherwise grow the queue without end). A
    /// line past either limit is an error, once: it is dropped as it arrives (its handles
    /// closed), and the line after it is read as usual.
    #[cfg_attr(
        not(feature = "json"),
        allow(dead_code, reason = "the typed layer is feature json")
    )]
    pub fn check_partial(&mut self, io: &Io) -> Result<()> {
        let max_message = io.max_message.load(Ordering::Relaxed);
        if self.rx.unterminated() > max_message {
            self.rx.skip_line();
            return Err(Error::new(libc::EMSGSIZE, "recv_msg").with_detail(format!(
                "no end of line within {max_message} bytes; that line is dropped"
            )));
        }
        let max_handles = io.max_handles();
        if self.rx.bound() > max_handles {
            self.rx.skip_line();
            return Err(Error::new(libc::EMSGSIZE, "recv_msg").with_detail(format!(
                "more than {max_handles} handles came with one message; it is dropped"
            )));
        }
        Ok(())
    }

    /// Reads more from the socket. `false` at end of stream.
    pub async fn fill(&mut self, io: &Io) -> Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let max = io.max_handles();
        let result = loop {
            let ready = io.stream.readable().await;
            if let Err(e) = ready {
                break Err(e);
            }
            let sock = io.stream.as_raw_fd();
            let buf = self.rx.space(READ_CHUNK);
            let fds = &mut self.fds;
            match io
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
                self.eof = true;
                return Ok(false);
            }
            Err(e) => return Err(from_io(e, "recv")),
        };
        if r.bytes == 0 {
            self.fds.clear();
            self.eof = true;
            return Ok(false);
        }
        let lost = r.truncated.then_some(Truncated {
            arrived: self.fds.len(),
            room: max_room(max),
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
pub(crate) fn lost_error(op: &str, lost: Truncated, max_handles: usize) -> Error {
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

pub(crate) fn shutdown_write(io: &Io) -> Result<()> {
    // SAFETY: shutdown(2) on the socket we own.
    if unsafe { libc::shutdown(io.stream.as_raw_fd(), libc::SHUT_WR) } < 0 {
        return Err(Error::last("shutdown"));
    }
    Ok(())
}

/// Writes all of `data`, the fds with the first byte. Not cancel-safe once started (as
/// `write_all`): a dropped send may leave part of a message on the wire.
pub(crate) async fn send(io: &Io, data: &[u8], handles: &[BorrowedFd<'_>]) -> Result<()> {
    // The common case is an uncontended lock and a socket with room: take both without
    // building futures (a small message costs about one system call, as a raw write).
    let _guard = match io.write.try_lock() {
        Ok(g) => g,
        Err(_) => io.write.lock().await,
    };
    write_locked(io, data, handles).await
}

/// [`send`] for a caller that holds `io.write`.
pub(crate) async fn write_locked(io: &Io, data: &[u8], handles: &[BorrowedFd<'_>]) -> Result<()> {
    let op = if handles.is_empty() {
        "send"
    } else {
        "send_with_handles"
    };
    check_send(op, data, handles)?;
    let list = RawFds::new(handles);
    let mut fds = list.as_slice();
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

/// The raw fds of a send's handles: few per write is the rule, so on the stack up to 16.
enum RawFds {
    Few([RawFd; 16], usize),
    Many(Vec<RawFd>),
}

impl RawFds {
    fn new(handles: &[BorrowedFd<'_>]) -> RawFds {
        if handles.len() <= 16 {
            let mut few = [0 as RawFd; 16];
            for (slot, h) in few.iter_mut().zip(handles) {
                *slot = h.as_raw_fd();
            }
            RawFds::Few(few, handles.len())
        } else {
            RawFds::Many(handles.iter().map(|h| h.as_raw_fd()).collect())
        }
    }

    fn as_slice(&self) -> &[RawFd] {
        match self {
            RawFds::Few(few, n) => &few[..*n],
            RawFds::Many(many) => many,
        }
    }
}

/// What every send refuses before it writes anything.
fn check_send(op: &str, data: &[u8], handles: &[BorrowedFd<'_>]) -> Result<()> {
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
    Ok(())
}

/// One non-blocking `sendmsg` of `data` with `handles` on its first byte (`uv_try_write2`),
/// never waiting: `EAGAIN`, with nothing sent, when the peer's buffer is full or another send
/// is under way. Should the kernel take only part of `data` (it takes a small message whole
/// or not at all), the rest is written before any other send: by a task holding the writers'
/// lock inside a runtime, else at once, blocking.
pub(crate) fn try_send(io: &Arc<Io>, data: &[u8], handles: &[BorrowedFd<'_>]) -> Result<()> {
    let op = if handles.is_empty() {
        "try_send"
    } else {
        "try_send_with_handles"
    };
    check_send(op, data, handles)?;
    if data.is_empty() {
        return Ok(());
    }
    let busy = |detail: &str| Error::new(libc::EAGAIN, op).with_detail(detail);
    let Ok(guard) = io.write.clone().try_lock_owned() else {
        return Err(busy("another send on this channel is under way"));
    };
    let list = RawFds::new(handles);
    let fds = list.as_slice();
    let sock = io.stream.as_raw_fd();
    // Straight to the kernel, not through tokio's readiness (which stays "full" after an
    // `EAGAIN` until the reactor's next turn sees room): the answer is the socket's own. An
    // edge-triggered reactor loses nothing by it: after an `EAGAIN` the kernel reports the
    // room that follows as a new edge.
    let n = match wire::send(sock, data, fds) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            return Err(busy("the peer's buffer is full"));
        }
        Err(e) => return Err(from_io(e, op)),
    };
    if n < data.len() {
        let rest = data[n..].to_vec();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let io = Arc::clone(io);
                rt.spawn(async move {
                    let _guard = guard;
                    let _ = write_locked(&io, &rest, &[]).await;
                });
            }
            Err(_) => {
                let _guard = guard;
                finish_blocking(sock, &rest).map_err(|e| from_io(e, op))?;
            }
        }
    }
    Ok(())
}

/// Writes `data` on the non-blocking socket `sock`, waiting in `poll` for room (only for a
/// partial [`try_send`] outside any runtime).
fn finish_blocking(sock: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match wire::send(sock, data, &[]) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut p = libc::pollfd {
                    fd: sock,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: poll reads and writes the one pollfd we pass.
                if unsafe { libc::poll(&mut p, 1, -1) } < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
