//! `cargo bench --bench ipc`: brood IPC channels against raw sockets, side by side.
//!
//! 1. Handles passed per second parent → child, one per message, vs a raw blocking
//!    sendmsg/recvmsg loop (the floor).
//! 2. Small (64-byte) messages per second and bytes per second (64 KiB writes), vs a raw
//!    blocking socketpair.
//! 3. The multi_echo_server example (2 workers) vs a single-process tokio echo server, with 32
//!    clients: a new connection per 64-byte exchange, and persistent connections.
//! 4. Messages echoed per second between a Node.js parent and its forked child: a brood child
//!    (the node_echo example) vs a Node child, measured by the same Node parent in one run.
//!
//! `BROOD_BENCH_QUICK=1` runs each cell for a shorter time. Timing never gates a test.

mod support {
    pub mod net;
}

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnix;
use std::time::{Duration, Instant};

use brood::ipc::Channel;
use brood::{Command, Stdio};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MODE: &str = "BROOD_IPC_BENCH_CHILD";

fn quick() -> bool {
    std::env::var_os("BROOD_BENCH_QUICK").is_some()
}

fn main() {
    // cargo bench passes `--bench`; ignore arguments.
    if let Ok(mode) = std::env::var(MODE) {
        child(&mode);
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("brood ipc benchmark (2 cores; medians of 3 rounds, contenders interleaved)\n");
    rt.block_on(async {
        handles().await;
        stream(
            "small messages (64 B)",
            64,
            if quick() { 100_000 } else { 400_000 },
        )
        .await;
        stream(
            "bytes (64 KiB writes)",
            64 * 1024,
            if quick() { 4_000 } else { 16_000 },
        )
        .await;
        echo().await;
        node().await;
    });
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn spawn_child(mode: &str, arg: u64) -> (brood::Child, OwnedFd) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .env(MODE, mode)
        .env("BROOD_BENCH_N", arg.to_string())
        .stdio(3, Stdio::ipc())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ch = child.take_channel(3).unwrap();
    // The benches drive the socket themselves (raw) or wrap it again (brood).
    let fd = ch.as_stream().as_fd().try_clone_to_owned().unwrap();
    drop(ch);
    (child, fd)
}

fn to_channel(fd: OwnedFd) -> Channel {
    let s = StdUnix::from(fd);
    s.set_nonblocking(true).unwrap();
    Channel::new(tokio::net::UnixStream::from_std(s).unwrap())
}

fn to_blocking(fd: OwnedFd) -> StdUnix {
    let s = StdUnix::from(fd);
    s.set_nonblocking(false).unwrap();
    s
}

/// The child side: receive everything, then report with one byte.
fn child(mode: &str) {
    let n: u64 = std::env::var("BROOD_BENCH_N").unwrap().parse().unwrap();
    // SAFETY: fd 3 is the channel our parent gave us; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(3) };
    match mode {
        "raw-handles" => {
            let mut s = to_blocking(fd);
            let mut got = 0;
            while got < n {
                got += raw_recv_fds(&s);
            }
            s.write_all(b"k").unwrap();
        }
        "raw-bytes" => {
            let mut s = to_blocking(fd);
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0;
            while got < n {
                let r = s.read(&mut buf).unwrap();
                assert!(r > 0);
                got += r as u64;
            }
            s.write_all(b"k").unwrap();
        }
        _ => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut ch = to_channel(fd);
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = 0u64;
                match mode {
                    "brood-handles" => {
                        while got < n {
                            let r = ch.recv(&mut buf).await.unwrap();
                            assert!(r > 0);
                            while let Some(h) = ch.accept_handle() {
                                drop(h);
                                got += 1;
                            }
                        }
                    }
                    _ => {
                        while got < n {
                            let r = ch.recv(&mut buf).await.unwrap();
                            assert!(r > 0);
                            got += r as u64;
                        }
                    }
                }
                ch.send(b"k").await.unwrap();
            });
        }
    }
}

/// Receives one message's worth of fds on a blocking socket and closes them.
fn raw_recv_fds(s: &StdUnix) -> u64 {
    let mut data = [0u8; 64];
    let mut cbuf = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: zeroed msghdr pointing to live locals.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    // SAFETY: recvmsg into live buffers; then walk the control messages it wrote.
    unsafe {
        let n = libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        assert!(n > 0);
        let mut count = 0;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            let len = (*c).cmsg_len as usize - (data as usize - c as usize);
            for i in 0..len / 4 {
                let fd: i32 = std::ptr::read_unaligned(data.add(i * 4).cast());
                libc::close(fd);
                count += 1;
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        count
    }
}

fn raw_send_fd(s: &StdUnix, fd: i32) {
    let data = [b'h'];
    let mut cbuf = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: 1,
    };
    // SAFETY: zeroed msghdr pointing to live locals; the cmsg fits in `cbuf`.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
        assert_eq!(libc::sendmsg(s.as_raw_fd(), &msg, libc::MSG_NOSIGNAL), 1);
    }
}

