//! IPC channels with real processes: handles of every kind passed to a child, bursts,
//! leaks, type errors, bad control data, a Python peer, and the multi_echo_server example.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use brood::ipc::{Channel, HandleType};
use brood::{Command, Stdio};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket, UnixStream};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(20);
const MODE: &str = "BROOD_IPC_TEST_CHILD";

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Msg {
    what: String,
    #[serde(default)]
    to: String,
}

/// Spawns this test binary as the child side, running `mode` in `child_side`.
fn spawn_child(mode: &str) -> (brood::Child, Channel) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "child_side", "--nocapture", "--test-threads=1"])
        .env(MODE, mode)
        .stdio(1, Stdio::ignore())
        .stdio(3, Stdio::ipc())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ch = child.take_channel(3).unwrap();
    (child, ch)
}

async fn finish(mut child: brood::Child) {
    let exit = timeout(LIMIT, child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "child {exit}");
}

/// Sends `what` (and `to`) with the handles `fds`.
async fn hand(ch: &Channel, what: &str, to: &str, fds: &[std::os::fd::BorrowedFd<'_>]) {
    let msg = Msg {
        what: what.into(),
        to: to.into(),
    };
    ch.send_msg(&msg, fds).await.unwrap();
}

/// Everything `r` gives until EOF, within the test's limit.
async fn read_all<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Vec<u8> {
    let mut got = Vec::new();
    timeout(LIMIT, r.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    got
}

/// The child side of every cross-process test (a no-op when run as a normal test).
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
        let mut ch = match std::env::var("BROOD_IPC_TEST_PATH") {
            // An unrelated process: it finds the server by name.
            Ok(path) => Channel::connect(path).await.unwrap(),
            Err(_) => Channel::from_env().unwrap(),
        };
        // Every mode gets one message with its handles and acts on them.
        let (msg, mut handles): (Msg, _) = ch.recv_msg().await.unwrap().unwrap();
        assert_eq!(msg.what, mode);
        match mode.as_str() {
            "tcp" | "named" => {
                let mut s: TcpStream = handles.remove(0).accept().unwrap();
                s.write_all(b"hello over tcp").await.unwrap();
            }
            "tcp-listener" => {
                let l: TcpListener = handles.remove(0).accept().unwrap();
                let (mut s, _) = l.accept().await.unwrap();
                s.write_all(b"accepted by child").await.unwrap();
            }
            "unix" => {
                let mut s: UnixStream = handles.remove(0).accept().unwrap();
                s.write_all(b"hello over unix").await.unwrap();
            }
            "udp" => {
                let u: UdpSocket = handles.remove(0).accept().unwrap();
                u.send_to(b"hello over udp", &msg.to).await.unwrap();
            }
            "fifo" | "file" => {
                let mut f: std::fs::File = handles.remove(0).accept().unwrap();
                f.write_all(format!("hello via {mode}").as_bytes()).unwrap();
            }
            "several" => {
                let kinds: Vec<String> =
                    handles.iter().map(|h| format!("{:?}", h.kind())).collect();
                ch.send_msg(
                    &Msg {
                        what: kinds.join(","),
                        to: String::new(),
                    },
                    &[],
                )
                .await
                .unwrap();
            }
            other => panic!("unknown mode {other}"),
        }
    });
}

#[tokio::test]
async fn passes_a_tcp_stream() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server_side, _) = listener.accept().await.unwrap();
    let (child, ch) = spawn_child("tcp");
    hand(&ch, "tcp", "", &[server_side.as_fd()]).await;
    drop(server_side); // the child has its own copy
    let got = read_all(&mut client).await;
    assert_eq!(got, b"hello over tcp");
    finish(child).await;
}

#[tokio::test]
async fn passes_a_tcp_listener_the_child_accepts_on() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (child, ch) = spawn_child("tcp-listener");
    hand(&ch, "tcp-listener", "", &[listener.as_fd()]).await;
    drop(listener);
    let mut client = TcpStream::connect(addr).await.unwrap();
    let got = read_all(&mut client).await;
    assert_eq!(got, b"accepted by child");
    finish(child).await;
}

#[tokio::test]
async fn passes_a_unix_stream() {
    let (mut mine, theirs) = UnixStream::pair().unwrap();
    let (child, ch) = spawn_child("unix");
    hand(&ch, "unix", "", &[theirs.as_fd()]).await;
    drop(theirs);
    let got = read_all(&mut mine).await;
    assert_eq!(got, b"hello over unix");
    finish(child).await;
}

