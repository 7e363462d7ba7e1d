//! The master: starts workers, hands out connections, watches, respawns, reloads, stops.
//!
//! Everything happens in one task (`Master::run`) that owns all state; each worker has a
//! small task that owns its `Child` and the reading side of its channel and reports events.
//! So no state is shared and no lock is taken.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use super::builder::{Cluster, ClusterBuilder, Source};
use super::control::Request;
use super::{STRATEGY_ENV, Strategy, WORKER_ENV, listen, wire};
use crate::error::{Error, Result, from_io};
use crate::ipc::{Channel, Sender};
use crate::signal::Signal;
use crate::{Command, Exit, Signum, Stdio};

/// What a worker's task reports.
pub(crate) enum Event {
    Byte(u64, u8),
    Exited(u64, Exit),
    Control(Request, oneshot::Sender<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Starting,
    Ready,
    Retiring,
}

struct WorkerSlot {
    pid: u32,
    state: State,
    sender: Option<Sender>,
    kill: mpsc::UnboundedSender<Signum>,
    aware: bool,
    started: Instant,
    last_pong: Instant,
    handled: u64,
    open: u64,
    restarts: u32,
    kill_at: Option<Instant>,
}

pub(super) struct Master {
    cluster: Cluster,
    target: usize,
    expect_ready: bool,
    workers: BTreeMap<u64, WorkerSlot>,
    next_id: u64,
    rr: u64,
    events_tx: mpsc::UnboundedSender<Event>,
    /// Accepted connections waiting for a ready worker (never dropped).
    backlog: VecDeque<std::net::TcpStream>,
    /// Respawns due, with the restart count the new worker inherits.
    respawns: Vec<(Instant, u32)>,
    crash_streak: u32,
    /// Old workers still to replace in a rolling restart.
    reload: VecDeque<u64>,
    /// (old, new, deadline): the new worker must be ready before the old one retires.
    reloading: Option<(u64, u64, Instant)>,
    /// When the graceful shutdown started.
    shutting_down: Option<Instant>,
}

const BACKLOG_MAX: usize = 4096;
/// How long a handoff may wait for a worker's channel to take it.
const HANDOFF_TIMEOUT: Duration = Duration::from_millis(200);

impl Master {
    /// The master's state for `cluster`, with its first workers started.
    pub(super) fn start(
        cluster: Cluster,
        events_tx: mpsc::UnboundedSender<Event>,
    ) -> Result<Master> {
        let mut m = Master {
            target: cluster.workers,
            expect_ready: cluster
                .cfg
                .expect_ready
                .unwrap_or(cluster.cfg.program.is_none()),
            cluster,
            workers: BTreeMap::new(),
            next_id: 1,
            rr: 0,
            events_tx,
            backlog: VecDeque::new(),
            respawns: Vec::new(),
            crash_streak: 0,
            reload: VecDeque::new(),
            reloading: None,
            shutting_down: None,
        };
        tracing::info!(
            addr = %m.cluster.local_addr,
            workers = m.target,
            strategy = %m.cluster.cfg.strategy,
            "cluster master started"
        );
        for _ in 0..m.target {
            m.spawn_worker(0)?;
        }
        Ok(m)
    }

    pub(super) async fn run(
        &mut self,
        mut accept: Option<TcpListener>,
        mut events: mpsc::UnboundedReceiver<Event>,
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
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_ping = Instant::now();
        loop {
            let can_accept = accept.is_some() && self.backlog.len() < BACKLOG_MAX;
            tokio::select! {
                r = async { accept.as_ref().unwrap().accept().await }, if can_accept => {
                    match r {
                        Ok((conn, _)) => self.hand_out(conn).await,
                        Err(e) => tracing::warn!("accept: {e}"),
                    }
                }
                Some(ev) = events.recv() => self.on_event(ev).await,
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
                Some(_) = hup.recv() => {
                    self.start_reload();
                }
                Some(_) = ttin.recv() => self.scale(self.target + 1),
                Some(_) = ttou.recv() => self.scale(self.target.saturating_sub(1).max(1)),
                _ = tick.tick() => {
                    let now = Instant::now();
                    if now.duration_since(last_ping) >= self.cluster.cfg.timings.heartbeat {
                        last_ping = now;
                        self.heartbeat().await;
                    }
                    self.housekeeping()?;
                }
            }
            if self.shutting_down.is_some() {
                // Queued connections still go to the workers that are finishing.
                if self.workers.is_empty() {
                    tracing::info!("all workers gone; master exits");
                    return Ok(());
                }
            }
        }
    }

