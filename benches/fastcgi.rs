//! `cargo bench --bench fastcgi`: requests per second through one nginx (`fastcgi_pass`),
//! brood's FastCGI front against Debian's fcgiwrap started the usual way with N processes
//! (`fcgiwrap -c N`), on two compiled CGI programs (C, built here with gcc): a minimal one
//! and one answering 64 KiB. `wrk -t2 -c16`, rounds interleaved (the order rotates each
//! round), the median of the per-round ratios with min..max. nginx, fcgiwrap and wrk must
//! be installed (`apt-get install nginx-light fcgiwrap wrk`; benches never run in CI).
//! Timing never gates a test. Every server runs in a watched process group (see `watched`),
//! so nothing is left running however the bench ends, Ctrl-C included.
//!
//! Besides requests/s, every cell reads the **server's own CPU** per request: user + system
//! time of the server's processes (brood's one process; fcgiwrap's N and its parent), from
//! `/proc/PID/stat` before and after the cell, leaving out the CGI programs (the same for
//! both) and each child before its exec (accounted to the child by the kernel, in both).
//! The requests/s ratio is bounded by what the two share (the program's exec and run,
//! nginx, wrk); the CPU ratio says what each server itself costs.
//!
//! A third server shows that bound: **the floor** (`benches/c/floor_fastcgi.c`, built here
//! with `cc`), the least work a FastCGI front for CGI programs can do per request: one
//! single-threaded epoll loop per core on one socket, one `vfork` child of its own (glibc's
//! `posix_spawn` resets every signal's handler in the child) and one pipe per request, the
//! kernel reaping, and none of a real server's duties (no stderr, no CGI header parsing, no
//! exit status, no path checks, limits, timeouts or log). What the floor makes over
//! fcgiwrap is the most any design can show on this machine.
//!
//! A fourth, **duties** (the same program with `duties`), adds in C, as cheaply as it can,
//! the work every front must do per request: the script checked (`stat`), its own process
//! group and signal mask, a stderr pipe read to its end, the CGI header block found, every
//! child reaped with its status (one signalfd), a deadline swept once a second, the
//! script's group ended when the web server closes the connection. duties ÷ fcgiwrap is
//! what a front with the duties can show here; brood ÷ duties is what brood's runtime and
//! its remaining work cost.
//!
//! `BROOD_BENCH_QUICK=1` runs 1 s cells; `BROOD_BENCH_ROUNDS` sets the rounds (6; each
//! server goes first, second, third and fourth in turn); `BROOD_BENCH_FCGIWRAP=N` starts
//! fcgiwrap with N processes instead of 16 (Debian's `fcgiwrap.service` starts one). For
//! experiments, `BROOD_BENCH_RT=current` serves on a current-thread runtime (less CPU per request, fewer
//! requests/s: its one thread waits out every vfork child's exec; see docs/benchmarks.md)
//! and `BROOD_BENCH_SPAWN=1` runs the accept loop as a spawned task (measured no faster);
//! `BROOD_BENCH_HOLD=1` starts everything, prints the URLs and serves until Enter (to
//! profile by hand, docs/benchmarks.md).

mod support {
    pub mod cpu;
}
use support::cpu;

use std::path::{Path, PathBuf};
const FLOOR_C: &str = include_str!("c/floor_fastcgi.c");
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVE: &str = "BROOD_FASTCGI_BENCH_SERVE";
const CLIENTS: usize = 16;
/// fcgiwrap's processes: one request at a time each, so as many as there are clients
/// (`BROOD_BENCH_FCGIWRAP=N` sets another count: Debian's `fcgiwrap.service` starts one).
const FCGIWRAP_PROCESSES: usize = 16;

const HELLO_C: &str = r#"#include <stdio.h>
int main(void) {
    fputs("Content-Type: text/plain\r\n\r\nhello\n", stdout);
    return 0;
}
"#;

const BIG_C: &str = r#"#include <stdio.h>
#include <string.h>
int main(void) {
    static char buf[65536];
    memset(buf, 'x', sizeof buf);
    fputs("Content-Type: application/octet-stream\r\n\r\n", stdout);
    fwrite(buf, 1, sizeof buf, stdout);
    return 0;
}
"#;

const CASES: [(&str, &str); 2] = [
    ("minimal program", "/cgi-bin/hello"),
    ("64 KiB response", "/cgi-bin/big"),
];

