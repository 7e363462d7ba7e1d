//! `cargo bench -p brood-cli --bench cluster`: echo servers under a bounded loopback load.
//!
//! 32 clients, 64-byte exchanges: (a) a new connection per exchange, (b) persistent
//! connections. Contenders (2 workers each where there are workers): `brood cluster` with each strategy; the
//! seed's multi-echo server on libuv in C (`benches/c/multi_echo.c`, built here with `cc`
//! when libuv's headers are installed: `apt-get install libuv1-dev`), quiet (`-q`) and as
//! the seed (a line on stderr per connection); brood's `examples/multi_echo_server` (built
//! here with cargo); a single-process tokio echo server (this binary in server mode, its own
//! process); Node's cluster module (SCHED_RR) when `node` is on PATH; and the floor
//! (`benches/c/floor_echo.c`, built here with `cc`): one C process with no handoff and no
//! allocation per connection, the least any server spends on an echoed connection, so
//! the bench shows how much of a handoff's cost any design could remove.
//!
//! Rounds interleave the servers (the order reverses every round, so A and B run
//! side by side in time); a ratio is the median of the per-round ratios.
//!
//! Besides requests per second, each cell measures the server's CPU time (user + system of
//! the server process and its children, from `/proc/PID/stat` before and after the cell) per
//! exchange: when the load generator, not the server, is the bound (the two share 2
//! cores), equal throughputs can hide a server that spends more per connection; the
//! cost ratio says by how much (B's cost / A's, above 1 when A is the cheaper).
//! `BROOD_BENCH_PIN=1` pins the servers to CPU 1 and the load generator to CPU 0.
//! `BROOD_BENCH_QUICK=1`: 3 rounds of 1 s cells (else 5 rounds of 2 s);
//! `BROOD_BENCH_ONLY=rr,lc,c,seed,example,...` runs only those servers (keys below);
//! `BROOD_BENCH_LOAD=ADDR` only loads a server started by hand (for profiling;
//! `BROOD_BENCH_LOAD_PHASE=new` or `persistent` runs one of the two loads).
//! Timing never gates a test.

#[path = "../../benches/support/cpu.rs"]
mod cpu;
#[path = "../../benches/support/net.rs"]
mod net;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use brood::{Command, Signum, Stdio};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const NODE_CLUSTER: &str = r#"
const cluster = require('cluster');
const net = require('net');
cluster.schedulingPolicy = cluster.SCHED_RR;
if (cluster.isPrimary) {
  for (let i = 0; i < 2; i++) cluster.fork();
  let ready = 0;
  cluster.on('listening', (w, addr) => { if (++ready == 2) console.log('listening on 127.0.0.1:' + addr.port); });
} else {
  net.createServer((c) => { c.setNoDelay(true); c.pipe(c); c.on('error', () => {}); })
     .listen(parseInt(process.env.PORT), '127.0.0.1');
}
"#;

fn quick() -> bool {
    std::env::var_os("BROOD_BENCH_QUICK").is_some()
}

