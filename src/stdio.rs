//! What goes into one fd slot of a child: libuv's `uv_stdio_container_t`.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use crate::error::Error;
use crate::fd;

/// What the child gets at one fd number (a *slot*), as `uv_stdio_container_t`.
///
/// Give one with [`Command::stdio`](crate::Command::stdio) for any fd number: 0, 1 and 2 are
/// stdin, stdout and stderr, and 3, 9 or any other number are extra slots the child sees
/// at exactly that number. Slots 0-2 that are not set are inherited; every other fd of the
/// parent is closed in the child (on Linux before 5.11, which lacks
/// `CLOSE_RANGE_CLOEXEC`, only the close-on-exec ones: every fd brood and std make).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
/// use brood::{Command, Stdio};
/// use tokio::io::AsyncReadExt;
///
/// let mut child = Command::new("sh")
///     .args(["-c", "echo out; echo three >&3"])
///     .stdio(1, Stdio::pipe_writable()) // the child writes, we read
///     .stdio(3, Stdio::pipe_writable())
///     .spawn()?;
/// let mut three = child.take_pipe(3).unwrap();
/// let mut text = String::new();
/// three.read_to_string(&mut text).await.unwrap();
/// assert_eq!(text, "three\n");
/// assert!(child.wait().await?.success());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Stdio(pub(crate) Kind);

#[derive(Debug)]
pub(crate) enum Kind {
    /// `/dev/null` for 0-2, closed above (`UV_IGNORE`).
    Ignore,
    /// Closed, even at 0-2.
    Closed,
    /// The parent's fd of the same number.
    Inherit,
    /// The parent's fd `n`, borrowed: it must stay open until `spawn` returns.
    InheritFd(RawFd),
    /// An fd brood owns (a dup of a stream, or one given by value).
    Owned(OwnedFd),
    /// A kernel pipe when one-way, a socketpair when both; `readable`/`writable` say what
    /// the child may do, as libuv's flags.
    Pipe { readable: bool, writable: bool },
    /// A socketpair in IPC mode: the parent gets a `brood::ipc::Channel`; with `node`,
    /// the child is told of it as Node's channel and the parent's end speaks Node's protocol.
    Ipc { node: bool },
    /// An `Owned` fd already handed to a child by an earlier spawn of the same `Command`.
    Given,
    /// A bad argument found when the `Stdio` was made, reported by `spawn`.
    Invalid(Error),
}

impl Stdio {
    /// `UV_IGNORE`: `/dev/null` for fds 0-2, closed for higher slots.
    pub fn ignore() -> Stdio {
        Stdio(Kind::Ignore)
    }

    /// An alias of [`ignore`](Stdio::ignore), the name `std::process::Stdio::null` users know.
    pub fn null() -> Stdio {
        Stdio::ignore()
    }

    /// Nothing: the slot is closed in the child, even at 0-2 (where [`ignore`](Stdio::ignore)
    /// gives `/dev/null`). What a program started with that fd closed passes on when it
    /// keeps it closed, as `env` and `timeout` do. The child's first `open` then lands there:
    /// prefer [`ignore`](Stdio::ignore) unless the caller asked for a closed fd.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
    /// use brood::{Command, Stdio};
    ///
    /// let out = Command::new("sh")
    ///     .args(["-c", "if [ -e /proc/self/fd/0 ]; then echo open; else echo closed; fi"])
    ///     .stdin(Stdio::closed())
    ///     .stdout(Stdio::piped())
    ///     .output()
    ///     .await?;
    /// assert_eq!(out.stdout, b"closed\n");
    /// # Ok(()) }
    /// ```
    pub fn closed() -> Stdio {
        Stdio(Kind::Closed)
    }

    /// The parent's own fd of the same number as the slot (`UV_INHERIT_FD` with `fd == slot`).
    /// The same as `inherit_fd(slot)`, except that at 0-2 the fd's flags are left as they
    /// are (the parent's own stdio), where `inherit_fd` makes it blocking.
    pub fn inherit() -> Stdio {
        Stdio(Kind::Inherit)
    }

    /// `UV_INHERIT_FD`: the parent's fd `fd`, which must stay open until `spawn` returns.
    /// At slots 0-2 it is made blocking, as libuv does (see
    /// [`inherit_stream`](Stdio::inherit_stream)).
    pub fn inherit_fd(fd: RawFd) -> Stdio {
        Stdio(Kind::InheritFd(fd))
    }

    /// `UV_INHERIT_STREAM`: a socket, pipe or file the program holds, such as an accepted
    /// `tokio::net::TcpStream` (the CGI case). brood keeps a duplicate until the spawn, so the
    /// caller keeps its own handle and may close it at any time.
    ///
    /// At slots 0-2 the child gets it in blocking mode, as libuv does (programs do not expect
    /// `EAGAIN` on stdin or stdout). That mode belongs to the open file description, which
    /// the caller's handle shares: hand the stream over (drop yours), rather than keep
    /// using it from tokio while the child runs.
    pub fn inherit_stream(stream: &impl AsFd) -> Stdio {
        match fd::dup_cloexec(stream.as_fd()) {
            Ok(owned) => Stdio(Kind::Owned(owned)),
            Err(e) => Stdio(Kind::Invalid(e.context(format_args!(
                "inherit_stream fd {}",
                stream.as_fd().as_raw_fd()
            )))),
        }
    }

