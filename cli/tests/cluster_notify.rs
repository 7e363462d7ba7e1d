//! `brood cluster` under systemd's `Type=notify`: a datagram socket bound by the test stands
//! in for systemd's `NOTIFY_SOCKET`. READY=1 comes only once every worker is ready (the
//! test holds the workers back) and the cluster then answers at once; RELOADING=1 then
//! READY=1 around SIGHUP; STOPPING=1 on SIGTERM; WATCHDOG=1 never more often than half of
//! WATCHDOG_USEC, and steadily. Also: the master is a subreaper that reaps its workers'
//! orphans.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use brood::{Command, Signum, Stdio};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::{TcpStream, UnixDatagram};

const BROOD: &str = env!("CARGO_BIN_EXE_brood");
const LIMIT: Duration = Duration::from_secs(30);

/// A round-robin worker that reads one byte of its stdin (the master's, which the test
/// holds) before it says it is ready, then answers every connection with `200 ok`.
const WORKER: &str = r#"
import os, socket
assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
os.read(0, 1)
ch = socket.socket(fileno=3)
ch.sendall(b"r")
while True:
    msg, fds, _, _ = socket.recv_fds(ch, 1, 1)
    if not msg:
        break
    if msg == b"p":
        ch.sendall(b"P")
    for fd in fds:
        c = socket.socket(fileno=fd)
        c.recv(4096)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        c.close()
"#;

/// The fake systemd: the datagrams it got, with when the kernel queued each one
/// (`SO_TIMESTAMPNS`), so that a datagram the test reads late is not timed late.
struct Systemd {
    sock: UnixDatagram,
    path: std::path::PathBuf,
    got: Vec<(Duration, String)>,
}

