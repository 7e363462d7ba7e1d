//! The master's state: its workers, its queue of connections, its reload, shutdown and
//! upgrade, owned by the master's one task (`master.rs`). The parts of the master
//! (`handoff.rs`, `lifecycle.rs`, `status.rs`, `upgrade.rs`) each add their methods on it;
//! none of them knows the task that calls them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use super::config::Config;
use super::inflight::Inflight;
use super::policy::{Lineage, Policy};
use super::proto::{Event, Order, Source};
use crate::Exit;
use crate::accept_backoff::AcceptBackoff;

/// How many events may wait for the master: a worker's task that finds the queue full
/// waits, and so stops reading its worker.
pub(crate) const EVENTS_MAX: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Starting,
    Ready,
    Retiring,
}

/// The steps of retiring after the channel was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Waiting for the worker to finish and exit (`--grace`); then the stop signal.
    Grace,
    /// The stop signal was sent; then `SIGKILL`.
    Stop,
}

pub(crate) struct WorkerSlot {
    pub pid: u32,
    pub state: State,
    /// The master's end of the channel, for non-blocking sends; `None` once retired.
    pub chan: Option<Arc<UnixStream>>,
    /// The master's end of the channel, kept after `chan` is gone to count what the
    /// worker has not read (`inflight.rs`).
    pub sock: Option<Arc<UnixStream>>,
    /// Connections and pings sent, not yet known to be read.
    pub inflight: Inflight<std::net::TcpStream>,
    /// It has left something unread (a Node worker: unacknowledged) for a second: no more
    /// connections until it catches up.
    pub stuck: bool,
    /// It has made no progress for a second (read nothing of what it has unread, or not
    /// acknowledged its connection): logged once, and again when it reads.
    pub stalled: bool,
    /// Being killed for not reading (or missing heartbeats): no more sends.
    pub reclaiming: bool,
    pub kill: mpsc::UnboundedSender<Order>,
    pub aware: bool,
    pub started: Instant,
    pub ready_at: Option<Instant>,
    /// Until when a starting worker may take to say it is ready.
    pub ready_by: Option<Instant>,
    /// A reload's replacement that never says when it is ready: ready once it has stayed
    /// up until then (`Timings::reload_settle`).
    pub settle_at: Option<Instant>,
    pub last_pong: Instant,
    pub handled: u64,
    pub open: u64,
    pub lineage: Lineage,
    /// The channel was full at the last send: not picked until it has room.
    pub full: bool,
    /// The worker takes several connections per message (it said `wire::BATCHES`).
    pub batches: bool,
    pub retire: Option<(Instant, Step)>,
    /// Stopped because it missed its ready deadline.
    pub not_ready: bool,
    /// Killed for missing its heartbeats.
    pub missed_heartbeat: bool,
    /// Killed for leaving its channel unread past the stuck timeout.
    pub stuck_killed: bool,
    /// What the metrics were last told (`metrics.rs`).
    pub handled_reported: u64,
    pub miss_reported: bool,
    /// A Node worker (`WorkerProtocol::Node`): the connection sent and not yet
    /// acknowledged, kept to send again on a NACK (with the retransmissions so far); no
    /// other goes to it meanwhile.
    pub node_in_flight: Option<super::node::InFlight>,
}

/// A slot with no worker: its worker failed too often (`--max-restarts`), or exited and
/// the restart policy says not to restart it.
pub(crate) struct Stopped {
    pub pid: u32,
    pub failed: bool,
    pub restarts: u32,
    pub exit: Exit,
}

/// A rolling restart's current step: `new` replaces `old` once it is ready.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reloading {
    /// `None` when the old worker died meanwhile: `new` then just fills its slot.
    pub old: Option<u64>,
    pub new: u64,
}

