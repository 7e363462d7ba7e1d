//! A channel that speaks Node's protocol is read by a task of its own, as Node's event
//! loop reads its channel whatever the program does: it answers `NODE_HANDLE` with an ACK
//! (or a NACK), takes the peer's ACKs and NACKs (releasing the messages queued behind the
//! acknowledged handle), drops Node's other internal messages, and puts the user's
//! messages in a bounded inbox that `recv_msg` takes from. So a send never waits for an
//! ACK that only the user's `recv_msg` would read.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::handle::Handle;
use super::io::{Io, ReadHalf, lost_error, write_locked};
use super::node::{self, MAX_QUEUED, Out, Outbox, Refused};
use crate::error::{Error, Result};

/// How many bytes of the peer's messages may wait in the inbox for `recv_msg` (a larger
/// message still fits alone). While the inbox is full, the reader stops reading.
const INBOX_BYTES: usize = 1 << 20;
/// What a message costs in the inbox beyond its line (the parsed value, its handles).
const PER_MESSAGE: usize = 256;

/// One received message, or the error `recv_msg` returns in its place.
pub(crate) type Item = Result<(Value, Vec<Handle>)>;

/// The user's side of the reader: the messages it read.
pub(crate) struct Inbox {
    rx: mpsc::UnboundedReceiver<(Item, OwnedSemaphorePermit)>,
}

impl Inbox {
    /// The next message, or `None` once the reader ended (the peer closed the channel)
    /// and every message was taken.
    pub async fn recv(&mut self) -> Option<Item> {
        let (item, permit) = self.rx.recv().await?;
        drop(permit);
        Some(item)
    }
}

/// Starts the reader of `io` with what was already read (`rd`). Needs a tokio runtime.
pub(crate) fn start(io: &Arc<Io>, rd: ReadHalf) -> Inbox {
    let (tx, rx) = mpsc::unbounded_channel();
    io.acks.reading.store(true, Ordering::Release);
    let task = tokio::spawn(run(io.clone(), rd, tx));
    *io.acks.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
    Inbox { rx }
}

type Tx = mpsc::UnboundedSender<(Item, OwnedSemaphorePermit)>;

async fn run(io: Arc<Io>, mut rd: ReadHalf, tx: Tx) {
    let budget = Arc::new(Semaphore::new(INBOX_BYTES));
    let end = read_all(&io, &mut rd, &tx, &budget).await;
    if let Err(e) = end {
        deliver(&io, &tx, &budget, Err(e), 0).await;
    }
    // No ACK will come: queued messages are dropped (their handles closed) and later
    // sends fail.
    io.acks.outbox().close();
    io.acks.reading.store(false, Ordering::Release);
    io.acks.room.notify_waiters();
}

/// Reads until the end of the stream (`Ok`) or an error that ends reading.
async fn read_all(io: &Io, rd: &mut ReadHalf, tx: &Tx, budget: &Arc<Semaphore>) -> Result<()> {
    loop {
        while let Some((line, bound, len)) = rd
            .rx
            .take_line(|bytes, bound| (node::classify(bytes), bound, bytes.len()))
        {
            let user = match line {
                Err(e) => Err(e), // not JSON: that message is an error, the next goes on
                Ok(node::Line::User(v)) => Ok(v),
                Ok(node::Line::Handle(v)) => {
                    if bound.handles.is_empty() {
                        // The fd did not arrive (or was lost): Node sends it again.
                        super::io::send(io, node::NACK, &[]).await?;
                        continue;
                    }
                    super::io::send(io, node::ACK, &[]).await?;
                    Ok(v)
                }
                // Node's own message with a handle (e.g. its cluster's `newconn`):
                // acknowledged as Node does, its handle closed, never the user's.
                Ok(node::Line::InternalHandle) => {
                    let reply = if bound.handles.is_empty() {
                        node::NACK
                    } else {
                        node::ACK
                    };
                    super::io::send(io, reply, &[]).await?;
                    continue;
                }
                Ok(node::Line::Ack) => {
                    flush(io, Outbox::ack).await?;
                    continue;
                }
                Ok(node::Line::Nack) => {
                    flush(io, Outbox::nack).await?;
                    continue;
                }
                Ok(node::Line::Internal) => continue,
            };
            let item = match (user, bound.lost) {
                (Err(e), _) => Err(e),
                (Ok(_), Some(lost)) => Err(lost_error("recv_msg", lost, io.max_handles())),
                (Ok(v), None) => Ok((v, bound.handles)),
            };
            deliver(io, tx, budget, item, len).await;
        }
        rd.check_partial(io)?;
        if !rd.fill(io).await? {
            if rd.rx.buffered() != 0 {
                return Err(Error::new(libc::EPIPE, "recv_msg")
                    .with_detail("the peer closed the channel in the middle of a message"));
            }
            return Ok(());
        }
    }
}