/// The allocator of the `brood` binary (cli/src/main.rs), so this in-process server is
/// `brood cgi` as shipped.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    if let Some(sock) = std::env::var_os(SERVE) {
        serve_brood(Path::new(&sock));
        return;
    }
    bench();
}

/// The brood server process: `brood cgi --fastcgi --root DIR` in the library's terms (a
/// multi-thread runtime, the access log off as fcgiwrap has none). Serves until stdin
/// closes.
fn serve_brood(sock: &Path) {
    let root = PathBuf::from(std::env::var_os("BROOD_BENCH_ROOT").unwrap());
    let rt = match std::env::var("BROOD_BENCH_RT").as_deref() {
        Ok("current") => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap(),
    };
    let spawned = std::env::var_os("BROOD_BENCH_SPAWN").is_some();
    rt.block_on(async {
        let listener = brood::cgi::FastCgiListener::bind(&format!("unix:{}", sock.display()))
            .await
            .unwrap();
        let cgi = brood::cgi::Cgi::root(root).on_log(|_| {});
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 1];
        let serve = async move {
            if spawned {
                tokio::spawn(async move { cgi.serve_fastcgi(listener).await })
                    .await
                    .unwrap()
            } else {
                cgi.serve_fastcgi(listener).await
            }
        };
        tokio::select! {
            r = serve => r.unwrap(),
            _ = tokio::io::AsyncReadExt::read(&mut stdin, &mut buf) => {}
        }
    });
}

fn build(dir: &Path) -> PathBuf {
    let root = dir.join("www");
    let bin = root.join("cgi-bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, text) in [("hello", HELLO_C), ("big", BIG_C)] {
        let src = dir.join(format!("{name}.c"));
        std::fs::write(&src, text).unwrap();
        let ok = Command::new("gcc")
            .args(["-O2", "-o"])
            .arg(bin.join(name))
            .arg(&src)
            .status()
            .expect("gcc builds the CGI programs")
            .success();
        assert!(ok, "gcc failed");
    }
    root
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() || std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} never listened",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The environment a service manager gives a server: `PATH` only. Not the bench's own:
/// cargo puts its target and toolchain directories in `LD_LIBRARY_PATH`, and fcgiwrap hands
/// its environment on to every script, whose dynamic loader then looks for libc in each of
/// them first (about 95 failed opens per request: it made fcgiwrap look slower than it is).
fn service_env(cmd: &mut Command) -> &mut Command {
    cmd.env_clear().env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    )
}

/// A server the bench started; ended (with everything it forked) when dropped.
struct Proc(Child);

