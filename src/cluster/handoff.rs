//! Handing connections and pings to workers without ever waiting for one, and accepting
//! with a backoff when the process is out of fds or memory (`backoff.rs`).
//!
//! Each send is one non-blocking `sendmsg` on the master's end of the worker's channel. The
//! channel's send buffer is kept small (`CHANNEL_SNDBUF`), so a worker that stops reading
//! (stopped, hung) holds at most a handful of connections before its channel is full; from
//! then on it is skipped, and the connections go to the other workers, until the kernel
//! says its channel has room again. The master keeps each connection it sent until the
//! worker has read it (`inflight.rs`), so a worker found stuck (`stuck.rs`) never takes the
//! ones it did not read with it.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::Interest;
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::net::{TcpListener, UnixStream};

use super::inflight::{self, HANDOFF_BATCH, WINDOW};
use super::proto::{Event, Order};
use super::state::{Master, State, WorkerSlot};
use super::{Strategy, WorkerProtocol, node, wire};

/// The send buffer asked for on each worker channel: the kernel doubles it to 8 KiB, room
/// for about 11 handed-off connections waiting for the worker to read them.
pub(super) const CHANNEL_SNDBUF: usize = 4096;

/// The most accepted connections the master holds while no worker can take them: half the
/// fd limit (the other half stays for workers' channels, pidfds and `ctl`), at most 4096.
pub(super) fn backlog_max() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    };
    (soft / 2).clamp(1, 4096) as usize
}

enum Sent {
    Yes,
    /// The channel is full (the worker is not reading).
    Full,
    /// The channel is broken (the worker is gone; its exit follows).
    Broken,
}