#[tokio::test]
async fn passes_a_udp_socket() {
    let me = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let theirs = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let from = theirs.local_addr().unwrap();
    let (child, ch) = spawn_child("udp");
    hand(
        &ch,
        "udp",
        &me.local_addr().unwrap().to_string(),
        &[theirs.as_fd()],
    )
    .await;
    drop(theirs);
    let mut buf = [0u8; 64];
    let (n, peer) = timeout(LIMIT, me.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"hello over udp");
    assert_eq!(peer, from, "sent from the passed socket itself");
    finish(child).await;
}

#[tokio::test]
async fn passes_a_kernel_pipe_and_a_file() {
    // A kernel pipe (FIFO type).
    let (mut reader, writer) = kernel_pipe();
    let (child, ch) = spawn_child("fifo");
    let w: OwnedFd = writer.into();
    hand(&ch, "fifo", "", &[w.as_fd()]).await;
    drop(w);
    let got = tokio::task::spawn_blocking(move || {
        let mut s = String::new();
        reader.read_to_string(&mut s).unwrap();
        s
    });
    assert_eq!(
        timeout(LIMIT, got).await.unwrap().unwrap(),
        "hello via fifo"
    );
    finish(child).await;

    // A regular file.
    let path = std::env::temp_dir().join(format!("brood-ipc-file-{}", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    let (child, ch) = spawn_child("file");
    hand(&ch, "file", "", &[file.as_fd()]).await;
    drop(file);
    finish(child).await;
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello via file");
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn several_handles_in_one_message_keep_their_order_and_kinds() {
    let tcp_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (unix, _keep) = UnixStream::pair().unwrap();
    let (mut child, mut ch) = spawn_child("several");
    hand(
        &ch,
        "several",
        "",
        &[tcp_l.as_fd(), udp.as_fd(), unix.as_fd()],
    )
    .await;
    let (reply, _): (Msg, _) = timeout(LIMIT, ch.recv_msg())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply.what, "TcpListener,Udp,Unix");
    assert!(
        timeout(LIMIT, child.wait())
            .await
            .unwrap()
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn raw_api_pending_count_type_and_mismatched_accept() {
    let (a, mut b) = Channel::pair().unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    a.send_with_handles(b"xy", &[udp.as_fd(), tcp_l.as_fd()])
        .await
        .unwrap();
    // The handles are pending once the read that brought them is consumed: the write.
    let mut buf = [0u8; 2];
    assert_eq!(b.recv(&mut buf).await.unwrap(), 2);
    assert_eq!(&buf, b"xy");
    assert_eq!(b.pending_count(), 2);
    assert_eq!(b.pending_type(), Some(HandleType::Udp));
    let err = b.accept::<TcpStream>().unwrap_err();
    assert_eq!(err.name(), "EINVAL");
    assert!(err.to_string().contains("UDP"), "{err}");
    assert_eq!(
        b.pending_count(),
        2,
        "a mismatched accept leaves the handle pending"
    );
    let _udp: UdpSocket = b.accept().unwrap();
    let _l: TcpListener = b.accept().unwrap();
    assert_eq!(b.accept::<TcpStream>().unwrap_err().name(), "EAGAIN");
    drop(a);
    assert_eq!(b.recv(&mut buf).await.unwrap(), 0, "EOF");
}

const PYTHON_PEER: &str = r#"
import os, socket
s = socket.socket(fileno=3)
# Receive a handle from brood (a pipe's write end) and write through it.
msg, fds, flags, addr = socket.recv_fds(s, 16, 4)
assert msg == b"w", msg
os.write(fds[0], b"python wrote this")
os.close(fds[0])
# Send brood a handle of our own: one end of a socketpair, with one byte.
a, b = socket.socketpair()
socket.send_fds(s, [b"p"], [b.fileno()])
b.close()
a.sendall(b"from python's socketpair")
a.close()
"#;

#[tokio::test]
async fn interoperates_with_python_send_fds_and_recv_fds() {
    let mut child = Command::new("python3")
        .args(["-c", PYTHON_PEER])
        .stdio(3, Stdio::ipc())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut ch = child.take_channel(3).unwrap();
    let (mut reader, writer) = kernel_pipe();
    let w: OwnedFd = writer.into();
    ch.send_with_handles(b"w", &[w.as_fd()]).await.unwrap();
    drop(w);
    let read = tokio::task::spawn_blocking(move || {
        let mut s = String::new();
        reader.read_to_string(&mut s).unwrap();
        s
    });
    assert_eq!(
        timeout(LIMIT, read).await.unwrap().unwrap(),
        "python wrote this"
    );

    let mut byte = [0u8; 1];
    assert_eq!(
        timeout(LIMIT, ch.recv(&mut byte)).await.unwrap().unwrap(),
        1
    );
    assert_eq!(&byte, b"p");
    assert_eq!(ch.pending_type(), Some(HandleType::Unix));
    let mut s: UnixStream = ch.accept().unwrap();
    let mut got = String::new();
    timeout(LIMIT, s.read_to_string(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, "from python's socketpair");
    let exit = timeout(LIMIT, child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "python peer: {exit}");
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

/// The example with 2 workers, once it listens: the master (stderr piped, not read yet) and
/// its address.
async fn start_multi_echo_server() -> (brood::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut master = Command::new(example("multi_echo_server"))
        .args(["-w", "2", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(master.stdout.take().unwrap());
    let mut line = String::new();
    timeout(LIMIT, out.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("Listening on ")
        .unwrap()
        .to_string();
    (master, addr)
}

#[tokio::test]
async fn multi_echo_server_serves_50_clients_from_2_workers() {
    let (mut master, addr) = start_multi_echo_server().await;

    let mut tasks = Vec::new();
    for i in 0..50 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            let msg = format!("client {i} says hello");
            s.write_all(msg.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).await.unwrap();
            assert_eq!(got, msg);
        }));
    }
    for t in tasks {
        timeout(LIMIT, t).await.unwrap().unwrap();
    }
    // Stop the master; the workers see their channel close and exit.
    master.kill(brood::Signum::INT).unwrap();
    let exit = timeout(LIMIT, master.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "master: {exit}");
    let mut err = String::new();
    timeout(
        LIMIT,
        master.stderr.take().unwrap().read_to_string(&mut err),
    )
    .await
    .unwrap()
    .unwrap();
    let workers: Vec<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix("Started worker "))
        .collect();
    assert_eq!(workers.len(), 2, "{err}");
    let mut total = 0;
    for w in &workers {
        let n = err
            .lines()
            .filter(|l| l.starts_with(&format!("Worker {w}: Accepted fd")))
            .count();
        assert!(n > 0, "worker {w} got no connection:\n{err}");
        total += n;
    }
    assert_eq!(
        total, 50,
        "every connection handled exactly once (got {total}):\n{err}"
    );
    for w in workers {
        let alive = std::path::Path::new(&format!("/proc/{w}")).exists();
        assert!(!alive, "worker {w} still running after the master stopped");
    }
}

/// A worker that stops reading (SIGSTOP) does not stall the example's master: once that
/// worker's channel is full the master passes it by, the other worker serves the rest, and
/// after SIGCONT the stopped one serves what its channel held. Nothing is lost, and Ctrl-C
/// still stops the master.
#[tokio::test]
async fn multi_echo_server_passes_a_stopped_worker_by() {
    use tokio::io::AsyncBufReadExt;
    let (mut master, addr) = start_multi_echo_server().await;
    // The workers' "Started worker PID" lines came before "Listening on".
    let mut err = tokio::io::BufReader::new(master.stderr.take().unwrap());
    let mut stopped = String::new();
    timeout(LIMIT, err.read_line(&mut stopped))
        .await
        .unwrap()
        .unwrap();
    let stopped: i32 = stopped
        .trim()
        .strip_prefix("Started worker ")
        .unwrap()
        .parse()
        .unwrap();
    // Keep reading the log so that the workers never block on a full stderr pipe.
    let log = tokio::spawn(async move {
        let mut all = String::new();
        let _ = err.read_to_string(&mut all).await;
        all
    });
    brood::kill(stopped, brood::Signum::STOP).unwrap();

    // 800 clients at once; the stopped worker's channel holds a few hundred at most
    // (212,992 bytes of socket buffer, one connection per message).
    const N: usize = 800;
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for i in 0..N {
        let (addr, served, done) = (addr.clone(), served.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            let msg = format!("client {i}");
            s.write_all(msg.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).await.unwrap();
            assert_eq!(got, msg);
            served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            done.notify_one();
        }));
    }
    // While the worker is stopped, the other one serves at least half.
    timeout(LIMIT, async {
        while served.load(std::sync::atomic::Ordering::SeqCst) < N / 2 {
            done.notified().await;
        }
    })
    .await
    .expect("the master stalled behind the stopped worker");
    brood::kill(stopped, brood::Signum::CONT).unwrap();
    for t in tasks {
        timeout(LIMIT, t).await.unwrap().unwrap();
    }
    master.kill(brood::Signum::INT).unwrap();
    let exit = timeout(LIMIT, master.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "master: {exit}");
    let log = timeout(LIMIT, log).await.unwrap().unwrap();
    let by_stopped = log
        .lines()
        .filter(|l| l.starts_with(&format!("Worker {stopped}: Accepted fd")))
        .count();
    assert!(by_stopped > 0 && by_stopped < N / 2, "{by_stopped} of {N}");
}

#[tokio::test]
async fn a_channel_over_a_named_socket_between_unrelated_processes() {
    let dir = std::env::temp_dir().join(format!("brood-ipc-named-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ipc.sock");
    let server = tokio::net::UnixListener::bind(&path).unwrap();
    // The child gets no channel from us: only the socket's name.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_side", "--nocapture", "--test-threads=1"])
        .env(MODE, "named")
        .env("BROOD_IPC_TEST_PATH", &path)
        .stdio(1, Stdio::ignore())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (conn, _) = timeout(LIMIT, server.accept()).await.unwrap().unwrap();
    let ch = Channel::new(conn);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server_side, _) = listener.accept().await.unwrap();
    hand(&ch, "named", "", &[server_side.as_fd()]).await;
    drop(server_side);
    let got = read_all(&mut client).await;
    assert_eq!(got, b"hello over tcp");
    assert!(
        timeout(LIMIT, child.wait())
            .await
            .unwrap()
            .unwrap()
            .success()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_slow_reader_makes_the_sender_wait() {
    let (a, mut b) = Channel::pair().unwrap();
    let data = vec![7u8; 8 << 20];
    // Nobody reads: the send cannot finish, and nothing is buffered beyond the kernel's
    // socket buffer (the send waits instead).
    let stalled = timeout(Duration::from_millis(300), a.send(&data)).await;
    assert!(
        stalled.is_err(),
        "8 MiB went into a peer that reads nothing"
    );
    // Once the reader reads, a fresh send of everything completes.
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        loop {
            let n = b.recv(&mut buf).await.unwrap();
            if n == 0 {
                return total;
            }
            total += n;
        }
    });
    let (a2, mut b2) = Channel::pair().unwrap();
    drop(a);
    let reader2 = tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        loop {
            let n = b2.recv(&mut buf).await.unwrap();
            if n == 0 {
                return total;
            }
            total += n;
        }
    });
    timeout(LIMIT, a2.send(&data)).await.unwrap().unwrap();
    drop(a2);
    assert_eq!(timeout(LIMIT, reader2).await.unwrap().unwrap(), data.len());
    // The first reader saw whatever part of the stalled send reached the socket.
    assert!(timeout(LIMIT, reader).await.unwrap().unwrap() < data.len());
}

