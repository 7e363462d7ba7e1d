//! `brood cgi`: a CGI/1.1 server (scripts under a root, or one script), or the libuv
//! guide's raw mode where each connection is a program's stdin and stdout.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use brood::Signum;
use brood::cgi::{Cgi, FastCgiListener, LogFormat, LogLine, Raw};
use brood::signal::Signal;
use clap::{ArgGroup, Args};

/// Serve CGI scripts over HTTP/1.1, or run a program per TCP connection (--raw).
///
/// With --root, `PREFIX/name/extra?query` runs the executable DIR/name with every RFC 3875
/// variable (SCRIPT_NAME=PREFIX/name, PATH_INFO=/extra, QUERY_STRING=query, HTTP_*, ...),
/// the request body on its stdin, cwd = its directory. With --script, every path runs FILE.
/// Scripts print headers (Status:, Location:, Content-Type:, others), a blank line, then
/// the body, which is streamed to the client; `nph-*` scripts print their own status line.
/// Their environment holds only the CGI variables, PATH, and --env / --pass-env.
///
/// With --raw, each connection runs PROGRAM with stdin and stdout set to the socket and
/// TCPREMOTEIP / TCPREMOTEPORT in its environment; the connection closes when it exits.
/// The options about HTTP requests (--max-body, --max-spool, --body-timeout,
/// --max-header-bytes, --htpasswd, --prefix, --scripts-by-fd) are refused with --raw.
///
/// Request bodies are read whole before the script starts (memory, then a temporary file)
/// and given with CONTENT_LENGTH. REMOTE_USER is set only for users checked against
/// --htpasswd; without it no script gets one. A query without `=` becomes arguments only
/// for GET/HEAD and never a word starting with `-`. The file that runs is the file that was
/// checked to be inside the root (opened once, then executed).
///
/// With --fastcgi, brood is a FastCGI responder behind a web server (nginx's fastcgi_pass),
/// in place of fcgiwrap: --listen unix:PATH or HOST:PORT, or `systemd` for the socket
/// passed with LISTEN_FDS. The script is SCRIPT_FILENAME when the web server sends it, else
/// --script, else DOCUMENT_ROOT + SCRIPT_NAME (split into the script and PATH_INFO), else
/// the path mapped as above; it must be inside --root (or be --script). The params are the
/// script's variables; the web server authenticates (its REMOTE_USER is trusted).
///
/// Fixed limits: a client has 30 s to send a request head, of at most 64 KiB and 100
/// headers (431 beyond); an idle keep-alive connection is closed after 30 s;
/// request bodies held in memory share 64 MiB for the whole server (beyond, temp files).
///
/// One access line per request (with a timestamp) goes to stderr or --access-log, as do
/// the scripts' stderr lines, prefixed with the script name. SIGINT or SIGTERM stops the
/// server and kills the scripts still running.
///
/// Exit status: 0 after SIGINT/SIGTERM; a usage or configuration error (bad option, no such
/// root or script, unusable htpasswd file, address in use) is reported before "listening"
/// and makes brood exit 125, as `brood run` and `brood cluster` do; 1 if serving fails.
///
/// Examples:
///   brood cgi --listen 127.0.0.1:8080 --root ./cgi-bin
///   brood cgi --listen 127.0.0.1:8080 --root ./www --prefix / --timeout 30 --max-children 8
///   brood cgi --listen 127.0.0.1:8080 --script ./app.py --pass-env HOME --env MODE=prod
///   brood cgi --listen 127.0.0.1:7000 --raw -- sh -c 'echo hello $TCPREMOTEIP'
///   brood cgi --fastcgi --listen unix:/run/brood-cgi.sock --root /usr/lib/cgi-bin
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
#[command(group(ArgGroup::new("mode").required(true).args(["root", "script", "raw"])))]
pub struct CgiArgs {
    /// Address to listen on (port 0 picks one; the address is printed); with --fastcgi
    /// also unix:PATH (its file removed when a stop begins), or `systemd` for the socket passed
    /// with LISTEN_FDS.
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// Directory of the scripts.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// URL path the scripts are under (`/` for all paths): /cgi-bin by default with
    /// --root; with --script the part of the path that is SCRIPT_NAME (none by default).
    #[arg(long, value_name = "PATH", conflicts_with = "raw")]
    prefix: Option<String>,
    /// One script that answers every path.
    #[arg(long, value_name = "FILE")]
    script: Option<PathBuf>,
    /// Raw mode: run PROGRAM per connection with the socket as its stdin and stdout.
    #[arg(long, requires = "program")]
    raw: bool,
    /// Speak FastCGI (responder) to a web server instead of HTTP to clients.
    #[arg(long, conflicts_with_all = ["raw", "htpasswd"])]
    fastcgi: bool,
    /// With --fastcgi: also send the scripts' stderr lines to the web server (FCGI_STDERR;
    /// nginx writes them to its error log).
    #[arg(long, requires = "fastcgi")]
    stderr_to_client: bool,
    /// With --fastcgi --listen unix:PATH: the socket file's permissions, in octal (e.g.
    /// 660 with the web server in brood's group); else what the umask leaves.
    #[arg(long, value_name = "OCTAL", requires = "fastcgi", value_parser = parse_mode)]
    socket_mode: Option<u32>,
    /// End a script and its process group after SECS (SIGTERM, SIGKILL 2 s later; 504 if
    /// nothing was sent, a cut response otherwise); 0 for no limit.
    #[arg(long, value_name = "SECS", default_value_t = brood::cgi::DEFAULT_TIMEOUT.as_secs_f64())]
    timeout: f64,
    /// At most N scripts at once; more get 503 (or wait, with --queue). Default: 16 per CPU.
    #[arg(long, value_name = "N")]
    max_children: Option<usize>,
    /// Require HTTP Basic credentials of a user in this Apache htpasswd file (bcrypt,
    /// apr1-MD5 or SHA-1), answering 401 otherwise; the user becomes REMOTE_USER.
    #[arg(long, value_name = "FILE", conflicts_with = "raw")]
    htpasswd: Option<PathBuf>,
    /// The realm of the 401 challenge, with --htpasswd.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "brood",
        requires = "htpasswd"
    )]
    realm: String,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, value_name = "BYTES", default_value_t = brood::cgi::DEFAULT_MAX_BODY, conflicts_with = "raw")]
    max_body: u64,
    /// Hand `#!` scripts to their interpreter as /dev/fd/3 (the file brood opened and
    /// checked) instead of by path: no rename inside the root can swap what runs, but the
    /// script's $0 / __file__ is /dev/fd/3 (SCRIPT_FILENAME keeps the real path).
    #[arg(long, conflicts_with = "raw")]
    scripts_by_fd: bool,
    /// Disk for request bodies in temporary files, all requests together, in bytes (503
    /// beyond, saying why; 413 for a body larger than all of it; a body's share is freed
    /// when its script ends). Default: a quarter
    /// of the free space of the temporary directory ($TMPDIR, else /tmp) at start.
    #[arg(long, value_name = "BYTES", conflicts_with = "raw")]
    max_spool: Option<u64>,
    /// At most N client connections open at once, idle keep-alive ones included (more
    /// wait in the listen backlog). Default: half the fd limit (ulimit -n), 16 to 65536.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// A request body that stalls this long between two pieces ends the request (408).
    #[arg(long, value_name = "SECS", default_value_t = brood::cgi::DEFAULT_BODY_TIMEOUT.as_secs_f64(), conflicts_with = "raw")]
    body_timeout: f64,
    /// Append access lines to FILE instead of stderr.
    #[arg(long, value_name = "FILE")]
    access_log: Option<PathBuf>,
    /// Access line format: brood, common (CLF) or combined (CLF + referer, user agent).
    #[arg(long, value_name = "FORMAT", default_value = "brood", value_parser = ["brood", "common", "combined"])]
    log_format: String,
    /// With --max-children: wait up to SECS for a free slot before answering 503.
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    queue: f64,
    /// Set a variable in every script's environment (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Pass brood's own variable NAME on to scripts (repeatable).
    #[arg(long = "pass-env", value_name = "NAME")]
    pass_env: Vec<OsString>,
    /// Largest header block a script may print, in bytes.
    #[arg(long, value_name = "N", default_value_t = 64 * 1024, conflicts_with = "raw")]
    max_header_bytes: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics (requests by status class, request
    /// duration, timeouts, 5xx by cause, scripts running, requests queued).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// With --raw: the program and its arguments.
    #[arg(trailing_var_arg = true, value_name = "PROGRAM [ARGS]")]
    program: Vec<OsString>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected K=V, got {s:?}")),
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("expected octal permissions like 660, got {s:?}"))
}

