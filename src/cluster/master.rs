//! The master: starts workers, hands out connections, watches, respawns, reloads, stops.
//!
//! Everything happens in one task (`Master::run`) that owns all state (`state.rs`); each worker has a
//! small task (`watch.rs`) that owns its `Child` and the reading side of its channel and
//! reports events. So no state is shared and no lock is taken. The master's task never
//! awaits anything of one worker: connections and pings go out with non-blocking sends
//! (`handoff.rs`), so a stuck worker cannot stall accepting, heartbeats or `ctl`.
//! Starting, retiring, reloading and respawning workers is in `lifecycle.rs`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::WorkerProtocol;
use super::config::Config;
use super::policy::{Lineage, Policy};
use super::proto::{Event, Request, Source};
use super::state::{Master, State};
use crate::Signum;
use crate::accept_backoff::AcceptBackoff;
use crate::error::Result;

impl Master {
    /// The master's state for `cfg`, with its first workers started.
    pub(super) fn start(
        cfg: Config,
        source: Source,
        events_tx: mpsc::Sender<Event>,
    ) -> Result<Master> {
        let t = cfg.timings;
        let mut m = Master {
            target: cfg.workers,
            expect_ready: cfg.expect_ready.unwrap_or(cfg.program.is_none()),
            policy: Policy {
                restart: cfg.restart,
                max_restarts: cfg.max_restarts,
                backoff_min: t.backoff_min,
                backoff_max: t.backoff_max,
                healthy_after: t.healthy_after,
            },
            metrics: cfg.metrics.clone(),
            cfg,
            source,
            workers: BTreeMap::new(),
            next_id: 1,
            rr: 0,
            events_tx,
            backlog: VecDeque::new(),
            backlog_at: VecDeque::new(),
            backlog_max: super::handoff::backlog_max(),
            respawns: Vec::new(),
            hinted: false,
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
            upgrade_requested: Vec::new(),
            upgrade: None,
            upgrade_parent: super::upgrade::inherited(super::proto::UPGRADE_FD_ENV),
            control_task: None,
            control_fd: None,
            handed_over: false,
            program_on_disk: std::env::current_exe().ok().map(Into::into),
        };
        tracing::info!(
            addr = %m.cfg.local_addr,
            workers = m.target,
            strategy = %m.cfg.strategy,
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
        // brood's own watchers, in a task of their own (`signals.rs`): once the graceful
        // shutdown starts SIGTERM and SIGINT are stopped, the default action comes back, and
        // a second one ends the master at once (the workers follow through
        // PR_SET_PDEATHSIG).
        let mut stop_term_int = super::signals::watch(self.events_tx.clone())?;
        let mut accept = match accept {
            Some(l) => {
                Some(super::handoff::listener(l).map_err(|e| crate::error::from_io(e, "listen"))?)
            }
            None => None,
        };
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
                Some(ev) = events.recv() => match ev {
                    Event::Signal(s @ (Signum::TERM | Signum::INT)) => {
                        accept = None;
                        self.shutdown(&s.to_string());
                    }
                    Event::Signal(Signum::USR2) => self.start_upgrade(accept.as_ref(), None),
                    Event::Signal(Signum::HUP) => self.start_reload(None),
                    Event::Signal(Signum::TTIN) => {
                        if let Err(e) = self.scale(self.target + 1) {
                            tracing::warn!("SIGTTIN: {e}");
                        }
                    }
                    Event::Signal(Signum::TTOU) => {
                        let _ = self.scale(self.target.saturating_sub(1).max(1));
                    }
                    ev => self.on_event(ev),
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    if now.duration_since(last_ping) >= self.cfg.timings.heartbeat {
                        last_ping = now;
                        self.heartbeat();
                    }
                    self.housekeeping();
                    self.check_unread();
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
                stop_term_int.stop();
                self.shutdown(why);
            }
            if self.shutting_down.is_some() && self.workers.is_empty() {
                tracing::info!("all workers gone; master exits");
                return Ok(());
            }
            if let Some(outcome) = self.every_slot_stopped() {
                // Nobody will serve: stop accepting (the listener goes with `accept`, a
                // shared listener or reuseport anchor with the source) and exit, rather
                // than hold connections no worker takes (gunicorn's "worker failed to
                // boot" halt).
                drop(accept);
                self.source = Source::Closed;
                return outcome;
            }
        }
    }

    /// When the restart policy has given up on every slot (`--restart never` or
    /// `on-failure`, `--max-restarts`): no worker, none to start. Then the master's
    /// outcome: an error when a slot failed or a worker's last exit was not a success, `Ok`
    /// when every worker exited with status 0 under a policy that does not restart that.
    fn every_slot_stopped(&self) -> Option<Result<()>> {
        if self.shutting_down.is_some()
            || !self.workers.is_empty()
            || !self.respawns.is_empty()
            || self.stopped.is_empty()
            || self.stopped.len() < self.target
        {
            return None;
        }
        let failed = self.stopped.iter().filter(|s| s.failed).count();
        let unsuccessful = self
            .stopped
            .iter()
            .filter(|s| !s.failed && !s.exit.success())
            .count();
        if failed + unsuccessful == 0 {
            tracing::info!(
                workers = self.stopped.len(),
                "every worker exited with status 0 and the restart policy does not restart them; master stops accepting and exits"
            );
            return Some(Ok(()));
        }
        let why = format!(
            "no worker left: {failed} slots failed (--max-restarts), {unsuccessful} workers ended unsuccessfully and are not restarted (--restart)"
        );
        tracing::error!("{why}; master stops accepting and exits");
        Some(Err(
            crate::Error::new(libc::ECHILD, "cluster").with_detail(why)
        ))
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Report(id, r) => {
                let Some(w) = self.workers.get_mut(&id) else {
                    return;
                };
                if r.ready {
                    // A Node worker gets no pings (they are not Node's messages).
                    w.aware = self.cfg.worker_protocol != WorkerProtocol::Node;
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
                w.batches |= r.batches;
                w.open = r.apply(w.open);
                w.handled += u64::from(r.accepted);
                if r.ack || r.nack {
                    self.node_answer(id, r.ack);
                }
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
            Event::Reclaimed(id, unread) => self.on_reclaimed(id, unread),
            // (Taken in `run`: only those signals are watched.)
            Event::Signal(_) => {}
        }
    }

    fn control(&mut self, req: Request, reply: oneshot::Sender<String>) {
        let answer = match req {
            Request::Status => self.status_text(),
            Request::StatusJson => self.status_json(),
            Request::Kill(pid, sig) => match self.workers.values().find(|w| w.pid == pid) {
                Some(w) => {
                    tracing::info!(pid, "ctl kill: sending {sig}");
                    let _ = w.kill.send(super::proto::Order::Signal(sig));
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

    /// Tells systemd what changed (`notify.rs`).
    fn notify_systemd(&mut self) {
        let reloading = !self.reload.is_empty() || self.reloading.is_some();
        let stopping = self.shutting_down.is_some();
        let (workers, stopped) = (&self.workers, &self.stopped);
        self.systemd.update(reloading, stopping, self.target, || {
            let ready = workers.values().filter(|w| w.state == State::Ready).count();
            let restarts = workers
                .values()
                .map(|w| u64::from(w.lineage.restarts))
                .chain(stopped.iter().map(|s| u64::from(s.restarts)))
                .sum();
            (ready, restarts)
        });
    }
}
