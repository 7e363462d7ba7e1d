//! A worker's life as the master runs it (the table in `docs/cluster.md`):
//! start → ready → serving → retiring (channel closed, `--grace`, stop signal, `SIGKILL`)
//! → gone; exits on their own go through the restart policy; rolling restarts replace one
//! worker at a time; the count converges to the target whatever dies when.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use super::handoff::CHANNEL_SNDBUF;
use super::policy::{Lineage, Verdict};
use super::proto::{self, Order, Source};
use super::state::{Master, Reloading, State, Step, Stopped, WorkerSlot};
use super::{STRATEGY_ENV, WORKER_ENV, WorkerProtocol, listen, node, output, spawner, watch};
use crate::error::{Error, Result, from_io};
use crate::ipc::Channel;
use crate::{Command, Exit, Signum, Stdio};

/// The master's own end of a worker's channel for its non-blocking sends: a second fd on
/// the same socket, registered with the runtime on its own, with a small send buffer.
fn master_end(channel: &Channel) -> Result<Arc<UnixStream>> {
    let op = "worker channel";
    let fd = channel
        .as_stream()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| from_io(e, op))?;
    let std = std::os::unix::net::UnixStream::from(fd);
    let _ = socket2::SockRef::from(&std).set_send_buffer_size(CHANNEL_SNDBUF);
    std.set_nonblocking(true).map_err(|e| from_io(e, op))?;
    Ok(Arc::new(
        UnixStream::from_std(std).map_err(|e| from_io(e, op))?,
    ))
}

impl Master {
    /// Starts one worker in the slot whose history is `lineage`.
    pub(super) fn spawn_worker(&mut self, lineage: Lineage) -> Result<u64> {
        let cfg = &self.cfg;
        let (program, args) = match &cfg.program {
            Some((p, a)) => (p.clone(), a.clone()),
            None => (
                std::env::current_exe()
                    .map_err(|e| from_io(e, "cluster: find this program"))?
                    .into_os_string(),
                std::env::args_os().skip(1).collect(),
            ),
        };
        // Own process group: a terminal's SIGINT (Ctrl-C) reaches the master only, which
        // then retires the workers gracefully.
        let mut cmd = Command::new(&program);
        cmd.args(&args)
            .env(WORKER_ENV, std::process::id().to_string())
            .env(STRATEGY_ENV, cfg.strategy.name())
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            // systemd talks to the master (`notify.rs`): a worker's own READY=1 must not
            // count for the service.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove(proto::UPGRADE_FD_ENV)
            .env_remove(proto::CONTROL_FD_ENV)
            .env_remove(proto::LISTEN_ENV)
            .env_remove(proto::GENERATION_ENV)
            .process_group(0)
            .parent_death_signal(Signum::KILL)
            .kill_on_drop(true);
        for (k, v) in &cfg.env {
            cmd.env(k, v);
        }
        output::configure(&mut cmd, cfg.worker_output);
        let node = cfg.worker_protocol == WorkerProtocol::Node;
        if node {
            let accepts = matches!(self.source, Source::Accept(_) | Source::Closed);
            node::configure(&mut cmd, if accepts { 3 } else { 4 });
        }
        match &self.source {
            Source::Accept(_) | Source::Closed => {
                cmd.stdio(3, Stdio::ipc());
            }
            Source::Shared(l) => {
                cmd.stdio(3, Stdio::inherit_stream(l))
                    .stdio(4, Stdio::ipc())
                    .env("LISTEN_FDS", "1")
                    .env_pid("LISTEN_PID");
            }
            Source::ReusePort { .. } => {
                let l = listen::reuseport_listener(self.cfg.local_addr)?;
                cmd.stdio(3, Stdio::inherit_stream(&l))
                    .stdio(4, Stdio::ipc())
                    .env("LISTEN_FDS", "1")
                    .env_pid("LISTEN_PID");
            }
        }
        let mut child = spawner::spawn(cmd)?;
        let channel = child.take_channel(3).or_else(|| child.take_channel(4));
        let chan = match &channel {
            Some(c) => Some(master_end(c)?),
            None => None,
        };
        let id = self.next_id;
        self.next_id += 1;
        let pid = child.id().expect("a child not waited for has its pid");
        output::collect(&mut child, id, pid);
        let (kill_tx, kill_rx) = mpsc::unbounded_channel();
        tokio::spawn(watch::watch_worker(
            id,
            child,
            channel,
            chan.clone(),
            node,
            kill_rx,
            self.events_tx.clone(),
        ));
        let now = Instant::now();
        let t = self.cfg.timings;
        self.workers.insert(
            id,
            WorkerSlot {
                pid,
                state: if self.expect_ready {
                    State::Starting
                } else {
                    State::Ready
                },
                sock: chan.clone(),
                chan,
                inflight: Default::default(),
                stuck: false,
                stalled: false,
                reclaiming: false,
                kill: kill_tx,
                aware: false,
                started: now,
                ready_at: (!self.expect_ready).then_some(now),
                ready_by: self.expect_ready.then(|| now + t.ready_timeout),
                settle_at: None,
                last_pong: now,
                handled: 0,
                open: 0,
                lineage,
                full: false,
                batches: false,
                retire: None,
                not_ready: false,
                missed_heartbeat: false,
                stuck_killed: false,
                handled_reported: 0,
                miss_reported: false,
                node_in_flight: None,
            },
        );
        tracing::info!(pid, id, "worker started");
        Ok(id)
    }

