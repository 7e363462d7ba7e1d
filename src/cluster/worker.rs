//! The worker side of a cluster: accepted connections, whatever the strategy.

use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};

use super::{Every, STRATEGY_ENV, Strategy, wire};
use crate::error::{Error, Result, from_io};
use crate::ipc::{CHANNEL_FD_ENV, Channel, Sender, own_inherited};

/// Open connections of this worker, so [`Worker::drain`] can wait for them, and the
/// reports to the master (one `Arc` per connection holds both).
struct Open {
    count: AtomicUsize,
    zero: Notify,
    to_master: Option<mpsc::UnboundedSender<u8>>,
}

/// A worker of a [`Cluster`](super::Cluster): yields the connections the master's strategy
/// gives it, answers heartbeats, and reports finished connections.
///
/// [`accept`](Worker::accept) returns `None` once the master retires this worker (closes
/// its channel, or sends `SIGTERM`); then [`drain`](Worker::drain) waits for the open
/// connections to finish. See the [module docs](super) for an example.
pub struct Worker {
    strategy: Strategy,
    listener: Option<TcpListener>,
    conns: Option<mpsc::Receiver<TcpStream>>,
    stop: watch::Receiver<bool>,
    open: Arc<Open>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("strategy", &self.strategy)
            .finish_non_exhaustive()
    }
}

/// An accepted connection. It derefs to the `TcpStream` and is `AsyncRead + AsyncWrite`;
/// dropping it tells the master (least-connections) and [`Worker::drain`] it is finished.
pub struct Connection {
    stream: TcpStream,
    open: Arc<Open>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Sets the worker up from what the master gave it (fd 3 and the environment), tells the
    /// master it is ready, and starts answering heartbeats. Needs a tokio runtime. Fails
    /// unless [`is_worker`](super::is_worker) (the marker names this process).
    pub async fn from_env() -> Result<Worker> {
        let op = "cluster worker";
        if !super::is_worker() {
            return Err(Error::new(libc::ENOENT, op).with_detail(
                "not started by a cluster master (BROOD_CLUSTER_WORKER is not the parent's pid)",
            ));
        }
        let strategy: Strategy = std::env::var(STRATEGY_ENV)
            .map_err(|_| {
                Error::new(libc::ENOENT, op).with_detail("not started by a cluster master")
            })?
            .parse()?;
        let fd3 = own_inherited(3).map_err(|e| e.context(op))?;
        let (listener, channel) = if strategy.master_accepts() {
            (None, Some(Channel::from_fd(fd3)?))
        } else {
            let std = std::net::TcpListener::from(fd3);
            std.set_nonblocking(true).map_err(|e| from_io(e, op))?;
            let l = TcpListener::from_std(std).map_err(|e| from_io(e, op))?;
            let ch = match std::env::var(CHANNEL_FD_ENV) {
                Ok(_) => Some(Channel::from_env()?),
                Err(_) => None,
            };
            (Some(l), ch)
        };
        let (stop_tx, stop) = watch::channel(false);
        let (up_tx, up_rx) = mpsc::unbounded_channel();
        let open = Arc::new(Open {
            count: AtomicUsize::new(0),
            zero: Notify::new(),
            to_master: channel.is_some().then_some(up_tx),
        });
        let mut worker = Worker {
            strategy,
            listener,
            conns: None,
            stop,
            open,
        };
        // Kept for the worker's life: SIGTERM never kills a worker that uses this API; it
        // stops accepting (listener strategies) and finishes its connections.
        let mut sigterm = crate::signal::Signal::new(crate::Signum::TERM)?;
        match channel {
            Some(channel) => {
                let (conn_tx, conn_rx) = mpsc::channel(1024);
                let sender = channel.sender();
                // (This worker reads every connection of a message: see `take_conn`.)
                sender.send(&[wire::BATCHES, wire::READY]).await?;
                worker.conns = strategy.master_accepts().then_some(conn_rx);
                tokio::spawn(writer(sender, up_rx));
                let up = worker.open.to_master.clone();
                let master_accepts = strategy.master_accepts();
                tokio::spawn(async move {
                    let mut channel = channel;
                    let mut buf = [0u8; 256];
                    // Errors are logged at most once a second each kind.
                    let (mut errors, mut dropped) = (Every::default(), Every::default());
                    loop {
                        tokio::select! {
                            r = channel.recv(&mut buf) => match r {
                                Ok(0) => break,
                                Ok(n) => {
                                    for &b in &buf[..n] {
                                        match b {
                                            wire::PING => {
                                                if let Some(up) = &up {
                                                    let _ = up.send(wire::PONG);
                                                }
                                            }
                                            wire::CONN => match take_conn(&mut channel) {
                                                Ok(c) => {
                                                    if conn_tx.send(c).await.is_err() {
                                                        break;
                                                    }
                                                }
                                                Err(e) => {
                                                    // Its fd did not arrive (this process is
                                                    // at its fd limit: MSG_CTRUNC) or could
                                                    // not be registered: that connection is
                                                    // lost, the channel goes on.
                                                    if let Some(n) = dropped.hit() {
                                                        tracing::warn!(dropped = n, "worker: connection dropped: {e}");
                                                    }
                                                    if let Some(up) = &up {
                                                        let _ = up.send(wire::DONE);
                                                    }
                                                }
                                            },
                                            _ => {}
                                        }
                                    }
                                }
                                // A read that failed (handles cut off at the fd limit, whose
                                // bytes still come) ends neither the channel nor the worker.
                                Err(e) => {
                                    if let Some(n) = errors.hit() {
                                        tracing::warn!(errors = n, "worker: channel: {e}");
                                    }
                                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                                }
                            },
                            // Round-robin workers stop at end of channel, after taking
                            // every connection still queued; others stop at SIGTERM too.
                            _ = sigterm.recv(), if !master_accepts => break,
                        }
                    }
                    let _ = stop_tx.send(true);
                    // Keep answering nothing more, but keep the signal handled.
                    drop(conn_tx);
                    while sigterm.recv().await.is_some() {}
                });
            }
            None => {
                tokio::spawn(async move {
                    let _ = sigterm.recv().await;
                    let _ = stop_tx.send(true);
                    while sigterm.recv().await.is_some() {}
                });
            }
        }
        Ok(worker)
    }