/// Puts a message in the inbox, waiting while the inbox is full (the user is not
/// receiving); senders learn of that wait, since no ACK is read meanwhile.
async fn deliver(io: &Io, tx: &Tx, budget: &Arc<Semaphore>, item: Item, len: usize) {
    let cost = u32::try_from((len + PER_MESSAGE).min(INBOX_BYTES)).unwrap_or(u32::MAX);
    let permit = match budget.clone().try_acquire_many_owned(cost) {
        Ok(p) => p,
        Err(_) => {
            io.acks.stalled.store(true, Ordering::Release);
            io.acks.room.notify_waiters();
            let p = budget.clone().acquire_many_owned(cost).await;
            io.acks.stalled.store(false, Ordering::Release);
            match p {
                Ok(p) => p,
                Err(_) => return, // never closed
            }
        }
    };
    // No receiver (the Channel was dropped while Senders live): the message and its
    // handles are dropped, and ACKs go on being read for the senders.
    let _ = tx.send((item, permit));
}

/// Writes what the outbox releases after an ACK or NACK, in order, before any later send.
async fn flush(io: &Io, step: fn(&mut Outbox) -> Vec<Out>) -> Result<()> {
    let _guard = io.write.lock().await;
    let outs = step(&mut io.acks.outbox());
    io.acks.room.notify_waiters();
    for out in outs {
        if let Err(e) = write_out(io, &out).await {
            io.acks.outbox().close();
            return Err(e);
        }
    }
    Ok(())
}

async fn write_out(io: &Io, out: &Out) -> Result<()> {
    match &out.fd {
        Some(fd) => write_locked(io, &out.line, &[fd.as_fd()]).await,
        None => write_locked(io, &out.line, &[]).await,
    }
}

/// Sends one line of Node's protocol (with at most one handle): at once when no handle
/// waits for an ACK, else queued behind it (returning at once). A full queue waits for
/// room while the reader reads ACKs, and is `ENOBUFS` when it cannot: the reader waits for
/// the user to receive, or has ended.
pub(crate) async fn send(io: &Io, line: Vec<u8>, handle: Option<BorrowedFd<'_>>) -> Result<()> {
    let op = "send_msg";
    let fd = match handle {
        Some(h) => Some(Arc::new(h.try_clone_to_owned().map_err(|e| {
            crate::error::from_io(
                e,
                format!("{op}: keep the handle until Node acknowledges it"),
            )
        })?)),
        None => None,
    };
    let mut out = Out { line, fd };
    loop {
        // The writers' lock first, so nothing the reader releases is overtaken.
        let guard = match io.write.try_lock() {
            Ok(g) => g,
            Err(_) => io.write.lock().await,
        };
        let submitted = io.acks.outbox().submit(out, MAX_QUEUED);
        match submitted {
            Ok(Some(now)) => {
                let sent = write_out(io, &now).await;
                if sent.is_err() {
                    io.acks.outbox().close();
                }
                return sent;
            }
            Ok(None) => return Ok(()),
            Err((Refused::Closed, _)) => {
                return Err(Error::new(libc::EPIPE, op).with_detail(
                    "the channel's reader has ended (the peer closed it, or reading failed), \
                     so no acknowledgement of a handle can come",
                ));
            }
            Err((Refused::Full, back)) => {
                drop(guard);
                let reading = io.acks.reading.load(Ordering::Acquire);
                if !reading || io.acks.stalled.load(Ordering::Acquire) {
                    return Err(Error::new(libc::ENOBUFS, op).with_detail(format!(
                        "{MAX_QUEUED} messages already wait behind a handle Node has not \
                         acknowledged, and no acknowledgement is being read: {}",
                        if reading {
                            "the peer's messages fill the inbox; call recv_msg"
                        } else {
                            "the channel's reader has ended"
                        }
                    )));
                }
                out = back;
                let room = io.acks.room.notified();
                tokio::pin!(room);
                room.as_mut().enable();
                // Room made (or the reader stalled or ended) before `enable` would be missed:
                // look again now that any later change wakes `room`.
                if io.acks.outbox().is_full(MAX_QUEUED)
                    && !io.acks.stalled.load(Ordering::Acquire)
                    && io.acks.reading.load(Ordering::Acquire)
                {
                    room.await;
                }
            }
        }
    }
}
