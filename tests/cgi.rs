//! brood::cgi end to end: real scripts (sh, Python) under a temporary root, a real server
//! on loopback, requests through hyper's client or raw TCP. Every script writes its pid to
//! the test's pid directory, and every test ends by checking that none of them is alive.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brood::cgi::{Cgi, LogLine, Raw};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(20);

/// A temporary root with scripts, a pid directory and a place for fifos.
struct Root {
    dir: PathBuf,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl Root {
    fn new() -> Root {
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

    fn www(&self) -> PathBuf {
        self.dir.join("www")
    }

    fn pids(&self) -> PathBuf {
        self.dir.join("pids")
    }

    /// Writes an executable script at `www/name`; `$PIDS` in the script is the pid dir.
    /// Shell scripts record their pid there first thing, whatever they do next.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let body = match body.strip_prefix("#!/bin/sh\n") {
            Some(rest) => format!("#!/bin/sh\necho $$ > \"$PIDS/sh-$$\"\n{rest}"),
            None => body.to_string(),
        };
        self.write_exec(&self.www().join(name), &body)
    }

    fn write_exec(&self, path: &Path, body: &str) -> PathBuf {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, body).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_path_buf()
    }

    fn fifo(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        let status = std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .unwrap();
        assert!(status.success());
        p
    }

    /// The Cgi for this root, with `PIDS` set and the log captured.
    fn cgi(&self, log: &Logs) -> Cgi {
        let log = log.clone();
        Cgi::root(self.www())
            .env("PIDS", self.pids())
            .on_log(move |l| log.push(l))
    }

    /// Every pid a script recorded must be gone (waits for the kernel to finish the
    /// kills that were sent, up to a bound).
    async fn assert_no_process_left(&self) {
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
    fn recorded_pids(&self) -> Vec<u32> {
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
fn is_zombie_of_other(pid: u32) -> bool {
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
struct Logs(Arc<(Mutex<Vec<String>>, tokio::sync::Notify)>);

impl Logs {
    fn push(&self, l: &LogLine) {
        eprintln!("log: {l}");
        self.0.0.lock().unwrap().push(l.to_string());
        self.0.1.notify_waiters();
    }

    fn count(&self, needle: &str) -> usize {
        self.0
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn has(&self, needle: &str) -> bool {
        self.count(needle) > 0
    }

    /// Waits (bounded) until `n` lines contain `needle`.
    async fn wait_count(&self, needle: &str, n: usize) {
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

    async fn wait_for(&self, needle: &str) {
        self.wait_count(needle, 1).await
    }
}

/// A server on loopback; stopped (and its scripts killed) when dropped.
struct Server {
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<Result<(), brood::Error>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

async fn start(cgi: Cgi) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    Server {
        addr,
        task: Some(tokio::spawn(cgi.serve(listener))),
    }
}

impl Server {
    /// Stops the server and waits until its task is gone (which kills its scripts).
    async fn stop(mut self) {
        let task = self.task.take().unwrap();
        task.abort();
        let _ = timeout(T, task).await.expect("server stops in time");
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn req(method: &str, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "cgi.test:8080")
        .body(Full::new(body.into()))
        .unwrap()
}

async fn send(sender: &mut Sender, r: Request<Full<Bytes>>) -> (Response<()>, Vec<u8>) {
    timeout(T, async {
        let resp = sender.send_request(r).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes().to_vec();
        (Response::from_parts(parts, ()), body)
    })
    .await
    .expect("response in time")
}

async fn get(addr: SocketAddr, path: &str) -> (Response<()>, Vec<u8>) {
    let mut s = connect(addr).await;
    send(&mut s, req("GET", path, Bytes::new())).await
}

/// Sends raw bytes, reads until the server closes, returns the whole answer.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
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
fn python() -> String {
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
fn env_py() -> String {
    format!("#!{}\n{}", python(), ENV_PY)
}

const ENV_PY: &str = r#"
import os, sys, json
with open(os.path.join(os.environ["PIDS"], "env-%d" % os.getpid()), "w") as f:
    f.write(str(os.getpid()))
data = sys.stdin.buffer.read()
out = {"env": dict(os.environ), "argv": sys.argv[1:], "cwd": os.getcwd(), "body_len": len(data)}
sys.stdout.write("Content-Type: application/json\r\n\r\n")
sys.stdout.write(json.dumps(out))
"#;

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn every_meta_variable_and_nothing_else() {
    let root = Root::new();
    root.script("sub/env.py", &env_py());
    let logs = Logs::default();
    let cgi = root
        .cgi(&logs)
        .env("EXTRA", "1")
        .pass_env("HOME")
        .pass_env("BROOD_CGI_TEST_UNSET");
    let server = start(cgi).await;

    let mut s = connect(server.addr).await;
    let r = Request::builder()
        .method("POST")
        .uri("/cgi-bin/sub/env.py/extra/p%20ath?a=1&b=%20x")
        .header("host", "cgi.test:8080")
        .header("content-type", "text/plain")
        .header("x-custom", "one")
        .header("x-custom", "two")
        .header("proxy", "http://evil.example/")
        .header("authorization", "Basic YWxpY2U6c2VjcmV0")
        .header("x_underscore", "spoof")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let (resp, body) = send(&mut s, r).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v = json(&body);
    let env: HashMap<String, String> = serde_json::from_value(v["env"].clone()).unwrap();
    let www = std::fs::canonicalize(root.www()).unwrap();
    let www = www.to_str().unwrap();
    let want = [
        ("GATEWAY_INTERFACE", "CGI/1.1".to_string()),
        ("SERVER_PROTOCOL", "HTTP/1.1".into()),
        ("SERVER_NAME", "cgi.test".into()),
        ("SERVER_PORT", server.addr.port().to_string()),
        ("REQUEST_METHOD", "POST".into()),
        (
            "REQUEST_URI",
            "/cgi-bin/sub/env.py/extra/p%20ath?a=1&b=%20x".into(),
        ),
        ("QUERY_STRING", "a=1&b=%20x".into()),
        ("SCRIPT_NAME", "/cgi-bin/sub/env.py".into()),
        ("SCRIPT_FILENAME", format!("{www}/sub/env.py")),
        ("PATH_INFO", "/extra/p ath".into()),
        ("PATH_TRANSLATED", format!("{www}/extra/p ath")),
        ("DOCUMENT_ROOT", www.to_string()),
        ("CONTENT_LENGTH", "5".into()),
        ("CONTENT_TYPE", "text/plain".into()),
        ("REMOTE_ADDR", "127.0.0.1".into()),
        ("REMOTE_HOST", "127.0.0.1".into()),
        ("AUTH_TYPE", "Basic".into()),
        ("REMOTE_USER", "alice".into()),
        ("HTTP_HOST", "cgi.test:8080".into()),
        ("HTTP_X_CUSTOM", "one, two".into()),
        ("EXTRA", "1".into()),
        ("PATH", std::env::var("PATH").unwrap()),
    ];
    for (k, v) in &want {
        assert_eq!(env.get(*k), Some(v), "{k}");
    }
    assert!(env["SERVER_SOFTWARE"].starts_with("brood/"));
    assert!(env["REMOTE_PORT"].parse::<u16>().is_ok());
    assert_eq!(v["cwd"].as_str().unwrap(), format!("{www}/sub"));
    assert_eq!(v["body_len"], 5);
    // httpoxy, credentials and spoofable names never reach the script.
    for k in [
        "HTTP_PROXY",
        "HTTP_AUTHORIZATION",
        "HTTP_X_UNDERSCORE",
        "HTTP_CONTENT_LENGTH",
    ] {
        assert!(!env.contains_key(k), "{k} must not be set");
    }
    // Nothing of the server's environment but PATH and what was passed.
    let allowed: Vec<&str> = want.iter().map(|(k, _)| *k).collect();
    for k in env.keys() {
        let ok = allowed.contains(&k.as_str())
            || [
                "SERVER_SOFTWARE", "REMOTE_PORT", "SERVER_ADDR", "REQUEST_SCHEME",
                "REDIRECT_STATUS", "PIDS", "HOME", "HTTP_X_CUSTOM",
            ]
            .contains(&k.as_str())
            // python3 itself may add these at startup.
            || k == "LC_CTYPE";
        assert!(ok, "unexpected variable {k}");
    }
    assert_eq!(env.get("HOME"), std::env::var("HOME").ok().as_ref());

    // GET with a query: no CONTENT_LENGTH, and a search query becomes arguments.
    let (resp, body) = send(&mut s, req("GET", "/cgi-bin/sub/env.py?x=1", Bytes::new())).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["env"]["QUERY_STRING"], "x=1");
    assert_eq!(v["env"]["PATH_INFO"], "");
    assert!(v["env"].get("CONTENT_LENGTH").is_none());
    assert!(v["env"].get("PATH_TRANSLATED").is_none());
    let (_, body) = send(
        &mut s,
        req("GET", "/cgi-bin/sub/env.py?two+w%20ords", Bytes::new()),
    )
    .await;
    assert_eq!(json(&body)["argv"], serde_json::json!(["two", "w ords"]));

    drop(s);
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn post_5mb_binary_echoed_byte_exact() {
    let root = Root::new();
    root.script(
        "echo",
        "#!/bin/sh\necho $$ > \"$PIDS/echo-$$\"\nprintf 'Content-Type: application/octet-stream\\n\\n'\nexec cat\n",
    );
    let logs = Logs::default();
    let server = start(root.cgi(&logs)).await;
    let data: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut s = connect(server.addr).await;
    let (resp, body) = send(&mut s, req("POST", "/cgi-bin/echo", data.clone())).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body.len(), data.len());
    assert!(body == data, "echoed body differs");
    // Keep-alive: the same connection serves a second request.
    let (resp, body) = send(&mut s, req("POST", "/cgi-bin/echo", &b"again"[..])).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body, b"again");
    logs.wait_for("\"POST /cgi-bin/echo\" 200 5B").await;
    assert!(logs.has("200 5242880B"));
    drop(s);
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn chunked_upload_is_dechunked() {
    let root = Root::new();
    root.script("env.py", &env_py());
    let logs = Logs::default();
    let server = start(root.cgi(&logs)).await;
    let mut request = b"POST /cgi-bin/env.py HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut total = 0;
    for size in [1usize, 10, 4096, 100_000, 3] {
        request.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        request.extend(std::iter::repeat_n(b'z', size));
        request.extend_from_slice(b"\r\n");
        total += size;
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(server.addr, &request).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    // The response is chunked too: find the JSON object inside.
    let json_text = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    let v: serde_json::Value = serde_json::from_str(json_text).unwrap();
    assert_eq!(v["body_len"], total);
    assert!(v["env"].get("CONTENT_LENGTH").is_none());
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn status_location_content_type_and_nph() {
    let root = Root::new();
    root.script(
        "status",
        "#!/bin/sh\nprintf 'Status: 418 Short And Stout\\r\\nContent-Type: text/x-tea\\r\\nX-Extra: yes\\r\\n\\r\\nbody:%s' \"$QUERY_STRING\"\n",
    );
    root.script(
        "local",
        "#!/bin/sh\nprintf 'Location: /cgi-bin/status?from=local\\n\\n'\n",
    );
    root.script(
        "away",
        "#!/bin/sh\nprintf 'Location: http://example.com/x\\n\\n'\n",
    );
    root.script(
        "loop",
        "#!/bin/sh\nprintf 'Location: /cgi-bin/loop\\n\\n'\n",
    );
    root.script("created", "#!/bin/sh\nprintf 'Status: 201\\nLocation: http://example.com/new\\nContent-Type: text/plain\\n\\nmade'\n");
    root.script(
        "typeonly",
        "#!/bin/sh\nprintf 'Content-Type: text/html; charset=utf-8\\n\\n<p>hi</p>'\n",
    );
    root.script(
        "nph-raw",
        "#!/bin/sh\nprintf 'HTTP/1.1 299 Own Words\\r\\nContent-Type: text/plain\\r\\nX-Nph: 1\\r\\n\\r\\nraw body'\n",
    );
    let logs = Logs::default();
    let server = start(root.cgi(&logs)).await;
    let mut s = connect(server.addr).await;

    let (resp, body) = send(&mut s, req("GET", "/cgi-bin/status?q", Bytes::new())).await;
    assert_eq!(resp.status().as_u16(), 418);
    assert_eq!(resp.headers()["content-type"], "text/x-tea");
    assert_eq!(resp.headers()["x-extra"], "yes");
    assert!(resp.headers().get("status").is_none());
    assert_eq!(body, b"body:q");

    let (resp, body) = send(&mut s, req("HEAD", "/cgi-bin/status", Bytes::new())).await;
    assert_eq!(resp.status().as_u16(), 418);
    assert_eq!(resp.headers()["content-type"], "text/x-tea");
    assert!(body.is_empty());

    let (resp, body) = send(&mut s, req("GET", "/cgi-bin/local", Bytes::new())).await;
    assert_eq!(
        resp.status().as_u16(),
        418,
        "local redirect re-entered the server"
    );
    assert_eq!(body, b"body:from=local");

    let (resp, _) = send(&mut s, req("GET", "/cgi-bin/away", Bytes::new())).await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(resp.headers()["location"], "http://example.com/x");

    let (resp, body) = send(&mut s, req("GET", "/cgi-bin/created", Bytes::new())).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["location"], "http://example.com/new");
    assert_eq!(body, b"made");

    let (resp, body) = send(&mut s, req("GET", "/cgi-bin/typeonly", Bytes::new())).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(body, b"<p>hi</p>");

    let (resp, _) = send(&mut s, req("GET", "/cgi-bin/loop", Bytes::new())).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);

    let answer = raw(
        server.addr,
        b"GET /cgi-bin/nph-raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 299 Own Words\r\n"), "{answer}");
    assert!(answer.contains("x-nph: 1\r\n"), "{answer}");
    assert!(answer.contains("raw body"), "{answer}");

    let answer = raw(
        server.addr,
        b"GET /cgi-bin/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 418 Short And Stout\r\n"),
        "{answer}"
    );
    drop(s);
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn faults_give_502_and_stderr_is_logged() {
    let root = Root::new();
    root.script("dies", "#!/bin/sh\necho about to fail >&2\nexit 3\n");
    root.script(
        "garbage",
        "#!/bin/sh\nprintf 'this is not a header\\n\\nbody'\n",
    );
    root.script(
        "noblank",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n'\n",
    );
    root.script(
        "huge",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n'\ni=0; while [ $i -lt 3000 ]; do printf 'X-Pad-%d: %s\\n' $i aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa; i=$((i+1)); done\nprintf '\\nbody'\n",
    );
    root.script("badinterp", "#!/no/such/interpreter\n");
    std::fs::write(root.www().join("plain.txt"), "not a program").unwrap();
    let logs = Logs::default();
    let server = start(root.cgi(&logs).max_header_bytes(16 * 1024)).await;
    for (path, status) in [
        ("/cgi-bin/dies", 502),
        ("/cgi-bin/garbage", 502),
        ("/cgi-bin/noblank", 502),
        ("/cgi-bin/huge", 502),
        ("/cgi-bin/plain.txt", 403),
        ("/cgi-bin/badinterp", 500),
        ("/cgi-bin/missing", 404),
        ("/cgi-bin/", 403),
        ("/elsewhere", 404),
    ] {
        let (resp, _) = get(server.addr, path).await;
        assert_eq!(resp.status().as_u16(), status, "{path}");
    }
    logs.wait_for("[/cgi-bin/dies] about to fail").await;
    logs.wait_for("\"GET /cgi-bin/dies\" 502 0B").await;
    logs.wait_for("exit=3").await;
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn ten_mb_streams_before_the_script_ends() {
    let root = Root::new();
    let fifo = root.fifo("release");
    root.script(
        "big.py",
        &format!(
            "#!{}\n{}",
            python(),
            r#"
import os, sys
with open(os.path.join(os.environ["PIDS"], "big"), "w") as f:
    f.write(str(os.getpid()))
out = sys.stdout.buffer
out.write(b"Content-Type: application/octet-stream\n\n")
block = bytes(range(256)) * 4096
for _ in range(10):
    out.write(block)
out.flush()
with open(os.environ["RELEASE"]) as f:
    f.read()
out.write(b"END")
"#
        ),
    );
    let logs = Logs::default();
    let server = start(root.cgi(&logs).env("RELEASE", &fifo)).await;
    let mut s = connect(server.addr).await;
    let resp = timeout(
        T,
        s.send_request(req("GET", "/cgi-bin/big.py", Bytes::new())),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body: Incoming = resp.into_body();
    let mut got = 0usize;
    while got < 10 * 1024 * 1024 {
        let frame = timeout(T, body.frame()).await.unwrap().unwrap().unwrap();
        got += frame.data_ref().map_or(0, |d| d.len());
    }
    assert_eq!(got, 10 * 1024 * 1024);
    // The script is still running, blocked on the fifo.
    let pid = root.recorded_pids()[0];
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert!(!logs.has("/cgi-bin/big.py\" 200"));
    let fifo2 = fifo.clone();
    tokio::task::spawn_blocking(move || std::fs::write(fifo2, "go"))
        .await
        .unwrap()
        .unwrap();
    let rest = timeout(T, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(&rest[..], b"END");
    logs.wait_for("\"GET /cgi-bin/big.py\" 200 10485763B").await;
    drop(s);
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn timeout_kills_the_group_that_ignores_sigterm() {
    let root = Root::new();
    root.script(
        "stuck",
        "#!/bin/sh\ntrap '' TERM\nsleep 1000 &\necho $$ $! > \"$PIDS/stuck-$$\"\nwait\n",
    );
    root.script(
        "late",
        "#!/bin/sh\ntrap '' TERM\necho $$ > \"$PIDS/late-$$\"\nprintf 'Content-Type: text/plain\\n\\npartial'\nexec sleep 1000\n",
    );
    let logs = Logs::default();
    // Long enough for `late` to print its headers first even on a loaded machine.
    let server = start(root.cgi(&logs).timeout(Duration::from_millis(1500))).await;
    let (resp, _) = get(server.addr, "/cgi-bin/stuck").await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(root.recorded_pids().len(), 2);
    root.assert_no_process_left().await;
    logs.wait_for("\"GET /cgi-bin/stuck\" 504 0B").await;
    assert!(logs.has("signal=9"));

    // Headers already sent: the response is cut, not completed.
    let answer = raw(
        server.addr,
        b"GET /cgi-bin/late HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        !answer.ends_with("0\r\n\r\n"),
        "a cut response has no last chunk: {answer}"
    );
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn limit_answers_503_or_queues() {
    let root = Root::new();
    let fifo = root.fifo("hold");
    root.script(
        "hold",
        "#!/bin/sh\necho $$ > \"$PIDS/hold-$$\"\nprintf 'Content-Type: text/plain\\n\\nheld '\nread x < \"$HOLD\"\necho done\n",
    );
    root.script(
        "quick",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nquick'\n",
    );
    let logs = Logs::default();
    let server = start(root.cgi(&logs).max_children(1).env("HOLD", &fifo)).await;
    let mut first = connect(server.addr).await;
    let held = timeout(
        T,
        first.send_request(req("GET", "/cgi-bin/hold", Bytes::new())),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(held.status(), StatusCode::OK);
    // The first script is running (its headers came): the second request is refused.
    let (resp, _) = get(server.addr, "/cgi-bin/quick").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    tokio::task::spawn_blocking(move || std::fs::write(fifo, "go\n"))
        .await
        .unwrap()
        .unwrap();
    let body = timeout(T, resp_body(held)).await.unwrap();
    assert_eq!(body, b"held done\n");
    // The slot is free again once the first script has ended.
    logs.wait_for("\"GET /cgi-bin/hold\" 200").await;
    let (resp, body) = get(server.addr, "/cgi-bin/quick").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body, b"quick");
    drop(first);
    server.stop().await;
    root.assert_no_process_left().await;

    // A local redirect runs its second script in the first one's slot.
    let root2 = Root::new();
    root2.script(
        "first",
        "#!/bin/sh\nprintf 'Location: /cgi-bin/second\\n\\n'\nhead -c 200000 /dev/zero\n",
    );
    root2.script(
        "second",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nsecond'\n",
    );
    let server = start(root2.cgi(&logs).max_children(1)).await;
    for i in 1..=3 {
        let (resp, body) = get(server.addr, "/cgi-bin/first").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body, b"second");
        // The slot is free once the second script has ended (its access line).
        logs.wait_count("\"GET /cgi-bin/second\" 200", i).await;
    }
    server.stop().await;
    root2.assert_no_process_left().await;

    // With a queue, the second request waits for the slot instead.
    let root = Root::new();
    let fifo = root.fifo("hold");
    root.script(
        "hold",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nheld '\nread x < \"$HOLD\"\necho done\n",
    );
    root.script(
        "quick",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nquick'\n",
    );
    let server = start(
        root.cgi(&logs)
            .max_children(1)
            .queue(Duration::from_secs(15))
            .env("HOLD", &fifo),
    )
    .await;
    let mut first = connect(server.addr).await;
    let resp = timeout(
        T,
        first.send_request(req("GET", "/cgi-bin/hold", Bytes::new())),
    )
    .await
    .unwrap()
    .unwrap();
    let addr = server.addr;
    let second = tokio::spawn(async move { get(addr, "/cgi-bin/quick").await });
    tokio::task::spawn_blocking(move || std::fs::write(fifo, "go\n"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(timeout(T, resp_body(resp)).await.unwrap(), b"held done\n");
    let (resp, body) = timeout(T, second).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body, b"quick");
    drop(first);
    server.stop().await;
}

async fn resp_body(resp: Response<Incoming>) -> Vec<u8> {
    resp.into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}

#[tokio::test]
async fn traversal_attempts_are_refused() {
    let root = Root::new();
    let marker = root.dir.join("outside-ran");
    let outside = root.write_exec(
        &root.dir.join("outside/secret"),
        &format!(
            "#!/bin/sh\ntouch {}\nprintf 'Content-Type: text/plain\\n\\nsecret'\n",
            marker.display()
        ),
    );
    // A copy in the parent of the root, reachable by `..` from it.
    root.write_exec(
        &root.dir.join("secret"),
        &format!(
            "#!/bin/sh\ntouch {}\nprintf 'Content-Type: text/plain\\n\\nsecret'\n",
            marker.display()
        ),
    );
    root.script(
        "sub/ok",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nok'\n",
    );
    std::os::unix::fs::symlink(&outside, root.www().join("link-out")).unwrap();
    std::os::unix::fs::symlink(root.dir.join("outside"), root.www().join("dir-out")).unwrap();
    std::os::unix::fs::symlink(root.www().join("sub/ok"), root.www().join("link-in")).unwrap();
    let logs = Logs::default();
    let server = start(root.cgi(&logs)).await;
    for path in [
        "/cgi-bin/../secret",
        "/cgi-bin/sub/../../secret",
        "/cgi-bin/%2e%2e/secret",
        "/cgi-bin/%2E%2E/secret",
        "/cgi-bin/.%2e/secret",
        "/cgi-bin/sub/..%2f..%2fsecret",
        "/cgi-bin/%2e%2e%2fsecret",
        "/cgi-bin/..%5csecret",
        "/cgi-bin/link-out",
        "/cgi-bin/dir-out/secret",
        "/cgi-bin/./sub/ok",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let answer = raw(server.addr, request.as_bytes()).await;
        let code: u16 = answer[9..12].parse().unwrap();
        assert!((400..500).contains(&code), "{path}: {answer}");
        assert!(!answer.contains("secret"), "{path}: {answer}");
    }
    assert!(!marker.exists(), "a script outside the root ran");
    // Symlinks that stay inside the root work.
    let (resp, body) = get(server.addr, "/cgi-bin/link-in").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body, b"ok");
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn client_disconnect_kills_the_script() {
    let root = Root::new();
    let before = root.fifo("before");
    root.script(
        "silent",
        "#!/bin/sh\nsleep 1000 &\necho $$ $! > \"$PIDS/silent-$$\"\necho ready > \"$BEFORE\"\nwait\n",
    );
    root.script(
        "talker",
        "#!/bin/sh\nsleep 1000 &\necho $$ $! > \"$PIDS/talker-$$\"\nprintf 'Content-Type: text/plain\\n\\nhello\\n'\nwait\n",
    );
    let logs = Logs::default();
    let server = start(root.cgi(&logs).env("BEFORE", &before)).await;

    // Before headers: the script has said nothing yet when the client leaves.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /cgi-bin/silent HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let ready = tokio::task::spawn_blocking(move || std::fs::read_to_string(before));
    assert_eq!(
        timeout(T, ready).await.unwrap().unwrap().unwrap(),
        "ready\n"
    );
    drop(tcp);
    logs.wait_for("\"GET /cgi-bin/silent\"").await;
    root.assert_no_process_left().await;

    // After headers: the body is being streamed when the client leaves.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /cgi-bin/talker HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = String::new();
    while !got.contains("hello") {
        let n = timeout(T, tcp.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0);
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(tcp);
    logs.wait_for("\"GET /cgi-bin/talker\"").await;
    assert_eq!(root.recorded_pids().len(), 4);
    root.assert_no_process_left().await;
    server.stop().await;
}

#[tokio::test]
async fn stopping_the_server_kills_running_scripts() {
    let root = Root::new();
    root.script(
        "forever",
        "#!/bin/sh\nsleep 1000 &\necho $$ $! > \"$PIDS/f-$$\"\nprintf 'Content-Type: text/plain\\n\\nstarted\\n'\nwait\n",
    );
    let logs = Logs::default();
    let server = start(root.cgi(&logs)).await;
    let mut s = connect(server.addr).await;
    let resp = timeout(
        T,
        s.send_request(req("GET", "/cgi-bin/forever", Bytes::new())),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn one_script_for_every_path() {
    let root = Root::new();
    let file = root.script("app.py", &env_py());
    let logs = Logs::default();
    let log2 = logs.clone();
    let server = start(
        Cgi::script(&file)
            .env("PIDS", root.pids())
            .on_log(move |l| log2.push(l)),
    )
    .await;
    let (resp, body) = get(server.addr, "/any/where?k=v").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["env"]["SCRIPT_NAME"], "");
    assert_eq!(v["env"]["PATH_INFO"], "/any/where");
    assert_eq!(v["env"]["QUERY_STRING"], "k=v");
    let (resp, _) = get(server.addr, "/a/%2e%2e/b").await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn bad_configuration_is_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = Cgi::root("/no/such/brood/root")
        .serve(listener)
        .await
        .unwrap_err();
    assert_eq!(err.name(), "ENOENT");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = Cgi::root("/")
        .prefix("cgi-bin")
        .serve(listener)
        .await
        .unwrap_err();
    assert_eq!(err.name(), "EINVAL");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = Cgi::root("/")
        .env("A=B", "c")
        .serve(listener)
        .await
        .unwrap_err();
    assert_eq!(err.name(), "EINVAL");
}

#[tokio::test]
async fn raw_mode_with_a_tick_script() {
    let root = Root::new();
    let tick = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cgi-bin/tick.sh");
    let logs = Logs::default();
    let log2 = logs.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(
        Raw::new("sh")
            .args([tick.as_os_str().to_owned()])
            .env("PIDS", root.pids())
            .on_log(move |l| log2.push(l))
            .serve(listener),
    );
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let local = tcp.local_addr().unwrap();
            let mut text = String::new();
            timeout(T, tcp.read_to_string(&mut text))
                .await
                .unwrap()
                .unwrap();
            (local, text)
        }));
    }
    for c in clients {
        let (local, text) = c.await.unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 11, "{text}");
        assert_eq!(lines[0], format!("from 127.0.0.1:{}", local.port()));
        assert!(lines[1..].iter().all(|l| *l == "tick"), "{text}");
    }
    logs.wait_for("\"- sh\" 0 0B").await;
    task.abort();
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn raw_mode_timeout_kills_the_group_and_closes_the_connection() {
    let root = Root::new();
    let logs = Logs::default();
    let log2 = logs.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(
        Raw::new("sh")
            .args([
                "-c",
                "trap '' TERM; sleep 1000 & echo $$ $! > \"$PIDS/raw\"; echo started; wait",
            ])
            .env("PIDS", root.pids())
            .timeout(Duration::from_millis(1500))
            .on_log(move |l| log2.push(l))
            .serve(listener),
    );
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut text = String::new();
    // EOF comes only when both the shell and its `sleep` (which holds the socket too) die.
    timeout(T, tcp.read_to_string(&mut text))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text, "started\n");
    logs.wait_for("timed out, killed").await;
    assert_eq!(root.recorded_pids().len(), 2);
    root.assert_no_process_left().await;
    task.abort();
}

#[tokio::test]
async fn raw_mode_program_writes_to_a_blocking_socket() {
    // A program that writes far more than the socket buffer holds must block, not fail
    // with EAGAIN: its stdout is the connection, in blocking mode as programs expect.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let logs = Logs::default();
    let log2 = logs.clone();
    let task = tokio::spawn(
        Raw::new("head")
            .args(["-c", "20000000", "/dev/zero"])
            .on_log(move |l| log2.push(l))
            .serve(listener),
    );
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut n = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    timeout(T, async {
        loop {
            let got = tcp.read(&mut buf).await.unwrap();
            if got == 0 {
                break;
            }
            n += got;
        }
    })
    .await
    .unwrap();
    assert_eq!(n, 20_000_000);
    logs.wait_for("\"- head\" 0 0B").await;
    assert!(logs.has("exit=0"), "head failed");
    task.abort();
}