    /// Retires a worker: no more connections, its channel closed (the "finish and exit"
    /// signal), and after the grace period the stop signal, then `SIGKILL`.
    pub(super) fn retire(&mut self, id: u64) {
        let grace = self.cfg.timings.grace;
        if let Some(w) = self.workers.get_mut(&id) {
            if w.state == State::Retiring {
                return;
            }
            tracing::info!(pid = w.pid, id, "retiring worker");
            w.state = State::Retiring;
            if let Some(chan) = w.chan.take() {
                // (A Node worker sees 'disconnect'.)
                let _ = socket2::SockRef::from(&*chan).shutdown(std::net::Shutdown::Write);
            }
            // A Node worker's connection in flight was sent before the end of the channel:
            // it reads it first, and acknowledges it, or at its exit it goes to another
            // worker (`node_give_back`).
            w.retire = Some((Instant::now() + grace, Step::Grace));
        }
        self.reload.retain(|x| *x != id);
    }

    pub(super) fn shutdown(&mut self, why: &str) {
        if self.shutting_down.is_some() {
            return;
        }
        tracing::info!("{why}: graceful shutdown");
        self.shutting_down = Some(Instant::now());
        self.control_fd = None;
        // The master's own copy of a shared listener or reuseport anchor goes now.
        self.source = Source::Closed;
        self.respawns.clear();
        let reloading = !self.reload.is_empty() || self.reloading.is_some();
        self.reload.clear();
        self.reloading = None;
        if reloading || !self.reload_waiters.is_empty() {
            self.finish_reload(Some("the master is shutting down"));
        }
        let ids: Vec<u64> = self.workers.keys().copied().collect();
        for id in ids {
            self.retire(id);
        }
    }

    /// Slots counted against the target: workers not retiring (a reload's old and new
    /// worker count as one), respawns due, and stopped slots.
    fn slots(&self) -> usize {
        // A worker stopped for missing its ready deadline holds its slot until it exits.
        let live = self
            .workers
            .values()
            .filter(|w| w.state != State::Retiring || w.not_ready)
            .count();
        let pair = match self.reloading {
            Some(Reloading { old: Some(old), .. })
                if self
                    .workers
                    .get(&old)
                    .is_some_and(|w| w.state != State::Retiring) =>
            {
                1
            }
            _ => 0,
        };
        live - pair + self.respawns.len() + self.stopped.len()
    }

