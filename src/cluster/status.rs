//! `ctl status`: the master's state as a table for people and as JSON for programs.
//!
//! The JSON (`ctl status --json`) is one object:
//! `{"master": {...}, "workers": [{...}, ...]}`; the fields are listed in `docs/cluster.md`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::proto::GENERATION_ENV;
use super::state::{Master, State};
use crate::{Exit, Signum};

/// This master's generation.
pub(super) fn generation() -> u64 {
    std::env::var(GENERATION_ENV)
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(1)
}

#[derive(Serialize)]
struct Status {
    master: MasterStatus,
    workers: Vec<WorkerStatus>,
}

#[derive(Serialize)]
struct MasterStatus {
    pid: u32,
    strategy: &'static str,
    listen: Vec<String>,
    /// Seconds since the Unix epoch.
    started_at: f64,
    uptime_secs: f64,
    generation: u64,
    target_workers: usize,
    shutting_down: bool,
    /// The pid of a new master being started by `upgrade`.
    upgrading_to: Option<u32>,
}

#[derive(Serialize)]
struct WorkerStatus {
    /// `None` for a slot left empty (`failed`, `exited`).
    id: Option<u64>,
    pid: u32,
    /// `starting`, `ready`, `retiring`; for a slot whose worker is to be started again
    /// after its backoff `restarting` (pid 0); for an empty slot `failed` or `exited`.
    state: &'static str,
    /// For a `restarting` slot: seconds until its next worker starts.
    restart_in_secs: Option<f64>,
    started_at: Option<f64>,
    uptime_secs: Option<f64>,
    restarts: u32,
    /// Connections the master handed it (or it reported accepting itself).
    connections: u64,
    /// Of those, still open (as far as the master knows).
    in_flight: u64,
    /// How the slot's previous worker (or, for an empty slot, its last one) ended.
    last_exit: Option<ExitStatus>,
}

#[derive(Serialize)]
struct ExitStatus {
    status: i64,
    signal: Option<String>,
}

impl From<Exit> for ExitStatus {
    fn from(e: Exit) -> ExitStatus {
        ExitStatus {
            status: e.status,
            signal: (e.signal != 0).then(|| Signum::new(e.signal).to_string()),
        }
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Starting => "starting",
        State::Ready => "ready",
        State::Retiring => "retiring",
    }
}

impl Master {
    /// The answer to `status --json`: one line of JSON.
    pub(super) fn status_json(&self) -> String {
        let now = SystemTime::now();
        let mut workers: Vec<WorkerStatus> = self
            .workers
            .iter()
            .map(|(id, w)| {
                let up = w.started.elapsed();
                WorkerStatus {
                    id: Some(*id),
                    pid: w.pid,
                    state: state_name(w.state),
                    started_at: Some(unix(now - up)),
                    uptime_secs: Some(up.as_secs_f64()),
                    restart_in_secs: None,
                    restarts: w.lineage.restarts,
                    connections: w.handled,
                    in_flight: w.open,
                    last_exit: w.lineage.last_exit.map(Into::into),
                }
            })
            .collect();
        let now_i = std::time::Instant::now();
        workers.extend(self.respawns.iter().map(|(at, lineage)| WorkerStatus {
            id: None,
            pid: 0,
            state: "restarting",
            started_at: None,
            uptime_secs: None,
            restart_in_secs: Some(at.saturating_duration_since(now_i).as_secs_f64()),
            restarts: lineage.restarts,
            connections: 0,
            in_flight: 0,
            last_exit: lineage.last_exit.map(Into::into),
        }));
        workers.extend(self.stopped.iter().map(|s| WorkerStatus {
            id: None,
            pid: s.pid,
            state: if s.failed { "failed" } else { "exited" },
            started_at: None,
            uptime_secs: None,
            restart_in_secs: None,
            restarts: s.restarts,
            connections: 0,
            in_flight: 0,
            last_exit: Some(s.exit.into()),
        }));
        let status = Status {
            master: MasterStatus {
                pid: std::process::id(),
                strategy: self.cfg.strategy.name(),
                listen: vec![self.cfg.local_addr.to_string()],
                started_at: unix(self.started_at),
                uptime_secs: self.started.elapsed().as_secs_f64(),
                generation: self.generation,
                target_workers: self.target,
                shutting_down: self.shutting_down.is_some(),
                upgrading_to: self.upgrading_to(),
            },
            workers,
        };
        let mut out = serde_json::to_string(&status)
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string());
        out.push('\n');
        out
    }

    /// The answer to `status`: a table.
    pub(super) fn status_text(&self) -> String {
        let mut out = format!(
            "master {}  generation {}  uptime {:.0}s  listen {}  strategy {}  workers {} (target {}){}\n{:<6} {:>8} {:<10} {:>9} {:>8} {:>6} {:>8}  {}\n",
            std::process::id(),
            self.generation,
            self.started.elapsed().as_secs_f64(),
            self.cfg.local_addr,
            self.cfg.strategy,
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
            "RESTARTS",
            "LAST EXIT"
        );
        let last = |e: Option<Exit>| e.map_or_else(|| "-".to_string(), |e| e.to_string());
        for (id, w) in &self.workers {
            out += &format!(
                "{:<6} {:>8} {:<10} {:>8.1}s {:>8} {:>6} {:>8}  {}\n",
                id,
                w.pid,
                state_name(w.state),
                w.started.elapsed().as_secs_f64(),
                w.handled,
                w.open,
                w.lineage.restarts,
                last(w.lineage.last_exit)
            );
        }
        let now = std::time::Instant::now();
        for (at, lineage) in &self.respawns {
            out += &format!(
                "{:<6} {:>8} {:<10} {:>9} {:>8} {:>6} {:>8}  {}; next worker in {:.1}s\n",
                "-",
                "-",
                "restarting",
                "-",
                0,
                0,
                lineage.restarts,
                last(lineage.last_exit),
                at.saturating_duration_since(now).as_secs_f64()
            );
        }
        for s in &self.stopped {
            out += &format!(
                "{:<6} {:>8} {:<10} {:>9} {:>8} {:>6} {:>8}  {}\n",
                "-",
                s.pid,
                if s.failed { "failed" } else { "exited" },
                "-",
                0,
                0,
                s.restarts,
                last(Some(s.exit))
            );
        }
        out
    }
}