async fn handles() {
    let n: u64 = if quick() { 20_000 } else { 100_000 };
    let (keep, _peer) = StdUnix::pair().unwrap();
    let (mut brood_r, mut raw_r) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        // raw floor
        let (mut child, fd) = spawn_child("raw-handles", n);
        let keep_fd = keep.as_raw_fd();
        let secs = tokio::task::spawn_blocking(move || {
            let mut s = to_blocking(fd);
            let t = Instant::now();
            for _ in 0..n {
                raw_send_fd(&s, keep_fd);
            }
            let mut k = [0u8; 1];
            s.read_exact(&mut k).unwrap();
            t.elapsed().as_secs_f64()
        })
        .await
        .unwrap();
        child.wait().await.unwrap();
        raw_r.push(n as f64 / secs);

        // brood
        let (mut child, fd) = spawn_child("brood-handles", n);
        let mut ch = to_channel(fd);
        let t = Instant::now();
        for _ in 0..n {
            ch.send_with_handles(b"h", &[keep.as_fd()]).await.unwrap();
        }
        let mut k = [0u8; 1];
        ch.recv(&mut k).await.unwrap();
        brood_r.push(n as f64 / t.elapsed().as_secs_f64());
        child.wait().await.unwrap();
    }
    let (b, r) = (median(brood_r), median(raw_r));
    println!("handles passed parent→child, one per message ({n} per round)");
    println!("  raw sendmsg/recvmsg (floor)  {:>12.0} handles/s", r);
    println!(
        "  brood Channel                {:>12.0} handles/s   {:.2}× floor\n",
        b,
        b / r
    );
}

async fn stream(title: &str, size: usize, count: u64) {
    let total = size as u64 * count;
    let chunk = vec![7u8; size];
    let (mut brood_r, mut raw_r) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let (mut child, fd) = spawn_child("raw-bytes", total);
        let c2 = chunk.clone();
        let secs = tokio::task::spawn_blocking(move || {
            let mut s = to_blocking(fd);
            let t = Instant::now();
            for _ in 0..count {
                s.write_all(&c2).unwrap();
            }
            let mut k = [0u8; 1];
            s.read_exact(&mut k).unwrap();
            t.elapsed().as_secs_f64()
        })
        .await
        .unwrap();
        child.wait().await.unwrap();
        raw_r.push(secs);

        let (mut child, fd) = spawn_child("brood-bytes", total);
        let mut ch = to_channel(fd);
        let t = Instant::now();
        for _ in 0..count {
            ch.send(&chunk).await.unwrap();
        }
        let mut k = [0u8; 1];
        ch.recv(&mut k).await.unwrap();
        brood_r.push(t.elapsed().as_secs_f64());
        child.wait().await.unwrap();
    }
    let (b, r) = (median(brood_r), median(raw_r));
    println!("{title}, {count} writes parent→child per round");
    println!(
        "  raw socketpair (floor)  {:>12.0} msgs/s {:>9.1} MB/s",
        count as f64 / r,
        total as f64 / r / 1e6
    );
    println!(
        "  brood Channel           {:>12.0} msgs/s {:>9.1} MB/s   {:.2}× floor\n",
        count as f64 / b,
        total as f64 / b / 1e6,
        r / b
    );
}

/// Runs `clients` tasks against `addr` for `dur`; counts 64-byte echo exchanges.
/// Connections are spread over loopback source addresses (`support/net.rs`: from one, the
/// kernel's TIME_WAIT rule caps new connections at ~14k/s whatever the server).
async fn load(addr: String, clients: usize, dur: Duration, new_conn_each: bool) -> (u64, u64) {
    let deadline = Instant::now() + dur;
    let addr: std::net::SocketAddr = addr.parse().expect("a server address is IP:port");
    let mut tasks = Vec::new();
    for client in 0..clients {
        let mut n = client;
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            let msg = [b'x'; 64];
            let mut buf = [0u8; 64];
            let mut conn: Option<TcpStream> = None;
            while Instant::now() < deadline {
                if conn.is_none() {
                    n += clients;
                    match support::net::connect(addr, n).await {
                        Ok(c) => {
                            c.set_nodelay(true).ok();
                            conn = Some(c)
                        }
                        Err(_) => {
                            failed += 1;
                            continue;
                        }
                    }
                }
                let c = conn.as_mut().unwrap();
                let r = async {
                    c.write_all(&msg).await?;
                    c.read_exact(&mut buf).await
                }
                .await;
                match r {
                    Ok(_) => ok += 1,
                    Err(_) => {
                        failed += 1;
                        conn = None;
                        continue;
                    }
                }
                if new_conn_each {
                    conn = None;
                }
            }
            (ok, failed)
        }));
    }
    let mut total = (0, 0);
    for t in tasks {
        let (o, f) = t.await.unwrap();
        total.0 += o;
        total.1 += f;
    }
    total
}

