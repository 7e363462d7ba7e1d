//! `cargo bench --bench cgi`: requests per second for two compiled CGI programs (C, built
//! here with gcc), a minimal one and a cgit-like one that writes an 8 KB page in 200
//! flushed pieces, with 16 concurrent keep-alive clients, brood against Python's
//! `http.server --cgi` and, when installed, lighttpd's mod_cgi. Every server runs in its
//! own process; the load generator is `wrk` when installed, else a raw-TCP HTTP/1.1 client
//! bounded by time, which reconnects when a server closes the connection (Python answers
//! HTTP/1.0).
//!
//! `BROOD_BENCH_QUICK=1` runs each cell for a shorter time. Timing never gates a test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use brood::{Child, Command, Stdio};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const SERVE: &str = "BROOD_CGI_BENCH_SERVE";
const CLIENTS: usize = 16;
const HELLO_C: &str = r#"#include <stdio.h>
int main(void) {
    fputs("Content-Type: text/plain\r\n\r\nhello\n", stdout);
    return 0;
}
"#;

/// cgit writes its pages in many small pieces: 200 flushed writes of 40 bytes.
const PIECES_C: &str = r#"#include <stdio.h>
int main(void) {
    fputs("Content-Type: text/html\r\n\r\n", stdout);
    fflush(stdout);
    for (int i = 0; i < 200; i++) {
        printf("<tr><td>row %03d</td><td>commit text</td></tr>\n", i);
        fflush(stdout);
    }
    return 0;
}
"#;

/// The cases: a name and the path of the program.
const CASES: [(&str, &str); 2] = [
    ("minimal program", "/cgi-bin/hello"),
    ("200 small writes (cgit-like)", "/cgi-bin/pieces"),
];

fn quick() -> bool {
    std::env::var_os("BROOD_BENCH_QUICK").is_some()
}

/// The allocator of the `brood` binary (cli/src/main.rs), so this in-process server is
/// `brood cgi` as shipped.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    if let Some(root) = std::env::var_os(SERVE) {
        serve_brood(Path::new(&root));
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}

/// The brood server process: the same setup as `brood cgi --root DIR` (a multi-thread
/// runtime), with the access log off as the other servers have theirs. Prints its port,
/// serves until stdin closes.
fn serve_brood(root: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap().port());
        // `/cgi-bin/hello` → `ROOT/cgi-bin/hello`, as the other servers map it.
        let cgi = brood::cgi::Cgi::root(root.join("cgi-bin")).on_log(|_| {});
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 1];
        tokio::select! {
            r = cgi.serve(listener) => r.unwrap(),
            _ = stdin.read(&mut buf) => {}
        }
    });
}

/// A directory with `cgi-bin/hello` and `cgi-bin/pieces` compiled from C.
fn build_root() -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cgi-bench");
    let bin = root.join("cgi-bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, text) in [("hello", HELLO_C), ("pieces", PIECES_C)] {
        let src = root.join(format!("{name}.c"));
        std::fs::write(&src, text).unwrap();
        let ok = std::process::Command::new("gcc")
            .args(["-O2", "-o"])
            .arg(bin.join(name))
            .arg(&src)
            .status()
            .expect("gcc is needed to build the CGI programs")
            .success();
        assert!(ok, "gcc failed");
    }
    root
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server under test: its process, and where it listens.
struct Contender {
    name: String,
    child: Child,
    addr: SocketAddr,
}

async fn wait_listening(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The environment a service manager gives a server: `PATH` only. Not the bench's own:
/// cargo puts its target and toolchain directories in `LD_LIBRARY_PATH`, and lighttpd and
/// Python hand their environment on to every script, whose dynamic loader then looks for
/// libc in each of them first (about 95 failed opens per request: it made them look slower
/// than they are).
fn service_env(cmd: &mut Command) -> &mut Command {
    cmd.env_clear().env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    )
}

async fn start_brood(root: &Path) -> Contender {
    let mut child = service_env(&mut Command::new(std::env::current_exe().unwrap()))
        .env(SERVE, root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).await.unwrap();
    let port: u16 = line.trim().parse().unwrap();
    Contender {
        name: "brood cgi".into(),
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

async fn start_python(root: &Path) -> Option<Contender> {
    let port = free_port();
    let child = service_env(&mut Command::new("python3"))
        .args(["-m", "http.server", "--cgi", "--bind", "127.0.0.1"])
        .arg(port.to_string())
        .current_dir(root)
        .stdout(Stdio::ignore())
        .stderr(Stdio::ignore())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(addr).await.then(|| Contender {
        name: "python3 http.server --cgi".into(),
        child,
        addr,
    })
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

async fn start_lighttpd(root: &Path) -> Option<Contender> {
    let bin = which("lighttpd")?;
    let port = free_port();
    let conf = root.join("lighttpd.conf");
    std::fs::write(
        &conf,
        format!(
            "server.document-root = \"{root}\"\n\
             server.bind = \"127.0.0.1\"\n\
             server.port = {port}\n\
             server.modules = (\"mod_cgi\")\n\
             server.errorlog = \"{root}/lighttpd.err\"\n\
             server.max-keep-alive-requests = 100000\n\
             $HTTP[\"url\"] =~ \"^/cgi-bin/\" {{ cgi.assign = (\"\" => \"\") }}\n",
            root = root.display()
        ),
    )
    .ok()?;
    let child = service_env(&mut Command::new(bin))
        .args(["-D", "-f"])
        .arg(&conf)
        .stdout(Stdio::ignore())
        .stderr(Stdio::ignore())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(addr).await.then(|| Contender {
        name: "lighttpd mod_cgi".into(),
        child,
        addr,
    })
}

/// Reads one response; returns whether the connection may be reused.
async fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<bool> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    if !line.starts_with("HTTP/1.") || line.get(9..12) != Some("200") {
        return Err(std::io::Error::other(format!("bad status line {line:?}")));
    }
    let http10 = line.starts_with("HTTP/1.0");
    let (mut length, mut chunked, mut close) = (None, false, http10);
    loop {
        line.clear();
        r.read_line(&mut line).await?;
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        } else if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        } else if let Some(v) = l.strip_prefix("connection:") {
            close = v.contains("close") || (http10 && !v.contains("keep-alive"));
        }
    }
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim(), 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            let mut skip = vec![0u8; size + 2];
            r.read_exact(&mut skip).await?;
            if size == 0 {
                break;
            }
        }
    } else if let Some(n) = length {
        let mut skip = vec![0u8; n];
        r.read_exact(&mut skip).await?;
    } else {
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await?;
        return Ok(false);
    }
    Ok(!close)
}

