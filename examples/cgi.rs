//! The seed's CGI server: a TCP server on 127.0.0.1:7000 that serves every connection by
//! spawning the tick script with its stdout set to the connection itself
//! (`Stdio::inherit_stream`). Each client gets ten `tick` lines, one a second, and the
//! connection closes when tick exits. brood reaps every tick; none outlives the server.
//!
//! `cgi [PORT [INTERVAL_MS]]`: port 0 picks a free port; the interval is passed to tick.
//! The script is this same program run as `cgi tick MS` (what the `tick` example does), so
//! nothing else needs building.
//!
//! ```text
//! $ cargo run --example cgi
//! cgi: listening on 127.0.0.1:7000
//! $ nc 127.0.0.1 7000        # in another terminal
//! tick
//! ...
//! ```

use std::io::Write;
use std::path::PathBuf;

use brood::{Command, Signum, Stdio};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

fn arg(n: usize, default: u64) -> u64 {
    match std::env::args().nth(n) {
        None => default,
        Some(s) => s.parse().unwrap_or_else(|_| {
            eprintln!(
                "usage: cgi [PORT [INTERVAL_MS]] | cgi tick [INTERVAL_MS] ({s:?} is not a number)"
            );
            std::process::exit(2);
        }),
    }
}

/// The script's part, as the `tick` example: `tick` ten times, one every `ms`, each line
/// flushed; a reader that went away (EPIPE) ends the ticks quietly.
fn tick(ms: u64) {
    let mut out = std::io::stdout().lock();
    for _ in 0..10 {
        if writeln!(out, "tick").and_then(|()| out.flush()).is_err() {
            std::process::exit(1);
        }
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Spawns tick with the connection as its stdout, and waits for it to end.
async fn invoke_cgi_script(me: PathBuf, interval: u64, client: TcpStream) {
    let spawned = Command::new(&me)
        .arg("tick")
        .arg(interval.to_string())
        .stdin(Stdio::ignore())
        .stdout(Stdio::inherit_stream(&client))
        .stderr(Stdio::ignore())
        .kill_on_drop(true)
        .parent_death_signal(Signum::TERM)
        .spawn();
    // The child has its own copy of the socket: the connection lives as long as tick does.
    drop(client);
    match spawned {
        Ok(mut child) => match child.wait().await {
            Ok(exit) => eprintln!("cgi: tick {exit}"),
            Err(e) => eprintln!("cgi: {e}"),
        },
        Err(e) => eprintln!("cgi: {e}"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("tick") {
        return tick(arg(2, 1000));
    }
    let port = arg(1, 7000);
    let interval = arg(2, 1000);
    let me = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("cgi: cannot find my own path: {e}");
            std::process::exit(1);
        }
    };
    let server = match TcpListener::bind(("127.0.0.1", port as u16)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cgi: bind 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        eprintln!("cgi: cannot watch SIGINT/SIGTERM");
        std::process::exit(1);
    };
    match server.local_addr() {
        Ok(addr) => eprintln!("cgi: listening on {addr}"),
        Err(e) => eprintln!("cgi: {e}"),
    }
    let mut scripts = JoinSet::new();
    loop {
        tokio::select! {
            accepted = server.accept() => match accepted {
                Ok((client, _)) => {
                    scripts.spawn(invoke_cgi_script(me.clone(), interval, client));
                }
                Err(e) => {
                    // Out of fds, say: wait a moment instead of spinning.
                    eprintln!("cgi: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = scripts.join_next(), if !scripts.is_empty() => {}
            _ = int.recv() => break,
            _ = term.recv() => break,
        }
    }
    // Dropping the scripts kills every tick still running (kill_on_drop).
    drop(scripts);
}
