//! What the parts of a cluster master say to each other, and the environment a master
//! hands a new master: plain types with no behaviour but the pure reading of a worker's
//! bytes ([`Report::add`]). Every other module of the cluster may use these; they use none.

use tokio::sync::oneshot;

use super::wire;
use crate::{Exit, Signum};

/// What the workers' tasks, the control socket and an upgrade's new master report to the
/// master's task.
pub(crate) enum Event {
    Report(u64, Report),
    /// A worker's channel has room again after a send found it full.
    Writable(u64),
    Exited(u64, Exit),
    Control(Request, oneshot::Sender<String>),
    /// The new master of a hot upgrade is ready, or failed.
    Upgrade(Outcome),
    /// A worker being killed was stopped, then found with this many bytes of the
    /// master's sends unread (`inflight.rs`), then sent `SIGKILL`.
    Reclaimed(u64, usize),
    /// One of the master's signals came (`signals.rs`).
    Signal(Signum),
}

/// What the master asks of a worker's task (`watch.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// Send this signal.
    Signal(Signum),
    /// Kill it, telling the master first what it never read: `SIGSTOP`, wait until it is
    /// stopped, count its unread bytes, `SIGKILL`, report `Event::Reclaimed`.
    Reclaim,
}

/// A command from `brood ctl` (parsed by `control.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    Status,
    StatusJson,
    Reload,
    Scale(usize),
    /// Send a signal to one of the master's workers (by pid).
    Kill(u32, Signum),
    /// Graceful shutdown, as `SIGTERM`.
    Stop,
    /// Hot upgrade of the master, as `SIGUSR2`.
    Upgrade,
}

/// What became of the new master of a hot upgrade.
pub(crate) enum Outcome {
    Ready(u32),
    Failed(String),
}

/// Where connections come from.
#[derive(Debug)]
pub(crate) enum Source {
    /// The master accepts (round-robin, least-connections).
    Accept(std::net::TcpListener),
    /// Workers share this listener.
    Shared(std::net::TcpListener),
    /// Shut down: no listening socket left in the master.
    Closed,
    /// Workers get their own socket in the group this anchor holds.
    ReusePort {
        /// Held, never used: it keeps the port while workers come and go.
        _anchor: socket2::Socket,
    },
}

/// In a new master: the fd of its channel to the old master.
pub(crate) const UPGRADE_FD_ENV: &str = "BROOD_UPGRADE_FD";
/// In a new master: the fd of the inherited control socket.
pub(crate) const CONTROL_FD_ENV: &str = "BROOD_CONTROL_FD";
/// In a new master of a reuseport cluster: the address its workers' sockets bind.
pub(crate) const LISTEN_ENV: &str = "BROOD_UPGRADE_LISTEN";
/// The environment variable that numbers the master generations of a hot upgrade: 1 for
/// the first master, one more for each master started by an upgrade.
pub(crate) const GENERATION_ENV: &str = "BROOD_MASTER_GENERATION";

/// What a worker said in one read of its channel.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Report {
    pub ready: bool,
    /// The worker takes several connections per message (`wire::BATCHES`).
    pub batches: bool,
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
    /// A Node worker acknowledged the connection in flight (`NODE_HANDLE_ACK`).
    pub ack: bool,
    /// A Node worker did not get the fd of the connection in flight (`NODE_HANDLE_NACK`).
    pub nack: bool,
}

impl Report {
    /// Adds the bytes of one read (pure: the worker protocol's reading, as fuzzed).
    pub(crate) fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match b {
                wire::READY => self.ready = true,
                wire::BATCHES => self.batches = true,
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

    /// Whether the read said nothing the master counts.
    pub(crate) fn is_empty(&self) -> bool {
        !self.ready && !self.pong && self.done == 0 && self.accepted == 0 && !self.ack && !self.nack
    }

    /// The master's open count of a worker after this read's report.
    pub(crate) fn apply(&self, open: u64) -> u64 {
        open.saturating_sub(u64::from(self.done)) + u64::from(self.opened)
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
            open = r.apply(open);
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