async fn echo() {
    let dur = Duration::from_secs_f64(if quick() { 1.0 } else { 3.0 });
    // Single-process tokio echo server on this runtime.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tokio_addr = l.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match c.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if c.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    // The example, as its own process tree.
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/multi_echo_server");
    let mut master = match Command::new(&example)
        .args(["-w", "2", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(m) => m,
        Err(e) => {
            println!(
                "multi_echo_server: skipped ({e}); build it with `cargo build --release --examples`"
            );
            server.abort();
            return;
        }
    };
    let mut out = tokio::io::BufReader::new(master.stdout.take().unwrap());
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line)
        .await
        .unwrap();
    let brood_addr = line.trim().trim_start_matches("Listening on ").to_string();

    println!(
        "echo servers, 32 clients, 64-byte exchanges, {:.0} s per cell",
        dur.as_secs_f64()
    );
    println!("  (the load generator shares the 2 cores with the servers)");
    for (name, new_conn) in [
        ("new connection per exchange", true),
        ("persistent connections", false),
    ] {
        let (t_ok, t_fail) = load(tokio_addr.clone(), 32, dur, new_conn).await;
        let (b_ok, b_fail) = load(brood_addr.clone(), 32, dur, new_conn).await;
        let (t, b) = (
            t_ok as f64 / dur.as_secs_f64(),
            b_ok as f64 / dur.as_secs_f64(),
        );
        println!("  {name}:");
        println!("    tokio single process      {t:>10.0} exchanges/s  ({t_fail} failed)");
        println!(
            "    brood multi_echo_server   {b:>10.0} exchanges/s  ({b_fail} failed)   {:.2}× tokio",
            b / t
        );
    }
    server.abort();
    master.kill(brood::Signum::INT).ok();
    master.wait().await.ok();
}

/// The Node child of the Node-to-Node contender: echoes every message.
const NODE_ECHO_CHILD: &str = "process.on('message', (m) => process.send({ echo: m }));\n";

/// The Node parent: forks each contender in turn (Node child, brood child), pipelines `n`
/// small messages and waits for every echo; prints one JSON line per round.
const NODE_BENCH_PARENT: &str = r#"
'use strict';
const { fork } = require('child_process');
const [nodeChild, broodChild, rounds, n] = process.argv.slice(1);
function run(path, opts) {
  return new Promise((resolve, reject) => {
    const child = fork(path, [], opts);
    let got = 0;
    let t0;
    child.on('message', (m) => {
      if (m.echo.i !== got) reject(new Error(`out of order: ${m.echo.i} != ${got}`));
      if (++got === +n) {
        const secs = Number(process.hrtime.bigint() - t0) / 1e9;
        child.disconnect();
        child.on('exit', () => resolve(+n / secs));
      }
    });
    child.on('error', reject);
    t0 = process.hrtime.bigint();
    for (let i = 0; i < +n; i++) child.send({ i, s: 'sixteen bytes..' });
  });
}
(async () => {
  for (let r = 0; r < +rounds; r++) {
    const node = await run(nodeChild, {});
    const brood = await run(broodChild, { execPath: broodChild });
    console.log(JSON.stringify({ node, brood }));
  }
})().catch((e) => { console.error(e); process.exit(1); });
"#;

async fn node() {
    let n = if quick() { 20_000 } else { 100_000 };
    let exe = std::env::current_exe().unwrap();
    let brood_child = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/node_echo");
    if !brood_child.exists() {
        println!("node_echo: skipped; build it with `cargo build --release --examples`");
        return;
    }
    let node_child =
        std::env::temp_dir().join(format!("brood-bench-echo-{}.js", std::process::id()));
    std::fs::write(&node_child, NODE_ECHO_CHILD).unwrap();
    let out = tokio::process::Command::new("node")
        .args(["-e", NODE_BENCH_PARENT])
        .arg(&node_child)
        .arg(&brood_child)
        .arg("3")
        .arg(n.to_string())
        .output()
        .await;
    let _ = std::fs::remove_file(&node_child);
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            println!("node: failed: {}", String::from_utf8_lossy(&o.stderr));
            return;
        }
        Err(e) => {
            println!("node: skipped ({e})");
            return;
        }
    };
    let (mut node_r, mut brood_r, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (nd, br) = (v["node"].as_f64().unwrap(), v["brood"].as_f64().unwrap());
        node_r.push(nd);
        brood_r.push(br);
        ratios.push(br / nd);
    }
    let (lo, hi) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
    println!("Node.js parent, forked child echoing {n} small messages per round");
    println!(
        "  Node child (Node↔Node)     {:>10.0} msgs/s",
        median(node_r)
    );
    println!(
        "  brood child (node_echo)    {:>10.0} msgs/s   {:.2}× Node (rounds {lo:.2}–{hi:.2})\n",
        median(brood_r),
        median(ratios)
    );
}