    /// The strategy the master uses.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The next connection, or `None` once the master retires this worker.
    pub async fn accept(&mut self) -> Result<Option<Connection>> {
        let stream = if let Some(conns) = &mut self.conns {
            match conns.recv().await {
                Some(s) => s,
                None => return Ok(None),
            }
        } else if let Some(l) = &self.listener {
            if *self.stop.borrow() {
                return Ok(None);
            }
            tokio::select! {
                r = l.accept() => r.map_err(|e| from_io(e, "accept"))?.0,
                _ = self.stop.changed() => return Ok(None),
            }
        } else {
            return Ok(None);
        };
        if let Some(up) = &self.open.to_master {
            if !self.strategy.master_accepts() {
                let _ = up.send(wire::ACCEPTED);
            }
        }
        self.open.count.fetch_add(1, Ordering::AcqRel);
        Ok(Some(Connection {
            stream,
            open: self.open.clone(),
        }))
    }

    /// Waits until every [`Connection`] this worker accepted has been dropped.
    pub async fn drain(&self) {
        loop {
            let notified = self.open.zero.notified();
            if self.open.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// How many accepted connections are still open.
    pub fn open_connections(&self) -> usize {
        self.open.count.load(Ordering::Acquire)
    }
}

/// The connection whose byte `c` was just read: its fd, as a tokio `TcpStream`. The master
/// only ever sends accepted TCP sockets, so the fd is taken as one without asking the
/// kernel what it is (`Channel::accept` would: `fstat` and three `getsockopt`s per
/// connection); it arrives blocking, as from `accept(2)`, and is made non-blocking here.
fn take_conn(channel: &mut Channel) -> Result<TcpStream> {
    let op = "cluster worker: accept a connection";
    let handle = channel
        .accept_handle()
        .ok_or_else(|| Error::new(libc::EAGAIN, op).with_detail("no fd came with it"))?;
    let std = std::net::TcpStream::from(handle.into_fd());
    std.set_nonblocking(true).map_err(|e| from_io(e, op))?;
    TcpStream::from_std(std).map_err(|e| from_io(e, op))
}

/// Writes the worker's reports (ready, pong, accepted, done) to the master in order. Reports
/// of connections (accepted, done) wait `REPORT_DELAY` for more to join them, so a busy
/// worker writes (and wakes the master) about once a millisecond, not once per connection;
/// a batch with a ready or pong byte goes at once.
async fn writer(sender: Sender, mut up: mpsc::UnboundedReceiver<u8>) {
    let mut batch = Vec::with_capacity(REPORT_BATCH);
    while up.recv_many(&mut batch, REPORT_BATCH).await > 0 {
        if batch
            .iter()
            .all(|&b| b == wire::DONE || b == wire::ACCEPTED)
        {
            tokio::time::sleep(REPORT_DELAY).await;
            while batch.len() < REPORT_BATCH {
                match up.try_recv() {
                    Ok(b) => batch.push(b),
                    Err(_) => break,
                }
            }
        }
        if sender.send(&batch).await.is_err() {
            return;
        }
        batch.clear();
    }
}

/// The most report bytes sent in one write.
const REPORT_BATCH: usize = 1024;
/// How long reports of connections wait for others to share their write.
const REPORT_DELAY: std::time::Duration = std::time::Duration::from_millis(1);

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(up) = &self.open.to_master {
            let _ = up.send(wire::DONE);
        }
        if self.open.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.open.zero.notify_waiters();
        }
    }
}

impl std::ops::Deref for Connection {
    type Target = TcpStream;
    fn deref(&self) -> &TcpStream {
        &self.stream
    }
}

impl std::ops::DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
