//! One task per worker: owns its `Child` and the reading side of its channel, and reports
//! to the master. What the worker says is summed up per read (one event per read, never one
//! per byte), the events queue is bounded (a flooding worker waits for the master, so the
//! master's memory stays flat), and fds a worker attaches to its messages are closed at once.

use std::time::Duration;

use tokio::sync::mpsc;

use super::master::Event;
use super::{Every, wire};
use crate::ipc::Channel;
use crate::{Exit, Signum};

/// What a worker said in one read.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Report {
    pub ready: bool,
    pub pong: bool,
    /// `d` bytes that found no `a` earlier in the same read: they close connections the
    /// master already counted (applied to its count, never below zero).
    pub done: u32,
    /// Every `a` byte (connections handled).
    pub accepted: u32,
    /// The `a` bytes still open at the end of the read (those not closed by a later `d` of
    /// the same read): summing per read keeps the protocol's order (`a d` is 0 open, `d a`
    /// is 1).
    pub opened: u32,
}

impl Report {
    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match b {
                wire::READY => self.ready = true,
                wire::PONG => self.pong = true,
                wire::DONE if self.opened > 0 => self.opened -= 1,
                wire::DONE => self.done = self.done.saturating_add(1),
                wire::ACCEPTED => {
                    self.accepted = self.accepted.saturating_add(1);
                    self.opened = self.opened.saturating_add(1);
                }
                _ => {}
            }
        }
    }

    fn is_empty(&self) -> bool {
        !self.ready && !self.pong && self.done == 0 && self.accepted == 0
    }
}

/// After an error, reading that worker pauses this long (a worker that floods errors is
/// slowed down, never a spin); errors are logged at most once a second.
const ERROR_PAUSE: Duration = Duration::from_millis(5);

pub(super) async fn watch_worker(
    id: u64,
    mut child: crate::Child,
    mut channel: Option<Channel>,
    mut kill: mpsc::UnboundedReceiver<Signum>,
    events: mpsc::Sender<Event>,
) {
    let mut buf = [0u8; 4096];
    let mut errors = Every::default();
    if let Some(ch) = &mut channel {
        // A worker never sends handles: take as many as the kernel allows, so none is an
        // error, and close them (below).
        ch.set_max_handles(usize::MAX);
    }
    loop {
        tokio::select! {
            exit = child.wait() => {
                let exit = exit.unwrap_or(Exit { status: -1, signal: 0 });
                let _ = events.send(Event::Exited(id, exit)).await;
                return;
            }
            r = async { channel.as_mut().unwrap().recv(&mut buf).await }, if channel.is_some() => {
                let ch = channel.as_mut().unwrap();
                while ch.accept_handle().is_some() {} // dropped: closed
                match r {
                    Ok(0) => channel = None, // the worker closed it; its exit follows
                    Ok(n) => {
                        let mut report = Report::default();
                        report.add(&buf[..n]);
                        if !report.is_empty() && events.send(Event::Report(id, report)).await.is_err() {
                            return;
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
            Some(sig) = kill.recv() => {
                let _ = child.kill(sig);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Report;

    /// The master's open count after `reads`, as it applies each read's report.
    fn open_after(reads: &[&[u8]]) -> u64 {
        let mut open = 0u64;
        for bytes in reads {
            let mut r = Report::default();
            r.add(bytes);
            open = open.saturating_sub(u64::from(r.done)) + u64::from(r.opened);
        }
        open
    }

    #[test]
    fn a_read_keeps_the_order_of_its_bytes() {
        assert_eq!(open_after(&[b"aad"]), 1);
        assert_eq!(open_after(&[b"ad"]), 0);
        assert_eq!(open_after(&[b"da"]), 1);
        assert_eq!(open_after(&[b"adda"]), 1);
        assert_eq!(open_after(&[b"aa", b"dda"]), 1);
        assert_eq!(open_after(&[b"aaa", b"d", b"xPrd"]), 1);
    }
}
