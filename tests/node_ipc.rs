//! A brood child of a real Node.js parent (`spawn(..., {stdio: [..., 'ipc']})`):
//! `Channel::from_env` finds `NODE_CHANNEL_FD` and speaks Node's protocol. Messages echo both
//! ways; TCP sockets, listening servers and UDP sockets travel Node → brood → Node wrapped as
//! Node's `NODE_HANDLE` and acknowledged both ways, and each side uses them; Node's internal
//! messages never reach either user; a disconnect from either side ends the other cleanly;
//! the brood child leaves no fd behind.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use brood::ipc::{Channel, HandleType, NODE_CHANNEL_FD_ENV, Protocol};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);
const MODE: &str = "BROOD_NODE_IPC_CHILD";

/// The Node parent. argv: [node, brood test binary, mode].
const NODE_PARENT: &str = r#"
'use strict';
const { spawn } = require('child_process');
const net = require('net');
const dgram = require('dgram');
const assert = require('assert');
const [exe, mode] = process.argv.slice(1);
const child = spawn(exe, ['--exact', 'child_side', '--nocapture', '--test-threads=1'], {
  stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  env: Object.assign({}, process.env, { BROOD_NODE_IPC_CHILD: mode }),
  serialization: mode === 'advanced' ? 'advanced' : 'json',
});
const inbox = [];
const waiters = [];
child.on('message', (m, h) => {
  if (waiters.length) waiters.shift()({ m, h }); else inbox.push({ m, h });
});
const next = () => inbox.length ? Promise.resolve(inbox.shift()) : new Promise((r) => waiters.push(r));
const exited = new Promise((r) => child.on('exit', (code, signal) => r({ code, signal })));
const disconnected = new Promise((r) => child.on('disconnect', r));
const once = (em, ev) => new Promise((r) => em.once(ev, (...a) => r(a)));
const readAll = (sock) => new Promise((res, rej) => {
  let s = '';
  sock.setEncoding('utf8');
  sock.on('data', (d) => { s += d; });
  sock.on('end', () => res(s));
  sock.on('error', rej);
});

async function echo() {
  const N = 10000;
  for (let i = 0; i < N; i++) child.send({ i, s: 'm' + i });
  for (let i = 0; i < N; i++) {
    const { m, h } = await next();
    assert.deepStrictEqual(m, { echo: { i, s: 'm' + i } });
    assert.strictEqual(h, undefined);
  }
  const big = 'é漢🙂'.repeat(Math.ceil((1 << 20) / 9));
  child.send({ big });
  const { m } = await next();
  assert.strictEqual(m.echo.big, big);
}

async function tcp() {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const client = net.connect(server.address().port, '127.0.0.1');
  const [sock] = await once(server, 'connection');
  const got = readAll(client);
  child.send({ kind: 'tcp' }, sock);
  const { m, h } = await next();
  assert.deepStrictEqual(m, { echo: { kind: 'tcp' } });
  assert.ok(h instanceof net.Socket, 'a net.Socket came back');
  h.end('node\n');
  assert.strictEqual(await got, 'brood\nnode\n');
  server.close();
}

async function server() {
  const srv = net.createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const port = srv.address().port;
  await new Promise((res, rej) => child.send({ kind: 'server' }, srv, (e) => (e ? rej(e) : res())));
  srv.close(); // brood has its own copy
  assert.strictEqual(await readAll(net.connect(port, '127.0.0.1')), 'served by brood\n');
  const { m, h } = await next();
  assert.deepStrictEqual(m, { echo: { kind: 'server' } });
  assert.ok(h instanceof net.Server, 'a net.Server came back');
  h.on('connection', (s) => s.end('served by node\n'));
  assert.strictEqual(await readAll(net.connect(port, '127.0.0.1')), 'served by node\n');
  h.close();
}