    /// Sets the target count (bounded by `max_workers`); housekeeping converges to it.
    pub(super) fn scale(&mut self, n: usize) -> Result<()> {
        let max = self.cfg.max_workers;
        if n == 0 {
            return Err(Error::invalid("scale", "at least 1 worker"));
        }
        if n > max {
            return Err(Error::invalid(
                format!("scale {n}"),
                format!("at most {max} workers (--max-workers)"),
            ));
        }
        if self.shutting_down.is_some() {
            return Ok(());
        }
        tracing::info!(from = self.target, to = n, "scaling");
        self.target = n;
        self.converge();
        Ok(())
    }

    /// Removes slots above the target: stopped slots, then pending respawns, then old
    /// workers a reload would replace anyway, then the newest others (never a reload's
    /// replacement).
    fn converge(&mut self) {
        while self.slots() > self.target && !self.stopped.is_empty() {
            self.stopped.pop();
        }
        while self.slots() > self.target && !self.respawns.is_empty() {
            self.respawns.pop();
        }
        while self.slots() > self.target {
            let victim = if let Some(old) = self.reload.pop_back() {
                Some(old)
            } else if let Some(Reloading {
                old: Some(old),
                new,
            }) = self.reloading
            {
                // The replacement takes the old one's place and stays.
                self.reloading = Some(Reloading { old: None, new });
                Some(old)
            } else {
                let keep = self.reloading.map(|r| r.new);
                self.workers
                    .iter()
                    .filter(|(id, w)| w.state != State::Retiring && Some(**id) != keep)
                    .map(|(id, _)| *id)
                    .next_back()
            };
            match victim {
                Some(id) => self.retire(id),
                None => break,
            }
        }
    }

    /// Starts a rolling restart; `waiter` (from `ctl reload`) gets the outcome.
    pub(super) fn start_reload(&mut self, waiter: Option<oneshot::Sender<String>>) {
        if self.shutting_down.is_some() {
            if let Some(w) = waiter {
                let _ = w.send("error: the master is shutting down\n".into());
            }
            return;
        }
        // A reload gives failed and exited slots a new start.
        self.stopped.clear();
        self.reload = self
            .workers
            .iter()
            .filter(|(id, w)| {
                w.state != State::Retiring && self.reloading.is_none_or(|r| r.new != **id)
            })
            .map(|(id, _)| *id)
            .collect();
        if let Some(Reloading { old: Some(old), .. }) = self.reloading {
            self.reload.retain(|x| *x != old);
        }
        self.reloaded = 0;
        self.reload_waiters.extend(waiter);
        tracing::info!(workers = self.reload.len(), "rolling restart");
        self.advance_reload();
    }

    /// Moves the rolling restart on: retires the old worker whose replacement is ready,
    /// then starts the next replacement.
    pub(super) fn advance_reload(&mut self) {
        if let Some(Reloading { old, new }) = self.reloading {
            match self.workers.get(&new).map(|w| w.state) {
                Some(State::Ready) => {
                    if let Some(old) = old {
                        self.retire(old);
                    }
                    self.reloaded += 1;
                    self.reloading = None;
                }
                Some(State::Starting) => return,
                _ => {}
            }
        }
        while let Some(old) = self.reload.pop_front() {
            let Some(w) = self.workers.get(&old) else {
                continue;
            };
            if w.state == State::Retiring {
                continue;
            }
            let lineage = w.lineage.clone();
            match self.spawn_worker(lineage) {
                Ok(new) => {
                    self.reloading = Some(Reloading {
                        old: Some(old),
                        new,
                    });
                    let settle = self.cfg.timings.reload_settle;
                    let w = self.workers.get_mut(&new).expect("just started");
                    if w.state == State::Ready {
                        if settle.is_zero() {
                            // Taken as ready at once (`reload_settle(0)`).
                            return self.advance_reload();
                        }
                        // A worker that does not say when it is ready is ready once it
                        // has stayed up a while: a broken deploy that exits at once must
                        // not retire the old workers (housekeeping promotes it).
                        w.state = State::Starting;
                        w.ready_at = None;
                        w.settle_at = Some(Instant::now() + settle);
                    }
                    return;
                }
                Err(e) => {
                    self.reload.clear();
                    return self.finish_reload(Some(&format!("cannot start a worker: {e}")));
                }
            }
        }
        if !self.reload_waiters.is_empty() || self.reloaded > 0 {
            self.finish_reload(None);
        }
    }

