//! `ChildPipe`: the parent's end of a pipe to a child.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::net::unix::pipe;

/// The parent's end of a pipe made by [`Stdio::pipe_readable`](crate::Stdio::pipe_readable),
/// [`pipe_writable`](crate::Stdio::pipe_writable), [`piped`](crate::Stdio::piped) or
/// [`pipe_duplex`](crate::Stdio::pipe_duplex): `AsyncRead` + `AsyncWrite` on the tokio
/// reactor.
///
/// A one-way slot is a kernel pipe (`pipe2`), as std, tokio and posix_spawn users expect:
/// the child can open `/dev/stdin`, `/dev/stdout` or `/proc/self/fd/N` on it. The parent's
/// end is a `tokio::net::unix::pipe::Sender` (the child reads) or `Receiver` (the child
/// writes); using it the other way is an error (`EBADF`). A duplex slot is a Unix stream
/// socketpair (a `tokio::net::UnixStream`), as libuv makes every pipe.
///
/// Writing to a child that closed its end is an `EPIPE` error ([`io::ErrorKind::BrokenPipe`]),
/// never a SIGPIPE death: sockets are written with `MSG_NOSIGNAL`; for kernel pipes, Rust
/// programs ignore SIGPIPE from the start (std does that before `main`), and where it is not
/// ignored when the pipe is made (a C host, `-Zon-broken-pipe=inherit`), each write blocks
/// SIGPIPE in the writing thread and takes back the one it raised.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
/// use brood::{Command, Stdio};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// let mut child = Command::new("sh")
///     .args(["-c", "cat /dev/stdin > /dev/stdout"])
///     .stdin(Stdio::piped())
///     .stdout(Stdio::piped())
///     .spawn()?;
/// let mut stdin = child.stdin.take().unwrap();
/// stdin.write_all(b"through /dev/stdin\n").await.unwrap();
/// drop(stdin);
/// let mut text = String::new();
/// child.stdout.take().unwrap().read_to_string(&mut text).await.unwrap();
/// assert_eq!(text, "through /dev/stdin\n");
/// assert!(child.wait().await?.success());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ChildPipe {
    inner: Inner,
    /// Block SIGPIPE around writes (it was not ignored when the pipe was made).
    guard_sigpipe: bool,
}

#[derive(Debug)]
enum Inner {
    Sender(pipe::Sender),
    Receiver(pipe::Receiver),
    Duplex(UnixStream),
}

/// A parent end before it is registered with the reactor.
#[derive(Debug)]
pub(crate) enum End {
    /// The write end of a kernel pipe (the child reads).
    Sender(OwnedFd),
    /// The read end of a kernel pipe (the child writes).
    Receiver(OwnedFd),
    /// A socketpair end.
    Duplex(StdUnixStream),
}

impl ChildPipe {
    /// Registers `end` (non-blocking already) with the current runtime's reactor.
    pub(crate) fn new(end: End) -> io::Result<ChildPipe> {
        Ok(match end {
            End::Sender(fd) => ChildPipe {
                inner: Inner::Sender(pipe::Sender::from_owned_fd_unchecked(fd)?),
                guard_sigpipe: !sigpipe_ignored(),
            },
            End::Receiver(fd) => ChildPipe {
                inner: Inner::Receiver(pipe::Receiver::from_owned_fd_unchecked(fd)?),
                guard_sigpipe: false,
            },
            End::Duplex(s) => ChildPipe {
                inner: Inner::Duplex(UnixStream::from_std(s)?),
                guard_sigpipe: false,
            },
        })
    }

    /// The end as a `tokio::net::UnixStream`, for a duplex slot; the pipe back otherwise.
    pub fn into_unix_stream(self) -> Result<UnixStream, ChildPipe> {
        match self.inner {
            Inner::Duplex(s) => Ok(s),
            inner => Err(ChildPipe { inner, ..self }),
        }
    }

    /// Takes the fd off the reactor (it stays non-blocking), as `into_std` on tokio types.
    pub fn into_owned_fd(self) -> io::Result<OwnedFd> {
        match self.inner {
            Inner::Sender(s) => s.into_nonblocking_fd(),
            Inner::Receiver(r) => r.into_nonblocking_fd(),
            Inner::Duplex(d) => Ok(d.into_std()?.into()),
        }
    }

    /// Splits into a read half and a write half that can be used from different tasks
    /// (`tokio::io::split`; a duplex socket can also use
    /// [`into_unix_stream`](ChildPipe::into_unix_stream) and `UnixStream::into_split`).
    pub fn into_split(
        self,
    ) -> (
        tokio::io::ReadHalf<ChildPipe>,
        tokio::io::WriteHalf<ChildPipe>,
    ) {
        tokio::io::split(self)
    }
}

/// What the kernel says for a read on a write end or the other way round.
fn wrong_way() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

impl AsyncRead for ChildPipe {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Receiver(r) => Pin::new(r).poll_read(cx, buf),
            Inner::Duplex(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Sender(_) => Poll::Ready(Err(wrong_way())),
        }
    }
}

impl AsyncWrite for ChildPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Sender(s) if this.guard_sigpipe => loop {
                ready!(s.poll_write_ready(cx))?;
                match without_sigpipe(|| s.try_write(buf)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return Poll::Ready(r),
                }
            },
            Inner::Sender(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Duplex(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Receiver(_) => Poll::Ready(Err(wrong_way())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Shuts down the write side of a socket; a kernel pipe closes on drop.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Duplex(s) => Pin::new(s).poll_shutdown(cx),
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl AsFd for ChildPipe {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.inner {
            Inner::Sender(s) => s.as_fd(),
            Inner::Receiver(r) => r.as_fd(),
            Inner::Duplex(d) => d.as_fd(),
        }
    }
}

impl AsRawFd for ChildPipe {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// Whether SIGPIPE is ignored in this process now.
fn sigpipe_ignored() -> bool {
    // SAFETY: a zeroed sigaction is a valid out-parameter; a null new action only reads.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Runs `write` with SIGPIPE blocked in this thread; a SIGPIPE it raised (thread-directed,
/// so pending on this thread only) is taken back before the old mask returns, so the
/// caller sees only the `EPIPE`.
fn without_sigpipe(write: impl FnOnce() -> io::Result<usize>) -> io::Result<usize> {
    // SAFETY: sigset calls on local values, and the thread's own mask; the old mask is put
    // back before returning.
    unsafe {
        let mut pipe_set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut pipe_set);
        libc::sigaddset(&mut pipe_set, libc::SIGPIPE);
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &pipe_set, &mut old);
        let mut pending: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut pending);
        let was_pending = libc::sigismember(&pending, libc::SIGPIPE) == 1;
        let r = write();
        if !was_pending && matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EPIPE)) {
            let zero = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            libc::sigtimedwait(&pipe_set, std::ptr::null_mut(), &zero);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}
