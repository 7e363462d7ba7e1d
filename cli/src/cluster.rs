//! `brood cluster` (a master and its workers) and `brood ctl` (its control socket).

use std::convert::Infallible;
use std::path::PathBuf;
use std::time::Duration;

use brood::cluster::{Cluster, Metrics, Restart, Strategy, Worker, WorkerOutput};

use crate::log::say;
use clap::{Args, ValueEnum};

/// Run a multi-process server: a master that starts workers and hands them connections.
///
/// Signals to the master: SIGTERM/SIGINT stop gracefully, SIGHUP restarts the workers one
/// by one with no connection lost, SIGTTIN/SIGTTOU add/remove a worker, SIGUSR2 upgrades
/// the master itself: a new master (the binary on disk, same arguments) takes over the
/// listening and control sockets, starts its workers, and once they are ready the old
/// master drains and exits (if the new one fails, the old one keeps serving).
///
/// Retiring a worker (reload, scale down, stop): the master stops handing it connections and
/// closes its channel (end of stream = finish and exit), waits up to --grace seconds for it
/// to exit, then sends --stop-signal, then SIGKILL after --kill-after seconds.
///
/// A worker that leaves its channel unread gets no new connections after a second and is
/// killed after --stuck-timeout seconds without reading; the connections it never read go
/// to other workers.
/// When the restart policy has given up on every worker slot, the master stops listening
/// and exits (1, or 0 when every worker exited with status 0).
///
/// Exit status: 0 after SIGINT/SIGTERM (or every worker done with status 0); 125 for a
/// usage or configuration error (bad option or signal, --workers 0, address in use or
/// unusable, bad --control path, a worker PROGRAM that is not an executable file), always
/// before "listening" is printed, as `brood run` and `brood cgi` do; 1 if the master fails
/// after that (no worker left...).
///
/// Strategies: round-robin and least-connections (the master accepts and passes each
/// connection over a Unix socket: fd 3 of the worker receives the byte `c` with the
/// connection's fd), shared (fd 3 is the listening socket itself, LISTEN_FDS=1 and
/// LISTEN_PID set as systemd does), reuseport (fd 3 is the worker's own SO_REUSEPORT socket).
///
/// Examples:
///   brood cluster --listen 127.0.0.1:8080 --builtin http
///   brood cluster --listen 127.0.0.1:7000 --workers 4 --strategy shared --builtin echo
///   brood cluster --listen 127.0.0.1:8000 --strategy shared -- python3 worker.py
///   brood cluster --listen 127.0.0.1:7000 -- node examples/node/worker.js
///   brood cluster --listen 127.0.0.1:8080 --control /tmp/brood.ctl --builtin http
///   brood ctl /tmp/brood.ctl status
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ClusterArgs {
    /// Address to listen on (ADDR:PORT; port 0 picks one and the log says which).
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// Number of workers (default: one per CPU).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// How connections reach workers.
    #[arg(long, value_enum, default_value_t = StrategyArg::RoundRobin)]
    strategy: StrategyArg,
    /// Seconds a retiring worker gets to finish and exit before --stop-signal.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    grace: f64,
    /// Signal for a retiring worker still running after --grace.
    #[arg(long, value_name = "SIGNAL", default_value = "SIGTERM")]
    stop_signal: String,
    /// Seconds after --stop-signal before SIGKILL.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    kill_after: f64,
    /// Treat a PROGRAM worker as ready only once it writes `r` to its channel (the builtin
    /// workers always do).
    #[arg(long)]
    wait_ready: bool,
    /// Seconds a worker that says when it is ready may take to say so; a late worker is
    /// stopped (in a reload: the reload fails and the old workers keep serving).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    ready_timeout: f64,
    /// In a reload, seconds a new worker that never writes `r` must stay up before an old
    /// one retires; one that exits sooner stops the reload (the old ones keep serving).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    reload_settle: f64,
    /// Seconds a worker may go without reading any connection or ping the master sent it
    /// (a Node worker: without acknowledging its connection) before it is killed (stopped
    /// first: the connections it never read go to other workers); a slow worker that keeps
    /// reading is never killed. Once its oldest unread send waited a second it gets no new
    /// connections until it catches up.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    stuck_timeout: f64,
    /// Most workers `ctl scale` and SIGTTIN may ask for [default: 4 x CPUs].
    #[arg(long, value_name = "N")]
    max_workers: Option<usize>,
    /// When to replace a worker that exited on its own.
    #[arg(long, value_enum, default_value_t = RestartArg::Always)]
    restart: RestartArg,
    /// Stop restarting a worker slot after N restarts within --within seconds (shown as
    /// `failed` by `ctl status`; with every slot failed, the master exits).
    #[arg(long, value_name = "N", requires = "within")]
    max_restarts: Option<u32>,
    /// The window of --max-restarts, in seconds.
    #[arg(long, value_name = "SECS", requires = "max_restarts")]
    within: Option<f64>,
    /// Seconds without a heartbeat answer before a brood worker is replaced.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    heartbeat_timeout: f64,
    /// Workers' stdout and stderr: `prefix` (the default) reads them through pipes into this
    /// log, each line tagged `[worker ID pid PID]` (lines over 16 KiB are cut, and say so);
    /// `inherit` leaves them on the master's own stdout and stderr, untagged; `null` drops
    /// them.
    #[arg(long, value_enum, default_value_t = OutputArg::Prefix)]
    worker_output: OutputArg,
    /// Serve Prometheus metrics at http://ADDR/metrics (workers by state, restarts by
    /// cause, connections per worker, handoff queue and latency, heartbeat misses).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// The program a hot upgrade (SIGUSR2, `ctl upgrade`) starts as the new master, with
    /// this master's arguments [default: this brood binary, as it is on disk now].
    #[arg(long, value_name = "PATH")]
    upgrade_binary: Option<PathBuf>,
    /// Seconds the new master of an upgrade may take to have all its workers ready; a late
    /// one is killed and this master keeps serving.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    upgrade_timeout: f64,
    /// Open a control socket here for `brood ctl PATH status|reload|scale N|...`.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// What a PROGRAM worker speaks on its channel: `brood` (the bytes above), `node` (a
    /// Node.js app with no brood code: NODE_CHANNEL_FD, each connection as Node's own
    /// handle message for `process.on('message', (m, socket) => ..)`, `process.send('ready')`
    /// for --wait-ready, retiring = 'disconnect'), or `auto`: `node` when the program's
    /// file name is node or nodejs, or its `#!` line runs node (`#!/usr/bin/env node`),
    /// else `brood`.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Auto)]
    worker_protocol: ProtocolArg,
    /// Run a built-in worker: `echo` (the seed's echo server) or `http` (a fixed answer).
    #[arg(long, value_enum, conflicts_with = "program")]
    builtin: Option<Builtin>,
    /// The worker program and its arguments (any language; see above for fd 3).
    #[arg(trailing_var_arg = true, value_name = "PROGRAM [ARGS]")]
    program: Vec<std::ffi::OsString>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StrategyArg {
    RoundRobin,
    LeastConnections,
    Shared,
    Reuseport,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProtocolArg {
    Auto,
    Brood,
    Node,
}

/// `--worker-protocol auto`: Node's when the program is `node` (or `nodejs`), or a script
/// whose `#!` line runs node (`#!/usr/bin/node`, `#!/usr/bin/env node`, `#!/usr/bin/env -S
/// node --flag`). `path` is the program as found (see [`find_program`]).
fn is_node(program: &std::ffi::OsStr, path: Option<&std::path::Path>) -> bool {
    let node = |word: &[u8]| {
        let name = word.rsplit(|&b| b == b'/').next().unwrap_or(word);
        name == b"node" || name == b"nodejs"
    };
    if node(program.as_encoded_bytes()) {
        return true;
    }
    let Some(line) = path.and_then(shebang) else {
        return false;
    };
    let mut words = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty());
    match words.next() {
        Some(interp) if node(interp) => true,
        // env's options and VAR=value assignments come before the program it runs.
        Some(interp) if interp.rsplit(|&b| b == b'/').next() == Some(b"env") => words
            .find(|w| !w.starts_with(b"-") && !w.contains(&b'='))
            .is_some_and(node),
        _ => false,
    }
}

/// The `#!` line of a file (without `#!` and the newline), read from its first 256 bytes
/// (as much as Linux reads); `None` for a file that does not start with `#!`.
fn shebang(path: &std::path::Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut head = Vec::with_capacity(256);
    std::fs::File::open(path)
        .ok()?
        .take(256)
        .read_to_end(&mut head)
        .ok()?;
    let rest = head.strip_prefix(b"#!")?;
    let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    Some(rest[..end].to_vec())
}

/// The worker program as `execvp` will find it (a name without `/` through `PATH`), checked
/// before "listening" is printed: an executable file, else why not.
fn find_program(program: &std::ffi::OsStr) -> Result<std::path::PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = program.to_string_lossy();
    let candidates: Vec<std::path::PathBuf> = if program.as_encoded_bytes().contains(&b'/') {
        vec![program.into()]
    } else {
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .collect()
    };
    let mut why = format!("{shown}: no such file");
    for c in candidates {
        match std::fs::metadata(&c) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => return Ok(c),
            Ok(m) if m.is_dir() => why = format!("{}: is a directory", c.display()),
            Ok(_) => why = format!("{}: not an executable file", c.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => why = format!("{}: {e}", c.display()),
        }
    }
    if !program.as_encoded_bytes().contains(&b'/') && why.ends_with("no such file") {
        why = format!("{shown}: not found in PATH");
    }
    Err(why)
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RestartArg {
    Always,
    OnFailure,
    Never,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OutputArg {
    Inherit,
    Prefix,
    Null,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Builtin {
    Echo,
    Http,
}

/// Send a command to a cluster master's control socket and print the answer.
///
/// Commands: `status` (the master, and a table of workers: pid, state, uptime, connections
/// handled and open, restarts, last exit; `restarting` for a slot in its crash backoff,
/// `failed`/`exited` for slots left empty; with
/// --json one line of JSON), `reload` (rolling restart: answers when it is over, and exits 1
/// if it failed and the old workers kept serving), `scale N` (at most --max-workers),
/// `kill PID [SIGNAL]` (a signal, SIGTERM by default, to one worker of this master), `stop`
/// (graceful shutdown, as SIGTERM), `upgrade` (hot upgrade of the master, as SIGUSR2:
/// answers when the new master is ready, and exits 1 if it failed and the old one kept
/// serving).
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The master's --control socket.
    path: PathBuf,
    /// With `status`: one line of JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// status | reload | scale N | kill PID [SIGNAL] | stop | upgrade
    #[arg(required = true, num_args = 1..=3)]
    command: Vec<String>,
}

fn runtime(multi: bool) -> tokio::runtime::Runtime {
    let mut b = if multi {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all().build().unwrap_or_else(|e| {
        say!("brood: cannot start the runtime: {e}");
        std::process::exit(125)
    })
}

/// A usage or configuration error found before "listening" is printed: 125, as clap's usage
/// errors, `brood run` and `brood cgi` use.
const EXIT_CONFIG: i32 = crate::run::EXIT_BROOD;

/// The duration options where 0 makes no sense.
fn positive(name: &str) -> bool {
    matches!(name, "heartbeat-timeout" | "stuck-timeout")
}

/// A duration option in seconds: 0 up to a year (beyond, deadlines would overflow), and
/// more than 0 where 0 would make no sense (a heartbeat or stuck timeout). A usage error
/// exits 125.
fn secs(name: &str, v: f64) -> Duration {
    match Duration::try_from_secs_f64(v) {
        Ok(d) if d <= crate::log::MAX_DURATION && !(d.is_zero() && positive(name)) => d,
        _ => {
            say!(
                "brood cluster: --{name} takes seconds, {} to {} (a year)",
                if positive(name) { "more than 0" } else { "0" },
                crate::log::MAX_DURATION.as_secs()
            );
            std::process::exit(125);
        }
    }
}

pub fn main(args: ClusterArgs) -> i32 {
    if brood::cluster::is_worker() {
        // Started by our own master: run the built-in worker on one thread (one process
        // per core is the point of the cluster).
        let builtin = args.builtin.unwrap_or(Builtin::Echo);
        crate::log::init();
        return runtime(false).block_on(worker(builtin));
    }
    crate::log::init();
    if args.builtin.is_none() && args.program.is_empty() {
        say!("brood cluster: give --builtin echo|http or -- PROGRAM [ARGS]");
        return EXIT_CONFIG;
    }
    let stop_signal: brood::Signum = match args.stop_signal.parse() {
        Ok(s) => s,
        Err(e) => {
            say!("brood cluster: --stop-signal: {e}");
            return EXIT_CONFIG;
        }
    };
    let strategy = match args.strategy {
        StrategyArg::RoundRobin => Strategy::RoundRobin,
        StrategyArg::LeastConnections => Strategy::LeastConnections,
        StrategyArg::Shared => Strategy::Shared,
        StrategyArg::Reuseport => Strategy::ReusePort,
    };
    let hb_timeout = secs("heartbeat-timeout", args.heartbeat_timeout);
    let mut b = Cluster::builder()
        .listen(&args.listen)
        .strategy(strategy)
        .grace(secs("grace", args.grace))
        .stop_signal(stop_signal)
        .kill_after(secs("kill-after", args.kill_after))
        .ready_timeout(secs("ready-timeout", args.ready_timeout))
        .reload_settle(secs("reload-settle", args.reload_settle))
        .stuck_timeout(secs("stuck-timeout", args.stuck_timeout))
        .restart(match args.restart {
            RestartArg::Always => Restart::Always,
            RestartArg::OnFailure => Restart::OnFailure,
            RestartArg::Never => Restart::Never,
        })
        .worker_output(match args.worker_output {
            OutputArg::Inherit => WorkerOutput::Inherit,
            OutputArg::Prefix => WorkerOutput::Prefix,
            OutputArg::Null => WorkerOutput::Null,
        })
        .heartbeat(
            (hb_timeout / 5).clamp(Duration::from_millis(50), Duration::from_secs(1)),
            hb_timeout,
        );
    if let Some(n) = args.workers {
        b = b.workers(n);
    }
    if let Some(n) = args.max_workers {
        b = b.max_workers(n);
    }
    if let (Some(n), Some(within)) = (args.max_restarts, args.within) {
        b = b.max_restarts(n, secs("within", within));
    }
    if args.wait_ready {
        b = b.expect_ready(true);
    }
    if let Some(path) = &args.control {
        b = b.control(path);
    }
    if let Some(path) = &args.upgrade_binary {
        b = b.upgrade_program(path);
    }
    b = b.upgrade_timeout(secs("upgrade-timeout", args.upgrade_timeout));
    if !args.program.is_empty() {
        let found = match find_program(&args.program[0]) {
            Ok(p) => p,
            Err(why) => {
                say!("brood cluster: worker program {why}");
                return EXIT_CONFIG;
            }
        };
        b = b.program(args.program[0].clone(), args.program[1..].to_vec());
        let node = match args.worker_protocol {
            ProtocolArg::Auto => is_node(&args.program[0], Some(&found)),
            ProtocolArg::Brood => false,
            ProtocolArg::Node => true,
        };
        if node {
            b = b.worker_protocol(brood::cluster::WorkerProtocol::Node);
        }
    } else if matches!(args.worker_protocol, ProtocolArg::Node) {
        say!("brood cluster: --worker-protocol node is for a PROGRAM (a Node.js app)");
        return EXIT_CONFIG;
    }
    let metrics = args.metrics.as_ref().map(|_| Metrics::new());
    if let Some(m) = &metrics {
        b = b.metrics(m.clone());
    }
    let rt = runtime(false);
    let result = rt.block_on(async move {
        // A subreaper: workers' orphaned background jobs land here and are reaped.
        let _reaper = crate::reaper::start("brood cluster");
        if let (Some(addr), Some(m)) = (&args.metrics, metrics) {
            match crate::metrics::serve(addr, Metrics::CONTENT_TYPE, move || m.encode()) {
                Ok(a) => say!("brood cluster: metrics on http://{a}/metrics"),
                Err(e) => {
                    say!("brood cluster: --metrics {addr}: {e}");
                    std::process::exit(EXIT_CONFIG);
                }
            }
        }
        // Bad settings, an address in use, an unusable --control path: before "listening".
        let cluster = b.build().map_err(|e| (EXIT_CONFIG, e))?;
        say!("brood cluster: listening on {}", cluster.local_addr());
        cluster.run().await.map_err(|e| (1, e))
    });
    match result {
        Ok(()) => 0,
        // The restart policy gave up on every slot: a sentence, no errno (ECHILD) in front.
        Err((code, e)) if e.errno() == libc::ECHILD && e.detail().is_some() => {
            say!("brood cluster: {}", e.detail().unwrap_or_default());
            code
        }
        Err((code, e)) => {
            say!("brood cluster: {e}");
            code
        }
    }
}

pub fn ctl(args: CtlArgs) -> i32 {
    let mut command = args.command.join(" ");
    if args.json {
        if command != "status" {
            say!("brood ctl: --json goes with `status` only");
            return 2;
        }
        command += " --json";
    }
    match runtime(false).block_on(brood::cluster::ctl(&args.path, &command)) {
        Ok(answer) => {
            print!("{answer}");
            if answer.starts_with("error:") { 1 } else { 0 }
        }
        Err(e) => {
            say!("brood ctl: {e}");
            1
        }
    }
}

async fn worker(builtin: Builtin) -> i32 {
    let mut worker = match Worker::from_env().await {
        Ok(w) => w,
        Err(e) => {
            say!("brood worker: {e}");
            return 1;
        }
    };
    let mut pause = Duration::from_millis(10);
    loop {
        match worker.accept().await {
            Ok(Some(conn)) => {
                pause = Duration::from_millis(10);
                match builtin {
                    Builtin::Echo => tokio::spawn(brood::pipe::echo(conn)),
                    Builtin::Http => tokio::spawn(http(conn)),
                };
            }
            Ok(None) => break,
            Err(e) => {
                // Out of fds or memory: accept fails at once until something closes.
                tracing::warn!("brood worker {}: {e}", std::process::id());
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
        }
    }
    worker.drain().await;
    0
}

const HTTP_BODY: &[u8] = b"Hello from a brood worker\n";

/// Answers every HTTP/1.1 request with a small fixed body, with keep-alive.
async fn http(conn: brood::cluster::Connection) {
    let service = hyper::service::service_fn(|_req| async {
        let mut resp = hyper::Response::new(http_body_util::Full::new(
            hyper::body::Bytes::from_static(HTTP_BODY),
        ));
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain"),
        );
        Ok::<_, Infallible>(resp)
    });
    let io = hyper_util::rt::TokioIo::new(conn);
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_detects_node_by_name_or_by_the_scripts_shebang() {
        let dir = std::env::temp_dir().join(format!("brood-is-node-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            ("#!/usr/bin/env node\n", true),
            ("#!/usr/bin/nodejs --harmony\n", true),
            ("#! /usr/local/bin/node\n", true),
            (
                "#!/usr/bin/env -S NODE_ENV=production node --no-warnings\n",
                true,
            ),
            ("#!/usr/bin/env python3\n", false),
            ("#!/bin/sh\nexec node app.js\n", false),
            ("#!/usr/bin/env nodemon\n", false),
            ("console.log('no shebang')\n", false),
            ("", false),
        ];
        for (i, (text, node)) in cases.into_iter().enumerate() {
            let file = dir.join(format!("s{i}"));
            std::fs::write(&file, text).unwrap();
            assert_eq!(is_node("./s".as_ref(), Some(&file)), node, "{text:?}");
        }
        // A first line longer than Linux reads is not followed past 256 bytes.
        let long = dir.join("long");
        std::fs::write(&long, format!("#!/usr/bin/env {}node\n", " ".repeat(300))).unwrap();
        assert!(!is_node("./long".as_ref(), Some(&long)));
        assert!(is_node("/usr/bin/node".as_ref(), None));
        assert!(is_node("nodejs".as_ref(), None));
        assert!(!is_node("python3".as_ref(), None));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
