//! libuv's `signal` example in brood: two threads, three runtimes, four watchers of SIGUSR1.
//! Thread 1 runs two watchers on one runtime; thread 2 has two single-threaded runtimes
//! with one watcher each and drives them in turn, neither starving the other. One SIGUSR1
//! reaches all four; each handler prints the signal and stops its watcher, and the program
//! exits.
//!
//! ```text
//! $ cargo run --example signal &
//! PID 12345
//! $ kill -USR1 12345
//! Signal received: 10
//! Signal received: 10
//! Signal received: 10
//! Signal received: 10
//! ```

use std::time::Duration;

use brood::Signum;
use brood::signal::Signal;
use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

/// The seed's `signal_handler`: print, then stop the watcher.
async fn signal_handler(mut sig: Signal) {
    if let Some(signum) = sig.recv().await {
        println!("Signal received: {}", signum.as_raw());
    }
    sig.stop();
}

fn create_loop() -> Runtime {
    Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("create a runtime: {e}")))
}

fn watch_usr1() -> Signal {
    Signal::new(Signum::USR1).unwrap_or_else(|e| fail(&e.to_string()))
}

fn fail(msg: &str) -> ! {
    eprintln!("signal: {msg}");
    std::process::exit(1)
}

/// Two watchers on one runtime.
fn thread1_worker(armed: std::sync::mpsc::Sender<()>) {
    let loop1 = create_loop();
    let sig1a = watch_usr1();
    let sig1b = watch_usr1();
    let _ = armed.send(());
    loop1.block_on(async {
        tokio::join!(signal_handler(sig1a), signal_handler(sig1b));
    });
}

/// One watcher on each of two runtimes, driven in turn.
fn thread2_worker(armed: std::sync::mpsc::Sender<()>) {
    let loop2 = create_loop();
    let loop3 = create_loop();
    let mut sig2 = Some(loop2.spawn(signal_handler(watch_usr1())));
    let mut sig3 = Some(loop3.spawn(signal_handler(watch_usr1())));
    let _ = armed.send(());
    // The seed writes `uv_run(loop2, NOWAIT) || uv_run(loop3, NOWAIT)`, which never runs
    // loop3 while loop2 has work; `|` runs both every turn.
    while run_nowait(&loop2, &mut sig2) | run_nowait(&loop3, &mut sig3) {}
}

/// `uv_run(loop, UV_RUN_NOWAIT)`, give or take a short slice so the turn-taking does not
/// spin: runs `rt` until its task ends or the slice is over; whether the task still runs.
fn run_nowait(rt: &Runtime, task: &mut Option<JoinHandle<()>>) -> bool {
    const SLICE: Duration = Duration::from_millis(20);
    let Some(handle) = task.as_mut() else {
        return false;
    };
    let done = rt.block_on(async { tokio::time::timeout(SLICE, handle).await.is_ok() });
    if done {
        *task = None;
    }
    !done
}

fn main() {
    println!("PID {}", std::process::id());
    let (armed_tx, armed_rx) = std::sync::mpsc::channel();
    let armed2 = armed_tx.clone();
    let thread1 = std::thread::spawn(move || thread1_worker(armed_tx));
    let thread2 = std::thread::spawn(move || thread2_worker(armed2));
    // For scripts: say on stderr when all four watchers are armed.
    if armed_rx.recv().is_ok() && armed_rx.recv().is_ok() {
        eprintln!("ready");
    }
    for t in [thread1, thread2] {
        if t.join().is_err() {
            fail("a thread panicked");
        }
    }
}
