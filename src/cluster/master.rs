//! The master: starts workers, hands out connections, watches, respawns, reloads, stops.
//!
//! Everything happens in one task (`Master::run`) that owns all state; each worker has a
//! small task (`watch.rs`) that owns its `Child` and the reading side of its channel and
//! reports events. So no state is shared and no lock is taken. The master's task never
//! awaits anything of one worker: connections and pings go out with non-blocking sends
//! (`handoff.rs`), so a stuck worker cannot stall accepting, heartbeats or `ctl`.
//! Starting, retiring, reloading and respawning workers is in `lifecycle.rs`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::builder::Cluster;
use super::control::Request;
use super::handoff::AcceptBackoff;
use super::policy::{Lineage, Policy};
use super::watch::Report;
use crate::error::Result;
use crate::signal::Signal;
use crate::{Exit, Signum};

/// What the workers' tasks and the control socket report to the master.
pub(crate) enum Event {
    Report(u64, Report),
    /// A worker's channel has room again after a send found it full.
    Writable(u64),
    Exited(u64, Exit),
    Control(Request, oneshot::Sender<String>),
    /// The new master of a hot upgrade is ready, or failed.
    Upgrade(super::upgrade::Outcome),
}

/// How many events may wait for the master: a worker's task that finds the queue full
/// waits, and so stops reading its worker.
pub(super) const EVENTS_MAX: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    Starting,
    Ready,
    Retiring,
}

/// The steps of retiring after the channel was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Waiting for the worker to finish and exit (`--grace`); then the stop signal.
    Grace,
    /// The stop signal was sent; then `SIGKILL`.
    Stop,
}

pub(super) struct WorkerSlot {
    pub pid: u32,
    pub state: State,
    /// The master's end of the channel, for non-blocking sends; `None` once retired.
    pub chan: Option<Arc<UnixStream>>,
    pub kill: mpsc::UnboundedSender<Signum>,
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
    pub retire: Option<(Instant, Step)>,
    /// Stopped because it missed its ready deadline.
    pub not_ready: bool,
    /// Killed for missing its heartbeats.
    pub missed_heartbeat: bool,
    /// What the metrics were last told (`metrics.rs`).
    pub handled_reported: u64,
    pub miss_reported: bool,
}

/// A slot with no worker: its worker failed too often (`--max-restarts`), or exited and
/// the restart policy says not to restart it.
pub(super) struct Stopped {
    pub pid: u32,
    pub failed: bool,
    pub restarts: u32,
    pub exit: Exit,
}

/// A rolling restart's current step: `new` replaces `old` once it is ready.
#[derive(Clone, Copy, Debug)]
pub(super) struct Reloading {
    /// `None` when the old worker died meanwhile: `new` then just fills its slot.
    pub old: Option<u64>,
    pub new: u64,
}

pub(super) struct Master {
    pub cluster: Cluster,
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
    pub upgrade: Option<super::upgrade::Pending>,
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

impl Master {
    /// The master's state for `cluster`, with its first workers started.
    pub(super) fn start(cluster: Cluster, events_tx: mpsc::Sender<Event>) -> Result<Master> {
        let t = cluster.cfg.timings;
        let mut m = Master {
            target: cluster.workers,
            expect_ready: cluster
                .cfg
                .expect_ready
                .unwrap_or(cluster.cfg.program.is_none()),
            policy: Policy {
                restart: cluster.cfg.restart,
                max_restarts: cluster.cfg.max_restarts,
                backoff_min: t.backoff_min,
                backoff_max: t.backoff_max,
                healthy_after: t.healthy_after,
            },
            cluster,
            workers: BTreeMap::new(),
            next_id: 1,
            rr: 0,
            events_tx,
            backlog: VecDeque::new(),
            backlog_at: VecDeque::new(),
            backlog_max: super::handoff::backlog_max(),
            respawns: Vec::new(),
            stopped: Vec::new(),
            reload: VecDeque::new(),
            reloading: None,
            reload_waiters: Vec::new(),
            reloaded: 0,
            shutting_down: None,
            accept_backoff: AcceptBackoff::default(),
            systemd: super::notify::Systemd::from_env(),
            started: Instant::now(),
            started_at: std::time::SystemTime::now(),
            generation: super::status::generation(),
            stop_requested: None,
            metrics: None,
            upgrade_requested: Vec::new(),
            upgrade: None,
            upgrade_parent: super::upgrade::inherited(super::upgrade::UPGRADE_FD_ENV),
            control_task: None,
            control_fd: None,
            handed_over: false,
            program_on_disk: std::env::current_exe().ok().map(Into::into),
        };
        m.metrics = m.cluster.cfg.metrics.clone();
        tracing::info!(
            addr = %m.cluster.local_addr,
            workers = m.target,
            strategy = %m.cluster.cfg.strategy,
            "cluster master started"
        );
        for _ in 0..m.target {
            m.spawn_worker(Lineage::default())?;
        }
        Ok(m)
    }

