//! Unix domain sockets, libuv's `uv_pipe_t` without `ipc`: a [`Listener`] that binds,
//! listens and accepts, [`connect`] for clients, [`open`] for a socket fd the program
//! already has, [`Listener::chmod`], [`peer_credentials`], [`local_name`] and [`peer_name`],
//! and abstract names on Linux (`@name`). Streams are plain `tokio::net::UnixStream`s, the
//! same type as the pipes of a [`Child`](crate::Child), so everything tokio offers for them
//! (`AsyncRead`, `AsyncWrite`, `into_split`) applies.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
//! use brood::pipe;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let name = format!("@brood-doc-echo-{}", std::process::id());
//! let listener = pipe::Listener::bind(&name)?;
//! let server = tokio::spawn(async move { pipe::echo_server(&listener).await });
//!
//! let mut client = pipe::connect(&name).await?;
//! client.write_all(b"hello").await.unwrap();
//! let mut buf = [0; 5];
//! client.read_exact(&mut buf).await.unwrap();
//! assert_eq!(&buf, b"hello");
//! server.abort();
//! # Ok(()) }
//! ```
//!
//! Errors name the socket: `bind "/tmp/x.sock": EADDRINUSE: address already in use (a
//! server is listening on it)`.

mod echo;
mod listener;
mod mode;
mod name;
mod probe;
mod stream;

use crate::error::{Error, Result, from_io};

pub use echo::{echo, echo_server};
pub use listener::{Bind, DEFAULT_BACKLOG, Listener};
pub use mode::Mode;
pub use name::Name;
pub use stream::{Credentials, connect, local_name, open, peer_credentials, peer_name};

/// tokio's socket types panic outside a runtime; brood says so as an error instead.
fn check_runtime(op: &str) -> Result<()> {
    tokio::runtime::Handle::try_current()
        .map(|_| ())
        .map_err(|_| Error::invalid(op, "Unix sockets need a tokio runtime: call inside one"))
}

/// `ENOTSOCK` for a non-socket, `EINVAL` for a socket that is not a Unix stream socket.
fn check_unix_stream(sock: &socket2::SockRef<'_>, op: &str) -> Result<()> {
    let domain = sock.domain().map_err(|e| from_io(e, op))?;
    let ty = sock.r#type().map_err(|e| from_io(e, op))?;
    if domain != socket2::Domain::UNIX || ty != socket2::Type::STREAM {
        return Err(Error::invalid(op, "not a Unix stream socket"));
    }
    Ok(())
}
