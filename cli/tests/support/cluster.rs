//! What the cluster tests share: a `brood cluster` master with its control socket and log,
//! status rows, echo exchanges, a steady load, /proc readings.
#![allow(
    dead_code,
    reason = "shared by several test binaries; each uses a part"
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brood::{Command, Signum, Stdio};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

pub const LIMIT: Duration = Duration::from_secs(30);

/// A round-robin worker in Python as docs/protocols.md shows it (one byte and one fd per
/// read), answering `py:` and what it read.
pub const PY_ROUND_ROBIN: &str = r#"
import socket
ch = socket.socket(fileno=3)
while True:
    msg, fds, _, _ = socket.recv_fds(ch, 1, 1)
    if not msg:
        break
    for fd in fds:
        c = socket.socket(fileno=fd)
        c.sendall(b"py:" + c.recv(100))
        c.close()
"#;

pub struct Master {
    pub child: brood::Child,
    pub addr: String,
    pub control: std::path::PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
    pub _dir: TempDir,
}

pub struct TempDir(pub std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn tempdir(tag: &str) -> TempDir {
    let p = std::env::temp_dir().join(format!("brood-cluster-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    TempDir(p)
}

#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub pid: u32,
    pub state: String,
    pub handled: u64,
    pub restarts: u32,
}

impl Drop for Master {
    /// A failed test shows the master's log.
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(log) = self.log.lock()
        {
            eprintln!("--- master log ---\n{}\n---", log.join("\n"));
        }
    }
}

impl Master {
    /// Starts a master and waits until all its workers are ready.
    pub async fn start(tag: &str, extra: &[&str]) -> Master {
        let m = Master::launch(tag, &[], extra).await;
        m.wait_for(
            |rows| !rows.is_empty() && rows.iter().all(|r| r.state == "ready"),
            "workers ready",
        )
        .await;
        m
    }

    /// Starts `brood cluster --listen 127.0.0.1:0 --control PATH extra..` (through `wrap`,
    /// e.g. a shell that lowers a limit first, when not empty) and waits for its address.
    pub async fn launch(tag: &str, wrap: &[&str], extra: &[&str]) -> Master {
        let dir = tempdir(tag);
        let control = dir.0.join("ctl.sock");
        let brood = env!("CARGO_BIN_EXE_brood");
        let mut cmd = match wrap.split_first() {
            Some((first, more)) => {
                let mut cmd = Command::new(first);
                cmd.args(more).arg(brood);
                cmd
            }
            None => Command::new(brood),
        };
        let mut child = cmd
            .arg("cluster")
            .args(["--listen", "127.0.0.1:0", "--control"])
            .arg(&control)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let addr = timeout(LIMIT, async {
            loop {
                let line = lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("master exited early");
                log.lock().unwrap().push(line.clone());
                if let Some(a) = line.strip_prefix("brood cluster: listening on ") {
                    return a.to_string();
                }
            }
        })
        .await
        .unwrap();
        let l2 = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                l2.lock().unwrap().push(line);
            }
        });
        Master {
            child,
            addr,
            control,
            log,
            _dir: dir,
        }
    }

    pub async fn ctl(&self, cmd: &str) -> String {
        timeout(LIMIT, brood::cluster::ctl(&self.control, cmd))
            .await
            .unwrap()
            .unwrap()
    }

    pub async fn status(&self) -> Vec<Row> {
        let text = self.ctl("status").await;
        text.lines()
            .skip(2)
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Row {
                    id: f[0].to_string(),
                    // `-` for a slot waiting out its restart backoff
                    pid: f[1].parse().unwrap_or(0),
                    state: f[2].to_string(),
                    handled: f[4].parse().unwrap(),
                    restarts: f[6].parse().unwrap(),
                }
            })
            .collect()
    }

    /// Polls `status` until `ok` holds (the control socket is the event source here).
    pub async fn wait_for(&self, ok: impl Fn(&[Row]) -> bool, what: &str) -> Vec<Row> {
        let start = Instant::now();
        loop {
            let rows = self.status().await;
            if ok(&rows) {
                return rows;
            }
            assert!(
                start.elapsed() < LIMIT,
                "timed out waiting for {what}: {rows:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) until the master's log has `count` lines with `needle`: the log is
    /// read by a task, so a line written just before a status answer may still be in flight.
    pub async fn wait_log(&self, needle: &str, count: usize) {
        let start = Instant::now();
        while self.log_has(needle) < count {
            assert!(start.elapsed() < LIMIT, "log never had {count}× {needle:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(self.log_has(needle), count, "{needle:?}");
    }

    /// Waits (bounded) until the log has at least `count` lines with `needle`.
    pub async fn wait_log_at_least(&self, needle: &str, count: usize) {
        let start = Instant::now();
        while self.log_has(needle) < count {
            assert!(start.elapsed() < LIMIT, "log never had {count}× {needle:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn log_has(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub async fn stop(mut self) -> Vec<u32> {
        let pids: Vec<u32> = self.status().await.iter().map(|r| r.pid).collect();
        self.child.kill(Signum::TERM).unwrap();
        let exit = timeout(LIMIT, self.child.wait()).await.unwrap().unwrap();
        assert!(exit.success(), "master: {exit}");
        pids
    }
}

pub fn alive(pid: u32) -> bool {
    // A zombie counts as gone: it no longer runs.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

pub async fn exchange(addr: &str, msg: &[u8]) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(msg).await?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).await?;
    if got != msg {
        return Err(std::io::Error::other("wrong echo"));
    }
    Ok(())
}

/// A steady load of new-connection exchanges until `stop`; returns (ok, failed).
pub fn load(
    addr: String,
    clients: usize,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<(u64, u64)>,
) {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let handle = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for i in 0..clients {
            let addr = addr.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                while !*stop.borrow() {
                    match timeout(
                        Duration::from_secs(5),
                        exchange(&addr, format!("c{i}").as_bytes()),
                    )
                    .await
                    {
                        Ok(Ok(())) => ok += 1,
                        _ => failed += 1,
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
    });
    (stop_tx, handle)
}

/// A process's resident set peak (VmHWM) and now (VmRSS), in KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// A process's CPU time so far (utime + stime), in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted from the state (field 3) here.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// How many fds a process has open.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The pids of a master's workers (children of `master`), from /proc.
pub fn children(master: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        .map(|s| s.split_whitespace().map(|p| p.parse().unwrap()).collect())
        .unwrap_or_default()
}

/// Waits (bounded) until `ok()`; panics with `what` after the limit.
pub async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