    /// Ends a rolling restart, answering `ctl reload`: with an error, the workers not yet
    /// replaced keep serving.
    pub(super) fn finish_reload(&mut self, error: Option<&str>) {
        let answer = match error {
            Some(e) => {
                tracing::error!("reload failed: {e}; the old workers keep serving");
                self.reload.clear();
                format!("error: reload failed: {e}; the old workers keep serving\n")
            }
            None => {
                tracing::info!(workers = self.reloaded, "rolling restart done");
                format!("reloaded {} workers\n", self.reloaded)
            }
        };
        self.reloaded = 0;
        for w in self.reload_waiters.drain(..) {
            let _ = w.send(answer.clone());
        }
    }

    /// A worker's process ended.
    pub(super) fn on_exit(&mut self, id: u64, exit: Exit) {
        let Some(mut w) = self.workers.remove(&id) else {
            return;
        };
        let held = w.node_in_flight.take();
        let pid = w.pid;
        self.exited(id, w, exit);
        if let Some(f) = held {
            self.node_give_back(pid, id, f);
            self.flush_backlog();
        }
    }

    /// Workers of a program that keep exiting within their first second (three in a row)
    /// most often speak another protocol than the master expects: one hint, once.
    fn hint_if_workers_die_at_once(&mut self, lineage: &Lineage, lived: std::time::Duration) {
        if self.hinted || lineage.streak < 3 || lived >= std::time::Duration::from_secs(1) {
            return;
        }
        let Some((program, _)) = &self.cfg.program else {
            return;
        };
        self.hinted = true;
        let program = program.to_string_lossy();
        match self.cfg.worker_protocol {
            WorkerProtocol::Brood => tracing::warn!(
                %program,
                "workers keep exiting within a second of starting: a worker reads its \
                 connections from fd 3 (docs/protocols.md); a Node.js program that \
                 auto-detection missed needs --worker-protocol node"
            ),
            WorkerProtocol::Node => tracing::warn!(
                %program,
                "workers keep exiting within a second of starting: a Node.js worker needs \
                 its NODE_CHANNEL_FD channel; a program that is not Node.js needs \
                 --worker-protocol brood"
            ),
        }
    }

    /// What follows a worker's exit: the log, the reload, the restart policy.
    fn exited(&mut self, id: u64, mut w: WorkerSlot, exit: Exit) {
        w.lineage.last_exit = Some(exit);
        self.metrics_worker_gone(id, &w);
        if w.state == State::Retiring && !w.not_ready {
            tracing::info!(
                pid = w.pid,
                id,
                status = exit.status,
                signal = exit.signal,
                "worker retired"
            );
            return;
        }
        tracing::warn!(
            pid = w.pid,
            id,
            status = exit.status,
            signal = exit.signal,
            "worker exited ({exit})"
        );
        if self.shutting_down.is_some() {
            return;
        }
        if let Some(r) = self.reloading {
            if r.new == id {
                // The replacement failed: the old worker stays; the reload stops. Its slot
                // needs a respawn only if the old worker is gone too.
                self.reloading = None;
                let old_alive = r.old.is_some_and(|o| self.workers.contains_key(&o));
                self.finish_reload(Some(&format!(
                    "new worker {} ended before it was ready ({exit})",
                    w.pid
                )));
                if old_alive {
                    return;
                }
            } else if r.old == Some(id) {
                // The replacement fills this slot.
                self.reloading = Some(Reloading {
                    old: None,
                    new: r.new,
                });
                return;
            }
        }
        self.reload.retain(|x| *x != id);
        let lived = w.started.elapsed();
        let was_ready = w.ready_at.is_some() && !w.not_ready;
        let now = Instant::now();
        match self
            .policy
            .on_exit(&mut w.lineage, exit, lived, was_ready, now)
        {
            Verdict::Respawn(delay) => {
                self.metrics_restarted(&w, exit);
                self.hint_if_workers_die_at_once(&w.lineage, lived);
                if !delay.is_zero() {
                    tracing::warn!(
                        delay_ms = delay.as_millis() as u64,
                        "respawning after backoff"
                    );
                }
                self.respawns.push((now + delay, w.lineage));
            }
            Verdict::Exited => {
                tracing::warn!(pid = w.pid, "worker not restarted (restart policy)");
                self.stopped.push(Stopped {
                    pid: w.pid,
                    failed: false,
                    restarts: w.lineage.restarts,
                    exit,
                });
            }
            Verdict::Failed => {
                let (n, within) = self.policy.max_restarts.unwrap_or_default();
                tracing::error!(
                    pid = w.pid,
                    "worker restarted {n} times within {:.0} s; not restarting it",
                    within.as_secs_f64()
                );
                self.stopped.push(Stopped {
                    pid: w.pid,
                    failed: true,
                    restarts: w.lineage.restarts,
                    exit,
                });
            }
        }
    }

