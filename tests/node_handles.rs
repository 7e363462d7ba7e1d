//! Handles pipelined over a Node-protocol channel, against a real `node`: as in Node, a
//! handle waits for the ACK of the one before, but no send waits for an ACK that only the
//! user's `recv_msg` would read (the channel's reader takes them), so neither side stalls.
//! Every handle arrives with its own message: each is a socket whose peer names it.

use std::io::Write;
use std::os::fd::AsFd;
use std::time::Duration;

use brood::ipc::{Channel, Protocol};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);
const N: usize = 50;

/// A Node child of a brood parent: for each `{i}` with a socket, reads the line brood wrote
/// into the socket's other end and answers on the socket with it; `{done}` is answered
/// with the count of handles and messages it got.
const NODE_READER: &str = r#"
'use strict';
let handles = 0, messages = 0;
process.on('message', (m, h) => {
  messages++;
  if (m.done) { process.send({ handles, messages }); return; }
  if (!h) return;
  handles++;
  let s = '';
  h.setEncoding('utf8');
  h.on('data', (d) => {
    s += d;
    if (s.endsWith('\n')) h.end(`node got ${m.i} with ${s}`);
  });
});
"#;

fn spawn_node(script: &str) -> (brood::Child, Channel) {
    let mut child = brood::Command::new("node")
        .args(["-e", script])
        .stdio(3, brood::Stdio::node_ipc())
        .stdout(brood::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed (CI installs it)");
    let ch = child.take_channel(3).unwrap();
    assert_eq!(ch.protocol(), Protocol::Node);
    (child, ch)
}

/// This process's resident set, in KiB.
fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

async fn read_all(s: std::os::unix::net::UnixStream) -> String {
    s.set_nonblocking(true).unwrap();
    let mut s = tokio::net::UnixStream::from_std(s).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).await.unwrap();
    got
}

#[tokio::test]
async fn brood_sends_50_handles_back_to_back_to_node_without_receiving_and_each_arrives_with_its_message()
 {
    let (mut child, mut ch) = spawn_node(NODE_READER);
    let mut mine = Vec::new();
    let sends = async {
        for i in 0..N {
            let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
            ours.write_all(format!("id {i}\n").as_bytes()).unwrap();
            ch.send_msg(&json!({ "i": i }), &[theirs.as_fd()])
                .await
                .unwrap();
            mine.push(ours);
        }
    };
    // Before: the second send waited for an ACK that only recv_msg reads.
    timeout(LIMIT, sends)
        .await
        .expect("the sends of 50 handles stalled");
    // No recv_msg yet: the channel's reader takes Node's ACKs and sends the rest.
    for (i, ours) in mine.into_iter().enumerate() {
        let got = timeout(LIMIT, read_all(ours))
            .await
            .unwrap_or_else(|_| panic!("handle {i} never reached node"));
        assert_eq!(got, format!("node got {i} with id {i}\n"));
    }
    ch.send_msg(&json!({ "done": true }), &[]).await.unwrap();
    let (m, _) = timeout(LIMIT, ch.recv_msg::<Value>())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m, json!({ "handles": N, "messages": N + 1 }));
    drop(ch); // node's channel closes: it exits
    let exit = timeout(LIMIT, child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "node {exit}");
}

/// The example binary next to this test's own (cargo builds examples before tests).
fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name)
}