/// A kernel pipe: (read end, write end) as files (std's `io::pipe` is newer than our MSRV).
fn kernel_pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new fds into `fds`.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds are new and ours alone.
    unsafe {
        (
            std::os::fd::FromRawFd::from_raw_fd(fds[0]),
            std::os::fd::FromRawFd::from_raw_fd(fds[1]),
        )
    }
}

/// A line longer than `set_max_message` is `EMSGSIZE` once, whether it is still coming or
/// arrived whole; it is dropped as it arrives, and the lines after it are read as usual.
#[tokio::test]
async fn a_line_over_the_limit_is_an_error_once_and_the_next_lines_are_read() {
    let (raw, ours) = std::os::unix::net::UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let mut ch = Channel::new(UnixStream::from_std(ours).unwrap());
    ch.set_max_message(1000);
    // A peer in a thread: 1 MiB with no newline (far more than the socket holds, so it is
    // read while it is written), then a good line, a 2,000-byte line, a good line.
    let writer = std::thread::spawn(move || {
        let mut raw = raw;
        raw.write_all(&vec![b'x'; 1 << 20]).unwrap();
        raw.write_all(b"\n{\"what\":\"one\"}\n").unwrap();
        let long = format!("{{\"what\":\"{}\"}}\n", "y".repeat(2000));
        raw.write_all(long.as_bytes()).unwrap();
        raw.write_all(b"{\"what\":\"two\"}\n").unwrap();
        raw
    });
    let mut got = Vec::new();
    for _ in 0..4 {
        let r = timeout(LIMIT, ch.recv_msg::<Msg>()).await.unwrap();
        got.push(match r {
            Ok(Some((m, _))) => m.what,
            Ok(None) => "end".into(),
            Err(e) => e.name().to_string(),
        });
    }
    assert_eq!(got, ["EMSGSIZE", "one", "EMSGSIZE", "two"]);
    drop(writer.join().unwrap());
    assert!(
        timeout(LIMIT, ch.recv_msg::<Msg>())
            .await
            .unwrap()
            .unwrap()
            .is_none()
    );
}