/// Starts `cmd` under a watchdog shell in a process group of its own: the shell runs it in
/// the background and waits for EOF on its stdin, a pipe only this bench holds, then sends
/// SIGTERM to its whole group. So the server and everything it forks (fcgiwrap's `-c N`
/// workers, nginx's) end when the bench ends in any way: dropped normally, a panic, a Ctrl-C
/// (which the terminal sends to the bench's group, not this one), or a SIGTERM or SIGKILL
/// to the bench alone, where no `Drop` runs.
fn watched(cmd: &mut Command) -> Proc {
    let program = cmd.get_program().to_owned();
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(&program).is_file()));
    assert!(
        found,
        "{program:?} is not installed (apt-get install nginx-light fcgiwrap wrk)"
    );
    let mut sh = Command::new("sh");
    sh.args(["-c", "\"$@\" & read _; kill -TERM 0", "sh"])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    service_env(&mut sh);
    std::os::unix::process::CommandExt::process_group(&mut sh, 0);
    Proc(sh.spawn().expect("sh starts the server"))
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A watched server's shell ends its group on this EOF; the brood server exits on it.
        drop(self.0.stdin.take());
        let pid = self.0.id() as i32;
        let _ = brood::kill(pid, brood::Signum::TERM);
        // A watched server leads its group (the brood server has none).
        let _ = brood::kill(-pid, brood::Signum::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nginx(dir: &Path, root: &Path, socks: &[PathBuf; 4]) -> (Proc, u16) {
    let nd = dir.join("nginx");
    std::fs::create_dir_all(&nd).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let root_user = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let location = |prefix: &str, sock: &Path| {
        format!(
            "location ~ ^/{prefix}(/cgi-bin/.*)$ {{\n\
             fastcgi_param SCRIPT_FILENAME {root}$1;\n\
             fastcgi_param SCRIPT_NAME $1;\n\
             fastcgi_param REQUEST_METHOD $request_method;\n\
             fastcgi_param QUERY_STRING $query_string;\n\
             fastcgi_param REQUEST_URI $request_uri;\n\
             fastcgi_param SERVER_PROTOCOL $server_protocol;\n\
             fastcgi_param REMOTE_ADDR $remote_addr;\n\
             fastcgi_param REMOTE_PORT $remote_port;\n\
             fastcgi_param SERVER_NAME $server_name;\n\
             fastcgi_param SERVER_PORT $server_port;\n\
             fastcgi_param GATEWAY_INTERFACE CGI/1.1;\n\
             fastcgi_pass unix:{sock};\n}}\n",
            root = root.display(),
            sock = sock.display()
        )
    };
    let conf = format!(
        "daemon off;\nworker_processes 2;\n{user}pid {nd}/nginx.pid;\n\
         error_log {nd}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
         http {{\n access_log off;\n\
         client_body_temp_path {nd}/body; fastcgi_temp_path {nd}/fastcgi;\n\
         proxy_temp_path {nd}/proxy; uwsgi_temp_path {nd}/uwsgi; scgi_temp_path {nd}/scgi;\n\
         fastcgi_buffer_size 16k; fastcgi_buffers 16 16k;\n\
         server {{\n listen 127.0.0.1:{port};\n{locations} }}\n}}\n",
        user = if root_user { "user root root;\n" } else { "" },
        nd = nd.display(),
        locations = SERVERS
            .iter()
            .zip(socks)
            .map(|(s, sock)| location(s, sock))
            .collect::<String>(),
    );
    std::fs::write(nd.join("nginx.conf"), conf).unwrap();
    let nginx = watched(
        Command::new("nginx")
            .arg("-c")
            .arg(nd.join("nginx.conf"))
            .arg("-p")
            .arg(&nd)
            .arg("-e")
            .arg(nd.join("error.log")),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    (nginx, port)
}

/// `wrk -t2 -c16` for `secs`: requests/s counting only 2xx answers.
fn wrk(port: u16, path: &str, secs: u64) -> f64 {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{CLIENTS}"),
            &format!("-d{secs}s"),
            &format!("http://127.0.0.1:{port}{path}"),
        ])
        .output()
        .expect("wrk is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0)
    };
    let rate = field("Requests/sec:");
    let total: f64 = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.to_string())
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    let bad = field("Non-2xx or 3xx responses:");
    if total > 0.0 {
        rate * (total - bad) / total
    } else {
        0.0
    }
}