/// A Node parent that forks the `node_echo` example and sends it 50 accepted TCP
/// connections back to back (Node queues them behind its ACKs); the example echoes each
/// with its socket, and Node writes the message's number on the socket that came back:
/// each client must read its own number.
const NODE_PIPELINE: &str = r#"
'use strict';
const { fork } = require('child_process');
const net = require('net');
const assert = require('assert');
const N = Number(process.argv[2]);
const path = process.argv[1];
const child = fork(path, [], { execPath: path });
const server = net.createServer();
const once = (em, ev) => new Promise((r) => em.once(ev, (...a) => r(a)));
(async () => {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const byPort = new Map();
  const accepted = [];
  server.on('connection', (s) => accepted.push(s));
  const clients = [];
  for (let i = 0; i < N; i++) {
    const c = net.connect(server.address().port, '127.0.0.1');
    await once(c, 'connect');
    byPort.set(c.localPort, i);
    let got = '';
    c.setEncoding('utf8');
    c.on('data', (d) => { got += d; });
    clients.push(new Promise((r) => c.on('end', () => r([i, got]))));
  }
  while (accepted.length < N) await once(server, 'connection');
  let back = 0;
  child.on('message', (m, h) => {
    assert.ok(h instanceof net.Socket, `message ${JSON.stringify(m)} came back without its socket`);
    h.end(`you are ${m.echo.i}\n`);
    back++;
  });
  // Back to back: no waiting for the echoes.
  for (const s of accepted) child.send({ i: byPort.get(s.remotePort) }, s);
  for (const [i, got] of await Promise.all(clients)) assert.strictEqual(got, `you are ${i}\n`);
  assert.strictEqual(back, N);
  server.close();
  child.disconnect();
  const [code] = await once(child, 'exit');
  assert.strictEqual(code, 0);
  console.log('all ok');
})().catch((e) => { console.error(e); process.exit(1); });
"#;

#[tokio::test]
async fn node_pipelines_50_handles_to_a_brood_child_that_echoes_each_with_its_handle() {
    let out = timeout(
        LIMIT,
        tokio::process::Command::new("node")
            .args(["-e", NODE_PIPELINE])
            .arg(example("node_echo"))
            .arg(N.to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("node and the brood child stalled")
    .expect("node must be installed (CI installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("all ok"),
        "node {}: {stdout}\n{stderr}",
        out.status
    );
}

/// A Node child that first queues 16 MiB of messages to brood, then says so on stdout, and
/// counts what it gets.
const NODE_FLOOD: &str = r#"
'use strict';
const pad = 'x'.repeat(1024);
for (let i = 0; i < 16384; i++) process.send({ pad });
console.log('flooded');
let handles = 0, messages = 0;
process.on('message', (m, h) => {
  messages++;
  if (h) { handles++; h.destroy(); }
  if (m.done) process.send({ handles, messages });
});
"#;

#[tokio::test]
async fn a_full_queue_behind_an_ack_that_cannot_be_read_is_enobufs_and_recv_msg_releases_it() {
    let (mut child, mut ch) = spawn_node(NODE_FLOOD);
    let mut stdout = tokio::io::BufReader::new(child.take_pipe(1).unwrap());
    let mut line = String::new();
    timeout(LIMIT, stdout.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, "flooded\n");
    // Node's ACK of this handle comes after its 16 MiB, which brood's reader stops reading
    // at about 1 MiB since nobody receives: the queue behind the handle can only fill.
    let rss_before = rss_kib();
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    ch.send_msg(&json!({ "h": 1 }), &[a.as_fd()]).await.unwrap();
    let mut queued = 0;
    let err = timeout(LIMIT, async {
        loop {
            match ch.send_msg(&json!({ "q": queued }), &[]).await {
                Ok(()) => queued += 1,
                Err(e) => break e,
            }
        }
    })
    .await
    .expect("a send to the full queue waited for an ACK nobody reads");
    assert_eq!(err.name(), "ENOBUFS", "{err}");
    assert!(err.to_string().contains("recv_msg"), "{err}");
    assert_eq!(queued, 1024, "the queue's bound");
    // The reader kept about 1 MiB of Node's 16 MiB (read whole, they take 3-4 times that).
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 12 * 1024,
        "RSS grew {grown} KiB while nobody received"
    );
    // Receiving lets the reader go on: it reads the ACK, and the queue goes out in order.
    for _ in 0..16384 {
        let (m, _) = timeout(LIMIT, ch.recv_msg::<Value>())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(m["pad"].as_str().map(str::len), Some(1024));
    }
    ch.send_msg(&json!({ "done": true }), &[]).await.unwrap();
    let (m, _) = timeout(LIMIT, ch.recv_msg::<Value>())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m, json!({ "handles": 1, "messages": 1 + 1024 + 1 }));
    drop(ch);
    let exit = timeout(LIMIT, child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "node {exit}");
}