async function udp() {
  const r = dgram.createSocket('udp4');
  r.bind(0, '127.0.0.1');
  await once(r, 'listening');
  const a = dgram.createSocket('udp4');
  a.bind(0, '127.0.0.1');
  await once(a, 'listening');
  const aport = a.address().port;
  const to = `127.0.0.1:${r.address().port}`;
  child.send({ kind: 'udp', to }, a);
  const [d1, from1] = await once(r, 'message');
  assert.strictEqual(d1.toString(), 'udp from brood');
  assert.strictEqual(from1.port, aport, 'sent from the socket node passed');
  const { m, h } = await next();
  assert.deepStrictEqual(m, { echo: { kind: 'udp', to } });
  assert.ok(h instanceof dgram.Socket, 'a dgram.Socket came back');
  h.send('udp from node', r.address().port, '127.0.0.1');
  const [d2, from2] = await once(r, 'message');
  assert.strictEqual(d2.toString(), 'udp from node');
  assert.strictEqual(from2.port, aport);
  h.close();
  a.close();
  r.close();
}

async function main() {
  if (mode === 'echo') {
    await echo();
    await tcp();
    await server();
    await udp();
    child.disconnect();
  } else if (mode === 'hangup') {
    child.send({ bye: true });
    const { m } = await next();
    assert.deepStrictEqual(m, { echo: { bye: true } });
    await disconnected; // brood closed its end
  }
  // 'advanced': the brood child checks that it is refused, and exits.
  const { code, signal } = await exited;
  assert.strictEqual(code, 0, `brood child exited ${code} ${signal}`);
  assert.strictEqual(inbox.length, 0, `unexpected messages: ${JSON.stringify(inbox.map((x) => x.m))}`);
  console.log('all ok');
}
main().catch((e) => { console.error(e); process.exit(1); });
"#;

/// The brood child: echoes every message as `{"echo": m}` and sends back the handle it
/// came with, after using it.
#[test]
fn child_side() {
    let Ok(mode) = std::env::var(MODE) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        if mode == "advanced" {
            let err = Channel::from_env().unwrap_err();
            assert_eq!(err.name(), "EPROTONOSUPPORT", "{err}");
            assert!(err.to_string().contains("advanced"), "{err}");
            return;
        }
        let mut ch = Channel::from_env().unwrap();
        assert_eq!(ch.protocol(), Protocol::Node);
        assert!(std::env::var_os(NODE_CHANNEL_FD_ENV).is_none());
        assert!(std::env::var_os("NODE_CHANNEL_SERIALIZATION_MODE").is_none());
        let fds_at_start = brood::open_fd_count().unwrap();
        while let Some((m, handles)) = timeout(LIMIT, ch.recv_msg::<Value>())
            .await
            .unwrap()
            .unwrap()
        {
            assert!(
                m.get("cmd").is_none(),
                "an internal message reached the user: {m}"
            );
            assert!(handles.len() <= 1);
            let back: Option<OwnedFd> = match handles.into_iter().next() {
                None => None,
                Some(h) => Some(match h.kind() {
                    HandleType::Tcp => {
                        let mut s: TcpStream = h.accept().unwrap();
                        s.write_all(b"brood\n").await.unwrap();
                        s.into_std().unwrap().into()
                    }
                    HandleType::TcpListener => {
                        let l: TcpListener = h.accept().unwrap();
                        let (mut c, _) = l.accept().await.unwrap();
                        c.write_all(b"served by brood\n").await.unwrap();
                        drop(c);
                        l.into_std().unwrap().into()
                    }
                    HandleType::Udp => {
                        let u: UdpSocket = h.accept().unwrap();
                        u.send_to(b"udp from brood", m["to"].as_str().unwrap())
                            .await
                            .unwrap();
                        u.into_std().unwrap().into()
                    }
                    other => panic!("unexpected handle {other}"),
                }),
            };
            let reply = json!({ "echo": m });
            match &back {
                Some(fd) => ch.send_msg(&reply, &[fd.as_fd()]).await.unwrap(),
                None => ch.send_msg(&reply, &[]).await.unwrap(),
            }
            drop(back);
            if mode == "hangup" {
                break;
            }
        }
        drop(ch);
        // The channel's reader task holds the socket until the runtime drops it.
        let deadline = std::time::Instant::now() + LIMIT;
        while brood::open_fd_count().unwrap() != fds_at_start - 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "every handle closed, and the channel: {} fds, {} at start",
                brood::open_fd_count().unwrap(),
                fds_at_start
            );
            tokio::task::yield_now().await;
        }
    });
}

