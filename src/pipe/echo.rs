//! The seed's echo server, as a library function so the example and `brood pipe-echo` run
//! the same code.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;

use super::Listener;
use crate::error::Result;

/// Serves `listener` forever: every byte a client sends comes back to it, and a client's
/// EOF ends its connection. Connections are served concurrently; dropping (or aborting) the
/// future stops the server and closes every connection it holds.
///
/// It returns only on an accept error that is not passing (out of fds, memory or buffers
/// wait and retry; a connection aborted before accept is skipped).
pub async fn echo_server(listener: &Listener) -> Result<()> {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(stream) => {
                    conns.spawn(echo(stream));
                }
                Err(e) => match e.errno() {
                    libc::ECONNABORTED | libc::EINTR => {}
                    libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    _ => return Err(e),
                },
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Echoes one connection of any kind (Unix or TCP stream, a cluster connection) until the
/// peer's EOF, then closes the writing side. A peer that resets just ends it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// let (mut client, server) = tokio::net::UnixStream::pair().unwrap();
/// tokio::spawn(brood::pipe::echo(server));
/// client.write_all(b"hello").await.unwrap();
/// client.shutdown().await.unwrap();
/// let mut back = String::new();
/// client.read_to_string(&mut back).await.unwrap();
/// assert_eq!(back, "hello");
/// # }
/// ```
pub async fn echo<S: AsyncRead + AsyncWrite>(stream: S) {
    // No split: no lock per connection beyond the task's own. The buffer is on the heap,
    // never zeroed, and starts small (a cluster worker runs this once per handed-off
    // connection: a large future would be copied into its task at every spawn, and a
    // large buffer costs the allocator more than a small one); a read that fills it makes
    // it grow, up to `BUF_MAX`.
    let mut stream = std::pin::pin!(stream);
    let mut buf = Vec::with_capacity(BUF_MIN);
    loop {
        buf.clear();
        match stream.read_buf(&mut buf).await {
            Ok(0) => {
                let _ = stream.shutdown().await;
                return;
            }
            Ok(n) => {
                if stream.write_all(&buf).await.is_err() {
                    return;
                }
                if n == buf.capacity() && n < BUF_MAX {
                    buf = Vec::with_capacity(BUF_MAX);
                }
            }
            Err(_) => return,
        }
    }
}

/// The first buffer of [`echo`] (small enough for the allocator's per-thread cache).
const BUF_MIN: usize = 512;
/// The most bytes one read of [`echo`] takes.
const BUF_MAX: usize = 8192;
