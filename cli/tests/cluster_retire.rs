//! `brood cluster`: the worker lifecycle of docs/cluster.md with real processes: retiring
//! never cuts a request, readiness and ready timeouts, reloads that crash or scale midway,
//! per-slot backoff, restart policies, Ctrl-C to the master's process group.

#[path = "support/cluster.rs"]
mod support;

use std::time::{Duration, Instant};

use brood::{Command, Signum, Stdio};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// README's round-robin worker, slowed down: it says `got`, then waits for the client.
const PY_SLOW_RR: &str = r#"
import socket
ch = socket.socket(fileno=3)
while True:
    msg, fds, _, _ = socket.recv_fds(ch, 1, 1)
    if not msg:
        break                       # retired: finish and exit
    for fd in fds:
        c = socket.socket(fileno=fd)
        c.sendall(b"got\n")
        data = c.recv(100)
        c.sendall(b"done:" + data)
        c.close()
"#;

/// A shared-listener worker that never looks at its channel and ignores SIGUSR1.
const PY_DEAF: &str = r#"
import signal, socket
signal.signal(signal.SIGUSR1, signal.SIG_IGN)
l = socket.socket(fileno=3)
while True:
    c, _ = l.accept()
    c.sendall(b"py:" + c.recv(100))
    c.close()
"#;

/// A brood-aware round-robin worker whose behaviour comes from the file in argv[1]:
/// `good` says ready after `delay` (argv[2]) seconds, `hang` never does, `crash` exits 1.
const PY_AWARE: &str = r#"
import os, socket, sys, time
mode = open(sys.argv[1]).read().strip()
ch = socket.socket(fileno=3)
if mode == "crash":
    sys.exit(1)
time.sleep(float(sys.argv[2]))
if mode == "good":
    ch.send(b"r")
while True:
    data, fds, _, _ = socket.recv_fds(ch, 64, 8)
    if not data:
        break
    if b"p" in data:
        ch.send(b"P")
    for fd in fds:
        c = socket.socket(fileno=fd)
        c.sendall(b"py:" + c.recv(100))
        c.close()
"#;

async fn brood_ctl(m: &Master, cmd: &[&str]) -> (bool, String) {
    let mut ctl = Command::new(env!("CARGO_BIN_EXE_brood"));
    ctl.arg("ctl")
        .arg(&m.control)
        .args(cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = timeout(LIMIT * 2, ctl.output()).await.unwrap().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.exit.success(), text)
}

async fn py_exchange(addr: &str, msg: &str) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(msg.as_bytes()).await.unwrap();
    let mut got = String::new();
    timeout(LIMIT, s.read_to_string(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, format!("py:{msg}"));
}