fn seconds(what: &str, s: f64) -> Result<Duration, String> {
    match Duration::try_from_secs_f64(s) {
        Ok(d) if d <= crate::log::MAX_DURATION => Ok(d),
        _ => Err(format!(
            "{what} takes seconds, from 0 to {} (a year)",
            crate::log::MAX_DURATION.as_secs()
        )),
    }
}

/// One line to stderr; a closed or broken stderr is ignored, never a panic.
/// One line to stderr through the CLI's never-panicking writer.
fn say(text: &str) {
    crate::log::write(format!("{text}\n").as_bytes());
}

pub fn main(args: CgiArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say(&format!("brood cgi: cannot start the runtime: {e}"));
            return 1;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => 0,
        Err(Fail::Config(e)) => {
            say(&format!("brood cgi: {e}"));
            EXIT_CONFIG
        }
        Err(Fail::Serving(e)) => {
            say(&format!("brood cgi: {e}"));
            1
        }
    }
}

/// A usage or configuration error (bad option, no such root, unreadable htpasswd file,
/// address in use...), found before "listening" is printed: exit 125, as clap's usage
/// errors, `brood run` and `brood cluster` do.
const EXIT_CONFIG: i32 = crate::run::EXIT_BROOD;

/// Why `brood cgi` ended badly.
enum Fail {
    /// Before listening: [`EXIT_CONFIG`].
    Config(String),
    /// The server failed while serving: 1.
    Serving(String),
}

