//! One task per worker: owns its `Child` and the reading side of its channel, and reports
//! to the master. What the worker says is summed up per read (one event per read, never one
//! per byte), the events queue is bounded (a flooding worker waits for the master, so the
//! master's memory stays flat), fds a worker attaches to its messages are closed at once,
//! and reading is paced (`READS_PER_WINDOW`): a worker that floods its channel fills its
//! own socket and waits, and the master's CPU stays low. The task also carries out the
//! master's orders: a signal, or the stop–count–kill of a worker the master gives up on.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::inflight::unread_bytes;
use super::proto::{Event, Order, Report};
use super::{Every, node};
use crate::ipc::Channel;
use crate::{Exit, Signum};

/// After an error, reading that worker pauses this long (a worker that floods errors is
/// slowed down, never a spin); errors are logged at most once a second.
const ERROR_PAUSE: Duration = Duration::from_millis(5);

/// Reading a worker's channel is paced: at most `READS_PER_WINDOW` reads per `WINDOW`
/// (2,000 a second of up to 4 KiB: reports of millions of connections a second, which
/// batch into fewer, larger reads when the master reads less often), each `FDS_PER_READ`
/// fds a worker attached counting as one more read.
const WINDOW: Duration = Duration::from_millis(100);
const READS_PER_WINDOW: u32 = 200;
const FDS_PER_READ: u32 = 8;
/// A Node worker's lines (an ACK per connection) are read from a buffer: this many count
/// as one read.
const NODE_LINES_PER_READ: u32 = 8;