/// `wrk` with 16 connections for `secs` on 2 threads: its `Requests/sec`, counting only
/// 2xx answers (wrk reports the others apart, and they are subtracted).
async fn wrk(bin: PathBuf, addr: SocketAddr, path: &'static str, secs: f64) -> f64 {
    let url = format!("http://{addr}{path}");
    let dur = format!("{}s", secs.ceil().max(1.0) as u64);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .args(["-t2", &format!("-c{CLIENTS}"), &format!("-d{dur}"), &url])
            .output()
    })
    .await
    .unwrap()
    .expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0)
    };
    let rate = field("Requests/sec:");
    let total = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.to_string())
        })
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    let bad = field("Non-2xx or 3xx responses:");
    if total > 0.0 {
        rate * (total - bad) / total
    } else {
        0.0
    }
}

/// Requests per second for `path`: through `wrk` when it is installed, else the bench's
/// own client.
async fn load(addr: SocketAddr, path: &'static str, secs: f64) -> f64 {
    match which("wrk") {
        Some(bin) if secs >= 1.0 => wrk(bin, addr, path, secs).await,
        _ => own_load(addr, path, secs).await,
    }
}

/// 16 clients asking for `path` for `secs`: completed requests per second.
async fn own_load(addr: SocketAddr, path: &'static str, secs: f64) -> f64 {
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut conn: Option<BufReader<TcpStream>> = None;
            while Instant::now() < end {
                let r = match conn.as_mut() {
                    Some(r) => r,
                    None => match TcpStream::connect(addr).await {
                        Ok(tcp) => {
                            let _ = tcp.set_nodelay(true);
                            conn.insert(BufReader::new(tcp))
                        }
                        Err(_) => continue,
                    },
                };
                let sent = r.get_mut().write_all(request.as_bytes()).await;
                let left = end.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
                let answer = match sent {
                    Ok(()) => tokio::time::timeout(left, read_response(r)).await,
                    Err(e) => Ok(Err(e)),
                };
                match answer {
                    Ok(Ok(keep)) => {
                        done += 1;
                        if !keep {
                            conn = None;
                        }
                    }
                    _ => conn = None,
                }
            }
            done
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

async fn bench() {
    let root = build_root();
    let secs = if quick() { 1.0 } else { 3.0 };
    let mut contenders = vec![start_brood(&root).await];
    match start_python(&root).await {
        Some(c) => contenders.push(c),
        None => println!("python3 http.server --cgi: could not start, skipped"),
    }
    match start_lighttpd(&root).await {
        Some(c) => contenders.push(c),
        None => println!("lighttpd: not installed (or did not start), skipped"),
    }
    let generator = if which("wrk").is_some() {
        "wrk -t2"
    } else {
        "the bench's own client (wrk not installed)"
    };
    println!("load generator: {generator}");
    println!(
        "brood cgi benchmark: compiled C CGI programs, {CLIENTS} keep-alive clients, \
         {secs} s per cell, 3 rounds with the contenders interleaved, median of the \
         per-round ratios (2 shared cores)\n"
    );
    for (case, path) in CASES {
        // Warm-up, then rounds.
        for c in &contenders {
            load(c.addr, path, 0.3).await;
        }
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
        for _ in 0..3 {
            for (i, c) in contenders.iter().enumerate() {
                rates[i].push(load(c.addr, path, secs).await);
            }
        }
        println!("{case} ({path})");
        println!(
            "  {:<28} {:>12} {:>14}",
            "server", "requests/s", "brood ÷ it"
        );
        for (i, c) in contenders.iter().enumerate() {
            if rates[i].contains(&0.0) {
                println!("  {:<28} answered no request with 200: void", c.name);
                continue;
            }
            let ratios: Vec<f64> = rates[0].iter().zip(&rates[i]).map(|(b, o)| b / o).collect();
            println!(
                "  {:<28} {:>12.0} {:>13.2}×",
                c.name,
                median(rates[i].clone()),
                median(ratios)
            );
        }
        println!();
    }
    for mut c in contenders {
        drop(c.child.stdin.take());
        let _ = c.child.kill(brood::Signum::TERM);
        let _ = tokio::time::timeout(Duration::from_secs(5), c.child.wait()).await;
    }
}