impl Systemd {
    fn bind(tag: &str) -> Systemd {
        let path = std::env::temp_dir().join(format!("brood-notify-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).unwrap();
        let on: libc::c_int = 1;
        // SAFETY: a valid socket fd and a c_int option value of the size given.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "SO_TIMESTAMPNS: {}", std::io::Error::last_os_error());
        Systemd {
            sock,
            path,
            got: Vec::new(),
        }
    }

    /// One datagram if one is queued, with its kernel timestamp (`WouldBlock` if none).
    fn recv_stamped(&self) -> std::io::Result<(Duration, String)> {
        self.sock.try_io(Interest::READABLE, || {
            let mut buf = [0u8; 4096];
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // Room for one control message holding a timespec, aligned for cmsghdr.
            let mut control = [0u64; 8];
            // SAFETY: an all-zero msghdr is valid (null name, no iovecs yet).
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = size_of_val(&control);
            // SAFETY: msg points at a live iovec over buf and at the control buffer, with
            // their true lengths; the kernel writes only within them.
            let n = unsafe { libc::recvmsg(self.sock.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut stamp = None;
            // SAFETY: the CMSG_* walk stays within msg_controllen, which the kernel set.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_SOCKET
                        && (*c).cmsg_type == libc::SCM_TIMESTAMPNS
                    {
                        let ts =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                        stamp = Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
            }
            let text = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
            Ok((stamp.expect("a datagram without its SCM_TIMESTAMPNS"), text))
        })
    }

    /// The next datagram, waited for.
    async fn next(&mut self, what: &str) -> String {
        let got = tokio::time::timeout(LIMIT, async {
            loop {
                self.sock.readable().await.unwrap();
                match self.recv_stamped() {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    r => return r.unwrap(),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: no datagram in {LIMIT:?}; got {:?}", self.texts()));
        let text = got.1.clone();
        self.got.push(got);
        text
    }

    /// Datagrams until one holds `line` (a whole `KEY=VALUE` line).
    async fn until(&mut self, line: &str) -> String {
        loop {
            let d = self.next(line).await;
            if d.lines().any(|l| l == line) {
                return d;
            }
        }
    }

    /// Takes what has arrived, without waiting.
    fn drain(&mut self) {
        while let Ok(got) = self.recv_stamped() {
            self.got.push(got);
        }
    }

    fn texts(&self) -> Vec<&str> {
        self.got.iter().map(|(_, t)| t.as_str()).collect()
    }

    /// The states (not STATUS=, WATCHDOG=) received so far, in order.
    fn states(&self) -> Vec<&str> {
        self.got
            .iter()
            .flat_map(|(_, t)| t.lines())
            .filter(|l| ["READY=1", "RELOADING=1", "STOPPING=1"].contains(l))
            .collect()
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn get(addr: &str) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn ready_after_every_worker_reloading_around_sighup_stopping_on_sigterm_watchdog_paced() {
    let mut sd = Systemd::bind("cluster");
    let mut master = Command::new(BROOD)
        .args([
            "cluster",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--wait-ready",
        ])
        .args(["--", "python3", "-c", WORKER])
        .env("NOTIFY_SOCKET", &sd.path)
        // Pings every 200 ms.
        .env("WATCHDOG_USEC", "400000")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = master.id().unwrap();
    let mut stdin = master.stdin.take().unwrap();
    let mut log = BufReader::new(master.stderr.take().unwrap()).lines();
    let mut addr = String::new();
    let mut started = 0;
    while started < 2 {
        let line = tokio::time::timeout(LIMIT, log.next_line())
            .await
            .expect("the master's log")
            .unwrap()
            .expect("the master's log ended");
        if let Some(a) = line.strip_prefix("brood cluster: listening on ") {
            addr = a.to_string();
        }
        started += line.contains("worker started") as usize;
    }
    let log_task = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Ok(Some(l)) = log.next_line().await {
            all.push(l);
        }
        all
    });
    // The master runs and its workers wait: it says so, but not READY=1.
    let status = sd.until("STATUS=0/2 workers ready, 0 restarts").await;
    assert!(!status.contains("READY=1"));
    sd.drain();
    assert!(sd.states().is_empty(), "{:?}", sd.texts());

    // Let both workers get ready: READY=1 (with the master's pid), and it answers at once.
    stdin.write_all(b"ab").await.unwrap();
    let ready = sd.until("READY=1").await;
    assert!(ready.contains(&format!("MAINPID={pid}")), "{ready}");
    let before: Vec<&str> = sd.texts();
    assert!(
        before
            .iter()
            .any(|t| t.contains("STATUS=2/2 workers ready")),
        "{before:?}"
    );
    assert!(get(&addr).await.ends_with("ok"));

    // Watchdog: three more pings, never two within 200 ms. The kernel's queueing times are
    // compared, not when the test read them; the margin is for the master being preempted
    // between its clock read and its send (a ping per 50 ms housekeeping tick would fail).
    let mut pings = Vec::new();
    while pings.len() < 3 {
        sd.until("WATCHDOG=1").await;
        pings.push(sd.got.last().unwrap().0);
    }
    let all_pings: Vec<Duration> = sd
        .got
        .iter()
        .filter(|(_, t)| t.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(at, _)| *at)
        .collect();
    for w in all_pings.windows(2) {
        let gap = w[1] - w[0];
        assert!(gap >= Duration::from_millis(120), "pings {gap:?} apart");
    }

    // SIGHUP: a rolling restart (its new workers are let through), RELOADING=1 then READY=1.
    stdin.write_all(b"cd").await.unwrap();
    brood::kill(pid as i32, Signum::HUP).unwrap();
    sd.until("RELOADING=1").await;
    sd.until("READY=1").await;
    assert!(get(&addr).await.ends_with("ok"));

    // SIGTERM: STOPPING=1, and the master exits.
    brood::kill(pid as i32, Signum::TERM).unwrap();
    sd.until("STOPPING=1").await;
    let exit = tokio::time::timeout(LIMIT, master.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit}: {:?}", log_task.await.unwrap());
    sd.drain();
    assert_eq!(
        sd.states(),
        ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"],
        "{:?}",
        sd.texts()
    );
}

#[tokio::test]
async fn without_notify_socket_nothing_is_sent_and_the_master_runs_as_before() {
    let mut master = Command::new(BROOD)
        .args([
            "cluster",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--builtin",
            "http",
        ])
        .env_remove("NOTIFY_SOCKET")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = BufReader::new(master.stderr.take().unwrap()).lines();
    loop {
        let line = tokio::time::timeout(LIMIT, log.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(!line.contains("NOTIFY_SOCKET"), "{line}");
        if line.contains("worker ready") {
            break;
        }
    }
    brood::kill(master.id().unwrap() as i32, Signum::TERM).unwrap();
    let exit = tokio::time::timeout(LIMIT, master.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());
}

/// Kills a pid when dropped, unless forgotten once the process is known gone.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = brood::kill(self.0, Signum::KILL);
    }
}

/// `pid`'s state letter and parent, `None` once it is gone.
fn state_and_parent(pid: i32) -> Option<(String, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    Some((f[0].to_string(), f[1].parse().ok()?))
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < LIMIT, "{what}: not so after {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn the_master_reaps_its_workers_orphans() {
    // Each worker leaves a background job behind that outlives its subshell: it lands on
    // the master (a subreaper), and when it ends the master reaps it: no zombie is left.
    let worker = "(sleep 60 >/dev/null 2>&1 & echo orphan $! >&2); exec sleep 60";
    let mut master = Command::new(BROOD)
        .args(["cluster", "--listen", "127.0.0.1:0", "--workers", "2"])
        .args(["--grace", "0.2", "--", "sh", "-c", worker])
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let me = master.id().unwrap() as i32;
    let mut log = BufReader::new(master.stderr.take().unwrap()).lines();
    let mut orphans = Vec::new();
    let mut guards = Vec::new();
    while orphans.len() < 2 {
        let line = tokio::time::timeout(LIMIT, log.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // The master tags worker output (`[worker N pid P stderr] orphan 123`).
        if let Some((_, p)) = line.rsplit_once("] orphan ") {
            let p: i32 = p.parse().unwrap();
            orphans.push(p);
            guards.push(KillOnDrop(p));
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    for &p in &orphans {
        // Re-parented to the master once its subshell has exited (not to the machine's init).
        until(&format!("orphan {p} under the master"), || {
            state_and_parent(p).is_some_and(|(_, parent)| parent == me)
        })
        .await;
        brood::kill(p, Signum::TERM).unwrap();
        // Reaped by the master: gone, not a zombie.
        until(
            &format!("orphan {p} reaped: {:?}", state_and_parent(p)),
            || state_and_parent(p).is_none(),
        )
        .await;
    }
    guards.into_iter().for_each(std::mem::forget);
    brood::kill(me, Signum::TERM).unwrap();
    let exit = tokio::time::timeout(LIMIT, master.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit}");
}