/// How long a worker being killed may take to stop (`SIGSTOP`) before it is killed without
/// taking anything back from it.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// The task of worker `id`: `sock` is the master's own end of the channel (to count what
/// the worker has not read when it is killed).
pub(super) async fn watch_worker(
    id: u64,
    mut child: crate::Child,
    mut channel: Option<Channel>,
    sock: Option<Arc<UnixStream>>,
    node: bool,
    mut orders: mpsc::UnboundedReceiver<Order>,
    events: mpsc::Sender<Event>,
) {
    let mut buf = [0u8; 4096];
    let mut errors = Every::default();
    let mut flood = Every::default();
    let mut node_lines = 0u32;
    // The current pacing window: its end and what was spent in it.
    let (mut window_end, mut spent) = (Instant::now() + WINDOW, 0u32);
    if let Some(ch) = &mut channel {
        // A worker never sends handles: take as many as the kernel allows, so none is an
        // error, and close them (below).
        ch.set_max_handles(usize::MAX);
        ch.set_max_message(node::MAX_LINE);
    }
    loop {
        tokio::select! {
            exit = child.wait() => {
                let exit = exit.unwrap_or(Exit { status: -1, signal: 0 });
                if node && let Some(ch) = &mut channel {
                    // Every line the worker wrote is in its channel by now: the master
                    // hears an ACK written just before the exit before the exit, so a
                    // connection the worker took is never handed again.
                    if read_last_lines(id, ch, &events).await.is_err() {
                        return;
                    }
                }
                let _ = events.send(Event::Exited(id, exit)).await;
                return;
            }
            _ = tokio::time::sleep_until(window_end), if spent >= READS_PER_WINDOW => {
                (window_end, spent) = (Instant::now() + WINDOW, 0);
            }
            r = async {
                let ch = channel.as_mut().unwrap();
                if node {
                    // One line each; reading is buffered, so several lines cost one
                    // kernel read: they are paced as `NODE_LINES_PER_READ` to one read.
                    return node::read(ch).await.map(|r| (r, 0));
                }
                let r = ch.recv(&mut buf).await;
                let mut fds = 0;
                while ch.accept_handle().is_some() {
                    fds += 1; // dropped: closed
                }
                r.map(|n| {
                    let report = (n > 0).then(|| {
                        let mut report = Report::default();
                        report.add(&buf[..n]);
                        report
                    });
                    (report, fds)
                })
            }, if channel.is_some() && spent < READS_PER_WINDOW => {
                if Instant::now() >= window_end {
                    (window_end, spent) = (Instant::now() + WINDOW, 0);
                }
                if node {
                    node_lines += 1;
                    if node_lines % NODE_LINES_PER_READ == 0 {
                        spent += 1;
                    }
                } else {
                    let fds = r.as_ref().map_or(0, |(_, fds)| *fds);
                    spent += 1 + fds / FDS_PER_READ;
                }
                if spent >= READS_PER_WINDOW {
                    if let Some(n) = flood.hit() {
                        tracing::warn!(id, windows = n, "worker floods its channel: reading it is paced");
                    }
                }
                match r {
                    Ok((None, _)) => channel = None, // the worker closed it; its exit follows
                    Ok((Some(report), _)) => {
                        if !report.is_empty() && events.send(Event::Report(id, report)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) if node && e.name() == "EMSGSIZE" => {
                        // A line over the limit is dropped as it arrives (bounded memory),
                        // and the lines after it are read as usual.
                        if let Some(n) = errors.hit() {
                            tracing::warn!(id, errors = n, "worker channel: {e}");
                        }
                    }
                    Err(e) => {
                        if let Some(n) = errors.hit() {
                            tracing::warn!(id, errors = n, "worker channel: {e}");
                        }
                        tokio::time::sleep(ERROR_PAUSE).await;
                    }
                }
            }
            Some(order) = orders.recv() => match order {
                Order::Signal(sig) => {
                    let _ = child.kill(sig);
                }
                Order::Reclaim => {
                    let unread = stop_and_count(&mut child, sock.as_deref()).await;
                    let _ = child.kill(Signum::KILL);
                    if events.send(Event::Reclaimed(id, unread)).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
}

/// The most a Node worker's last lines are read for after its exit (its channel ends at
/// once unless a process it started holds it).
const LAST_LINES_WAIT: Duration = Duration::from_secs(1);

/// Reads what a Node worker that exited left in its channel, up to its end (bounded by
/// `LAST_LINES_WAIT`), and reports it. `Err` when the master is gone.
async fn read_last_lines(
    id: u64,
    ch: &mut Channel,
    events: &mpsc::Sender<Event>,
) -> Result<(), ()> {
    let deadline = Instant::now() + LAST_LINES_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, node::read(ch)).await {
            Ok(Ok(Some(report))) => {
                if !report.is_empty() && events.send(Event::Report(id, report)).await.is_err() {
                    return Err(());
                }
            }
            Ok(Err(e)) if matches!(e.name(), "EMSGSIZE" | "EINVAL" | "EMFILE") => {}
            _ => return Ok(()),
        }
    }
}

/// Stops the worker (`SIGSTOP`) and, once every thread of it is stopped (so it cannot read
/// any more), the bytes of the master's sends it has not read; 0 (nothing is taken back)
/// when that cannot be known: it ended, or did not stop within `STOP_WAIT`.
async fn stop_and_count(child: &mut crate::Child, sock: Option<&UnixStream>) -> usize {
    let (Some(pid), Some(sock)) = (child.id(), sock) else {
        return 0;
    };
    if child.kill(Signum::STOP).is_err() {
        return 0;
    }
    let deadline = Instant::now() + STOP_WAIT;
    loop {
        match stopped(pid) {
            Some(true) => return unread_bytes(sock.as_raw_fd()).unwrap_or(0),
            Some(false) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            _ => return 0,
        }
    }
}

/// Whether every thread of `pid` is stopped (`T`, or `t` under a tracer) or gone (`Z`,
/// `X`); `None` when the process cannot be looked at (it was reaped).
fn stopped(pid: u32) -> Option<bool> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in tasks {
        let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
        // The state follows the command name, which is in parentheses and may hold any
        // byte, so it is found after the last `)`.
        let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
        if !matches!(state, 'T' | 't' | 'Z' | 'X') {
            return Some(false);
        }
    }
    Some(true)
}
