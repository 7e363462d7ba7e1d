//! Operating a cluster through `brood ctl`: machine-readable status, killing one worker,
//! a graceful stop.

#[path = "support/cluster.rs"]
mod support;

use serde::Deserialize;
use support::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Status {
    master: MasterStatus,
    workers: Vec<WorkerStatus>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MasterStatus {
    pid: u32,
    strategy: String,
    listen: Vec<String>,
    started_at: f64,
    uptime_secs: f64,
    generation: u64,
    target_workers: usize,
    shutting_down: bool,
    upgrading_to: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkerStatus {
    id: Option<u64>,
    pid: u32,
    state: String,
    started_at: Option<f64>,
    uptime_secs: Option<f64>,
    restart_in_secs: Option<f64>,
    restarts: u32,
    connections: u64,
    in_flight: u64,
    last_exit: Option<ExitStatus>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct ExitStatus {
    status: i64,
    signal: Option<String>,
}

/// Runs `brood ctl PATH args..`; returns (exit code, stdout).
async fn ctl(m: &Master, args: &[&str]) -> (i64, String) {
    let out = tokio::time::timeout(
        LIMIT,
        brood::Command::new(env!("CARGO_BIN_EXE_brood"))
            .arg("ctl")
            .arg(&m.control)
            .args(args)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    (
        out.exit.status,
        String::from_utf8(out.stdout).expect("ctl prints UTF-8"),
    )
}

fn ppid(pid: u32) -> u32 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    s[s.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

async fn status_json(m: &Master) -> Status {
    let (code, out) = ctl(m, &["status", "--json"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().count(), 1, "one line of JSON: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_tells_master_and_workers_and_counts_connections() {
    let m = Master::start("ops-json", &["--workers", "2", "--builtin", "echo"]).await;
    for i in 0..10 {
        exchange(&m.addr, format!("hello {i}").as_bytes())
            .await
            .unwrap();
    }
    let start = std::time::Instant::now();
    let s = loop {
        // The echo workers report each closed connection; wait until all are in.
        let s = status_json(&m).await;
        if s.workers.iter().all(|w| w.in_flight == 0) {
            break s;
        }
        assert!(start.elapsed() < LIMIT, "connections stay in flight: {s:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(s.master.pid, m.child.id().unwrap());
    assert_eq!(s.master.strategy, "round-robin");
    assert_eq!(s.master.listen, vec![m.addr.clone()]);
    assert_eq!(s.master.generation, 1);
    assert_eq!(s.master.target_workers, 2);
    assert!(!s.master.shutting_down);
    assert_eq!(s.master.upgrading_to, None);
    assert!(s.master.uptime_secs > 0.0 && s.master.started_at > 1.7e9);
    assert_eq!(s.workers.len(), 2);
    assert_eq!(
        s.workers.iter().map(|w| w.connections).sum::<u64>(),
        10,
        "{s:?}"
    );
    for w in &s.workers {
        assert_eq!(
            ppid(w.pid),
            s.master.pid,
            "worker {} is the master's child",
            w.pid
        );
    }
    for w in &s.workers {
        assert_eq!(w.state, "ready");
        assert!(w.id.is_some() && w.started_at.is_some() && w.uptime_secs.is_some());
        assert_eq!((w.restarts, &w.last_exit), (0, &None));
    }
    // The plain form stays a table for people.
    let (code, text) = ctl(&m, &["status"]).await;
    assert_eq!(code, 0);
    assert!(
        text.starts_with(&format!("master {}", s.master.pid)),
        "{text}"
    );
    assert!(text.lines().nth(1).unwrap().contains("PID"), "{text}");
    // --json goes with status only; unknown commands fail.
    assert_eq!(ctl(&m, &["--json", "reload"]).await.0, 2);
    let (code, out) = ctl(&m, &["frobnicate"]).await;
    assert_eq!(code, 1, "{out}");
    m.stop().await;
}

/// A slot whose worker keeps failing at once waits out its backoff with no worker: status
/// still shows it, as `restarting`, with when and how its last worker ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_slot_waiting_out_its_restart_backoff_and_the_log_one_hint() {
    // `launch`, not `start`: these workers are never all ready at once (whether a status
    // poll catches one between its start and its exit is a race).
    let m = Master::launch(
        "ops-backoff",
        &[],
        &["--workers", "1", "--", "sh", "-c", "exit 3"],
    )
    .await;
    let start = std::time::Instant::now();
    let s = loop {
        let s = status_json(&m).await;
        if s.workers
            .iter()
            .any(|w| w.state == "restarting" && w.restarts >= 3)
        {
            break s;
        }
        assert!(start.elapsed() < LIMIT, "no restarting slot: {s:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let w = s.workers.iter().find(|w| w.state == "restarting").unwrap();
    assert_eq!((w.id, w.pid), (None, 0), "{w:?}");
    assert!(
        w.restart_in_secs.is_some_and(|t| (0.0..=10.0).contains(&t)),
        "{w:?}"
    );
    assert_eq!(
        w.last_exit,
        Some(ExitStatus {
            status: 3,
            signal: None
        })
    );
    let (code, text) = ctl(&m, &["status"]).await;
    assert_eq!(code, 0);
    assert!(
        text.lines()
            .any(|l| l.contains("restarting") && l.contains("next worker in")),
        "{text}"
    );
    // Workers that keep dying at once get one hint (how a worker is reached), not one per
    // exit: the fourth and later exits add none.
    let hint = "workers keep exiting within a second of starting";
    m.wait_log(hint, 1).await;
    m.wait_log_at_least("worker exited", 5).await;
    assert_eq!(m.log_has(hint), 1);
    assert_eq!(m.log_has("--worker-protocol node"), 1);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_kill_signals_one_worker_which_is_replaced_and_its_exit_shown() {
    let m = Master::start("ops-kill", &["--workers", "2", "--builtin", "echo"]).await;
    let before = status_json(&m).await;
    let victim = before.workers[0].pid;
    let other = before.workers[1].pid;
    let (code, out) = ctl(&m, &["kill", &victim.to_string(), "KILL"]).await;
    assert_eq!(code, 0, "{out}");
    until("the worker to die", || !alive(victim)).await;
    let start = std::time::Instant::now();
    let after = loop {
        let s = status_json(&m).await;
        if s.workers.len() == 2
            && s.workers
                .iter()
                .all(|w| w.state == "ready" && w.pid != victim)
        {
            break s;
        }
        assert!(start.elapsed() < LIMIT, "no replacement: {s:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let new = after.workers.iter().find(|w| w.pid != other).unwrap();
    assert_eq!(new.restarts, 1);
    assert_eq!(
        new.last_exit,
        Some(ExitStatus {
            status: 0,
            signal: Some("SIGKILL".into())
        })
    );
    assert!(alive(other), "the other worker was left alone");
    // Only the master's own workers: not the test process, not a bad signal.
    let me = std::process::id().to_string();
    let (code, out) = ctl(&m, &["kill", &me]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not a worker"), "{out}");
    assert_eq!(ctl(&m, &["kill", &other.to_string(), "SIGNOPE"]).await.0, 1);
    assert!(alive(other));
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_stop_retires_every_worker_and_the_master_exits_cleanly() {
    let mut m = Master::start("ops-stop", &["--workers", "2", "--builtin", "echo"]).await;
    let pids: Vec<u32> = status_json(&m)
        .await
        .workers
        .iter()
        .map(|w| w.pid)
        .collect();
    let (code, out) = ctl(&m, &["stop"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("stopping"), "{out}");
    let exit = tokio::time::timeout(LIMIT, m.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "master: {exit}");
    for pid in pids {
        assert!(!alive(pid), "worker {pid} outlived the master");
    }
    m.wait_log_at_least("ctl stop: graceful shutdown", 1).await;
    assert!(!m.control.exists(), "the control socket is removed");
}
