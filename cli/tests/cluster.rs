//! `brood cluster` end to end: real master and worker processes, real signals, loopback load.

#[path = "support/cluster.rs"]
mod support;

use std::time::{Duration, Instant};

use brood::{Command, Signum, Stdio};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

async fn serve_200(strategy: &str) {
    let m = Master::start(
        strategy,
        &[
            "--workers",
            "2",
            "--strategy",
            strategy,
            "--builtin",
            "echo",
        ],
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let addr = m.addr.clone();
        tasks.push(tokio::spawn(async move {
            exchange(&addr, format!("hello {i}").as_bytes()).await
        }));
    }
    for t in tasks {
        timeout(LIMIT, t).await.unwrap().unwrap().unwrap();
    }
    let rows = m
        .wait_for(
            |r| r.iter().map(|r| r.handled).sum::<u64>() == 200,
            "200 handled",
        )
        .await;
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter().all(|r| r.handled > 0),
        "{strategy}: not spread: {rows:?}"
    );
    let pids = m.stop().await;
    for pid in pids {
        assert!(!alive(pid), "worker {pid} outlived the master");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_serves_200_connections_on_2_workers() {
    serve_200("round-robin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_serves_200_connections_on_2_workers() {
    serve_200("least-connections").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_serves_200_connections_on_2_workers() {
    serve_200("shared").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuseport_serves_200_connections_on_2_workers() {
    serve_200("reuseport").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_respawned_within_a_second() {
    let m = Master::start("kill", &["--workers", "2", "--builtin", "echo"]).await;
    let (stop, handle) = load(m.addr.clone(), 4);
    let before = m
        .wait_for(|r| r.iter().all(|r| r.handled > 5), "load")
        .await;
    let victim = before[0].pid;
    brood::kill(victim as i32, Signum::KILL).unwrap();
    let t = Instant::now();
    let after = m
        .wait_for(
            |r| {
                r.len() == 2
                    && !r.iter().any(|r| r.pid == victim)
                    && r.iter().all(|r| r.state == "ready")
            },
            "respawn",
        )
        .await;
    let took = t.elapsed();
    assert!(took < Duration::from_secs(1), "respawn took {took:?}");
    assert_eq!(after.iter().map(|r| r.restarts).max(), Some(1));
    tokio::time::sleep(Duration::from_millis(200)).await; // load on the new worker too
    stop.send(true).unwrap();
    let (ok, failed) = timeout(LIMIT, handle).await.unwrap().unwrap();
    // Only what the killed worker held can fail: at most one exchange per client.
    assert!(failed <= 4, "{failed} failed, {ok} ok");
    assert!(ok > 20);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_accepted_connections_finish_then_everything_exits() {
    let m = Master::start(
        "term",
        &["--workers", "2", "--grace", "20", "--builtin", "echo"],
    )
    .await;
    // 20 connections accepted and handed to workers before the signal.
    let mut conns = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(&m.addr).await.unwrap();
        s.write_all(format!("before {i}").as_bytes()).await.unwrap();
        let mut buf = vec![0u8; format!("before {i}").len()];
        s.read_exact(&mut buf).await.unwrap();
        conns.push(s);
    }
    let pids: Vec<u32> = m.status().await.iter().map(|r| r.pid).collect();
    let mut master = m;
    master.child.kill(Signum::TERM).unwrap();
    // Every accepted connection still works after the signal, until we close it.
    for (i, s) in conns.iter_mut().enumerate() {
        let msg = format!("after {i}");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        timeout(LIMIT, s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
    // New connections are refused once the master has closed its listener, which it does
    // before it logs the shutdown: wait for that line, then check.
    master.wait_log("graceful shutdown", 1).await;
    assert!(TcpStream::connect(&master.addr).await.is_err());
    drop(conns);
    let exit = timeout(LIMIT, master.child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit}");
    for pid in pids {
        assert!(!alive(pid), "worker {pid} still running");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_replaces_every_worker_without_a_failed_request() {
    let m = Master::start("hup", &["--workers", "2", "--builtin", "echo"]).await;
    let (stop, handle) = load(m.addr.clone(), 4);
    let old = m
        .wait_for(|r| r.iter().all(|r| r.handled > 5), "load")
        .await;
    let old: Vec<u32> = old.iter().map(|r| r.pid).collect();
    brood::kill(m.child.id().unwrap() as i32, Signum::HUP).unwrap();
    m.wait_for(
        |r| {
            r.len() == 2
                && r.iter()
                    .all(|r| !old.contains(&r.pid) && r.state == "ready")
        },
        "all workers replaced",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(true).unwrap();
    let (ok, failed) = timeout(LIMIT, handle).await.unwrap().unwrap();
    assert_eq!(
        failed, 0,
        "{failed} failed, {ok} ok during the rolling restart"
    );
    m.wait_log("rolling restart done", 1).await;
    m.wait_log("worker retired", 2).await;
    assert!(ok > 20);
    for pid in old {
        assert!(!alive(pid));
    }
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_die_with_a_killed_master() {
    let mut m = Master::start("mkill", &["--workers", "2", "--builtin", "echo"]).await;
    let pids: Vec<u32> = m.status().await.iter().map(|r| r.pid).collect();
    m.child.kill(Signum::KILL).unwrap();
    timeout(LIMIT, m.child.wait()).await.unwrap().unwrap();
    let t = Instant::now();
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "workers outlived the master"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_status_scale_and_reload() {
    let m = Master::start("ctl", &["--workers", "2", "--builtin", "http"]).await;
    let text = m.ctl("status").await;
    assert!(text.contains("strategy round-robin"), "{text}");
    assert!(m.ctl("scale 3").await.contains("scaling to 3"));
    m.wait_for(
        |r| r.len() == 3 && r.iter().all(|r| r.state == "ready"),
        "3 workers",
    )
    .await;
    assert!(m.ctl("scale 1").await.contains("scaling to 1"));
    let one = m.wait_for(|r| r.len() == 1, "1 worker").await;
    // `reload` answers once the rolling restart is over.
    let answer = m.ctl("reload").await;
    assert!(answer.contains("reloaded 1 workers"), "{answer}");
    m.wait_for(
        |r| r.len() == 1 && r[0].pid != one[0].pid && r[0].state == "ready",
        "reloaded",
    )
    .await;
    assert!(m.ctl("frobnicate").await.starts_with("error:"));
    // The socket is private to its user.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&m.control).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // HTTP works through whatever worker is there now.
    let mut s = TcpStream::connect(&m.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    timeout(LIMIT, s.read_to_string(&mut resp))
        .await
        .unwrap()
        .unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("Hello from a brood worker\n"));
    m.stop().await;
}

const PY_SHARED: &str = r#"
import os, socket
assert os.environ["LISTEN_PID"] == str(os.getpid()), "LISTEN_PID is not our pid"
assert os.environ["LISTEN_FDS"] == "1"
l = socket.socket(fileno=3)
while True:
    c, _ = l.accept()
    c.sendall(b"py:" + c.recv(100))
    c.close()
"#;

async fn python_worker(strategy: &str, script: &str) {
    let m = Master::start(
        &format!("py-{strategy}"),
        &[
            "--workers",
            "2",
            "--strategy",
            strategy,
            "--grace",
            "1",
            "--",
            "python3",
            "-c",
            script,
        ],
    )
    .await;
    for i in 0..20 {
        let mut s = TcpStream::connect(&m.addr).await.unwrap();
        s.write_all(format!("{i}").as_bytes()).await.unwrap();
        let mut got = String::new();
        let r = timeout(LIMIT, s.read_to_string(&mut got)).await.unwrap();
        assert!(
            r.is_ok(),
            "connection {i}: {r:?}\n{}",
            m.log.lock().unwrap().join("\n")
        );
        assert_eq!(got, format!("py:{i}"));
    }
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_worker_shared_listener_on_fd_3() {
    python_worker("shared", PY_SHARED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_worker_round_robin_channel_on_fd_3() {
    python_worker("round-robin", PY_ROUND_ROBIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_exits_at_once_is_respawned_with_backoff() {
    let dir = tempdir("backoff");
    let control = dir.0.join("ctl.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_brood"))
        .arg("cluster")
        .args(["--listen", "127.0.0.1:0", "--workers", "1", "--control"])
        .arg(&control)
        .args(["--", "sh", "-c", "exit 3"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut delays = Vec::new();
    let start = Instant::now();
    timeout(LIMIT, async {
        while delays.len() < 4 {
            let line = lines.next_line().await.unwrap().unwrap();
            if line.contains("respawning after backoff") {
                let ms: u64 = line
                    .split("delay_ms=")
                    .nth(1)
                    .unwrap()
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                delays.push(ms);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(delays, vec![100, 200, 400, 800], "the delay doubles");
    assert!(start.elapsed() >= Duration::from_millis(700), "no spinning");
    // The master still answers while its worker keeps crashing.
    let status = timeout(LIMIT, brood::cluster::ctl(&control, "status"))
        .await
        .unwrap()
        .unwrap();
    assert!(status.contains("strategy round-robin"), "{status}");
    child.kill(Signum::TERM).unwrap();
    assert!(
        timeout(LIMIT, child.wait())
            .await
            .unwrap()
            .unwrap()
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigttin_and_sigttou_add_and_remove_a_worker() {
    let m = Master::start("ttin", &["--workers", "2", "--builtin", "echo"]).await;
    let master = m.child.id().unwrap() as i32;
    brood::kill(master, Signum::TTIN).unwrap();
    m.wait_for(
        |r| r.len() == 3 && r.iter().all(|r| r.state == "ready"),
        "3 workers",
    )
    .await;
    // One signal at a time: the kernel merges a second one sent before the first is seen.
    brood::kill(master, Signum::TTOU).unwrap();
    m.wait_for(|r| r.len() == 2, "2 workers").await;
    brood::kill(master, Signum::TTOU).unwrap();
    m.wait_for(|r| r.len() == 1, "1 worker").await;
    exchange(&m.addr, b"still serving").await.unwrap();
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_answering_heartbeats_is_replaced() {
    let m = Master::start(
        "heartbeat",
        &[
            "--workers",
            "2",
            "--heartbeat-timeout",
            "0.5",
            "--builtin",
            "echo",
        ],
    )
    .await;
    let rows = m.status().await;
    let frozen = rows[0].pid;
    // A stopped process cannot answer; the master must notice and replace it.
    brood::kill(frozen as i32, Signum::STOP).unwrap();
    m.wait_for(
        |r| {
            r.len() == 2
                && !r.iter().any(|r| r.pid == frozen)
                && r.iter().all(|r| r.state == "ready")
        },
        "frozen worker replaced",
    )
    .await;
    assert!(!alive(frozen));
    m.wait_log("missed its heartbeats", 1).await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_takes_its_listener_from_systemd_listen_fds() {
    // Play systemd: a listening socket on fd 3, LISTEN_FDS=1, LISTEN_PID = the master's pid.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_brood"))
        .args([
            "cluster",
            "--listen",
            "127.0.0.1:1",
            "--workers",
            "2",
            "--builtin",
            "echo",
        ])
        .stdio(3, Stdio::inherit_stream(&listener))
        .env("LISTEN_FDS", "1")
        .env_pid("LISTEN_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    drop(listener);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let said = timeout(LIMIT, async {
        loop {
            let line = lines.next_line().await.unwrap().unwrap();
            if let Some(a) = line.strip_prefix("brood cluster: listening on ") {
                return a.to_string();
            }
        }
    })
    .await
    .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    assert_eq!(said, addr, "the systemd socket, not --listen");
    for i in 0..10 {
        timeout(LIMIT, exchange(&addr, format!("sd {i}").as_bytes()))
            .await
            .unwrap()
            .unwrap();
    }
    child.kill(Signum::TERM).unwrap();
    assert!(
        timeout(LIMIT, child.wait())
            .await
            .unwrap()
            .unwrap()
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigint_ends_a_graceful_shutdown_at_once() {
    let m = Master::start(
        "int2",
        &["--workers", "2", "--grace", "60", "--builtin", "echo"],
    )
    .await;
    let pids: Vec<u32> = m.status().await.iter().map(|r| r.pid).collect();
    // An open connection keeps the graceful shutdown waiting.
    let mut conn = TcpStream::connect(&m.addr).await.unwrap();
    conn.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    conn.read_exact(&mut b).await.unwrap();
    let mut master = m;
    master.child.kill(Signum::INT).unwrap();
    // The first SIGINT was taken: the watcher stopped and the default action is back.
    let t = Instant::now();
    loop {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", master.child.id().unwrap()))
                .unwrap();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
            .unwrap();
        if caught & (1 << (libc::SIGINT - 1)) == 0 {
            break;
        }
        assert!(t.elapsed() < LIMIT, "SIGINT still caught");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    master.child.kill(Signum::INT).unwrap();
    let exit = timeout(Duration::from_secs(5), master.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.signal, libc::SIGINT, "{exit}");
    let t = Instant::now();
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "workers outlived the master"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
