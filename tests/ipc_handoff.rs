//! `HandoffListener`: a master that accepts connections and passes them on, never reading
//! them. Real sockets, a real receiving process (Python), the fd limit hit mid-accept.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use brood::ipc::HandoffListener;
use brood::{Command, Stdio};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);
const MODE: &str = "BROOD_IPC_HANDOFF_CHILD";

fn flags(fd: i32, cmd: i32) -> i32 {
    // SAFETY: F_GETFD / F_GETFL only read the flags of `fd`.
    let f = unsafe { libc::fcntl(fd, cmd) };
    assert!(f >= 0, "fcntl({fd})");
    f
}

/// The fds that some epoll instance of this process has registered (each tokio runtime's
/// reactor is one), from `/proc/self/fdinfo`: a `tfd:` line per registered fd.
fn registered_fds() -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if target.to_str() != Some("anon_inode:[eventpoll]") {
            continue;
        }
        let name = e.file_name();
        let Ok(info) =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", name.to_str().unwrap()))
        else {
            continue;
        };
        for line in info.lines() {
            if let Some(rest) = line.strip_prefix("tfd:") {
                out.push(rest.split_whitespace().next().unwrap().parse().unwrap());
            }
        }
    }
    out
}

#[tokio::test(flavor = "current_thread")]
async fn connections_are_plain_blocking_sockets_the_master_never_registers() {
    let listener = HandoffListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let client = std::thread::spawn(move || TcpStream::connect(addr).unwrap());
    let (conn, peer) = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
    let client = client.join().unwrap();
    assert_eq!(peer, client.local_addr().unwrap());
    let fd = conn.as_raw_fd();
    assert_eq!(flags(fd, libc::F_GETFL) & libc::O_NONBLOCK, 0, "blocking");
    assert_ne!(
        flags(fd, libc::F_GETFD) & libc::FD_CLOEXEC,
        0,
        "close-on-exec"
    );
    let reg = registered_fds();
    assert!(
        reg.contains(&listener.as_raw_fd()),
        "the listener is registered: {reg:?}"
    );
    assert!(
        !reg.contains(&fd),
        "the connection is not registered: {reg:?}"
    );
}

/// The master passes each connection to a Python process over an IPC channel and closes
/// its copy; the child echoes on it with plain blocking calls. Every byte comes back.
#[tokio::test(flavor = "current_thread")]
async fn a_child_in_another_language_serves_the_connections_handed_to_it() {
    let script = "import socket\n\
                  ch = socket.socket(fileno=3)\n\
                  while True:\n\
                  \x20   msg, fds, _, _ = socket.recv_fds(ch, 1, 1)\n\
                  \x20   if not msg: break\n\
                  \x20   c = socket.socket(fileno=fds[0])\n\
                  \x20   assert c.getblocking()\n\
                  \x20   while (b := c.recv(65536)): c.sendall(b)\n\
                  \x20   c.close()\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdio(3, Stdio::ipc())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let channel = child.take_channel(3).unwrap();
    let listener = HandoffListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    const N: usize = 20;
    let clients = std::thread::spawn(move || {
        for i in 0..N {
            let mut c = TcpStream::connect(addr).unwrap();
            let msg = format!("connection {i} ").repeat(1000);
            let w = {
                let mut c = c.try_clone().unwrap();
                let msg = msg.clone();
                std::thread::spawn(move || {
                    c.write_all(msg.as_bytes()).unwrap();
                    c.shutdown(std::net::Shutdown::Write).unwrap();
                })
            };
            let mut back = String::new();
            c.read_to_string(&mut back).unwrap();
            w.join().unwrap();
            assert_eq!(back, msg, "connection {i}");
        }
    });
    for _ in 0..N {
        let (conn, _) = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
        channel
            .send_with_handles(b"c", &[conn.as_fd()])
            .await
            .unwrap();
        // Our copy closes here: the child's is the only one, so its close ends the stream.
    }
    tokio::task::spawn_blocking(move || clients.join().unwrap())
        .await
        .unwrap();
    drop(channel);
    let status = timeout(LIMIT, child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
}

/// `try_send_with_handles` never waits and never splits a message: into a peer that does
/// not read, whole 1,000-byte messages go until the kernel's buffer is full, then `EAGAIN`;
/// once the peer has read, sends go again; a handle sent this way arrives.
#[tokio::test(flavor = "current_thread")]
async fn try_send_never_waits_and_never_splits_a_message() {
    let (a, mut b) = brood::ipc::Channel::pair().unwrap();
    let msg = |i: u32| {
        let mut m = vec![(i % 251) as u8; 1000];
        m[..4].copy_from_slice(&i.to_be_bytes());
        m
    };
    let mut sent = 0u32;
    let full = loop {
        match a.try_send_with_handles(&msg(sent), &[]) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 100_000, "the buffer never filled");
    };
    assert_eq!(full.name(), "EAGAIN", "{full}");
    assert!(sent > 10, "{sent}");
    let mut got = vec![0u8; sent as usize * 1000];
    let mut off = 0;
    while off < got.len() {
        let n = timeout(LIMIT, b.recv(&mut got[off..]))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        off += n;
    }
    for (i, chunk) in got.chunks(1000).enumerate() {
        assert_eq!(chunk, &msg(i as u32)[..], "message {i}");
    }
    // Room again, and a handle travels with its byte.
    let file = std::fs::File::open("/dev/null").unwrap();
    a.try_send_with_handles(b"f", &[file.as_fd()]).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(timeout(LIMIT, b.recv(&mut byte)).await.unwrap().unwrap(), 1);
    assert_eq!(&byte, b"f");
    assert_eq!(b.pending_count(), 1);
    // Bad input is an error before anything is written.
    let e = a.try_send_with_handles(b"", &[file.as_fd()]).unwrap_err();
    assert_eq!(e.name(), "EINVAL", "{e}");
}