    /// Every 50 ms: retirement steps, ready deadlines, due respawns, the target count.
    pub(super) fn housekeeping(&mut self) {
        let now = Instant::now();
        let t = self.cfg.timings;
        let stop_signal = self.cfg.stop_signal;
        let mut late = Vec::new();
        let mut kill = Vec::new();
        let mut settled = false;
        for (id, w) in &mut self.workers {
            if w.state == State::Starting && w.settle_at.is_some_and(|at| now >= at) {
                w.state = State::Ready;
                w.ready_at = Some(now);
                w.settle_at = None;
                settled = true;
                tracing::info!(pid = w.pid, id, "worker up for the settle time: ready");
            }
            match w.retire {
                Some((at, Step::Grace)) if now >= at => {
                    tracing::warn!(pid = w.pid, "grace period over; sending {stop_signal}");
                    let _ = w.kill.send(Order::Signal(stop_signal));
                    w.retire = Some((now + t.kill_after, Step::Stop));
                }
                Some((at, Step::Stop)) if now >= at => {
                    tracing::warn!(pid = w.pid, "still running after {stop_signal}; killing it");
                    kill.push(*id);
                    w.retire = None;
                }
                _ => {}
            }
            if w.state == State::Starting && w.ready_by.is_some_and(|t| now >= t) {
                late.push(*id);
            }
        }
        for id in kill {
            self.kill_and_reclaim(id);
        }
        if settled {
            self.advance_reload();
            self.flush_backlog();
        }
        for id in late {
            let w = self.workers.get_mut(&id).expect("listed");
            tracing::warn!(
                pid = w.pid,
                id,
                "worker not ready within {:.1} s; stopping it",
                t.ready_timeout.as_secs_f64()
            );
            w.not_ready = true;
            w.ready_by = None;
            if self.reloading.is_some_and(|r| r.new == id) {
                let old = self.reloading.and_then(|r| r.old);
                self.reloading = None;
                let pid = w.pid;
                self.retire(id);
                if let Some(w) = self.workers.get_mut(&id) {
                    w.not_ready = old.is_none(); // its slot is respawned only if empty
                }
                self.finish_reload(Some(&format!(
                    "new worker {pid} not ready within {:.1} s",
                    t.ready_timeout.as_secs_f64()
                )));
            } else {
                // Counted as a failed start when it exits (`not_ready`): it is respawned
                // with backoff, and holds its slot until then.
                self.retire(id);
            }
        }
        if self.shutting_down.is_some() {
            return;
        }
        // Respawns that are due, and workers missing after a scale-up or a failed start.
        let (due, later): (Vec<_>, Vec<_>) =
            self.respawns.drain(..).partition(|(at, _)| *at <= now);
        self.respawns = later;
        for (_, lineage) in due {
            self.spawn_or_retry(lineage);
        }
        self.converge();
        while self.slots() < self.target {
            self.spawn_or_retry(Lineage::default());
        }
    }

    fn spawn_or_retry(&mut self, lineage: Lineage) {
        if let Err(e) = self.spawn_worker(lineage.clone()) {
            tracing::error!("cannot start a worker: {e}");
            let delay = self.policy.backoff_max;
            self.respawns.push((Instant::now() + delay, lineage));
        }
    }
}
