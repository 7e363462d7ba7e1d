//! `brood cgi`: a CGI/1.1 server (scripts under a root, or one script), or the libuv
//! guide's raw mode where each connection is a program's stdin and stdout.

use crate::log::say;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use brood::Signum;
use brood::cgi::{Cgi, Raw};
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
///
/// One access line per request goes to stderr (client, request, status, bytes, ms, exit),
/// as do the scripts' stderr lines, prefixed with the script name. SIGINT or SIGTERM stops
/// the server and kills the scripts still running.
///
/// Examples:
///   brood cgi --listen 127.0.0.1:8080 --root ./cgi-bin
///   brood cgi --listen 127.0.0.1:8080 --root ./www --prefix / --timeout 30 --max-children 8
///   brood cgi --listen 127.0.0.1:8080 --script ./app.py --pass-env HOME --env MODE=prod
///   brood cgi --listen 127.0.0.1:7000 --raw -- sh -c 'echo hello $TCPREMOTEIP'
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
#[command(group(ArgGroup::new("mode").required(true).args(["root", "script", "raw"])))]
pub struct CgiArgs {
    /// Address to listen on (port 0 picks one; the address is printed).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Directory of the scripts.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// URL path the scripts are under, with --root (`/` for all paths).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/cgi-bin",
        requires = "root"
    )]
    prefix: String,
    /// One script that answers every path.
    #[arg(long, value_name = "FILE")]
    script: Option<PathBuf>,
    /// Raw mode: run PROGRAM per connection with the socket as its stdin and stdout.
    #[arg(long, requires = "program")]
    raw: bool,
    /// Kill a script and its whole process group after SECS (504 if nothing was sent).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// At most N scripts at once; more get 503 (or wait, with --queue).
    #[arg(long, value_name = "N")]
    max_children: Option<usize>,
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
    #[arg(long, value_name = "N", default_value_t = 64 * 1024)]
    max_header_bytes: usize,
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

fn seconds(what: &str, s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|_| format!("{what} takes seconds, 0 or more"))
}

pub fn main(args: CgiArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say!("brood cgi: cannot start the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => 0,
        Err(e) => {
            say!("brood cgi: {e}");
            1
        }
    }
}

async fn run(args: CgiArgs) -> Result<(), String> {
    if !args.program.is_empty() && !args.raw {
        return Err("a PROGRAM is given only with --raw".into());
    }
    let timeout = args.timeout.map(|t| seconds("--timeout", t)).transpose()?;
    let queue = seconds("--queue", args.queue)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("listen {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // Watching before saying "listening", so a signal right after it is not lost; a second
    // one after the first has stopped the watchers gets the default action.
    let mut int = Signal::new(Signum::INT).map_err(|e| e.to_string())?;
    let mut term = Signal::new(Signum::TERM).map_err(|e| e.to_string())?;

    let serve = if args.raw {
        let mut raw = Raw::new(&args.program[0])
            .args(&args.program[1..])
            .queue(queue)
            .on_log(|line| say!("{line}"));
        if let Some(t) = timeout {
            raw = raw.timeout(t);
        }
        if let Some(n) = args.max_children {
            raw = raw.max_children(n);
        }
        for (k, v) in &args.env {
            raw = raw.env(k, v);
        }
        for name in &args.pass_env {
            raw = raw.pass_env(name);
        }
        say!(
            "brood cgi: listening on {addr} (raw: {})",
            args.program[0].to_string_lossy()
        );
        Box::pin(raw.serve(listener)) as std::pin::Pin<Box<dyn Future<Output = _>>>
    } else {
        let (mut cgi, what) = match (&args.root, &args.script) {
            (Some(root), _) => (
                Cgi::root(root).prefix(&args.prefix),
                format!("root {}, prefix {}", root.display(), args.prefix),
            ),
            (None, Some(file)) => (Cgi::script(file), format!("script {}", file.display())),
            (None, None) => unreachable!("clap requires a mode"),
        };
        cgi = cgi
            .queue(queue)
            .max_header_bytes(args.max_header_bytes)
            .on_log(|line| say!("{line}"));
        if let Some(t) = timeout {
            cgi = cgi.timeout(t);
        }
        if let Some(n) = args.max_children {
            cgi = cgi.max_children(n);
        }
        for (k, v) in &args.env {
            cgi = cgi.env(k, v);
        }
        for name in &args.pass_env {
            cgi = cgi.pass_env(name);
        }
        say!("brood cgi: listening on http://{addr} ({what})");
        Box::pin(cgi.serve(listener))
    };

    tokio::select! {
        r = serve => r.map_err(|e| e.to_string()),
        Some(_) = int.recv() => {
            say!("brood cgi: SIGINT, stopping");
            Ok(())
        }
        Some(_) = term.recv() => {
            say!("brood cgi: SIGTERM, stopping");
            Ok(())
        }
    }
}