#[tokio::test(flavor = "current_thread")]
async fn an_accept_dropped_before_a_connection_loses_nothing() {
    let listener = HandoffListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    // A pending accept, cancelled (no connection exists yet).
    {
        let pending = listener.accept();
        tokio::pin!(pending);
        assert!(futures_poll_once(pending.as_mut()).await.is_none());
    }
    let client = TcpStream::connect(addr).unwrap();
    let (conn, peer) = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
    assert_eq!(peer, client.local_addr().unwrap());
    drop(conn);
}

/// Polls a future once; `None` if it is pending.
async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
    let mut f = f;
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn bad_sockets_and_addresses_are_errors() {
    // Not listening.
    let tcp = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let e = HandoffListener::from_std(tcp.into()).unwrap_err();
    assert_eq!(e.name(), "EINVAL", "{e}");
    // A listening Unix socket (systemd's `ListenStream=/path`): refused, not accepted from.
    let dir = std::env::temp_dir().join(format!("brood-handoff-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let un = std::os::unix::net::UnixListener::bind(&dir).unwrap();
    let as_tcp = std::net::TcpListener::from(std::os::fd::OwnedFd::from(un));
    let e = HandoffListener::from_std(as_tcp).unwrap_err();
    assert_eq!(e.name(), "EINVAL", "{e}");
    assert!(e.to_string().contains("not a TCP socket"), "{e}");
    std::fs::remove_file(&dir).unwrap();
    // The address is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let e = HandoffListener::bind(taken.local_addr().unwrap()).unwrap_err();
    assert_eq!(e.name(), "EADDRINUSE", "{e}");
    assert!(e.to_string().contains("bind 127.0.0.1:"), "{e}");
}

#[test]
fn outside_a_runtime_it_is_an_error_not_a_panic() {
    let e = HandoffListener::bind("127.0.0.1:0".parse().unwrap()).unwrap_err();
    assert_eq!(e.name(), "EINVAL", "{e}");
    assert!(e.to_string().contains("tokio runtime"), "{e}");
}

/// At the fd limit `accept` says `EMFILE` and the connection waits in the kernel's queue;
/// with an fd free again the next `accept` returns it. Run in a child process of this test
/// binary, since the limit is the whole process's.
#[test]
fn at_the_fd_limit_the_connection_waits_and_is_not_lost() {
    if std::env::var_os(MODE).is_some() {
        return fd_limit_child();
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "at_the_fd_limit_the_connection_waits_and_is_not_lost",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MODE, "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("fd-limit child: ok"), "{text}");
}

fn set_nofile(soft: u64) {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl), 0);
        rl.rlim_cur = soft as libc::rlim_t;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &rl), 0);
    }
}

fn fd_limit_child() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = HandoffListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).unwrap();
        // Every hole in the fd table filled, then a limit of the highest fd + 1: nothing
        // more can be opened.
        let highest = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .max()
            .unwrap();
        let mut holes = Vec::new();
        loop {
            let f = std::fs::File::open("/dev/null").unwrap();
            if f.as_raw_fd() > highest {
                break;
            }
            holes.push(f);
        }
        set_nofile(highest as u64 + 1);
        let e = timeout(LIMIT, listener.accept())
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.name(), "EMFILE", "{e}");
        set_nofile(highest as u64 + 2);
        let (conn, peer) = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        drop((conn, holes));
    });
    println!("fd-limit child: ok");
}
