//! The seed's pipe echo server: echoes every byte back over a Unix domain socket at
//! `echo.sock` (or the path given; `@name` for an abstract socket) and removes the socket
//! file on SIGINT or SIGTERM. A stale `echo.sock` left by a killed server is replaced; a
//! live one is not.
//!
//! ```text
//! $ cargo run --example pipe_echo_server
//! pipe_echo_server: listening on echo.sock (try: socat - UNIX-CONNECT:echo.sock)
//! ```

use brood::pipe::{self, Listener};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let name = std::env::args_os()
        .nth(1)
        .unwrap_or_else(|| "echo.sock".into());
    let listener = match Listener::builder(&name).replace_stale(true).bind() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("pipe_echo_server: {e}");
            std::process::exit(1);
        }
    };
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        eprintln!("pipe_echo_server: cannot watch SIGINT/SIGTERM");
        std::process::exit(1);
    };
    let shown = listener.name().to_string();
    eprintln!("pipe_echo_server: listening on {shown} (try: socat - UNIX-CONNECT:{shown})");
    let code = tokio::select! {
        r = pipe::echo_server(&listener) => {
            if let Err(e) = r {
                eprintln!("pipe_echo_server: {e}");
            }
            1
        }
        _ = int.recv() => 0,
        _ = term.recv() => 0,
    };
    // Dropping the listener removes the socket file.
    drop(listener);
    std::process::exit(code);
}
