//! `brood cluster` under faults: a stopped worker, a worker flooding its channel, the fd
//! limit in the master and in a worker. Memory and CPU are measured from /proc.

#[path = "support/cluster.rs"]
mod support;

use std::time::{Duration, Instant};

use brood::Signum;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::timeout;

/// README's round-robin worker as an echo server: no heartbeats, no reports.
const PY_ECHO_RR: &str = r#"
import socket
ch = socket.socket(fileno=3)
while True:
    msg, fds, _, _ = socket.recv_fds(ch, 1, 1)
    if not msg:
        break
    for fd in fds:
        c = socket.socket(fileno=fd)
        c.sendall(c.recv(100))
        c.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_loses_no_connection() {
    let args = ["--workers", "2", "--heartbeat-timeout", "60"];
    let args = [&args[..], &["--stuck-timeout", "2", "--builtin", "echo"]].concat();
    stopped_worker("stopped", &args, "killing it (its unread connections").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_killed_for_its_heartbeats_loses_no_connection() {
    let args = ["--workers", "2", "--heartbeat-timeout", "2"];
    let args = [&args[..], &["--stuck-timeout", "60", "--builtin", "echo"]].concat();
    stopped_worker("stopped-hb", &args, "missed its heartbeats").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_any_language_worker_loses_no_connection() {
    let args = [
        "--workers",
        "2",
        "--grace",
        "1",
        "--stuck-timeout",
        "2",
        "--",
        "python3",
        "-c",
        PY_ECHO_RR,
    ];
    stopped_worker("stopped-py", &args, "killing it (its unread connections").await;
}

/// One of two workers is stopped (SIGSTOP) before a load: it stops getting connections
/// within about a second, is killed (after a 2 s stuck timeout, or 2 s without heartbeats;
/// the Python worker has none), logging `killed_by`, and the connections it never read are
/// served by the other workers: every request is answered. The master's fds stay bounded
/// meanwhile.
async fn stopped_worker(tag: &str, args: &[&str], killed_by: &str) {
    let m = Master::start(tag, args).await;
    let master = m.child.id().unwrap();
    let rows = m.status().await;
    let (frozen, handled_before) = (rows[0].pid, rows[0].handled);
    brood::kill(frozen as i32, Signum::STOP).unwrap();
    // 8 clients, 296 exchanges, each given far longer than the stuck timeout.
    let mut tasks = Vec::new();
    for c in 0..8 {
        let addr = m.addr.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            for i in 0..300 / 8 {
                let msg = format!("{c}/{i}");
                match timeout(LIMIT, exchange(&addr, msg.as_bytes())).await {
                    Ok(Ok(())) => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    // Meanwhile: the master's fds, and how many connections the stopped worker got.
    let (mut max_fds, mut stuck) = (0, 0);
    while !tasks.iter().all(|t| t.is_finished()) {
        max_fds = max_fds.max(fd_count(master));
        if let Some(r) = m.status().await.iter().find(|r| r.pid == frozen) {
            stuck = r.handled - handled_before;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        let (o, f) = t.await.unwrap();
        ok += o;
        failed += f;
    }
    let _ = brood::kill(frozen as i32, Signum::CONT);
    eprintln!(
        "stopped worker: {failed} failed, {ok} ok, {stuck} handed to it; master fds at most {max_fds}"
    );
    assert_eq!(
        (ok, failed),
        (296, 0),
        "{stuck} handed to the stopped worker"
    );
    assert!(
        stuck <= 16,
        "{stuck} connections handed to the stopped worker"
    );
    assert!(max_fds < 64, "the master held {max_fds} fds");
    // It was found stuck, then killed and replaced; whatever it had been handed went to
    // the other workers.
    assert_eq!(m.log_has("no more connections to it"), 1);
    assert_eq!(m.log_has(killed_by), 1);
    assert!(!alive(frozen), "the stopped worker {frozen} still runs");
    if stuck > 0 {
        assert_eq!(m.log_has("never read go to other workers"), 1);
    }
    m.wait_for(
        |rows| rows.len() == 2 && rows.iter().all(|r| r.state == "ready" && r.pid != frozen),
        "a replacement",
    )
    .await;
    m.stop().await;
}

/// A worker stopped for less than the stuck timeout gets no connections meanwhile, then
/// reads what was queued to it once continued: nothing lost, nothing served twice, and it
/// is not killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stuck_for_a_while_gets_connections_again_once_it_reads() {
    let m = Master::start(
        "unstuck",
        &[
            "--workers",
            "2",
            "--stuck-timeout",
            "60",
            "--builtin",
            "echo",
        ],
    )
    .await;
    let rows = m.status().await;
    let frozen = rows[0].pid;
    brood::kill(frozen as i32, Signum::STOP).unwrap();
    let (stop, load) = load(m.addr.clone(), 4);
    m.wait_log("no more connections to it", 1).await;
    let handed = m.status().await[0].handled;
    brood::kill(frozen as i32, Signum::CONT).unwrap();
    m.wait_log("reads its channel again", 1).await;
    // It takes connections again.
    m.wait_for(
        |r| r[0].pid == frozen && r[0].handled > handed,
        "more for it",
    )
    .await;
    stop.send(true).unwrap();
    let (ok, failed) = load.await.unwrap();
    eprintln!("stuck for a while: {ok} ok, {failed} failed");
    assert_eq!(failed, 0);
    let rows = m.status().await;
    assert_eq!((rows[0].pid, rows[0].restarts), (frozen, 0));
    assert_eq!(m.log_has("killing it"), 0);
    m.stop().await;
}

/// The docs' round-robin worker, slow but healthy: each request takes a quarter of a
/// second, and it reads its channel after each.
const PY_SLOW_RR: &str = r#"
import socket, time
ch = socket.socket(fileno=3)
while True:
    msg, fds, _, _ = socket.recv_fds(ch, 1, 1)
    if not msg:
        break
    for fd in fds:
        c = socket.socket(fileno=fd)
        data = c.recv(100)
        time.sleep(0.25)
        c.sendall(data)
        c.close()
"#;

/// Two slow workers under 24 concurrent clients: each channel queues about 11
/// connections, so the newest waits about 3 s, twice the stuck timeout, while the worker
/// reads one every quarter second. Reading is progress: no worker is killed, no request
/// is lost, and every connection waits its turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_worker_that_keeps_reading_is_never_killed_and_loses_nothing() {
    let m = Master::start(
        "slow",
        &[
            "--workers",
            "2",
            "--stuck-timeout",
            "1.5",
            "--",
            "python3",
            "-c",
            PY_SLOW_RR,
        ],
    )
    .await;
    let pids: Vec<u32> = m.status().await.iter().map(|r| r.pid).collect();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..24 {
        let (addr, next) = (m.addr.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut slowest) = (0, 0, Duration::ZERO);
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 60 {
                let t0 = Instant::now();
                match timeout(LIMIT, exchange(&addr, format!("{c}").as_bytes())).await {
                    Ok(Ok(())) => ok += 1,
                    _ => failed += 1,
                }
                slowest = slowest.max(t0.elapsed());
            }
            (ok, failed, slowest)
        }));
    }
    let (mut ok, mut failed, mut slowest) = (0, 0, Duration::ZERO);
    for t in tasks {
        let (o, f, s) = t.await.unwrap();
        ok += o;
        failed += f;
        slowest = slowest.max(s);
    }
    eprintln!(
        "slow workers: {ok} ok, {failed} failed, slowest exchange {:.1} s, {} killed, {} 'no more connections'",
        slowest.as_secs_f64(),
        m.log_has("killing it"),
        m.log_has("no more connections to it")
    );
    assert_eq!((ok, failed), (60, 0));
    // The queue was longer than the stuck timeout: the case the test is about.
    assert!(slowest > Duration::from_millis(1500), "{slowest:?}");
    assert_eq!(m.log_has("killing it"), 0);
    let rows = m.status().await;
    assert_eq!(rows.iter().map(|r| r.pid).collect::<Vec<_>>(), pids);
    assert!(rows.iter().all(|r| r.restarts == 0), "{rows:?}");
    m.stop().await;
}

/// A worker that reads one connection, leaves the next ones unread, then closes its
/// channel and takes a second to exit.
const PY_CLOSES_AND_LINGERS: &str = r#"
import socket, time
ch = socket.socket(fileno=3)
socket.recv_fds(ch, 1, 1)
time.sleep(1.5)
ch.close()
time.sleep(1)
"#;

/// The kernel drops what a worker that closed its channel left unread: that is no sign
/// that it reads again, and the master does not say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_closes_its_channel_is_not_said_to_read_again() {
    let m = Master::start(
        "hangs-up",
        &[
            "--workers",
            "1",
            "--",
            "python3",
            "-c",
            PY_CLOSES_AND_LINGERS,
        ],
    )
    .await;
    let pid = m.status().await[0].pid;
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(
            timeout(LIMIT, TcpStream::connect(&m.addr))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    m.wait_log("no more connections to it", 1).await;
    m.wait_log_at_least("worker exited", 1).await;
    assert!(!alive(pid));
    assert_eq!(m.log_has("reads its channel again"), 0);
    drop(conns);
    m.stop().await;
}

/// A worker that floods its channel with bytes and with fds, then says it is ready and
/// answers heartbeats.
const PY_FLOOD: &str = r#"
import os, socket
ch = socket.socket(fileno=3)
r, w = os.pipe()
chunk = b"x" * 65536
for i in range(100):
    ch.sendall(chunk)
for i in range(3000):
    socket.send_fds(ch, [b"x"], [r, w])
ch.send(b"r")
while True:
    data, fds, _, _ = socket.recv_fds(ch, 64, 8)
    if not data:
        break
    for fd in fds:
        os.close(fd)
    if b"p" in data:
        ch.send(b"P")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_worker_leaves_the_master_small_and_still_heard() {
    let m = Master::start(
        "flood",
        &[
            "--workers",
            "1",
            "--wait-ready",
            "--",
            "python3",
            "-c",
            PY_FLOOD,
        ],
    )
    .await;
    // It got through: the master read all the flood and the `r` after it.
    let master = m.child.id().unwrap();
    let (peak, _) = rss_kib(master);
    let fds = fd_count(master);
    eprintln!("after the flood: master VmHWM {peak} KiB, {fds} fds");
    assert!(peak < 64 * 1024, "master RSS peaked at {peak} KiB");
    assert!(fds < 40, "master holds {fds} fds");
    // A control-socket line with no newline is cut off at its limit.
    let mut s = UnixStream::connect(&m.control).await.unwrap();
    let junk = vec![b'a'; 1 << 20];
    let writer = async {
        for _ in 0..100 {
            if s.write_all(&junk).await.is_err() {
                return true;
            }
        }
        false
    };
    let refused = timeout(LIMIT, writer).await.unwrap();
    assert!(refused, "the master kept reading a 100 MiB line");
    let (peak, _) = rss_kib(master);
    assert!(peak < 64 * 1024, "master RSS peaked at {peak} KiB");
    let rows = m.status().await;
    assert_eq!(rows[0].state, "ready");
    m.stop().await;
}

/// Sets the fd limit of the master and its workers to 64.
const ULIMIT_64: [&str; 3] = ["sh", "-c", "ulimit -n 64 && exec \"$0\" \"$@\""];

async fn connect_many(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(
            timeout(LIMIT, TcpStream::connect(addr))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    conns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_64_fds_200_connections_leave_the_master_idle_and_its_workers_alive() {
    let m = Master::launch(
        "emfile",
        &ULIMIT_64,
        &[
            "--workers",
            "2",
            "--heartbeat-timeout",
            "1",
            "--builtin",
            "echo",
        ],
    )
    .await;
    let pids: Vec<u32> = m
        .wait_for(
            |r| r.len() == 2 && r.iter().all(|r| r.state == "ready"),
            "ready",
        )
        .await
        .iter()
        .map(|r| r.pid)
        .collect();
    let master = m.child.id().unwrap();
    let conns = connect_many(&m.addr, 200).await;
    // Past the accept burst, over a window longer than the heartbeat timeout: the master
    // idles, answers ctl, and keeps both workers.
    let tick = 100.0; // USER_HZ
    let window = Duration::from_secs(2);
    let cpu0 = cpu_ticks(master);
    let t0 = Instant::now();
    while t0.elapsed() < window {
        let rows = m.status().await;
        assert_eq!(rows.iter().map(|r| r.pid).collect::<Vec<_>>(), pids);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let used = (cpu_ticks(master) - cpu0) as f64 / tick / t0.elapsed().as_secs_f64();
    eprintln!("master CPU at its fd limit: {:.1}%", used * 100.0);
    assert!(
        used < 0.25,
        "master used {:.0}% CPU at its fd limit",
        used * 100.0
    );
    assert_eq!(m.log_has("missed its heartbeats"), 0);
    drop(conns);
    // Once the clients leave, it serves again, with the same workers, and idles.
    for i in 0..10 {
        timeout(LIMIT, exchange(&m.addr, format!("again {i}").as_bytes()))
            .await
            .unwrap()
            .unwrap();
    }
    let cpu0 = cpu_ticks(master);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = (cpu_ticks(master) - cpu0) as f64 / tick / t0.elapsed().as_secs_f64();
    assert!(
        used < 0.25,
        "master used {:.0}% CPU after the clients left",
        used * 100.0
    );
    let rows = m.status().await;
    assert_eq!(rows.iter().map(|r| r.pid).collect::<Vec<_>>(), pids);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_at_its_fd_limit_drops_that_connection_and_keeps_its_channel() {
    let m = Master::launch(
        "ctrunc",
        &ULIMIT_64,
        &[
            "--workers",
            "1",
            "--heartbeat-timeout",
            "1",
            "--builtin",
            "echo",
        ],
    )
    .await;
    let pid = m
        .wait_for(|r| r.len() == 1 && r[0].state == "ready", "ready")
        .await[0]
        .pid;
    let conns = connect_many(&m.addr, 100).await;
    // The worker logs the cut-off handles (as a channel error or a dropped connection).
    until("the worker logs a dropped connection", || {
        m.log_has("worker: channel") + m.log_has("worker: connection dropped") > 0
    })
    .await;
    // Longer than the heartbeat timeout: the worker still answers its heartbeats.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1500) {
        let rows = m.status().await;
        assert_eq!(rows[0].pid, pid, "the worker was replaced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(conns);
    // Once it has closed the connections the clients left (it is below its limit again),
    // it still takes connections from its channel.
    until("the worker closes what the clients left", || {
        fd_count(pid) < 32
    })
    .await;
    for i in 0..10 {
        let msg = format!("after {i}");
        let mut s = TcpStream::connect(&m.addr).await.unwrap();
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        timeout(LIMIT, s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
    }
    let rows = m.status().await;
    assert_eq!((rows[0].pid, rows[0].restarts), (pid, 0));
    assert_eq!(m.log_has("missed its heartbeats"), 0);
    m.stop().await;
}

/// A worker that floods its channel for ever with bytes the protocol does not have and
/// with fds.
const PY_FLOOD_FOREVER: &str = r#"
import os, socket
ch = socket.socket(fileno=3)
r, w = os.pipe()
chunk = b"x" * 65536
while True:
    ch.sendall(chunk)
    socket.send_fds(ch, [b"x"], [r, w])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_flooding_for_ever_costs_the_master_little_cpu() {
    let m = Master::start(
        "flood-cpu",
        &[
            "--workers",
            "1",
            "--grace",
            "1",
            "--",
            "python3",
            "-c",
            PY_FLOOD_FOREVER,
        ],
    )
    .await;
    let master = m.child.id().unwrap();
    let worker = m.status().await[0].pid;
    // The flood is under way once the worker has spent a tenth of a second writing it.
    until("the worker floods", || cpu_ticks(worker) >= 10).await;
    let tick = 100.0; // USER_HZ
    let window = Duration::from_secs(2);
    let (cpu0, t0) = (cpu_ticks(master), Instant::now());
    while t0.elapsed() < window {
        // The master answers meanwhile, and keeps the worker.
        let rows = m.status().await;
        assert_eq!((rows[0].pid, rows[0].restarts), (worker, 0));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let used = (cpu_ticks(master) - cpu0) as f64 / tick / t0.elapsed().as_secs_f64();
    let (peak, _) = rss_kib(master);
    eprintln!(
        "master CPU while a worker floods: {:.1}%, VmHWM {peak} KiB, {} fds",
        used * 100.0,
        fd_count(master)
    );
    assert!(used < 0.15, "master used {:.0}% CPU", used * 100.0);
    assert!(peak < 64 * 1024, "master RSS peaked at {peak} KiB");
    assert!(fd_count(master) < 40);
    assert!(m.log_has("worker floods its channel") >= 1);
    m.stop().await;
}