    /// `UV_CREATE_PIPE | UV_READABLE_PIPE`: a kernel pipe the child reads from (its stdin,
    /// say). The parent's end, a [`ChildPipe`](crate::ChildPipe) on
    /// [`Child`](crate::Child), is for writing.
    pub fn pipe_readable() -> Stdio {
        Stdio(Kind::Pipe {
            readable: true,
            writable: false,
        })
    }

    /// `UV_CREATE_PIPE | UV_WRITABLE_PIPE`: a kernel pipe the child writes to (its stdout,
    /// say). The parent's end, a [`ChildPipe`](crate::ChildPipe) on
    /// [`Child`](crate::Child), is for reading.
    pub fn pipe_writable() -> Stdio {
        Stdio(Kind::Pipe {
            readable: false,
            writable: true,
        })
    }

    /// A pipe both sides read and write: a Unix stream socketpair, as libuv makes every
    /// pipe. (The child cannot reopen it by path: `/dev/stdin` on a socket is `ENXIO`.)
    pub fn pipe_duplex() -> Stdio {
        Stdio(Kind::Pipe {
            readable: true,
            writable: true,
        })
    }

    /// An alias that picks the natural direction for the slot it is put in, as `std`'s
    /// `Stdio::piped`: [`pipe_readable`](Stdio::pipe_readable) at 0,
    /// [`pipe_writable`](Stdio::pipe_writable) at 1 and 2,
    /// [`pipe_duplex`](Stdio::pipe_duplex) elsewhere.
    pub fn piped() -> Stdio {
        // The direction is decided by `Command::stdio` from the slot number.
        Stdio(Kind::Pipe {
            readable: false,
            writable: false,
        })
    }

    /// An IPC channel (libuv's `ipc` pipe): the child's end is a Unix stream socket that
    /// carries bytes and open handles, and its fd number is in the child's
    /// `BROOD_CHANNEL_FD` variable (the lowest such slot, if several); the parent gets a
    /// [`Channel`](crate::ipc::Channel) from [`Child::take_channel`](crate::Child::take_channel).
    pub fn ipc() -> Stdio {
        Stdio(Kind::Ipc { node: false })
    }

    /// An IPC channel for a Node.js child (Node's `'ipc'` stdio, as `child_process.fork`
    /// makes): the child's `NODE_CHANNEL_FD` names the slot (the lowest such slot, if
    /// several) and `NODE_CHANNEL_SERIALIZATION_MODE` is `json`, so `process.send`,
    /// `process.on('message')` and `process.disconnect()` work in the child; the parent's
    /// [`Channel`](crate::ipc::Channel), from [`Child::take_channel`](crate::Child::take_channel),
    /// speaks Node's protocol ([`Protocol::Node`](crate::ipc::Protocol::Node)): messages
    /// with `send_msg`/`recv_msg` (feature `json`), sockets and servers as Node's handles.
    /// Node's `advanced` serialization (V8's structured clone) is not spoken: setting
    /// `NODE_CHANNEL_SERIALIZATION_MODE` to it with [`env`](crate::Command::env) makes
    /// `spawn` fail with `EPROTONOSUPPORT`. The spawn needs a tokio runtime (the channel's
    /// reader task).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
    /// use brood::{Command, Stdio};
    /// use serde_json::{Value, json};
    ///
    /// let mut child = Command::new("node")
    ///     .args(["-e", "process.on('message', (m) => { process.send({ echo: m }); process.disconnect(); })"])
    ///     .stdio(3, Stdio::node_ipc())
    ///     .spawn()?;
    /// let mut channel = child.take_channel(3).unwrap();
    /// channel.send_msg(&json!({ "hello": "node" }), &[]).await?;
    /// let (reply, _handles) = channel.recv_msg::<Value>().await?.unwrap();
    /// assert_eq!(reply, json!({ "echo": { "hello": "node" } }));
    /// assert!(channel.recv_msg::<Value>().await?.is_none()); // process.disconnect()
    /// assert!(child.wait().await?.success());
    /// # Ok(()) }
    /// ```
    pub fn node_ipc() -> Stdio {
        Stdio(Kind::Ipc { node: true })
    }

    pub(crate) fn is_pipe(&self) -> bool {
        matches!(self.0, Kind::Pipe { .. } | Kind::Ipc { .. })
    }
}

impl From<OwnedFd> for Stdio {
    /// Gives the child this fd; brood closes the parent's copy after the spawn.
    fn from(fd: OwnedFd) -> Stdio {
        Stdio(Kind::Owned(fd))
    }
}

impl From<File> for Stdio {
    /// Gives the child this file; brood closes the parent's copy after the spawn.
    fn from(file: File) -> Stdio {
        Stdio(Kind::Owned(file.into()))
    }
}

impl From<std::os::unix::net::UnixStream> for Stdio {
    fn from(s: std::os::unix::net::UnixStream) -> Stdio {
        Stdio(Kind::Owned(s.into()))
    }
}

impl From<std::net::TcpStream> for Stdio {
    fn from(s: std::net::TcpStream) -> Stdio {
        Stdio(Kind::Owned(s.into()))
    }
}
