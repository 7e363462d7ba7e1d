//! `brood cluster` with Node.js workers that have no brood code in them
//! (`examples/node/`): round-robin hands each connection as Node's own `NODE_HANDLE`
//! message (`process.on('message', (m, socket) => server.emit('connection', socket))`),
//! shared lets each worker `server.listen({fd: 3})`; a rolling restart retires workers by
//! closing their channel (Node's `'disconnect'`) without failing a request.

#[path = "support/cluster.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::Instant;

use brood::Signum;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

fn example(name: &str) -> String {
    format!("{}/../examples/node/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// 200 connections, 20 at a time, each an echo exchange that must come back whole.
async fn answer_200(addr: &str) {
    for batch in 0..10 {
        let mut tasks = Vec::new();
        for i in 0..20 {
            let addr = addr.to_string();
            tasks.push(tokio::spawn(async move {
                let msg = format!("connection {batch}-{i}");
                timeout(LIMIT, exchange(&addr, msg.as_bytes())).await
            }));
        }
        for t in tasks {
            t.await
                .unwrap()
                .expect("an exchange stalled")
                .expect("an exchange failed");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_node_workers_answer_200_round_robin_connections_handed_as_node_handles() {
    let m = Master::start(
        "node-rr",
        &[
            "--workers",
            "2",
            "--wait-ready",
            "--",
            "node",
            &example("worker.js"),
        ],
    )
    .await;
    // Both workers up before the load: a worker still starting would leave every
    // connection to the other one (each takes one at a time until it acknowledges).
    m.wait_for(
        |rows| rows.len() == 2 && rows.iter().all(|r| r.state == "ready"),
        "two ready node workers",
    )
    .await;
    answer_200(&m.addr).await;
    let rows = m.status().await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows.iter().map(|r| r.handled).sum::<u64>(), 200, "{rows:?}");
    // Round-robin among workers free to take one: both take a real share (how even it is
    // depends on how fast each acknowledges on a loaded machine).
    assert!(rows.iter().all(|r| r.handled >= 20), "spread: {rows:?}");
    // No worker was lost or replaced on the way.
    assert!(rows.iter().all(|r| r.restarts == 0), "{rows:?}");
    let pids = m.stop().await;
    for pid in pids {
        until("the node worker exits", || !alive(pid)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_node_workers_answer_200_connections_on_the_shared_listener() {
    let m = Master::start(
        "node-shared",
        &[
            "--workers",
            "2",
            "--strategy",
            "shared",
            "--",
            "node",
            &example("worker.js"),
        ],
    )
    .await;
    answer_200(&m.addr).await;
    let rows = m.status().await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r.restarts == 0), "{rows:?}");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_example_answers_through_the_cluster() {
    let m = Master::start(
        "node-http",
        &[
            "--workers",
            "2",
            "--wait-ready",
            "--",
            "node",
            &example("http_worker.js"),
        ],
    )
    .await;
    let pids: BTreeSet<u32> = m.status().await.iter().map(|r| r.pid).collect();
    for _ in 0..4 {
        let mut s = TcpStream::connect(&m.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut got = String::new();
        timeout(LIMIT, s.read_to_string(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
        let pid: u32 = got
            .rsplit("hello from node ")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(pids.contains(&pid), "answered by {pid}, workers {pids:?}");
    }
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_node_workers_under_load_fails_no_request() {
    for strategy in ["round-robin", "shared"] {
        let m = Master::start(
            &format!("node-reload-{strategy}"),
            &[
                "--workers",
                "2",
                "--strategy",
                strategy,
                "--wait-ready",
                "--",
                "node",
                &example("worker.js"),
            ],
        )
        .await;
        let old: BTreeSet<u32> = m.status().await.iter().map(|r| r.pid).collect();
        let (stop, load) = load(m.addr.clone(), 4);
        // Load flows before, during and after the restart.
        answer_200(&m.addr).await;
        brood::kill(m.child.id().unwrap() as i32, Signum::HUP).unwrap();
        m.wait_log("rolling restart done", 1).await;
        let start = Instant::now();
        answer_200(&m.addr).await;
        assert!(start.elapsed() < LIMIT);
        stop.send(true).unwrap();
        let (ok, failed) = timeout(LIMIT, load).await.unwrap().unwrap();
        assert_eq!(failed, 0, "{strategy}: {failed} failed requests ({ok} ok)");
        assert!(ok > 0, "{strategy}: the load ran");
        let rows = m.status().await;
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(
            rows.iter().all(|r| !old.contains(&r.pid)),
            "{strategy}: every worker replaced: {rows:?}, old {old:?}"
        );
        // The old workers left on their own at 'disconnect' (no stop signal needed).
        for pid in &old {
            until("an old node worker exits", || !alive(*pid)).await;
        }
        assert_eq!(m.log_has("grace period over"), 0, "{strategy}: {:?}", m.log);
        m.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_worker_holds_one_connection_at_most_and_the_other_answers_the_rest() {
    let m = Master::start(
        "node-stopped",
        &[
            "--workers",
            "2",
            "--stuck-timeout",
            "60",
            "--",
            "node",
            &example("worker.js"),
        ],
    )
    .await;
    let rows = m.status().await;
    let stopped = rows[0].pid;
    brood::kill(stopped as i32, Signum::STOP).unwrap();
    until("the worker is stopped", || {
        std::fs::read_to_string(format!("/proc/{stopped}/stat")).is_ok_and(|s| s.contains(") T "))
    })
    .await;
    // As in Node, a worker gets the next connection only once it acknowledged the last:
    // a hung event loop holds one connection, never a queue of them.
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..100 {
        let (addr, done_tx) = (m.addr.clone(), done_tx.clone());
        tokio::spawn(async move {
            let r = exchange(&addr, format!("conn {i}").as_bytes()).await;
            let _ = done_tx.send(r.is_ok());
        });
    }
    for _ in 0..99 {
        let ok = timeout(LIMIT, done.recv())
            .await
            .expect("the running worker did not answer 99 connections")
            .unwrap();
        assert!(ok, "an exchange failed");
    }
    assert!(
        done.try_recv().is_err(),
        "the stopped worker cannot have answered"
    );
    let rows = m.status().await;
    let handled = |pid| rows.iter().find(|r| r.pid == pid).unwrap().handled;
    assert_eq!(handled(stopped), 1, "{rows:?}");
    // Woken up, it answers the one it holds.
    brood::kill(stopped as i32, Signum::CONT).unwrap();
    let ok = timeout(LIMIT, done.recv()).await.unwrap().unwrap();
    assert!(ok, "the held connection was answered");
    m.stop().await;
}

/// A worker that sends the master 20 MiB of messages while it serves.
const NODE_CHATTY: &str = r#"
'use strict';
const net = require('net');
const server = net.createServer((s) => s.pipe(s));
process.on('message', (m, socket) => { if (socket) server.emit('connection', socket); });
process.on('disconnect', () => server.close());
const pad = 'x'.repeat(1024);
let left = 20 * 1024;
for (let i = 0; i < 20 * 1024; i++) {
  process.send({ i, pad }, () => { if (--left === 0) console.log('flooded'); });
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_worker_flooding_the_master_with_messages_leaves_it_small_and_serving() {
    let m = Master::start(
        "node-chatty",
        &["--workers", "1", "--", "node", "-e", NODE_CHATTY],
    )
    .await;
    let master = m.child.id().unwrap();
    answer_200(&m.addr).await;
    m.wait_log("flooded", 1).await;
    answer_200(&m.addr).await;
    let (peak, _) = rss_kib(master);
    assert!(
        peak < 40 * 1024,
        "the master's peak RSS is {peak} KiB after 20 MiB of a worker's messages"
    );
    let rows = m.status().await;
    assert_eq!(rows[0].handled, 400, "{rows:?}");
    m.stop().await;
}

/// Waits until every thread of `pid` is stopped.
async fn stopped(pid: u32) {
    until("the worker is stopped", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") T "))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_worker_is_killed_and_the_connection_it_held_goes_to_another() {
    let m = Master::start(
        "node-stuck",
        &[
            "--workers",
            "2",
            "--stuck-timeout",
            "2",
            // (A replacement is handed connections once it has started: a Node start can
            // take seconds on a loaded machine.)
            "--wait-ready",
            "--",
            "node",
            &example("worker.js"),
        ],
    )
    .await;
    // Both serve; then one is stopped between two batches and the load goes on.
    answer_200(&m.addr).await;
    let frozen = m.status().await[0].pid;
    brood::kill(frozen as i32, Signum::STOP).unwrap();
    stopped(frozen).await;
    let start = Instant::now();
    // Every exchange is answered (each bounded by LIMIT): the one connection the stopped
    // worker was handed and never acknowledged goes to another worker once it is dead.
    answer_200(&m.addr).await;
    answer_200(&m.addr).await;
    eprintln!(
        "400 exchanges with a stopped node worker: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    m.wait_log("has not acknowledged its connection", 2).await;
    assert_eq!(m.log_has("killing it"), 1);
    assert_eq!(
        m.log_has("the connection the worker never acknowledged goes to another worker"),
        1
    );
    until("the stopped worker is gone", || !alive(frozen)).await;
    m.wait_for(
        |rows| rows.len() == 2 && rows.iter().all(|r| r.state == "ready" && r.pid != frozen),
        "a replacement",
    )
    .await;
    m.stop().await;
}

/// A program that says it is ready (`process.send('ready')`), then reads its Node channel
/// and never acknowledges anything (it keeps the fds it gets), run by the first worker to
/// start; every later one runs the example.
const PY_NEVER_ACK: &str = r#"
import os, socket
ch = socket.socket(fileno=int(os.environ["NODE_CHANNEL_FD"]))
ch.sendall(b'"ready"\n')
held = []
while True:
    msg, fds, _, _ = socket.recv_fds(ch, 4096, 16)
    if not msg:
        break
    held += fds
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_worker_that_never_acknowledges_is_killed_and_every_request_answered() {
    let mark = tempdir("node-never-ack-mark");
    let script = format!(
        "if mkdir '{}/first' 2>/dev/null; then exec python3 -c \"$0\"; else exec node '{}'; fi",
        mark.0.display(),
        example("worker.js")
    );
    let m = Master::start(
        "node-never-ack",
        &[
            "--workers",
            "2",
            "--stuck-timeout",
            "2",
            "--wait-ready",
            "--worker-protocol",
            "node",
            "--",
            "sh",
            "-c",
            &script,
            PY_NEVER_ACK,
        ],
    )
    .await;
    let master = m.child.id().unwrap();
    let runs_python = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("python"))
    };
    let rows = m
        .wait_for(|r| r.iter().any(|r| runs_python(&r.pid)), "a python worker")
        .await;
    let bad = rows.iter().map(|r| r.pid).find(runs_python).unwrap();
    answer_200(&m.addr).await;
    assert_eq!(m.log_has("killing it"), 1);
    assert_eq!(
        m.log_has("the connection the worker never acknowledged goes to another worker"),
        1
    );
    until("the never-acknowledging worker is gone", || !alive(bad)).await;
    // Its slot runs the example now; the master holds no connection for anyone.
    let rows = m
        .wait_for(
            |rows| rows.len() == 2 && rows.iter().all(|r| r.state == "ready" && r.pid != bad),
            "a replacement",
        )
        .await;
    let fds = fd_count(master);
    assert!(fds < 40, "the master holds {fds} fds");
    eprintln!("never-acknowledging worker replaced: {rows:?}");
    m.stop().await;
}

/// A worker that sends the master one 1 MiB message, then serves.
const NODE_BIG_MESSAGE: &str = r#"
'use strict';
const net = require('net');
const server = net.createServer((s) => { s.on('error', () => {}); s.pipe(s); });
process.on('message', (m, socket) => { if (socket) server.emit('connection', socket); });
process.on('disconnect', () => server.close());
process.send({ big: 'x'.repeat(1 << 20) }, () => console.log('sent the big message'));
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_message_over_the_line_limit_is_dropped_and_the_worker_keeps_serving() {
    let m = Master::start(
        "node-big",
        &["--workers", "1", "--", "node", "-e", NODE_BIG_MESSAGE],
    )
    .await;
    let master = m.child.id().unwrap();
    m.wait_log("sent the big message", 1).await;
    answer_200(&m.addr).await;
    let rows = m.status().await;
    assert_eq!((rows[0].handled, rows[0].restarts), (200, 0), "{rows:?}");
    assert_eq!(m.log_has("line is dropped"), 1);
    let (peak, _) = rss_kib(master);
    eprintln!("after a 1 MiB message: master VmHWM {peak} KiB");
    assert!(peak < 40 * 1024, "master RSS peaked at {peak} KiB");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_node_worker_gives_back_the_connection_it_never_acknowledged() {
    let m = Master::start(
        "node-retire-held",
        &[
            "--workers",
            "2",
            "--stuck-timeout",
            "60",
            "--grace",
            "1",
            "--kill-after",
            "1",
            "--",
            "node",
            &example("worker.js"),
        ],
    )
    .await;
    answer_200(&m.addr).await;
    let frozen = m.status().await[0].pid;
    brood::kill(frozen as i32, Signum::STOP).unwrap();
    stopped(frozen).await;
    // The stopped worker is handed one of these and holds it; the other answers the rest.
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..20 {
        let (addr, done_tx) = (m.addr.clone(), done_tx.clone());
        tokio::spawn(async move {
            let r = timeout(LIMIT, exchange(&addr, format!("held {i}").as_bytes())).await;
            let _ = done_tx.send(matches!(r, Ok(Ok(()))));
        });
    }
    for _ in 0..19 {
        let ok = timeout(LIMIT, done.recv()).await.unwrap().unwrap();
        assert!(ok, "an exchange failed");
    }
    m.wait_for(
        |rows| rows.iter().any(|r| r.pid == frozen && r.handled > 0),
        "a connection held by the stopped worker",
    )
    .await;
    // A rolling restart retires it (channel closed, the stop signal, SIGKILL): the
    // connection it never acknowledged is answered by another worker, not reset.
    brood::kill(m.child.id().unwrap() as i32, Signum::HUP).unwrap();
    let ok = timeout(LIMIT, done.recv()).await.unwrap().unwrap();
    assert!(ok, "the held connection was reset");
    m.wait_log("rolling restart done", 1).await;
    assert_eq!(
        m.log_has("the connection the worker never acknowledged goes to another worker"),
        1
    );
    until("the stopped worker is gone", || !alive(frozen)).await;
    m.stop().await;
}
