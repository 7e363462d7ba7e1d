//! The seed's echo server, as a library function so the example and `brood pipe-echo` run
//! the same code.

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
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

async fn echo(stream: UnixStream) {
    let (mut rd, mut wr) = stream.into_split();
    // A client that resets the connection just ends it; nothing else to do.
    if tokio::io::copy(&mut rd, &mut wr).await.is_ok() {
        let _ = wr.shutdown().await;
    }
}