fn retired_line(m: &Master, pid: u32) -> Option<String> {
    let needle = format!("worker retired pid={pid} ");
    m.log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains(&needle))
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_lets_an_any_language_worker_finish_its_request() {
    let m = Master::start(
        "retire-rr",
        &["--workers", "1", "--", "python3", "-c", PY_SLOW_RR],
    )
    .await;
    let old = m.status().await[0].pid;
    let mut c = TcpStream::connect(&m.addr).await.unwrap();
    let mut lines = BufReader::new(&mut c);
    let mut got = String::new();
    timeout(LIMIT, lines.read_line(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, "got\n"); // the request is in flight in the old worker
    let (ok, text) = brood_ctl(&m, &["reload"]).await;
    assert!(ok, "{text}");
    m.wait_log(&format!("retiring worker pid={old}"), 1).await;
    // The retired worker still finishes what it started.
    c.write_all(b"go").await.unwrap();
    let mut rest = String::new();
    timeout(LIMIT, c.read_to_string(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest, "done:go");
    // And exits by itself once its channel is closed: no signal.
    until("the old worker retired", || retired_line(&m, old).is_some()).await;
    let line = retired_line(&m, old).unwrap();
    assert!(line.contains("signal=0"), "{line}");

    // The same on a graceful stop.
    let mut c = TcpStream::connect(&m.addr).await.unwrap();
    let mut got = [0u8; 4];
    timeout(LIMIT, c.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    let mut master = m;
    master.child.kill(Signum::TERM).unwrap();
    master.wait_log("graceful shutdown", 1).await;
    c.write_all(b"bye").await.unwrap();
    let mut rest = String::new();
    timeout(LIMIT, c.read_to_string(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest, "done:bye");
    let exit = timeout(LIMIT, master.child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_deaf_to_its_channel_gets_the_stop_signal_after_grace_then_sigkill() {
    let m = Master::start(
        "retire-deaf",
        &[
            "--workers",
            "2",
            "--strategy",
            "shared",
            "--grace",
            "0.5",
            "--stop-signal",
            "SIGUSR1",
            "--kill-after",
            "0.5",
            "--",
            "python3",
            "-c",
            PY_DEAF,
        ],
    )
    .await;
    py_exchange(&m.addr, "hi").await;
    let rows = m.status().await;
    let victim = rows[1].pid; // scale down retires the newest
    let t = Instant::now();
    assert!(m.ctl("scale 1").await.contains("scaling to 1"));
    until("the deaf worker is gone", || {
        retired_line(&m, victim).is_some()
    })
    .await;
    let took = t.elapsed();
    let line = retired_line(&m, victim).unwrap();
    assert!(line.contains("signal=9"), "{line}");
    m.wait_log("grace period over; sending SIGUSR1", 1).await;
    m.wait_log("still running after SIGUSR1; killing it", 1)
        .await;
    assert!(
        took >= Duration::from_secs(1),
        "grace and kill-after: {took:?}"
    );
    py_exchange(&m.addr, "still").await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_workers_that_never_get_ready_keeps_the_old_ones_serving() {
    let dir = tempdir("ready-mode");
    let mode = dir.0.join("mode");
    std::fs::write(&mode, "good").unwrap();
    let mode_s = mode.to_str().unwrap();
    let m = Master::start(
        "ready",
        &[
            "--workers",
            "2",
            "--wait-ready",
            "--ready-timeout",
            "3",
            "--grace",
            "2",
            "--",
            "python3",
            "-c",
            PY_AWARE,
            mode_s,
            "0",
        ],
    )
    .await;
    let old: Vec<u32> = m.status().await.iter().map(|r| r.pid).collect();
    for (broken, why) in [("hang", "not ready within"), ("crash", "ended before")] {
        std::fs::write(&mode, broken).unwrap();
        let (ok, text) = brood_ctl(&m, &["reload"]).await;
        assert!(!ok, "ctl reload must fail: {text}");
        assert!(
            text.contains("reload failed") && text.contains(why),
            "{text}"
        );
        let rows = m
            .wait_for(|r| r.len() == 2, "the failed replacement gone")
            .await;
        assert_eq!(rows.iter().map(|r| r.pid).collect::<Vec<_>>(), old);
        assert!(rows.iter().all(|r| r.state == "ready"), "{rows:?}");
        for i in 0..4 {
            py_exchange(&m.addr, &format!("{broken}{i}")).await;
        }
    }
    m.wait_log("reload failed", 2).await;
    // A good deploy goes through.
    std::fs::write(&mode, "good").unwrap();
    let (ok, text) = brood_ctl(&m, &["reload"]).await;
    assert!(ok, "{text}");
    assert!(text.contains("reloaded 2 workers"), "{text}");
    let rows = m
        .wait_for(
            |r| r.len() == 2 && r.iter().all(|r| r.state == "ready"),
            "2 new",
        )
        .await;
    assert!(rows.iter().all(|r| !old.contains(&r.pid)), "{rows:?}");
    py_exchange(&m.addr, "new").await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_during_a_reload_converge_to_the_target_count() {
    let dir = tempdir("converge-mode");
    let mode = dir.0.join("mode");
    std::fs::write(&mode, "good").unwrap();
    let m = Master::start(
        "converge",
        &[
            "--workers",
            "2",
            "--wait-ready",
            "--grace",
            "2",
            "--",
            "python3",
            "-c",
            PY_AWARE,
            mode.to_str().unwrap(),
            "2",
        ],
    )
    .await;
    let master = m.child.id().unwrap() as i32;
    // Workers take 2 s to get ready: the kills below land while a replacement starts.
    // 1: the replacement dies before it is ready.
    brood::kill(master, Signum::HUP).unwrap();
    let rows = m
        .wait_for(|r| r.iter().any(|r| r.state == "starting"), "a replacement")
        .await;
    let new = rows.iter().find(|r| r.state == "starting").unwrap().pid;
    brood::kill(new as i32, Signum::KILL).unwrap();
    m.wait_log("reload failed", 1).await;
    // 2: the old worker being replaced dies while its replacement starts.
    brood::kill(master, Signum::HUP).unwrap();
    let rows = m
        .wait_for(|r| r.iter().any(|r| r.state == "starting"), "a replacement")
        .await;
    brood::kill(rows[0].pid as i32, Signum::KILL).unwrap();
    let done = m
        .wait_for(
            |r| r.len() == 2 && r.iter().all(|r| r.state == "ready"),
            "2 ready workers",
        )
        .await;
    m.wait_log("rolling restart done", 1).await;
    // It stays at 2: no leftover respawn adds a third.
    for _ in 0..10 {
        let rows = m.status().await;
        assert_eq!(rows.len(), 2, "{rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(done.iter().all(|r| r.pid != rows[0].pid));
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigttou_during_a_reload_retires_an_old_worker_not_the_replacement() {
    let dir = tempdir("ttou-mode");
    let mode = dir.0.join("mode");
    std::fs::write(&mode, "good").unwrap();
    let m = Master::start(
        "ttou-reload",
        &[
            "--workers",
            "2",
            "--wait-ready",
            "--grace",
            "2",
            "--",
            "python3",
            "-c",
            PY_AWARE,
            mode.to_str().unwrap(),
            "2",
        ],
    )
    .await;
    let master = m.child.id().unwrap() as i32;
    brood::kill(master, Signum::HUP).unwrap();
    let rows = m
        .wait_for(|r| r.iter().any(|r| r.state == "starting"), "a replacement")
        .await;
    let new = rows.iter().find(|r| r.state == "starting").unwrap().pid;
    brood::kill(master, Signum::TTOU).unwrap();
    let rows = m
        .wait_for(
            |r| r.len() == 1 && r[0].state == "ready",
            "one worker after the reload",
        )
        .await;
    assert_eq!(rows[0].pid, new, "the replacement stays");
    py_exchange(&m.addr, "one").await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_scale_refuses_more_than_max_workers() {
    let m = Master::start(
        "maxw",
        &["--workers", "2", "--max-workers", "3", "--builtin", "echo"],
    )
    .await;
    let (ok, text) = brood_ctl(&m, &["scale", "4"]).await;
    assert!(!ok && text.contains("at most 3 workers"), "{text}");
    let (ok, text) = brood_ctl(&m, &["scale", "3"]).await;
    assert!(ok, "{text}");
    m.wait_for(
        |r| r.len() == 3 && r.iter().all(|r| r.state == "ready"),
        "3 workers",
    )
    .await;
    brood::kill(m.child.id().unwrap() as i32, Signum::TTIN).unwrap();
    m.wait_log("SIGTTIN: ", 1).await;
    assert_eq!(m.status().await.len(), 3);
    // --workers above --max-workers is refused at start.
    let out = Command::new(env!("CARGO_BIN_EXE_brood"))
        .args(["cluster", "--listen", "127.0.0.1:0", "--workers", "5"])
        .args(["--max-workers", "4", "--builtin", "echo"])
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    assert!(!out.exit.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-workers"));
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_kills_of_young_ready_workers_are_respawned_without_backoff() {
    let m = Master::start("slots", &["--workers", "2", "--builtin", "echo"]).await;
    for round in 0..5 {
        let rows = m.status().await;
        let victim = rows[0].pid;
        brood::kill(victim as i32, Signum::KILL).unwrap();
        m.wait_for(
            |r| {
                r.len() == 2
                    && !r.iter().any(|r| r.pid == victim)
                    && r.iter().all(|r| r.state == "ready")
            },
            &format!("respawn {round}"),
        )
        .await;
    }
    assert_eq!(m.log_has("respawning after backoff"), 0);
    exchange(&m.addr, b"fine").await.unwrap();
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_to_the_masters_process_group_drains_instead_of_killing_workers() {
    // `setsid` makes the master lead its own group, as a shell's job does.
    let mut m = Master::launch(
        "pgrp",
        &["setsid"],
        &["--workers", "2", "--grace", "20", "--builtin", "echo"],
    )
    .await;
    m.wait_for(
        |r| r.len() == 2 && r.iter().all(|r| r.state == "ready"),
        "ready",
    )
    .await;
    let mut conn = TcpStream::connect(&m.addr).await.unwrap();
    conn.write_all(b"a").await.unwrap();
    let mut b = [0u8; 1];
    timeout(LIMIT, conn.read_exact(&mut b))
        .await
        .unwrap()
        .unwrap();
    // What a terminal's Ctrl-C does: SIGINT to the whole foreground group.
    brood::kill(-(m.child.id().unwrap() as i32), Signum::INT).unwrap();
    m.wait_log("SIGINT: graceful shutdown", 1).await;
    conn.write_all(b"b").await.unwrap();
    timeout(LIMIT, conn.read_exact(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&b, b"b", "the worker still serves its connection");
    drop(conn);
    let exit = timeout(LIMIT, m.child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit}");
    assert_eq!(m.log_has("signal=2"), 0, "no worker died of SIGINT");
}

/// A worker program for two slots: the first worker to start holds `DIR/held` and stays
/// up (until its stop signal); every other one exits at once with status `code`.
fn one_healthy(dir: &std::path::Path, code: &str) -> String {
    format!(
        "mkdir '{}/held' 2>/dev/null && exec sleep 600; exit {code}",
        dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_never_and_on_failure_leave_the_slot_empty() {
    for (policy, code) in [("never", "3"), ("on-failure", "0")] {
        let dir = tempdir(&format!("restart-{policy}-held"));
        let m = Master::launch(
            &format!("restart-{policy}"),
            &[],
            &[
                "--workers",
                "2",
                "--grace",
                "0.1",
                "--restart",
                policy,
                "--",
                "sh",
                "-c",
                &one_healthy(&dir.0, code),
            ],
        )
        .await;
        m.wait_for(
            |r| {
                r.len() == 2
                    && r.iter().any(|r| r.state == "ready")
                    && r.iter().any(|r| r.state == "exited" && r.restarts == 0)
            },
            "one slot shown as exited",
        )
        .await;
        m.wait_log("not restarted (restart policy)", 1).await;
        assert_eq!(m.log_has("worker started"), 2, "{policy}: restarted");
        m.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_restarts_within_marks_the_slot_failed() {
    let dir = tempdir("maxrestarts-held");
    let m = Master::launch(
        "maxrestarts",
        &[],
        &[
            "--workers",
            "2",
            "--grace",
            "0.1",
            "--restart",
            "on-failure",
            "--max-restarts",
            "2",
            "--within",
            "60",
            "--",
            "sh",
            "-c",
            &one_healthy(&dir.0, "3"),
        ],
    )
    .await;
    let rows = m
        .wait_for(
            |r| r.len() == 2 && r.iter().any(|r| r.state == "failed"),
            "the slot shown as failed",
        )
        .await;
    let failed = rows.iter().find(|r| r.state == "failed").unwrap();
    assert_eq!(failed.restarts, 2, "{rows:?}");
    m.wait_log("not restarting it", 1).await;
    assert_eq!(m.log_has("worker started"), 4);
    m.stop().await;
}

/// When the restart policy has given up on every slot, the master stops accepting, says
/// why, and exits: 1 when workers failed, 0 when they all exited with status 0 under a
/// policy that does not restart that. (It used to keep accepting connections nobody took.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_exits_when_every_slot_has_failed() {
    for (tag, policy, code, expect) in [
        ("halt-never", &["--restart", "never"][..], "3", 1),
        (
            "halt-maxrestarts",
            &[
                "--restart",
                "always",
                "--max-restarts",
                "1",
                "--within",
                "60",
            ][..],
            "0",
            1,
        ),
        ("halt-clean", &["--restart", "on-failure"][..], "0", 0),
    ] {
        let script = format!("exit {code}");
        let args = [
            &["--workers", "2"][..],
            policy,
            &["--", "sh", "-c", &script][..],
        ]
        .concat();
        let mut m = Master::launch(tag, &[], &args).await;
        let exit = timeout(LIMIT, m.child.wait()).await.unwrap().unwrap();
        assert_eq!(exit.code(), Some(expect), "{tag}: master {exit}");
        let why = if expect == 0 {
            "every worker exited with status 0"
        } else {
            "no worker left"
        };
        m.wait_log_at_least(why, 1).await;
        m.wait_log("master stops accepting and exits", 1).await;
        // Nothing listens any more: connections are refused, not held.
        let refused = TcpStream::connect(&m.addr).await.unwrap_err();
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{tag}"
        );
        assert!(!m.control.exists(), "{tag}: the control socket is left");
    }
}

/// A round-robin worker that, for its first connection, starts `brood cluster` itself (as an
/// app would run `app migrate`) and reports that child's first stderr line.
const PY_PARENT: &str = r#"
import socket, subprocess, sys
ch = socket.socket(fileno=3)
while True:
    msg, fds, _, _ = socket.recv_fds(ch, 1, 1)
    if not msg:
        break
    for fd in fds:
        c = socket.socket(fileno=fd)
        p = subprocess.Popen([sys.argv[1], "cluster", "--listen", "127.0.0.1:0",
                              "--workers", "1", "--builtin", "echo"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        line = p.stderr.readline()
        p.terminate()
        p.wait()
        c.sendall(line)
        c.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_own_child_is_not_a_worker() {
    let m = Master::start(
        "marker",
        &[
            "--workers",
            "1",
            "--",
            "python3",
            "-c",
            PY_PARENT,
            env!("CARGO_BIN_EXE_brood"),
        ],
    )
    .await;
    let mut s = TcpStream::connect(&m.addr).await.unwrap();
    let mut line = String::new();
    timeout(LIMIT, s.read_to_string(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert!(
        line.starts_with("brood cluster: listening on"),
        "the worker's child took itself for a worker: {line:?}"
    );
    m.stop().await;
}

/// An any-language worker that never says it is ready; with mode "crash" it exits at once
/// (a broken deploy).
const PY_PLAIN: &str = r#"
import socket, sys
if open(sys.argv[1]).read().strip() == "crash":
    sys.exit(3)
ch = socket.socket(fileno=3)
while True:
    data, fds, _, _ = socket.recv_fds(ch, 64, 8)
    if not data:
        break
    for fd in fds:
        c = socket.socket(fileno=fd)
        c.sendall(b"py:" + c.recv(100))
        c.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_a_broken_program_without_readiness_keeps_the_old_workers_serving() {
    // No --wait-ready: a replacement is ready once it has stayed up --reload-settle seconds,
    // so a deploy that exits at once fails the reload instead of retiring every old worker.
    let dir = tempdir("settle-mode");
    let mode = dir.0.join("mode");
    std::fs::write(&mode, "good").unwrap();
    let m = Master::start(
        "settle",
        &[
            "--workers",
            "2",
            "--grace",
            "2",
            "--",
            "python3",
            "-c",
            PY_PLAIN,
            mode.to_str().unwrap(),
        ],
    )
    .await;
    // Both first workers serve (round-robin), so both have read the mode file.
    for i in 0..2 {
        py_exchange(&m.addr, &format!("first{i}")).await;
    }
    let old: Vec<u32> = m.status().await.iter().map(|r| r.pid).collect();
    std::fs::write(&mode, "crash").unwrap();
    let (ok, text) = brood_ctl(&m, &["reload"]).await;
    assert!(!ok, "ctl reload must fail: {text}");
    assert!(text.contains("ended before"), "{text}");
    let rows = m
        .wait_for(|r| r.len() == 2, "the failed replacement gone")
        .await;
    assert_eq!(
        rows.iter().map(|r| r.pid).collect::<Vec<_>>(),
        old,
        "{:#?}",
        m.log.lock().unwrap()
    );
    for i in 0..4 {
        py_exchange(&m.addr, &format!("still{i}")).await;
    }
    // A good deploy goes through, each replacement after its settle time.
    std::fs::write(&mode, "good").unwrap();
    let (ok, text) = brood_ctl(&m, &["reload"]).await;
    assert!(ok, "{text}");
    let rows = m
        .wait_for(
            |r| r.len() == 2 && r.iter().all(|r| r.state == "ready"),
            "2 new",
        )
        .await;
    assert!(rows.iter().all(|r| !old.contains(&r.pid)), "{rows:?}");
    py_exchange(&m.addr, "new").await;
    m.stop().await;
}
