//! libuv's multi-echo-server: a master accepts TCP connections and hands each, round-robin,
//! to a worker process over an IPC channel on the worker's stdin (`uv_write2` with a one-byte
//! buffer); the worker accepts the handle and echoes. Workers exit when the master's channel
//! closes.
//!
//! ```text
//! cargo run --example multi_echo_server -- [-w WORKERS] [--port PORT]
//! ```
//! Then talk to it with `nc 127.0.0.1 7000`. PORT 0 picks a free port; the master prints
//! `Listening on ADDR` once it is ready.
//!
//! Every process runs one event loop on one thread, as libuv's (tokio's current-thread
//! runtime): the point of the workers is one process per core.

use std::os::fd::AsFd;

use brood::ipc::{Channel, HandoffListener};
use brood::{Command, Stdio};
use tokio::net::TcpStream;

fn usage() -> ! {
    eprintln!("usage: multi_echo_server [-w WORKERS] [--port PORT]");
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("worker") {
        return worker().await;
    }
    let mut workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut port = 7000u16;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "-w" | "--workers" => workers = value.parse().unwrap_or_else(|_| usage()),
            "-p" | "--port" => port = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if let Err(e) = master(workers.max(1), port).await {
        eprintln!("multi_echo_server: {e}");
        std::process::exit(1);
    }
}

struct Worker {
    child: brood::Child,
    channel: Channel,
}

async fn master(n: usize, port: u16) -> Result<(), brood::Error> {
    let exe = std::env::current_exe()
        .map_err(|e| brood::Error::new(e.raw_os_error().unwrap_or(0), "current_exe"))?;
    let mut workers = Vec::with_capacity(n);
    for _ in 0..n {
        let mut child = Command::new(&exe)
            .arg("worker")
            .stdio(0, Stdio::ipc())
            .kill_on_drop(true)
            .spawn()?;
        let channel = child.take_channel(0).expect("slot 0 is an IPC channel");
        log(format!("Started worker {}", child.id().unwrap()));
        workers.push(Worker { child, channel });
    }
    // The master only passes connections on: each is one `accept4` and never joins the
    // event loop (libuv's `uv_accept` starts no reading either).
    let listener = HandoffListener::bind(([127, 0, 0, 1], port).into())?;
    let addr = listener.local_addr()?;
    println!("Listening on {addr}");

    // One Ctrl-C listener for the server's life (a new one per turn of the loop would
    // register with the signal driver and unregister again for every connection).
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut next = 0;
    'serve: loop {
        let conn = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => conn,
                Err(e) => {
                    log(format!("{e}"));
                    // Out of fds: the connection waits in the kernel's queue; pause rather
                    // than spin on a listener that stays readable.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = &mut ctrl_c => break,
        };
        // Round-robin, never waiting on one worker: a worker whose channel is full (stopped,
        // or slow to read) is passed by, and one that is gone leaves the rotation, so an
        // accepted connection is never dropped while any worker lives.
        loop {
            if workers.is_empty() {
                log("no worker left to take a connection".into());
                break 'serve;
            }
            let mut handed = false;
            let mut i = 0;
            while i < workers.len() {
                let w = (next + i) % workers.len();
                match workers[w]
                    .channel
                    .try_send_with_handles(b"c", &[conn.as_fd()])
                {
                    Ok(()) => {
                        next = (w + 1) % workers.len();
                        handed = true;
                        break;
                    }
                    Err(e) if e.name() == "EAGAIN" => i += 1,
                    Err(e) => {
                        let gone = workers.remove(w);
                        log(format!("worker {}: {e}", gone.child.id().unwrap_or(0)));
                        // Dropping its `Child` leaves it to brood's reaper: no zombie.
                    }
                }
            }
            if handed {
                break;
            }
            // Every channel is full: wait for the next worker's (or for Ctrl-C).
            next %= workers.len().max(1);
            let Some(w) = workers.get(next) else { continue };
            let fds = [conn.as_fd()];
            tokio::select! {
                r = w.channel.send_with_handles(b"c", &fds) => match r {
                    Ok(()) => {
                        next = (next + 1) % workers.len();
                        break;
                    }
                    Err(e) => {
                        let gone = workers.remove(next);
                        log(format!("worker {}: {e}", gone.child.id().unwrap_or(0)));
                    }
                },
                _ = &mut ctrl_c => break 'serve,
            }
        }
        // Our copy closes here; the worker holds its own.
    }
    // Closing the channels makes every worker exit.
    for mut w in workers {
        drop(w.channel);
        let _ = w.child.wait().await;
    }
    Ok(())
}

/// One `write` per line, so the lines of the master and its workers never mix.
fn log(mut line: String) {
    use std::io::Write;
    line.push('\n');
    let _ = std::io::stderr().write_all(line.as_bytes());
}

async fn worker() {
    let mut channel = match Channel::from_env() {
        Ok(c) => c,
        Err(e) => {
            log(format!("worker: {e}"));
            std::process::exit(1);
        }
    };
    let pid = std::process::id();
    let mut byte = [0u8; 1];
    loop {
        match channel.recv(&mut byte).await {
            Ok(0) => break, // the master is gone
            Ok(_) => {}
            Err(e) => {
                log(format!("Worker {pid}: {e}"));
                break;
            }
        }
        while channel.pending_count() > 0 {
            match channel.accept::<TcpStream>() {
                Ok(conn) => {
                    use std::io::Write;
                    use std::os::fd::AsRawFd;
                    // One write per line, so the lines of several workers never mix.
                    let line = format!("Worker {pid}: Accepted fd {}\n", conn.as_raw_fd());
                    let _ = std::io::stderr().write_all(line.as_bytes());
                    tokio::spawn(brood::pipe::echo(conn));
                }
                Err(e) => {
                    log(format!("Worker {pid}: {e}"));
                    channel.accept_handle();
                }
            }
        }
    }
}
