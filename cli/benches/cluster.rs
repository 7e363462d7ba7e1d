//! `cargo bench -p brood-cli --bench cluster`: echo servers under a bounded loopback load.
//!
//! 32 clients, 64-byte exchanges: (a) a new connection per exchange, (b) persistent
//! connections. Contenders: `brood cluster` with each strategy and 2 workers, a
//! single-process tokio echo server (this binary in server mode, its own process), and
//! Node's cluster module (2 workers, SCHED_RR) when `node` is on PATH.
//! `BROOD_BENCH_QUICK=1` shortens each cell. Timing never gates a test.

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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
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
            if let Some(i) = line.find("listening on ") {
                return Some(line[i + 13..].trim().to_string());
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
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let addr = addr.to_string();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            let msg = [b'x'; 64];
            let mut buf = [0u8; 64];
            let mut conn: Option<TcpStream> = None;
            while Instant::now() < deadline {
                if conn.is_none() {
                    match TcpStream::connect(&addr).await {
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

async fn bench() {
    let dur = Duration::from_secs_f64(if quick() { 1.0 } else { 3.0 });
    let brood = env!("CARGO_BIN_EXE_brood");
    let exe = std::env::current_exe().unwrap();
    let mut servers = Vec::new();
    println!("starting servers…");
    for strategy in ["round-robin", "least-connections", "shared", "reuseport"] {
        let mut cmd = Command::new(brood);
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
        servers.extend(start(&format!("brood {strategy}"), cmd, true).await);
    }
    let mut tokio_cmd = Command::new(&exe);
    tokio_cmd.env("BROOD_BENCH_ECHO_SERVER", "1");
    servers.extend(start("tokio (1 process)", tokio_cmd, false).await);
    // Node's cluster with 2 workers, SCHED_RR (its default on Linux), on a free port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // cluster.fork() re-runs the script file, so the script must be a file.
    let script = std::env::temp_dir().join(format!("brood-node-cluster-{}.js", std::process::id()));
    std::fs::write(&script, NODE_CLUSTER).unwrap();
    let mut node = Command::new("node");
    node.arg(&script).env("PORT", port.to_string());
    servers.extend(start("node cluster (2, RR)", node, false).await);

    println!(
        "\n32 clients, 64-byte echo exchanges, {:.0} s per cell, medians of 3 interleaved rounds;\n2 cores shared by the servers and the load generator\n",
        dur.as_secs_f64()
    );
    // Rounds interleave the contenders so a noisy moment hits all alike; medians reported.
    let rounds = 3;
    let mut samples: Vec<(Vec<f64>, Vec<f64>, u64)> =
        vec![(Vec::new(), Vec::new(), 0); servers.len()];
    for s in &servers {
        // Warm up (connections, worker readiness).
        load(&s.addr, 8, Duration::from_millis(200), false).await;
    }
    for _ in 0..rounds {
        for (i, s) in servers.iter().enumerate() {
            let (a, af) = load(&s.addr, 32, dur, true).await;
            let (b, bf) = load(&s.addr, 32, dur, false).await;
            samples[i].0.push(a as f64 / dur.as_secs_f64());
            samples[i].1.push(b as f64 / dur.as_secs_f64());
            samples[i].2 += af + bf;
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.partial_cmp(y).unwrap());
        v[v.len() / 2]
    };
    let mut results: Vec<(String, f64, f64)> = Vec::new();
    for (s, (a, b, failed)) in servers.iter().zip(samples.iter_mut()) {
        let (a, b) = (median(a), median(b));
        println!(
            "  {:<28} (a) new conn {:>9.0}/s   (b) persistent {:>9.0}/s   ({failed} failed)",
            s.name, a, b
        );
        results.push((s.name.clone(), a, b));
    }
    let get = |name: &str| results.iter().find(|r| r.0 == name).map(|r| (r.1, r.2));
    println!();
    if let (Some(rr), Some(node)) = (get("brood round-robin"), get("node cluster (2, RR)")) {
        println!(
            "  (a) brood round-robin / node cluster          = {:.2}×  (bar ≥ 2×)",
            rr.0 / node.0
        );
    }
    if let Some(tok) = get("tokio (1 process)") {
        let best = results
            .iter()
            .filter(|r| r.0.starts_with("brood"))
            .max_by(|x, y| x.2.partial_cmp(&y.2).unwrap())
            .unwrap();
        println!(
            "  (b) best brood ({}) / single tokio  = {:.2}×  (bar ≥ 1×)",
            best.0,
            best.2 / tok.1
        );
        for r in results.iter().filter(|r| r.0.starts_with("brood")) {
            println!(
                "      {:<28} (a) {:.2}× tokio   (b) {:.2}× tokio",
                r.0,
                r.1 / tok.0,
                r.2 / tok.1
            );
        }
    }
    for mut s in servers {
        let _ = s.child.kill(Signum::TERM);
        let _ = tokio::time::timeout(Duration::from_secs(10), s.child.wait()).await;
    }
    let _ = std::fs::remove_file(script);
}