async fn run_node(mode: &str) {
    let exe = std::env::current_exe().unwrap();
    let out = timeout(
        LIMIT,
        tokio::process::Command::new("node")
            .args(["-e", NODE_PARENT])
            .arg(exe)
            .arg(mode)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("node did not finish")
    .expect("node must be installed (CI installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("all ok"),
        "node {}: {stdout}\n{stderr}",
        out.status
    );
}

#[tokio::test]
async fn a_node_parent_and_a_brood_child_echo_messages_and_pass_sockets_both_ways() {
    run_node("echo").await;
}

#[tokio::test]
async fn a_brood_child_that_closes_the_channel_disconnects_its_node_parent() {
    run_node("hangup").await;
}

#[tokio::test]
async fn nodes_advanced_serialization_is_refused_with_a_clear_error() {
    run_node("advanced").await;
}

/// A Node child of a brood parent: reports its channel variables, echoes every message
/// with its handle (after writing to a socket it got), leaves at `{"bye": true}` with
/// `process.disconnect()`, or on `'disconnect'` (brood closed) says so on stdout.
const NODE_CHILD: &str = r#"
'use strict';
const net = require('net');
process.send({ connected: process.connected });
process.on('disconnect', () => console.log('disconnected'));
process.on('message', (m, h) => {
  if (m && m.bye) { process.disconnect(); return; }
  if (h instanceof net.Socket) {
    h.write('node child\n', () => process.send({ echo: m }, h));
  } else {
    process.send({ echo: m });
  }
});
"#;

fn node_child() -> (brood::Child, Channel) {
    let mut child = brood::Command::new("node")
        .args(["-e", NODE_CHILD])
        .stdio(3, brood::Stdio::node_ipc())
        .stdout(brood::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed (CI installs it)");
    let ch = child.take_channel(3).unwrap();
    assert_eq!(ch.protocol(), Protocol::Node);
    (child, ch)
}

async fn next(ch: &mut Channel) -> (Value, Vec<brood::ipc::Handle>) {
    timeout(LIMIT, ch.recv_msg::<Value>())
        .await
        .expect("no message from node")
        .unwrap()
        .expect("node closed the channel")
}

#[tokio::test]
async fn a_brood_parent_talks_to_a_node_child_over_stdio_node_ipc() {
    use tokio::io::AsyncReadExt;
    let (mut child, mut ch) = node_child();
    let (hello, _) = next(&mut ch).await;
    assert_eq!(hello, json!({ "connected": true }));
    // Node removes the variables at start-up, as brood does; the kernel keeps the
    // environment the process started with.
    let environ = std::fs::read(format!("/proc/{}/environ", child.id().unwrap())).unwrap();
    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    assert!(vars.contains(&&b"NODE_CHANNEL_FD=3"[..]));
    assert!(vars.contains(&&b"NODE_CHANNEL_SERIALIZATION_MODE=json"[..]));
    assert!(!vars.iter().any(|v| v.starts_with(b"BROOD_CHANNEL_FD=")));
    // 10,000 messages each way, all sent before any is received.
    const N: usize = 10_000;
    for i in 0..N {
        ch.send_msg(&json!({ "i": i, "s": "é漢🙂" }), &[])
            .await
            .unwrap();
    }
    for i in 0..N {
        let (m, hs) = next(&mut ch).await;
        assert_eq!(m, json!({ "echo": { "i": i, "s": "é漢🙂" } }));
        assert!(hs.is_empty());
    }
    // A TCP connection to the child and back.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (server_side, _) = l.accept().await.unwrap();
    ch.send_msg(&json!({ "kind": "tcp" }), &[server_side.as_fd()])
        .await
        .unwrap();
    drop(server_side);
    let (m, mut hs) = next(&mut ch).await;
    assert_eq!(m, json!({ "echo": { "kind": "tcp" } }));
    assert_eq!(hs.len(), 1);
    let mut s: TcpStream = hs.remove(0).accept().unwrap();
    s.write_all(b"brood parent\n").await.unwrap();
    drop(s);
    let mut got = String::new();
    timeout(LIMIT, client.read_to_string(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, "node child\nbrood parent\n");
    // Node's process.disconnect() is end of stream here.
    ch.send_msg(&json!({ "bye": true }), &[]).await.unwrap();
    let end = timeout(LIMIT, ch.recv_msg::<Value>())
        .await
        .unwrap()
        .unwrap();
    assert!(end.is_none());
    let exit = timeout(LIMIT, child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "node child {exit}");
    let mut out = String::new();
    let mut stdout = child.take_pipe(1).unwrap();
    timeout(LIMIT, stdout.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, "disconnected\n");
}

#[tokio::test]
async fn a_brood_parent_that_drops_its_channel_disconnects_the_node_child() {
    use tokio::io::AsyncReadExt;
    let (mut child, mut ch) = node_child();
    next(&mut ch).await;
    drop(ch);
    // Node's 'disconnect' fires, and with nothing else to do node exits.
    let exit = timeout(LIMIT, child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "node child {exit}");
    let mut out = String::new();
    let mut stdout = child.take_pipe(1).unwrap();
    timeout(LIMIT, stdout.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, "disconnected\n");
}

#[tokio::test]
async fn stdio_node_ipc_refuses_nodes_advanced_serialization_naming_it() {
    let err = brood::Command::new("node")
        .args(["-e", "process.exit(3)"])
        .env("NODE_CHANNEL_SERIALIZATION_MODE", "advanced")
        .stdio(3, brood::Stdio::node_ipc())
        .spawn()
        .unwrap_err();
    assert_eq!(err.name(), "EPROTONOSUPPORT", "{err}");
    assert!(err.to_string().contains("\"advanced\""), "{err}");
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

/// Node forks the example with `execPath` and echoes messages and a socket through it.
const NODE_FORK: &str = r#"
'use strict';
const { fork } = require('child_process');
const net = require('net');
const assert = require('assert');
const path = process.argv[1];
const child = fork(path, [], { execPath: path });
const inbox = [];
const waiters = [];
child.on('message', (m, h) => {
  if (waiters.length) waiters.shift()({ m, h }); else inbox.push({ m, h });
});
const next = () => inbox.length ? Promise.resolve(inbox.shift()) : new Promise((r) => waiters.push(r));
const once = (em, ev) => new Promise((r) => em.once(ev, (...a) => r(a)));
(async () => {
  for (let i = 0; i < 100; i++) child.send({ i });
  for (let i = 0; i < 100; i++) assert.deepStrictEqual((await next()).m, { echo: { i } });
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const client = net.connect(server.address().port, '127.0.0.1');
  const [sock] = await once(server, 'connection');
  child.send({ s: 1 }, sock);
  const { m, h } = await next();
  assert.deepStrictEqual(m, { echo: { s: 1 } });
  h.end('round trip\n');
  let got = '';
  client.setEncoding('utf8');
  client.on('data', (d) => { got += d; });
  await once(client, 'end');
  assert.strictEqual(got, 'round trip\n');
  server.close();
  child.disconnect();
  const [code] = await once(child, 'exit');
  assert.strictEqual(code, 0);
  console.log('all ok');
})().catch((e) => { console.error(e); process.exit(1); });
"#;

#[tokio::test]
async fn the_node_echo_example_runs_under_nodes_fork() {
    let out = timeout(
        LIMIT,
        tokio::process::Command::new("node")
            .args(["-e", NODE_FORK])
            .arg(example("node_echo"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("node did not finish")
    .expect("node must be installed (CI installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("all ok"),
        "node {}: {stdout}\n{stderr}",
        out.status
    );
}