    pub(super) async fn run(
        &mut self,
        accept: Option<TcpListener>,
        mut events: mpsc::Receiver<Event>,
    ) -> Result<()> {
        // brood's own watchers: once the graceful shutdown starts they stop, the default
        // action comes back, and a second SIGINT/SIGTERM ends the master at once (the
        // workers follow through PR_SET_PDEATHSIG).
        let (mut term, mut int, mut hup) = (
            Signal::new(Signum::TERM)?,
            Signal::new(Signum::INT)?,
            Signal::new(Signum::HUP)?,
        );
        let (mut ttin, mut ttou) = (Signal::new(Signum::TTIN)?, Signal::new(Signum::TTOU)?);
        let mut accept = match accept {
            Some(l) => {
                Some(super::handoff::listener(l).map_err(|e| crate::error::from_io(e, "listen"))?)
            }
            None => None,
        };
        let mut usr2 = Signal::new(Signum::USR2)?;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_ping = Instant::now();
        loop {
            // A new master of an upgrade accepts only once its workers are ready (the old
            // one accepts meanwhile).
            let can_accept = accept.is_some()
                && self.upgrade_parent.is_none()
                && self.backlog.len() < self.backlog_max
                && !self.accept_backoff.paused();
            tokio::select! {
                Ok(ready) = async { accept.as_ref().unwrap().readable().await }, if can_accept => {
                    self.accept_ready(ready);
                }
                Some(ev) = events.recv() => self.on_event(ev),
                Some(s) = term.recv(), if term.is_active() => {
                    accept = None;
                    term.stop();
                    int.stop();
                    self.shutdown(&s.to_string());
                }
                Some(s) = int.recv(), if int.is_active() => {
                    accept = None;
                    term.stop();
                    int.stop();
                    self.shutdown(&s.to_string());
                }
                Some(_) = usr2.recv() => {
                    self.start_upgrade(accept.as_ref(), None);
                }
                Some(_) = hup.recv() => {
                    self.start_reload(None);
                }
                Some(_) = ttin.recv() => {
                    if let Err(e) = self.scale(self.target + 1) {
                        tracing::warn!("SIGTTIN: {e}");
                    }
                }
                Some(_) = ttou.recv() => {
                    let _ = self.scale(self.target.saturating_sub(1).max(1));
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    if now.duration_since(last_ping) >= self.cluster.cfg.timings.heartbeat {
                        last_ping = now;
                        self.heartbeat();
                    }
                    self.housekeeping();
                    self.sync_metrics();
                    self.report_ready_to_old_master();
                }
            }
            self.notify_systemd();
            for waiter in std::mem::take(&mut self.upgrade_requested) {
                self.start_upgrade(accept.as_ref(), Some(waiter));
            }
            if let Some(why) = self.stop_requested.take() {
                accept = None;
                term.stop();
                int.stop();
                self.shutdown(why);
            }
            if self.shutting_down.is_some() && self.workers.is_empty() {
                tracing::info!("all workers gone; master exits");
                return Ok(());
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Report(id, r) => {
                let Some(w) = self.workers.get_mut(&id) else {
                    return;
                };
                if r.ready {
                    w.aware = true;
                    w.last_pong = Instant::now();
                    if w.state == State::Starting {
                        w.state = State::Ready;
                        w.ready_at = Some(Instant::now());
                        w.ready_by = None;
                        w.settle_at = None;
                        tracing::info!(pid = w.pid, id, "worker ready");
                    }
                }
                if r.pong {
                    w.last_pong = Instant::now();
                }
                w.open = w.open.saturating_sub(u64::from(r.done)) + u64::from(r.opened);
                w.handled += u64::from(r.accepted);
                if r.ready {
                    self.advance_reload();
                    self.flush_backlog();
                }
            }
            Event::Writable(id) => {
                if let Some(w) = self.workers.get_mut(&id) {
                    w.full = false;
                }
                self.flush_backlog();
            }
            Event::Exited(id, exit) => self.on_exit(id, exit),
            Event::Control(req, reply) => self.control(req, reply),
            Event::Upgrade(outcome) => self.on_upgrade(outcome),
        }
    }

    fn control(&mut self, req: Request, reply: oneshot::Sender<String>) {
        let answer = match req {
            Request::Status => self.status_text(),
            Request::StatusJson => self.status_json(),
            Request::Kill(pid, sig) => match self.workers.values().find(|w| w.pid == pid) {
                Some(w) => {
                    tracing::info!(pid, "ctl kill: sending {sig}");
                    let _ = w.kill.send(sig);
                    format!("sent {sig} to worker {pid}\n")
                }
                None => format!("error: {pid} is not a worker of this master\n"),
            },
            Request::Upgrade => {
                // Answered when the new master is ready or failed (`on_upgrade`).
                self.upgrade_requested.push(reply);
                return;
            }
            Request::Stop => {
                self.stop_requested = Some("ctl stop");
                format!("stopping: retiring {} workers\n", self.workers.len())
            }
            Request::Reload => {
                if self.shutting_down.is_some() {
                    "error: the master is shutting down\n".into()
                } else {
                    // Answered when the rolling restart ends (see `finish_reload`).
                    self.start_reload(Some(reply));
                    return;
                }
            }
            Request::Scale(n) => match self.scale(n) {
                Ok(()) => format!("scaling to {n} workers\n"),
                Err(e) => format!("error: {e}\n"),
            },
        };
        let _ = reply.send(answer);
    }
}
