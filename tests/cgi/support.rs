//! What every CGI test uses: a temporary root of scripts, a captured log, a server on
//! loopback, clients (hyper's, and raw TCP), and the check that no script is left running.

pub use std::collections::HashMap;
pub use std::net::SocketAddr;
pub use std::os::unix::fs::PermissionsExt;
pub use std::path::{Path, PathBuf};
pub use std::sync::atomic::{AtomicUsize, Ordering};
pub use std::sync::{Arc, Mutex};
pub use std::time::Duration;

pub use brood::cgi::{Cgi, LogLine, Raw};
pub use bytes::Bytes;
pub use http_body_util::{BodyExt, Full};
pub use hyper::body::Incoming;
pub use hyper::{Request, Response, StatusCode};
pub use hyper_util::rt::TokioIo;
pub use tokio::io::{AsyncReadExt, AsyncWriteExt};
pub use tokio::net::{TcpListener, TcpStream};
pub use tokio::time::timeout;

pub const T: Duration = Duration::from_secs(20);

/// A temporary root with scripts, a pid directory and a place for fifos.
pub struct Root {
    pub dir: PathBuf,
}

pub static SEQ: AtomicUsize = AtomicUsize::new(0);

impl Root {
    pub fn new() -> Root {
        let dir = std::env::temp_dir().join(format!(
            "brood-cgi-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["www", "pids", "outside"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        Root { dir }
    }

    pub fn www(&self) -> PathBuf {
        self.dir.join("www")
    }

    pub fn pids(&self) -> PathBuf {
        self.dir.join("pids")
    }

    /// Writes an executable script at `www/name`; `$PIDS` in the script is the pid dir.
    /// Shell scripts record their pid there first thing, whatever they do next.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let body = match body.strip_prefix("#!/bin/sh\n") {
            Some(rest) => format!("#!/bin/sh\necho $$ > \"$PIDS/sh-$$\"\n{rest}"),
            None => body.to_string(),
        };
        self.write_exec(&self.www().join(name), &body)
    }

    pub fn write_exec(&self, path: &Path, body: &str) -> PathBuf {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, body).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_path_buf()
    }

    pub fn fifo(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        let status = std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .unwrap();
        assert!(status.success());
        p
    }

    /// The Cgi for this root, with `PIDS` set and the log captured.
    pub fn cgi(&self, log: &Logs) -> Cgi {
        let log = log.clone();
        Cgi::root(self.www())
            .env("PIDS", self.pids())
            .on_log(move |l| log.push(l))
    }

    /// Every pid a script recorded must be gone (waits for the kernel to finish the
    /// kills that were sent, up to a bound).
    pub async fn assert_no_process_left(&self) {
        let pids = self.recorded_pids();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let alive: Vec<u32> = pids
                .iter()
                .copied()
                .filter(|p| Path::new(&format!("/proc/{p}")).exists() && !is_zombie_of_other(*p))
                .collect();
            if alive.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "processes left behind: {alive:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every pid recorded, each once.
    pub fn recorded_pids(&self) -> Vec<u32> {
        let mut out = std::collections::BTreeSet::new();
        for e in std::fs::read_dir(self.pids()).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            out.extend(
                text.split_whitespace()
                    .filter_map(|w| w.parse::<u32>().ok()),
            );
        }
        out.into_iter().collect()
    }
}

/// A pid that is a zombie whose parent is not us (reparented to init, waiting to be
/// reaped by it) is gone for our purposes.
pub fn is_zombie_of_other(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let mut f = after.split(' ');
    let state = f.next().unwrap();
    let ppid: u32 = f.next().unwrap().parse().unwrap();
    state == "Z" && ppid != std::process::id()
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server's log lines, captured; waiters are woken on each new line.
#[derive(Clone, Default)]
pub struct Logs(Arc<(Mutex<Vec<String>>, tokio::sync::Notify)>);

impl Logs {
    pub fn push(&self, l: &LogLine) {
        eprintln!("log: {l}");
        self.0.0.lock().unwrap().push(l.to_string());
        self.0.1.notify_waiters();
    }

    pub fn count(&self, needle: &str) -> usize {
        self.0
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn has(&self, needle: &str) -> bool {
        self.count(needle) > 0
    }

    /// Waits (bounded) until `n` lines contain `needle`.
    pub async fn wait_count(&self, needle: &str, n: usize) {
        timeout(T, async {
            loop {
                let woken = self.0.1.notified();
                if self.count(needle) >= n {
                    return;
                }
                woken.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("fewer than {n} log lines with {needle:?}"));
    }

    pub async fn wait_for(&self, needle: &str) {
        self.wait_count(needle, 1).await
    }
}

/// A server on loopback; stopped (and its scripts killed) when dropped.
pub struct Server {
    pub addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<Result<(), brood::Error>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

pub async fn start(cgi: Cgi) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    Server {
        addr,
        task: Some(tokio::spawn(cgi.serve(listener))),
    }
}

impl Server {
    /// Stops the server and waits until its task is gone (which kills its scripts).
    pub async fn stop(mut self) {
        let task = self.task.take().unwrap();
        task.abort();
        let _ = timeout(T, task).await.expect("server stops in time");
    }
}

pub type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

pub async fn connect(addr: SocketAddr) -> Sender {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

pub fn req(method: &str, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "cgi.test:8080")
        .body(Full::new(body.into()))
        .unwrap()
}

pub async fn send(sender: &mut Sender, r: Request<Full<Bytes>>) -> (Response<()>, Vec<u8>) {
    timeout(T, async {
        let resp = sender.send_request(r).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes().to_vec();
        (Response::from_parts(parts, ()), body)
    })
    .await
    .expect("response in time")
}

pub async fn get(addr: SocketAddr, path: &str) -> (Response<()>, Vec<u8>) {
    let mut s = connect(addr).await;
    send(&mut s, req("GET", path, Bytes::new())).await
}

/// Sends raw bytes, reads until the server closes, returns the whole answer.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    timeout(T, async {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        tcp.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .expect("answer in time")
}

/// The Python interpreter itself (not a pyenv shim, which would change `PATH`).
pub fn python() -> String {
    static PY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PY.get_or_init(|| {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
    .clone()
}

/// Prints its environment, argv, cwd and the length of its stdin as JSON.
pub fn env_py() -> String {
    format!("#!{}\n{}", python(), ENV_PY)
}

pub const ENV_PY: &str = r#"
import os, sys, json
with open(os.path.join(os.environ["PIDS"], "env-%d" % os.getpid()), "w") as f:
    f.write(str(os.getpid()))
data = sys.stdin.buffer.read()
out = {"env": dict(os.environ), "argv": sys.argv[1:], "cwd": os.getcwd(), "body_len": len(data)}
sys.stdout.write("Content-Type: application/json\r\n\r\n")
sys.stdout.write(json.dumps(out))
"#;

pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

pub async fn resp_body(resp: Response<Incoming>) -> Vec<u8> {
    resp.into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}