/// One cell: requests/s and the server's own CPU microseconds per request.
fn cell(port: u16, path: &str, secs: u64, server: u32, hz: f64) -> (f64, f64) {
    // The server's own CPU: its processes, not the CGI programs (`hello`, `big`).
    let program = |comm: &str| {
        CASES
            .iter()
            .any(|(_, p)| p.rsplit('/').next() == Some(comm))
    };
    let before = cpu::tree_ticks(server, &program);
    let rate = wrk(port, path, secs);
    let spent = cpu::tree_ticks(server, &program).saturating_sub(before);
    let requests = (rate * secs as f64).max(1.0);
    (rate, spent as f64 / hz * 1e6 / requests)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Builds the floor server (`benches/c/floor_fastcgi.c`) into `dir`.
fn build_floor(dir: &Path) -> PathBuf {
    let (src, out) = (dir.join("floor_fastcgi.c"), dir.join("floor_fastcgi"));
    std::fs::write(&src, FLOOR_C).unwrap();
    let ok = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("cc builds the floor")
        .success();
    assert!(ok, "cc failed on {}", src.display());
    out
}

/// The four servers, in the bench's order.
const SERVERS: [&str; 4] = ["brood", "fcgiwrap", "floor", "duties"];

fn bench() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fastcgi-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let root = build(&dir);
    let floor_bin = build_floor(&dir);
    let socks = SERVERS.map(|s| dir.join(format!("{s}.sock")));

    let mut serve = Command::new(std::env::current_exe().unwrap());
    service_env(&mut serve)
        .env(SERVE, &socks[0])
        .env("BROOD_BENCH_ROOT", &root)
        .stdin(Stdio::piped());
    // The experiment switches reach the server through its cleared environment.
    for knob in ["BROOD_BENCH_RT", "BROOD_BENCH_SPAWN"] {
        if let Some(v) = std::env::var_os(knob) {
            serve.env(knob, v);
        }
    }
    let brood = Proc(serve.spawn().unwrap());
    let wrap_n: usize = std::env::var("BROOD_BENCH_FCGIWRAP")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(FCGIWRAP_PROCESSES);
    // fcgiwrap -c N forks its N workers, which outlive their parent: a watched group.
    let wrap = watched(
        Command::new("fcgiwrap")
            .args(["-c", &wrap_n.to_string(), "-s"])
            .arg(format!("unix:{}", socks[1].display())),
    );
    // One loop per core, forked by the floor's first process: a watched group too.
    let floor = watched(Command::new(&floor_bin).arg(&socks[2]));
    // The same loops doing every front's duties (one per core: `0` processes).
    let duties = watched(
        Command::new(&floor_bin)
            .arg(&socks[3])
            .args(["0", "duties"]),
    );
    for sock in &socks {
        wait_for(sock);
    }
    let (nginx, port) = nginx(&dir, &root, &socks);

    if std::env::var_os("BROOD_BENCH_HOLD").is_some() {
        // For profiling by hand: everything stays up until Enter.
        for (case, path) in CASES {
            let urls = SERVERS.map(|s| format!("http://127.0.0.1:{port}/{s}{path}"));
            println!("{case}: {}", urls.join(" "));
        }
        println!("serving until Enter…");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        return;
    }
    let secs = if std::env::var_os("BROOD_BENCH_QUICK").is_some() {
        1
    } else {
        3
    };
    let rounds: usize = std::env::var("BROOD_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(6);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "brood cgi --fastcgi vs fcgiwrap -c {wrap_n} vs the C floor, without and with the \
         duties, through nginx \
         (2 workers), wrk -t2 -c{CLIENTS}, {secs} s cells, {rounds} rounds interleaved; loadavg {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let hz = cpu::clock_ticks_per_sec();
    // The watched servers' shells: their process trees hold the servers.
    let pids = [brood.0.id(), wrap.0.id(), floor.0.id(), duties.0.id()];
    let n = SERVERS.len();
    for (case, path) in CASES {
        let urls = SERVERS.map(|s| format!("/{s}{path}"));
        for url in &urls {
            wrk(port, url, 1);
        }
        let (mut rate, mut cpu_us) = (vec![vec![]; n], vec![vec![]; n]);
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        // Per round: each server ÷ fcgiwrap, then brood ÷ floor and brood ÷ duties.
        let mut ratios: Vec<Vec<f64>> = vec![vec![]; n + 1];
        for round in 0..rounds {
            // Each server goes first, second, third and fourth in turn.
            let mut got = vec![(0.0, 0.0); n];
            for k in 0..n {
                let i = (round + k) % n;
                got[i] = cell(port, &urls[i], secs, pids[i], hz);
            }
            for i in 0..n {
                rate[i].push(got[i].0);
                cpu_us[i].push(got[i].1);
            }
            for (i, r) in [0, 2, 3].into_iter().enumerate() {
                ratios[i].push(ratio(got[r].0, got[1].0));
            }
            ratios[3].push(ratio(got[0].0, got[2].0));
            ratios[4].push(ratio(got[0].0, got[3].0));
        }
        let range = |v: &[f64]| {
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, 0.0f64), |(l, h), r| (l.min(*r), h.max(*r)));
            format!("{:.2}× ({lo:.2}..{hi:.2})", median(v.to_vec()))
        };
        let each = |v: &[Vec<f64>], unit: &str| {
            SERVERS
                .iter()
                .zip(v)
                .map(|(s, x)| format!("{s} {:>6.0}{unit}", median(x.clone())))
                .collect::<Vec<_>>()
                .join("  ")
        };
        println!("{case:<18} req/s: {}", each(&rate, ""));
        println!(
            "{:<18} ÷ fcgiwrap: brood {}  floor {}  duties {}",
            "",
            range(&ratios[0]),
            range(&ratios[1]),
            range(&ratios[2]),
        );
        println!(
            "{:<18} brood ÷ floor {}  brood ÷ duties {}",
            "",
            range(&ratios[3]),
            range(&ratios[4]),
        );
        println!(
            "{:<18} server's own CPU per request: {}",
            "",
            each(&cpu_us, " µs")
        );
    }
    drop(nginx);
    drop(duties);
    drop(floor);
    drop(wrap);
    drop(brood);
    for sock in &socks {
        let _ = std::fs::remove_file(sock);
    }
}