pub(crate) struct Master {
    pub cfg: Config,
    /// Where connections come from (the master's copy of a shared listener or reuseport
    /// anchor; `Closed` once shutting down).
    pub source: Source,
    pub target: usize,
    pub expect_ready: bool,
    pub policy: Policy,
    pub workers: BTreeMap<u64, WorkerSlot>,
    pub next_id: u64,
    pub rr: u64,
    pub events_tx: mpsc::Sender<Event>,
    /// Accepted connections waiting for a ready worker with room in its channel.
    pub backlog: VecDeque<std::net::TcpStream>,
    /// When each connection of `backlog` was accepted, in the same order (for the handoff
    /// latency metric).
    pub backlog_at: VecDeque<Instant>,
    pub backlog_max: usize,
    /// Respawns due, with the slot's history.
    pub respawns: Vec<(Instant, Lineage)>,
    /// The hint for workers that keep exiting at once was logged (once per master).
    pub hinted: bool,
    pub stopped: Vec<Stopped>,
    /// Old workers still to replace in a rolling restart.
    pub reload: VecDeque<u64>,
    pub reloading: Option<Reloading>,
    /// `ctl reload` callers waiting for the outcome.
    pub reload_waiters: Vec<oneshot::Sender<String>>,
    pub reloaded: usize,
    pub shutting_down: Option<Instant>,
    pub accept_backoff: AcceptBackoff,
    /// `NOTIFY_SOCKET` readiness (`notify.rs`).
    pub systemd: super::notify::Systemd,
    /// When this master started (for `ctl status`), and its upgrade generation.
    pub started: Instant,
    pub started_at: std::time::SystemTime,
    pub generation: u64,
    /// A graceful shutdown asked for by `ctl stop` or a finished upgrade (taken by `run`,
    /// which owns the listener), with the reason.
    pub stop_requested: Option<&'static str>,
    pub metrics: Option<super::Metrics>,
    /// `ctl upgrade` callers (taken by `run`, which owns the listener).
    pub upgrade_requested: Vec<oneshot::Sender<String>>,
    pub upgrade: Option<Pending>,
    /// In a new master started by an upgrade: the channel to tell the old one it is ready.
    pub upgrade_parent: Option<std::os::fd::OwnedFd>,
    /// The control socket's task and a copy of its socket (to hand to a new master).
    pub control_task: Option<tokio::task::JoinHandle<()>>,
    pub control_fd: Option<std::os::fd::OwnedFd>,
    /// A new master took over: the control socket file is its own now.
    pub handed_over: bool,
    /// This program's path when the master started (an upgrade runs what is there now).
    pub program_on_disk: Option<std::ffi::OsString>,
}

/// An upgrade in progress: the new master's pid and the `ctl upgrade` callers waiting.
pub(crate) struct Pending {
    pub pid: u32,
    pub waiters: Vec<oneshot::Sender<String>>,
}

impl Master {
    /// Brings the gauges and the per-worker counters up to date (every tick).
    pub(crate) fn sync_metrics(&mut self) {
        let Some(m) = self.metrics.clone() else {
            return;
        };
        let mut counts = [0i64; 5];
        for (id, w) in &mut self.workers {
            counts[match w.state {
                State::Starting => 0,
                State::Ready => 1,
                State::Retiring => 2,
            }] += 1;
            let new = w.handled - w.handled_reported;
            if new > 0 {
                m.connections(*id, new);
                w.handled_reported = w.handled;
            }
            if w.missed_heartbeat && !w.miss_reported {
                m.heartbeat_missed();
                w.miss_reported = true;
            }
        }
        for s in &self.stopped {
            counts[if s.failed { 3 } else { 4 }] += 1;
        }
        m.set_workers(counts);
        m.set_queue(self.backlog.len());
    }

    /// A worker is gone: its series is dropped, and a missed heartbeat not yet counted is.
    pub(crate) fn metrics_worker_gone(&self, id: u64, w: &WorkerSlot) {
        let Some(m) = &self.metrics else {
            return;
        };
        m.worker_gone(id);
        if w.missed_heartbeat && !w.miss_reported {
            m.heartbeat_missed();
        }
    }

    /// A worker that exited on its own is restarted.
    pub(crate) fn metrics_restarted(&self, w: &WorkerSlot, exit: Exit) {
        if let Some(m) = &self.metrics {
            let killed = if w.not_ready {
                Some("not_ready")
            } else if w.missed_heartbeat {
                Some("heartbeat")
            } else if w.stuck_killed {
                Some("stuck")
            } else {
                None
            };
            m.restarted(exit, killed);
        }
    }

    /// The pid of the new master being started, if any.
    pub(crate) fn upgrading_to(&self) -> Option<u32> {
        self.upgrade.as_ref().map(|p| p.pid)
    }
}