    fn cfg(&self) -> &ClusterBuilder {
        &self.cluster.cfg
    }

    /// Starts one worker. `restarts` is carried over from the worker it replaces.
    fn spawn_worker(&mut self, restarts: u32) -> Result<u64> {
        let cfg = &self.cluster.cfg;
        let (program, args) = match &cfg.program {
            Some((p, a)) => (p.clone(), a.clone()),
            None => (
                std::env::current_exe()
                    .map_err(|e| from_io(e, "cluster: find this program"))?
                    .into_os_string(),
                std::env::args_os().skip(1).collect(),
            ),
        };
        let mut cmd = Command::new(&program);
        cmd.args(&args)
            .env(WORKER_ENV, "1")
            .env(STRATEGY_ENV, cfg.strategy.name())
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .parent_death_signal(Signum::KILL)
            .kill_on_drop(true);
        for (k, v) in &cfg.env {
            cmd.env(k, v);
        }
        let reuseport_listener;
        match &self.cluster.source {
            Source::Accept(_) | Source::Closed => cmd.stdio(3, Stdio::ipc()),
            Source::Shared(l) => cmd
                .stdio(3, Stdio::inherit_stream(l))
                .stdio(4, Stdio::ipc())
                .env("LISTEN_FDS", "1")
                .env_pid("LISTEN_PID"),
            Source::ReusePort { .. } => {
                reuseport_listener = listen::reuseport_listener(self.cluster.local_addr)?;
                cmd.stdio(3, Stdio::inherit_stream(&reuseport_listener))
                    .stdio(4, Stdio::ipc())
                    .env("LISTEN_FDS", "1")
                    .env_pid("LISTEN_PID")
            }
        };
        let mut child = cmd.spawn()?;
        let channel = child.take_channel(3).or_else(|| child.take_channel(4));
        let id = self.next_id;
        self.next_id += 1;
        let pid = child.id().expect("a child not waited for has its pid");
        let (kill_tx, kill_rx) = mpsc::unbounded_channel();
        let sender = channel.as_ref().map(Channel::sender);
        tokio::spawn(watch_worker(
            id,
            child,
            channel,
            kill_rx,
            self.events_tx.clone(),
        ));
        let now = Instant::now();
        self.workers.insert(
            id,
            WorkerSlot {
                pid,
                state: if self.expect_ready {
                    State::Starting
                } else {
                    State::Ready
                },
                sender,
                kill: kill_tx,
                aware: false,
                started: now,
                last_pong: now,
                handled: 0,
                open: 0,
                restarts,
                kill_at: None,
            },
        );
        tracing::info!(pid, id, "worker started");
        Ok(id)
    }

