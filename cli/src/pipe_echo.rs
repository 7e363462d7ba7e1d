//! `brood pipe-echo`: the seed's pipe echo server, the same code as the
//! `pipe_echo_server` example (`brood::pipe::echo_server`).

use std::ffi::OsString;

use brood::Signum;
use brood::pipe::{self, Listener, Mode};
use brood::signal::Signal;
use clap::Args;

/// Echo every byte back over a Unix domain socket at PATH, until SIGINT or SIGTERM; then
/// remove the socket file and exit 0.
///
/// PATH is a file path, or @NAME for a Linux abstract socket (no file). A stale socket file
/// left by a server that died is replaced (a live server's socket never is); exits 1 with
/// the reason when PATH cannot be bound.
///
/// Examples:
///   brood pipe-echo echo.sock            # then: socat - UNIX-CONNECT:echo.sock
///   brood pipe-echo --chmod rw /tmp/echo.sock
///   brood pipe-echo @brood-echo          # then: socat - ABSTRACT-CONNECT:brood-echo
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct PipeEchoArgs {
    /// Length of the queue of connections not yet accepted.
    #[arg(long, value_name = "N", default_value_t = pipe::DEFAULT_BACKLOG)]
    backlog: u32,
    /// Open the socket file to all users: r (readable), w (writable: needed to connect), rw.
    #[arg(long, value_name = "r|w|rw", value_parser = parse_mode)]
    chmod: Option<Mode>,
    /// Fail with EADDRINUSE on a stale socket file instead of replacing it.
    #[arg(long)]
    keep_stale: bool,
    /// Where to listen: a socket path, or @NAME for an abstract socket.
    #[arg(value_name = "PATH")]
    path: OsString,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "r" => Ok(Mode::READABLE),
        "w" => Ok(Mode::WRITABLE),
        "rw" | "wr" => Ok(Mode::READABLE | Mode::WRITABLE),
        _ => Err(format!("{s:?} is not r, w or rw")),
    }
}

/// Runs the server; returns the exit code.
pub fn main(args: PipeEchoArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("brood pipe-echo: cannot start the runtime: {e}");
            return 1;
        }
    };
    rt.block_on(serve(args))
}

async fn serve(args: PipeEchoArgs) -> i32 {
    let listener = match Listener::builder(&args.path)
        .backlog(args.backlog)
        .replace_stale(!args.keep_stale)
        .bind()
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!("brood pipe-echo: {e}");
            return 1;
        }
    };
    if let Err(e) = args.chmod.map_or(Ok(()), |mode| listener.chmod(mode)) {
        eprintln!("brood pipe-echo: {e}");
        return 1;
    }
    let (Ok(mut int), Ok(mut term)) = (Signal::new(Signum::INT), Signal::new(Signum::TERM)) else {
        eprintln!("brood pipe-echo: cannot watch SIGINT/SIGTERM");
        return 1;
    };
    eprintln!("brood pipe-echo: listening on {}", listener.name());
    let code = tokio::select! {
        r = pipe::echo_server(&listener) => {
            if let Err(e) = r {
                eprintln!("brood pipe-echo: {e}");
            }
            1
        }
        _ = int.recv() => 0,
        _ = term.recv() => 0,
    };
    // Dropping the listener removes the socket file.
    drop(listener);
    code
}