/// One non-blocking send of `bytes` with `fds` attached (open fds the caller holds).
fn try_send(chan: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> Sent {
    let sock = chan.as_raw_fd();
    match chan.try_io(Interest::WRITABLE, || {
        crate::ipc::send_raw(sock, bytes, fds)
    }) {
        Ok(_) => Sent::Yes,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Sent::Full,
        Err(_) => Sent::Broken,
    }
}

/// The listening socket as the master's accept loop uses it: registered with the reactor
/// for readability only (the registration `ipc::HandoffListener` makes).
pub(super) fn listener(l: TcpListener) -> std::io::Result<AsyncFd<std::net::TcpListener>> {
    crate::ipc::register_handoff_listener(l.into_std()?)
}

/// At most this many connections are accepted per readiness of the listener before the
/// master looks at its other events (workers' reports, signals, `ctl`) again.
const ACCEPT_BATCH: usize = 64;

impl Master {
    /// The listener is readable: accepts connections until the kernel has no more (or the
    /// batch or the backlog is full) and hands them out. Each is one `accept4` and stays a
    /// plain fd in the master: never registered with the reactor, made non-blocking or
    /// wrapped, only sent on and closed. Accepted without `SOCK_NONBLOCK`, the socket is
    /// blocking, as from `accept(2)` on a blocking listener (what a worker in any language
    /// expects; brood workers make it non-blocking themselves).
    pub(super) fn accept_ready(&mut self, mut ready: AsyncFdReadyGuard<'_, std::net::TcpListener>) {
        // One clock reading for the batch (the accepts of a batch take microseconds).
        let now = Instant::now();
        for _ in 0..ACCEPT_BATCH {
            if self.backlog.len() >= self.backlog_max {
                break;
            }
            // try_io clears the listener's readiness on EAGAIN, so the next `readable()`
            // waits for the kernel; while it is not cleared it answers at once.
            match ready.try_io(|l| socket2::SockRef::from(l.get_ref()).accept()) {
                Ok(Ok((conn, _))) => {
                    self.accept_backoff.ok();
                    self.backlog.push_back(conn.into());
                    self.backlog_at.push_back(now);
                }
                Ok(Err(e)) => {
                    let f = self.accept_backoff.failed(&e);
                    if let Some(failed) = f.log {
                        if f.pause.is_zero() {
                            tracing::warn!(failed, "accept: {e}");
                        } else {
                            tracing::warn!(
                                failed,
                                pause_ms = f.pause.as_millis() as u64,
                                "accept: {e}; pausing accepts"
                            );
                        }
                    }
                    if self.accept_backoff.paused() {
                        break;
                    }
                }
                Err(_would_block) => break,
            }
        }
        self.flush_backlog();
    }

    /// Hands queued connections out while some ready worker has room. A worker that said it
    /// takes batches (`wire::BATCHES`: brood's `Worker`) gets
    /// its share of the queue (the queue over the workers that can take some, at most
    /// `HANDOFF_BATCH` and what its window has room for) in one `sendmsg`: one byte per
    /// connection, the fds in the same order, one buffer for the kernel, one read and one
    /// wake-up for the worker. The strategy picks the worker of each batch as it would
    /// pick one per connection.
    pub(super) fn flush_backlog(&mut self) {
        // A Node worker gets Node's handle message (one line, one kernel buffer: a
        // non-blocking send takes all of it or none), and no other until it acknowledges.
        let node = self.cfg.worker_protocol == WorkerProtocol::Node;
        if self.backlog.is_empty() {
            return;
        }
        let now = Instant::now();
        // Kept until read: brood workers' reads are measured with SIOCOUTQ; a Node
        // worker's connection waits for its ACK instead (`node_in_flight`).
        let sizes = if node { None } else { inflight::sizes() };
        // (Only a worker that could not take its batch is remembered: the usual handoff
        // allocates nothing.)
        let mut tried = Vec::new();
        while !self.backlog.is_empty() {
            let Some(id) = self.pick(&tried) else {
                return;
            };
            let takers = if node { 1 } else { self.takers(&tried) };
            let w = self.workers.get_mut(&id).expect("picked");
            if w.inflight.len() >= WINDOW {
                // Let go of what it has read; a worker with a window of unread sends
                // waits (its channel is about full anyway).
                read_up_to_now(w);
                if w.inflight.len() >= WINDOW {
                    tried.push(id);
                    continue;
                }
            }
            let Some(chan) = &w.chan else {
                tried.push(id);
                continue;
            };
            let n = if node || !w.batches {
                1
            } else {
                self.backlog
                    .len()
                    .div_ceil(takers.max(1))
                    .min(WINDOW - w.inflight.len())
                    .min(HANDOFF_BATCH)
            };
            let mut fds = [0 as RawFd; HANDOFF_BATCH];
            for (fd, conn) in fds.iter_mut().zip(self.backlog.iter().take(n)) {
                *fd = conn.as_raw_fd();
            }
            let payload: &[u8] = if node {
                crate::ipc::NODE_CONNECTION
            } else {
                &[wire::CONN; HANDOFF_BATCH][..n]
            };
            match try_send(chan, payload, &fds[..n]) {
                Sent::Yes => {}
                Sent::Full => {
                    w.full = true;
                    notify_writable(id, chan.clone(), self.events_tx.clone());
                    tried.push(id);
                    continue;
                }
                Sent::Broken => {
                    w.chan = None;
                    tried.push(id);
                    continue;
                }
            }
            w.handled += n as u64;
            for i in 0..n {
                let conn = self.backlog.pop_front().expect("sent");
                let accepted = self.backlog_at.pop_front();
                if let (Some(m), Some(t)) = (&self.metrics, accepted) {
                    m.handed(t.elapsed());
                }
                if node {
                    w.node_in_flight = Some(node::InFlight {
                        conn,
                        tries: 0,
                        at: now,
                    });
                    continue;
                }
                w.open += 1;
                // The master keeps its copy until the worker has read the connection (the
                // worker has its own); where that cannot be told, it closes at once. The
                // kernel charges the batch as one buffer: its size goes with its last
                // connection (`Inflight::read_up_to` then lets the batch go at once).
                if let Some(sizes) = sizes {
                    let size = if i + 1 == n { sizes.with_fds(n) } else { 0 };
                    w.inflight.push(Some(conn), size, now);
                }
            }
        }
    }

    /// A Node worker answered the connection in flight: acknowledged (the master's copy
    /// closes, the next may go), or not received (`NACK`: sent again, as Node does, up to
    /// three times; a worker no longer sent to, retiring or being killed, gives it back
    /// for another worker).
    pub(super) fn node_answer(&mut self, id: u64, ack: bool) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        let Some(f) = &mut w.node_in_flight else {
            return;
        };
        if !ack && f.tries < node::MAX_RETRANSMISSIONS {
            f.tries += 1;
            if let Some(chan) = &w.chan
                && let Sent::Yes =
                    try_send(chan, crate::ipc::NODE_CONNECTION, &[f.conn.as_raw_fd()])
            {
                f.at = Instant::now();
                return;
            }
        }
        let f = w.node_in_flight.take().expect("in flight");
        if !ack {
            if w.chan.is_none() {
                self.backlog.push_front(f.conn);
                self.backlog_at.push_front(f.at);
            } else {
                tracing::warn!(
                    pid = w.pid,
                    id,
                    "the worker could not take a connection (NODE_HANDLE_NACK); closed"
                );
            }
        }
        self.flush_backlog();
    }

    /// A Node worker is gone with a connection it never acknowledged (its task read every
    /// line the worker wrote before reporting the exit, so this one was never taken: Node
    /// acknowledges a handle before the program sees it): it goes to the front of the
    /// queue for another worker.
    pub(super) fn node_give_back(&mut self, pid: u32, id: u64, f: node::InFlight) {
        tracing::warn!(
            pid,
            id,
            "the connection the worker never acknowledged goes to another worker"
        );
        self.backlog.push_front(f.conn);
        self.backlog_at.push_front(f.at);
    }

    /// Whether worker `id` can be picked: ready, its channel open and with room, not stuck,
    /// no Node connection in flight, not tried yet.
    fn can_take(id: u64, w: &WorkerSlot, tried: &[u64]) -> bool {
        w.state == State::Ready
            && w.chan.is_some()
            && !w.full
            && !w.stuck
            && w.node_in_flight.is_none()
            && !tried.contains(&id)
    }

    /// How many workers [`pick`](Master::pick) may choose from.
    fn takers(&self, tried: &[u64]) -> usize {
        self.workers
            .iter()
            .filter(|(id, w)| Self::can_take(**id, w, tried))
            .count()
    }

    /// The next worker by the strategy, among ready ones with room not yet tried.
    fn pick(&mut self, tried: &[u64]) -> Option<u64> {
        let ready = self
            .workers
            .iter()
            .filter(|(id, w)| Self::can_take(**id, w, tried));
        match self.cfg.strategy {
            Strategy::LeastConnections => ready
                .min_by_key(|(id, w)| (w.open, w.handled, **id))
                .map(|(id, _)| *id),
            _ => {
                let mut first = None;
                let mut next = None;
                for (id, _) in ready {
                    first.get_or_insert(*id);
                    if *id > self.rr {
                        next = Some(*id);
                        break;
                    }
                }
                let id = next.or(first)?;
                self.rr = id;
                Some(id)
            }
        }
    }

    /// Pings brood-aware workers and kills the ones silent for too long. A worker whose
    /// channel is full gets no ping (it is not reading): its silence grows.
    pub(super) fn heartbeat(&mut self) {
        let t = self.cfg.timings;
        let mut silent = Vec::new();
        for (id, w) in &mut self.workers {
            if !w.aware || w.state != State::Ready || w.reclaiming {
                continue;
            }
            if w.last_pong.elapsed() > t.heartbeat_timeout {
                tracing::warn!(pid = w.pid, id, "worker missed its heartbeats; killing it");
                w.missed_heartbeat = true;
                w.last_pong = Instant::now(); // once per timeout, not every tick
                silent.push(*id);
                continue;
            }
            if w.inflight.len() >= WINDOW {
                read_up_to_now(w);
            }
            if let Some(chan) = &w.chan {
                match try_send(chan, &[wire::PING], &[]) {
                    Sent::Yes => {
                        if let Some(sizes) = inflight::sizes() {
                            w.inflight.push(None, sizes.plain, Instant::now());
                        }
                    }
                    Sent::Full => {}
                    Sent::Broken => w.chan = None,
                }
            }
        }
        for id in silent {
            self.kill_and_reclaim(id);
        }
    }

    /// Kills a worker the master gives up on (silent, stuck, or past its stop signal),
    /// taking back the connections it never read: its task stops it, counts, kills it
    /// and reports `Event::Reclaimed` (`stuck.rs`). Nothing more is sent to it.
    pub(super) fn kill_and_reclaim(&mut self, id: u64) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if w.reclaiming {
            return;
        }
        w.reclaiming = true;
        w.stuck = true;
        w.chan = None;
        let order = if w.inflight.len() > 0 {
            Order::Reclaim
        } else {
            Order::Signal(crate::Signum::KILL)
        };
        let _ = w.kill.send(order);
    }
}

/// Lets go of the sends the kernel says `w` has read.
pub(super) fn read_up_to_now(w: &mut WorkerSlot) {
    if let Some(sock) = &w.sock {
        if let Ok(unread) = inflight::unread_bytes(sock.as_raw_fd()) {
            w.inflight.read_up_to(unread, Instant::now());
        }
    }
}

/// Reports `Event::Writable(id)` once the channel has room again.
fn notify_writable(id: u64, chan: Arc<UnixStream>, events: tokio::sync::mpsc::Sender<Event>) {
    tokio::spawn(async move {
        if chan.writable().await.is_ok() {
            let _ = events.send(Event::Writable(id)).await;
        }
    });
}