    /// Gives a connection to a worker, or queues it until one is ready.
    async fn hand_out(&mut self, conn: TcpStream) {
        // Workers get a blocking socket, as from accept(2) on a blocking listener (what a
        // worker in any language expects); brood workers make it non-blocking themselves.
        // The flag lives on the shared file description, so it is set here, before the
        // handoff.
        let conn = match conn
            .into_std()
            .and_then(|c| c.set_nonblocking(false).map(|()| c))
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accepted connection unusable: {e}");
                return;
            }
        };
        self.backlog.push_back(conn);
        self.flush_backlog().await;
    }

    async fn flush_backlog(&mut self) {
        while let Some(conn) = self.backlog.pop_front() {
            let mut tried = Vec::new();
            let mut handed = false;
            while let Some(id) = self.pick(&tried) {
                tried.push(id);
                let Some(sender) = self.workers.get(&id).and_then(|w| w.sender.clone()) else {
                    continue;
                };
                // A one-byte send is all or nothing, so a timed-out one sent nothing: a worker
                // too slow to take it passes the connection to the next one.
                let fds = [conn.as_fd()];
                let send = sender.send_with_handles(&[wire::CONN], &fds);
                let sent = match tokio::time::timeout(HANDOFF_TIMEOUT, send).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::new(libc::ETIMEDOUT, "handoff")),
                };
                match sent {
                    Ok(()) => {
                        if let Some(w) = self.workers.get_mut(&id) {
                            w.handled += 1;
                            w.open += 1;
                        }
                        handed = true;
                        break;
                    }
                    // The worker died in between: the next one takes it.
                    Err(e) => tracing::warn!(id, "handoff failed, trying another worker: {e}"),
                }
            }
            if !handed {
                self.backlog.push_front(conn);
                return;
            }
        }
    }

    /// The next worker by the strategy, among ready ones not yet tried.
    fn pick(&mut self, tried: &[u64]) -> Option<u64> {
        let ready = self
            .workers
            .iter()
            .filter(|(id, w)| w.state == State::Ready && w.sender.is_some() && !tried.contains(id));
        match self.cluster.cfg.strategy {
            Strategy::LeastConnections => ready
                .min_by_key(|(id, w)| (w.open, w.handled, **id))
                .map(|(id, _)| *id),
            _ => {
                let ids: Vec<u64> = ready.map(|(id, _)| *id).collect();
                let id = ids
                    .iter()
                    .copied()
                    .find(|id| *id > self.rr)
                    .or_else(|| ids.first().copied())?;
                self.rr = id;
                Some(id)
            }
        }
    }

    async fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Byte(id, b) => {
                let Some(w) = self.workers.get_mut(&id) else {
                    return;
                };
                match b {
                    wire::READY => {
                        w.aware = true;
                        w.last_pong = Instant::now();
                        if w.state == State::Starting {
                            w.state = State::Ready;
                            tracing::info!(pid = w.pid, id, "worker ready");
                        }
                        self.flush_backlog().await;
                    }
                    wire::PONG => w.last_pong = Instant::now(),
                    wire::DONE => w.open = w.open.saturating_sub(1),
                    wire::ACCEPTED => {
                        w.handled += 1;
                        w.open += 1;
                    }
                    _ => {}
                }
            }
            Event::Exited(id, exit) => {
                let Some(w) = self.workers.remove(&id) else {
                    return;
                };
                let lived = w.started.elapsed();
                if w.state == State::Retiring {
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
                if let Some((old, new, _)) = self.reloading {
                    if new == id {
                        // The replacement died before it was ready: keep the old worker.
                        tracing::warn!(old, "replacement worker failed; reload stopped");
                        self.reloading = None;
                        self.reload.clear();
                    } else if old == id {
                        self.reloading = None;
                    }
                }
                self.reload.retain(|x| *x != id);
                // Exponential backoff for workers that die young, none for healthy ones.
                let t = self.cluster.cfg.timings;
                let delay = if lived >= t.healthy_after {
                    self.crash_streak = 0;
                    Duration::ZERO
                } else {
                    self.crash_streak = (self.crash_streak + 1).min(20);
                    t.backoff_min
                        .saturating_mul(1 << (self.crash_streak - 1).min(16))
                        .min(t.backoff_max)
                };
                if delay > Duration::ZERO {
                    tracing::warn!(
                        delay_ms = delay.as_millis() as u64,
                        "respawning after backoff"
                    );
                }
                self.respawns.push((Instant::now() + delay, w.restarts + 1));
            }
            Event::Control(req, reply) => {
                let text = self.control(req);
                let _ = reply.send(text);
            }
        }
    }

    fn control(&mut self, req: Request) -> String {
        match req {
            Request::Status => self.status(),
            Request::Reload => {
                let n = self.start_reload();
                format!("reloading {n} workers\n")
            }
            Request::Scale(n) if n >= 1 => {
                self.scale(n);
                format!("scaling to {n} workers\n")
            }
            Request::Scale(_) => "error: scale needs at least 1 worker\n".into(),
        }
    }

    fn status(&self) -> String {
        let mut out = format!(
            "listen {}  strategy {}  workers {} (target {}){}\n{:<6} {:>8} {:<9} {:>9} {:>8} {:>6} {:>8}\n",
            self.cluster.local_addr,
            self.cluster.cfg.strategy,
            self.workers.len(),
            self.target,
            if self.shutting_down.is_some() {
                "  shutting down"
            } else {
                ""
            },
            "ID",
            "PID",
            "STATE",
            "UPTIME",
            "HANDLED",
            "OPEN",
            "RESTARTS"
        );
        for (id, w) in &self.workers {
            let state = match w.state {
                State::Starting => "starting",
                State::Ready => "ready",
                State::Retiring => "retiring",
            };
            out += &format!(
                "{:<6} {:>8} {:<9} {:>8.1}s {:>8} {:>6} {:>8}\n",
                id,
                w.pid,
                state,
                w.started.elapsed().as_secs_f64(),
                w.handled,
                w.open,
                w.restarts
            );
        }
        out
    }

    fn live_count(&self) -> usize {
        self.workers
            .values()
            .filter(|w| w.state != State::Retiring)
            .count()
            + self.respawns.len()
    }

    fn scale(&mut self, n: usize) {
        if self.shutting_down.is_some() {
            return;
        }
        tracing::info!(from = self.target, to = n, "scaling");
        self.target = n;
        // Too many: cancel pending respawns first, then retire the newest.
        while self.live_count() > n && !self.respawns.is_empty() {
            self.respawns.pop();
        }
        while self.live_count() > n {
            let Some(id) = self
                .workers
                .iter()
                .filter(|(_, w)| w.state != State::Retiring)
                .map(|(id, _)| *id)
                .next_back()
            else {
                break;
            };
            self.retire(id);
        }
        // Too few: housekeeping spawns the missing ones.
    }

    fn start_reload(&mut self) -> usize {
        if self.shutting_down.is_some() {
            return 0;
        }
        self.reload = self
            .workers
            .iter()
            .filter(|(_, w)| w.state != State::Retiring)
            .map(|(id, _)| *id)
            .collect();
        tracing::info!(workers = self.reload.len(), "rolling restart");
        self.reload.len()
    }

    /// Closes the worker's channel (it takes what is queued, finishes, exits) and sends
    /// SIGTERM; SIGKILL follows after the grace period.
    fn retire(&mut self, id: u64) {
        let grace = self.cluster.cfg.timings.grace;
        if let Some(w) = self.workers.get_mut(&id) {
            if w.state == State::Retiring {
                return;
            }
            tracing::info!(pid = w.pid, id, "retiring worker");
            w.state = State::Retiring;
            if let Some(s) = w.sender.take() {
                let _ = s.shutdown();
            }
            let _ = w.kill.send(Signum::TERM);
            w.kill_at = Some(Instant::now() + grace);
        }
    }

    fn shutdown(&mut self, why: &str) {
        if self.shutting_down.is_some() {
            return;
        }
        tracing::info!("{why}: graceful shutdown");
        self.shutting_down = Some(Instant::now());
        // The master's own copy of a shared listener or reuseport anchor goes now.
        self.cluster.source = Source::Closed;
        self.respawns.clear();
        self.reload.clear();
        self.reloading = None;
        let ids: Vec<u64> = self.workers.keys().copied().collect();
        for id in ids {
            self.retire(id);
        }
    }

    async fn heartbeat(&mut self) {
        let t = self.cluster.cfg.timings;
        let mut dead = Vec::new();
        for (id, w) in &self.workers {
            if !w.aware || w.state != State::Ready {
                continue;
            }
            if w.last_pong.elapsed() > t.heartbeat_timeout {
                dead.push(*id);
                continue;
            }
            if let Some(s) = &w.sender {
                let _ = tokio::time::timeout(HANDOFF_TIMEOUT, s.send(&[wire::PING])).await;
            }
        }
        for id in dead {
            if let Some(w) = self.workers.get(&id) {
                tracing::warn!(pid = w.pid, id, "worker missed its heartbeats; killing it");
                let _ = w.kill.send(Signum::KILL);
            }
        }
    }

    fn housekeeping(&mut self) -> Result<()> {
        let now = Instant::now();
        for w in self.workers.values_mut() {
            if w.kill_at.is_some_and(|t| now >= t) {
                w.kill_at = None;
                tracing::warn!(pid = w.pid, "grace period over; killing worker");
                let _ = w.kill.send(Signum::KILL);
            }
        }
        if self.shutting_down.is_some() {
            return Ok(());
        }
        // Respawns that are due, and workers missing after a scale-up.
        let due: Vec<u32> = {
            let (due, later): (Vec<_>, Vec<_>) =
                self.respawns.drain(..).partition(|(t, _)| *t <= now);
            self.respawns = later;
            due.into_iter().map(|(_, r)| r).collect()
        };
        for restarts in due {
            self.spawn_or_retry(restarts);
        }
        while self.live_count() < self.target {
            self.spawn_or_retry(0);
        }
        // Rolling restart: one old worker at a time, after its replacement is ready.
        if let Some((old, new, deadline)) = self.reloading {
            let new_ready = self
                .workers
                .get(&new)
                .is_some_and(|w| w.state == State::Ready);
            if new_ready {
                self.retire(old);
                self.reloading = None;
            } else if now >= deadline {
                tracing::warn!(new, "replacement not ready in time; reload stopped");
                self.retire(new);
                self.reloading = None;
                self.reload.clear();
            }
        }
        if self.reloading.is_none() {
            while let Some(old) = self.reload.pop_front() {
                if self
                    .workers
                    .get(&old)
                    .is_some_and(|w| w.state != State::Retiring)
                {
                    let restarts = self.workers[&old].restarts;
                    match self.spawn_worker(restarts) {
                        Ok(new) => {
                            self.reloading =
                                Some((old, new, now + self.cluster.cfg.timings.ready_timeout));
                        }
                        Err(e) => tracing::error!("reload: cannot start a worker: {e}"),
                    }
                    break;
                }
            }
        }
        Ok(())
    }

    fn spawn_or_retry(&mut self, restarts: u32) {
        if let Err(e) = self.spawn_worker(restarts) {
            tracing::error!("cannot start a worker: {e}");
            let delay = self.cfg().timings.backoff_max;
            self.respawns.push((Instant::now() + delay, restarts + 1));
        }
    }
}

/// Owns one worker's process and the reading side of its channel.
async fn watch_worker(
    id: u64,
    mut child: crate::Child,
    mut channel: Option<Channel>,
    mut kill: mpsc::UnboundedReceiver<Signum>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            exit = child.wait() => {
                let exit = exit.unwrap_or(Exit { status: -1, signal: 0 });
                let _ = events.send(Event::Exited(id, exit));
                return;
            }
            r = async { channel.as_mut().unwrap().recv(&mut buf).await }, if channel.is_some() => {
                match r {
                    Ok(n) if n > 0 => {
                        for &b in &buf[..n] {
                            let _ = events.send(Event::Byte(id, b));
                        }
                    }
                    _ => channel = None, // the worker closed it; its exit follows
                }
            }
            Some(sig) = kill.recv() => {
                let _ = child.kill(sig);
            }
        }
    }
}