impl From<String> for Fail {
    fn from(e: String) -> Fail {
        Fail::Config(e)
    }
}

impl From<&str> for Fail {
    fn from(e: &str) -> Fail {
        Fail::Config(e.to_string())
    }
}

fn serving(e: brood::Error) -> Fail {
    Fail::Serving(e.to_string())
}

/// Where log lines go: access lines to `--access-log` (when given) in `--log-format`,
/// everything else to stderr; write errors are ignored.
fn logger(args: &CgiArgs) -> Result<impl Fn(&LogLine) + Send + Sync + 'static, String> {
    use std::io::Write;
    let format = match args.log_format.as_str() {
        "common" => LogFormat::Common,
        "combined" => LogFormat::Combined,
        _ => LogFormat::Brood,
    };
    let file = match &args.access_log {
        None => None,
        Some(p) => Some(std::sync::Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("--access-log {}: {e}", p.display()))?,
        )),
    };
    Ok(move |line: &LogLine| {
        let text = line.format(format);
        match (&file, line) {
            (Some(f), LogLine::Access(_)) => {
                let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
                let _ = writeln!(f, "{text}");
            }
            _ => say(&text),
        }
    })
}

async fn run(args: CgiArgs) -> Result<(), Fail> {
    if !args.program.is_empty() && !args.raw {
        return Err("a PROGRAM is given only with --raw".into());
    }
    let timeout = Some(seconds("--timeout", args.timeout)?).filter(|t| !t.is_zero());
    let queue = seconds("--queue", args.queue)?;
    let body_timeout = seconds("--body-timeout", args.body_timeout)?;
    let log = logger(&args)?;
    let metrics = args
        .metrics
        .as_ref()
        .map(|_| std::sync::Arc::new(crate::metrics::CgiMetrics::new()));
    let counted = metrics.clone();
    let gauges = metrics.clone();
    let log = move |line: &LogLine| {
        if let (Some(m), LogLine::Access(a)) = (&counted, line) {
            m.observe(a);
        }
        log(line)
    };
    if let (Some(addr), Some(m)) = (&args.metrics, metrics) {
        let a = crate::metrics::serve(addr, crate::metrics::CONTENT_TYPE, move || m.encode())
            .map_err(|e| format!("--metrics {addr}: {e}"))?;
        say(&format!("brood cgi: metrics on http://{a}/metrics"));
    }
    if args.fastcgi {
        return fastcgi(args, log, gauges, timeout, queue, body_timeout).await;
    }
    let listen: SocketAddr = args
        .listen
        .parse()
        .map_err(|_| format!("--listen {}: not an IP:PORT address", args.listen))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("listen {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // Watching before saying "listening", so a signal right after it is not lost; a second
    // one after the first has stopped the watchers gets the default action.
    let mut int = Signal::new(Signum::INT).map_err(|e| e.to_string())?;
    let mut term = Signal::new(Signum::TERM).map_err(|e| e.to_string())?;
    // A subreaper: the orphaned background jobs of scripts land here and are reaped.
    let _reaper = crate::reaper::start("brood cgi");
    let mut systemd = brood::notify::Notifier::from_env();

    // A signal starts a graceful stop: the HTTP server ends its scripts with SIGTERM, then
    // SIGKILL after a grace; raw mode's programs are killed at once.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut serve = if args.raw {
        let mut raw = Raw::new(&args.program[0])
            .args(&args.program[1..])
            .queue(queue)
            .timeout(timeout)
            .on_log(log);
        if let Some(n) = args.max_children {
            raw = raw.max_children(n);
        }
        if let Some(n) = args.max_connections {
            raw = raw.max_connections(n);
        }
        for (k, v) in &args.env {
            raw = raw.env(k, v);
        }
        for name in &args.pass_env {
            raw = raw.pass_env(name);
        }
        raw.check().map_err(|e| e.to_string())?;
        say(&format!(
            "brood cgi: listening on {addr} (raw: {})",
            args.program[0].to_string_lossy()
        ));
        Box::pin(raw.serve(listener)) as std::pin::Pin<Box<dyn Future<Output = _>>>
    } else {
        let (cgi, what) = configure(&args, log, timeout, queue, body_timeout);
        if let Some(m) = &gauges {
            m.follow(cgi.load());
        }
        cgi.check().map_err(|e| e.to_string())?;
        say(&format!("brood cgi: listening on http://{addr} ({what})"));
        Box::pin(cgi.serve_until(listener, async {
            let _ = stopped.await;
        }))
    };

    // The listener is open: connections from now on are served.
    systemd.ready();
    let name = tokio::select! {
        r = &mut serve => return r.map_err(serving),
        Some(_) = int.recv() => "SIGINT",
        Some(_) = term.recv() => "SIGTERM",
    };
    say(&format!("brood cgi: {name}, stopping"));
    systemd.stopping();
    if args.raw {
        return Ok(());
    }
    let _ = stop.send(());
    serve.await.map_err(serving)
}