fn main() {
    if std::env::var_os("BROOD_BENCH_ECHO_SERVER").is_some() {
        return echo_server();
    }
    if let Some(code) = rerun_pinned() {
        std::process::exit(code);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // `BROOD_BENCH_LOAD=ADDR`: only the load (new connections, then persistent, 5 s each)
    // against a server started by hand, to profile it (perf, strace -c).
    if let Ok(addr) = std::env::var("BROOD_BENCH_LOAD") {
        return rt.block_on(async {
            let phase = std::env::var("BROOD_BENCH_LOAD_PHASE").unwrap_or_default();
            for new_conn in [true, false] {
                if (phase == "new" && !new_conn) || (phase == "persistent" && new_conn) {
                    continue;
                }
                let (n, f) = load(&addr, 32, Duration::from_secs(5), new_conn).await;
                println!("new_conn={new_conn}: {:.0}/s ({f} failed)", n as f64 / 5.0);
            }
        });
    }
    rt.block_on(bench());
}

/// The single-process tokio echo server (a separate process, 2 runtime threads).
fn echo_server() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening on {}", l.local_addr().unwrap());
        loop {
            let Ok((mut c, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = c.set_nodelay(true);
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
}

struct Server {
    name: String,
    child: brood::Child,
    addr: String,
}

impl Server {
    /// CPU time (user + system) so far of the server and every process below it, in
    /// clock ticks.
    fn cpu_ticks(&self) -> u64 {
        self.child
            .id()
            .map_or(0, |pid| cpu::tree_ticks(pid, &|_| false))
    }
}

fn pinned() -> bool {
    std::env::var_os("BROOD_BENCH_PIN").is_some()
}

/// A server's command: `program` itself, or under `taskset -c 1` with `BROOD_BENCH_PIN`.
fn server_cmd(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if pinned() {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "1"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// With `BROOD_BENCH_PIN`, runs this bench again under `taskset -c 0` (the load
/// generator's CPU) and returns its exit status; `None` when this is that run or no
/// pinning is asked for.
fn rerun_pinned() -> Option<i32> {
    if !pinned() || std::env::var_os("BROOD_BENCH_PINNED").is_some() {
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    let status = std::process::Command::new("taskset")
        .args(["-c", "0"])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env("BROOD_BENCH_PINNED", "1")
        .status();
    match status {
        Ok(s) => Some(s.code().unwrap_or(1)),
        Err(e) => {
            println!("BROOD_BENCH_PIN: taskset failed ({e}); not pinned");
            None
        }
    }
}

/// Starts a server process and reads its address from a `listening on ADDR` line.
async fn start(name: &str, mut cmd: Command, from_stderr: bool) -> Option<Server> {
    if from_stderr {
        cmd.stderr(Stdio::piped()).stdout(Stdio::null());
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    }
    let mut child = match cmd.kill_on_drop(true).spawn() {
        Ok(c) => c,
        Err(e) => {
            println!("  {name}: skipped ({e})");
            return None;
        }
    };
    let pipe = if from_stderr {
        child.stderr.take()
    } else {
        child.stdout.take()
    };
    let mut lines = BufReader::new(pipe.unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            // "listening on ADDR" (brood, the C anchor), "Listening on ADDR" (the example)
            if let Some(i) = line.find("istening on ") {
                return Some(line[i + 12..].trim().to_string());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()?;
    // Keep draining the pipe so the server never blocks on a full log.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Some(Server {
        name: name.to_string(),
        child,
        addr,
    })
}

/// `clients` tasks for `dur`: 64-byte exchanges; returns (exchanges, failures).
async fn load(addr: &str, clients: usize, dur: Duration, new_conn_each: bool) -> (u64, u64) {
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
                    match net::connect(addr, n).await {
                        Ok(c) => {
                            let _ = c.set_nodelay(true);
                            conn = Some(c);
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

/// The C anchor: builds `benches/c/multi_echo.c` against libuv, or says why not.
fn build_c_anchor(out_dir: &Path) -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/c/multi_echo.c");
    let headers = ["/usr/include/uv.h", "/usr/local/include/uv.h"];
    if !headers.iter().any(|h| Path::new(h).exists()) {
        println!(
            "  libuv C anchor: skipped (libuv's headers are not installed: apt-get install libuv1-dev)"
        );
        return None;
    }
    let out = out_dir.join("brood-bench-multi_echo");
    let status = std::process::Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .arg("-luv")
        .status();
    match status {
        Ok(s) if s.success() => Some(out),
        other => {
            println!(
                "  libuv C anchor: skipped (cc {} failed: {other:?})",
                src.display()
            );
            None
        }
    }
}

/// The floor (`benches/c/floor_echo.c`: one process, no handoff), or `None` with a notice.
fn build_floor(out_dir: &Path) -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/c/floor_echo.c");
    let out = out_dir.join("brood-bench-floor_echo");
    let status = std::process::Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status();
    match status {
        Ok(s) if s.success() => Some(out),
        other => {
            println!("  floor: skipped (cc {} failed: {other:?})", src.display());
            None
        }
    }
}

/// brood's `examples/multi_echo_server`, built with this bench's profile (it lands in
/// `target/release/examples`), or `None` with a notice.
fn build_example(out_dir: &Path) -> Option<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let status = std::process::Command::new(cargo)
        .args(["build", "--quiet", "--profile", "bench", "-p", "brood"])
        .args(["--example", "multi_echo_server", "--manifest-path"])
        .arg(&manifest)
        .status();
    let exe = out_dir.join("examples/multi_echo_server");
    match status {
        Ok(s) if s.success() && exe.exists() => Some(exe),
        other => {
            println!("  multi_echo_server: skipped (cargo build --example failed: {other:?})");
            None
        }
    }
}

fn wanted(key: &str) -> bool {
    match std::env::var("BROOD_BENCH_ONLY") {
        Ok(list) => list.split(',').any(|k| k.trim() == key),
        Err(_) => true,
    }
}

/// The pairs whose ratios the bench prints: (A, B, what it says, bar).
const PAIRS: &[(&str, &str, &str)] = &[
    ("rr", "c", "brood round-robin / libuv C master"),
    ("lc", "c", "brood least-connections / libuv C master"),
    (
        "example",
        "seed",
        "multi_echo_server / libuv seed (both log per conn)",
    ),
    ("shared", "c", "brood shared / libuv C master"),
    ("reuseport", "c", "brood reuseport / libuv C master"),
    ("rr", "tokio", "brood round-robin / tokio, 1 process"),
    (
        "floor",
        "c",
        "the floor (C, 1 process, no handoff) / libuv C",
    ),
    ("rr", "floor", "brood round-robin / the floor"),
    ("rr", "node", "brood round-robin / node cluster"),
];

async fn bench() {
    let (rounds, dur) = if quick() {
        (3, Duration::from_secs(1))
    } else {
        (5, Duration::from_secs(2))
    };
    let brood = env!("CARGO_BIN_EXE_brood");
    let exe = std::env::current_exe().unwrap();
    // target/release/deps/cluster-HASH → target/release
    let out_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let mut servers: Vec<(&str, Server)> = Vec::new();
    println!("building the C anchor and the example, starting servers…");

    for (key, strategy) in [
        ("rr", "round-robin"),
        ("lc", "least-connections"),
        ("shared", "shared"),
        ("reuseport", "reuseport"),
    ] {
        if !wanted(key) {
            continue;
        }
        let mut cmd = server_cmd(brood);
        cmd.args([
            "cluster",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--strategy",
            strategy,
            "--builtin",
            "echo",
        ]);
        if let Some(s) = start(&format!("brood {strategy}"), cmd, true).await {
            servers.push((key, s));
        }
    }
    if (wanted("c") || wanted("seed"))
        && let Some(c) = build_c_anchor(&out_dir)
    {
        if wanted("c") {
            let mut cmd = server_cmd(&c);
            cmd.args(["-w", "2", "-q"]);
            servers.extend(
                start("libuv C master (-q)", cmd, false)
                    .await
                    .map(|s| ("c", s)),
            );
        }
        if wanted("seed") {
            let mut cmd = server_cmd(&c);
            cmd.args(["-w", "2"]);
            servers.extend(start("libuv C seed", cmd, false).await.map(|s| ("seed", s)));
        }
    }
    if wanted("example")
        && let Some(ex) = build_example(&out_dir)
    {
        let mut cmd = server_cmd(&ex);
        cmd.args(["-w", "2", "--port", "0"]);
        servers.extend(
            start("multi_echo_server -w 2", cmd, false)
                .await
                .map(|s| ("example", s)),
        );
    }
    if wanted("floor")
        && let Some(floor) = build_floor(&out_dir)
    {
        servers.extend(
            start("floor (C, 1 process)", server_cmd(&floor), false)
                .await
                .map(|s| ("floor", s)),
        );
    }
    if wanted("tokio") {
        let mut tokio_cmd = server_cmd(&exe);
        tokio_cmd.env("BROOD_BENCH_ECHO_SERVER", "1");
        servers.extend(
            start("tokio (1 process)", tokio_cmd, false)
                .await
                .map(|s| ("tokio", s)),
        );
    }
    // Node's cluster with 2 workers, SCHED_RR (its default on Linux), on a free port.
    // cluster.fork() re-runs the script file, so the script must be a file.
    let script = std::env::temp_dir().join(format!("brood-node-cluster-{}.js", std::process::id()));
    if wanted("node") {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        std::fs::write(&script, NODE_CLUSTER).unwrap();
        let mut node = server_cmd("node");
        node.arg(&script).env("PORT", port.to_string());
        servers.extend(
            start("node cluster (2, RR)", node, false)
                .await
                .map(|s| ("node", s)),
        );
    }

    println!(
        "\n32 clients, 64-byte echo exchanges, {} rounds of {:.0} s cells, servers interleaved;\n{}\n",
        rounds,
        dur.as_secs_f64(),
        if pinned() {
            "servers pinned to CPU 1, the load generator to CPU 0"
        } else {
            "2 cores shared by the servers and the load generator"
        }
    );
    for (_, s) in &servers {
        // Warm up (connections, worker readiness).
        load(&s.addr, 8, Duration::from_millis(200), false).await;
    }
    // samples[mode][server][round]
    let mut samples = vec![vec![Vec::new(); servers.len()]; 2];
    // cpu[mode][server][round]: the server's CPU microseconds per exchange
    let mut cpu = vec![vec![Vec::new(); servers.len()]; 2];
    let hz = cpu::clock_ticks_per_sec();
    let mut failed = vec![0u64; servers.len()];
    for round in 0..rounds {
        for (mode, new_conn) in [(0, true), (1, false)] {
            let mut order: Vec<usize> = (0..servers.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let before = servers[i].1.cpu_ticks();
                let (n, f) = load(&servers[i].1.addr, 32, dur, new_conn).await;
                let spent = servers[i].1.cpu_ticks().saturating_sub(before);
                samples[mode][i].push(n as f64 / dur.as_secs_f64());
                cpu[mode][i].push(spent as f64 / hz * 1e6 / n.max(1) as f64);
                failed[i] += f;
            }
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|x, y| x.partial_cmp(y).unwrap());
        v[v.len() / 2]
    };
    println!("requests/s and the server's CPU per exchange (master + workers), medians:");
    for (i, (_, s)) in servers.iter().enumerate() {
        println!(
            "  {:<26} (a) new conn {:>7.0}/s {:>5.1} us   (b) persistent {:>7.0}/s {:>5.1} us   ({} failed)",
            s.name,
            median(samples[0][i].clone()),
            median(cpu[0][i].clone()),
            median(samples[1][i].clone()),
            median(cpu[1][i].clone()),
            failed[i]
        );
    }
    let find = |key: &str| servers.iter().position(|(k, _)| *k == key);
    println!(
        "\nmedian of per-round ratios, (a) new connection per exchange, (b) persistent:\nrequests/s A/B, and CPU per exchange B/A (above 1: A costs less)"
    );
    for (a, b, what) in PAIRS {
        let (Some(ia), Some(ib)) = (find(a), find(b)) else {
            continue;
        };
        let ratio = |v: &[Vec<f64>], x: usize, y: usize| {
            median(v[x].iter().zip(&v[y]).map(|(x, y)| x / y).collect())
        };
        println!(
            "  {what:<52} (a) {:>5.2}× cpu {:>5.2}×   (b) {:>5.2}× cpu {:>5.2}×",
            ratio(&samples[0], ia, ib),
            ratio(&cpu[0], ib, ia),
            ratio(&samples[1], ia, ib),
            ratio(&cpu[1], ib, ia),
        );
    }
    for (_, mut s) in servers {
        let _ = s.child.kill(Signum::TERM);
        let _ = tokio::time::timeout(Duration::from_secs(10), s.child.wait()).await;
    }
    let _ = std::fs::remove_file(script);
}