/// The `Cgi` the options describe (HTTP and FastCGI), and a phrase saying what it serves.
fn configure(
    args: &CgiArgs,
    log: impl Fn(&LogLine) + Send + Sync + 'static,
    timeout: Option<Duration>,
    queue: Duration,
    body_timeout: Duration,
) -> (Cgi, String) {
    let (mut cgi, what) = match (&args.root, &args.script) {
        (Some(root), _) => {
            let prefix = args.prefix.as_deref().unwrap_or("/cgi-bin");
            (
                Cgi::root(root).prefix(prefix),
                format!("root {}, prefix {prefix}", root.display()),
            )
        }
        (None, Some(file)) => {
            let prefix = args.prefix.as_deref().unwrap_or("");
            (
                Cgi::script(file).prefix(prefix),
                format!("script {}, prefix {prefix}", file.display()),
            )
        }
        (None, None) => unreachable!("clap requires a mode"),
    };
    cgi = cgi
        .queue(queue)
        .max_header_bytes(args.max_header_bytes)
        .timeout(timeout)
        .max_body(args.max_body)
        .body_timeout(body_timeout)
        .on_log(log);
    if let Some(file) = &args.htpasswd {
        cgi = cgi.htpasswd(file).realm(&args.realm);
    }
    if let Some(n) = args.max_children {
        cgi = cgi.max_children(n);
    }
    if let Some(n) = args.max_spool {
        cgi = cgi.max_spool(n);
    }
    cgi = cgi.scripts_by_fd(args.scripts_by_fd);
    if let Some(n) = args.max_connections {
        cgi = cgi.max_connections(n);
    }
    for (k, v) in &args.env {
        cgi = cgi.env(k, v);
    }
    for name in &args.pass_env {
        cgi = cgi.pass_env(name);
    }
    (cgi, what)
}

/// `--fastcgi`: the same `Cgi` on a FastCGI listener; stops as HTTP mode does.
async fn fastcgi(
    args: CgiArgs,
    log: impl Fn(&LogLine) + Send + Sync + 'static,
    gauges: Option<std::sync::Arc<crate::metrics::CgiMetrics>>,
    timeout: Option<Duration>,
    queue: Duration,
    body_timeout: Duration,
) -> Result<(), Fail> {
    let (cgi, what) = configure(&args, log, timeout, queue, body_timeout);
    if let Some(m) = &gauges {
        m.follow(cgi.load());
    }
    let cgi = cgi.stderr_to_client(args.stderr_to_client);
    cgi.check().map_err(|e| e.to_string())?;
    let listener = if args.listen == "systemd" {
        FastCgiListener::from_systemd()
            .map_err(|e| e.to_string())?
            .ok_or("--listen systemd: no socket passed (LISTEN_FDS and LISTEN_PID unset)")?
    } else {
        FastCgiListener::bind(&args.listen)
            .await
            .map_err(|e| e.to_string())?
    };
    if let (Some(mode), Some(path)) = (args.socket_mode, args.listen.strip_prefix("unix:")) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("--socket-mode {mode:o} {path}: {e}"))?;
    }
    let mut int = Signal::new(Signum::INT).map_err(|e| e.to_string())?;
    let mut term = Signal::new(Signum::TERM).map_err(|e| e.to_string())?;
    // A subreaper, as in HTTP mode: the scripts' orphaned background jobs land here.
    let _reaper = crate::reaper::start("brood cgi");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    say(&format!(
        "brood cgi: listening on fastcgi {listener} ({what})"
    ));
    let serve = cgi.serve_fastcgi_until(listener, async {
        let _ = stopped.await;
    });
    tokio::pin!(serve);
    let name = tokio::select! {
        r = &mut serve => return r.map_err(serving),
        Some(_) = int.recv() => "SIGINT",
        Some(_) = term.recv() => "SIGTERM",
    };
    say(&format!("brood cgi: {name}, stopping"));
    let _ = stop.send(());
    serve.await.map_err(serving)
}
