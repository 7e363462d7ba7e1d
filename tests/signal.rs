//! Signal watchers with real signals sent to this process.
//!
//! Tests run in parallel threads of one process and a disposition is process-wide, so each
//! test owns its own signal number and no other test sends or watches it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use brood::signal::Signal;
use brood::{Command, Signum, Stdio};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);

/// The env var that makes this test binary the child half of a test.
const CHILD_ENV: &str = "BROOD_SIGNAL_TEST_CHILD";

fn rt_signal(n: i32) -> Signum {
    Signum::new(libc::SIGRTMIN() + n)
}

/// Sends `sig` to this whole process, as `kill -SIG <pid>` would.
fn send(sig: Signum) {
    brood::kill(std::process::id() as i32, sig).unwrap();
}

/// A signal mask line (`SigCgt`, `SigIgn`, `SigBlk`) of a `/proc/.../status` text.
fn mask(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in status"));
    u64::from_str_radix(line[field.len() + 1..].trim(), 16).unwrap()
}

fn bit(sig: Signum) -> u64 {
    1 << (sig.as_raw() - 1)
}

/// Whether this process has a handler for `sig`, and whether it ignores it.
fn disposition(sig: Signum) -> (bool, bool) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    (
        mask(&status, "SigCgt") & bit(sig) != 0,
        mask(&status, "SigIgn") & bit(sig) != 0,
    )
}

const DEFAULT: (bool, bool) = (false, false);
const CAUGHT: (bool, bool) = (true, false);
const IGNORED: (bool, bool) = (false, true);

async fn recv(sig: &mut Signal) -> Option<Signum> {
    timeout(LIMIT, sig.recv())
        .await
        .expect("no delivery within the time limit")
}

#[tokio::test]
async fn one_watcher() {
    let sig = Signum::USR2;
    assert_eq!(disposition(sig), DEFAULT);
    let mut w = Signal::new(sig).unwrap();
    assert_eq!(disposition(sig), CAUGHT);
    assert_eq!(w.try_recv(), None);
    send(sig);
    assert_eq!(recv(&mut w).await, Some(sig));
    assert_eq!(w.try_recv(), None);
    send(sig);
    assert_eq!(recv(&mut w).await, Some(sig));
    drop(w);
    assert_eq!(disposition(sig), DEFAULT);
}

/// The seed's program: thread 1 has two watchers on one runtime; thread 2 has two
/// current-thread runtimes with one watcher each, driven in turn. One SIGUSR1 reaches all.
#[test]
fn four_watchers_across_three_runtimes() {
    let sig = Signum::USR1;
    let (armed_tx, armed) = mpsc::channel::<()>();
    let (got_tx, got) = mpsc::channel::<Signum>();
    let (done_tx, done) = mpsc::channel::<()>();

    async fn handler(mut w: Signal, got: mpsc::Sender<Signum>) {
        if let Some(s) = w.recv().await {
            got.send(s).unwrap();
        }
        w.stop();
    }
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    let (a, g, d) = (armed_tx.clone(), got_tx.clone(), done_tx.clone());
    std::thread::spawn(move || {
        let rt = runtime();
        let (w1, w2) = (Signal::new(sig).unwrap(), Signal::new(sig).unwrap());
        a.send(()).unwrap();
        rt.block_on(async { tokio::join!(handler(w1, g.clone()), handler(w2, g)) });
        d.send(()).unwrap();
    });
    std::thread::spawn(move || {
        let (rt2, rt3) = (runtime(), runtime());
        let mut t2 = Some(rt2.spawn(handler(Signal::new(sig).unwrap(), got_tx.clone())));
        let mut t3 = Some(rt3.spawn(handler(Signal::new(sig).unwrap(), got_tx)));
        armed_tx.send(()).unwrap();
        let turn = |rt: &tokio::runtime::Runtime, t: &mut Option<tokio::task::JoinHandle<()>>| {
            let Some(h) = t.as_mut() else { return false };
            let finished = rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(5), h)
                    .await
                    .is_ok()
            });
            if finished {
                *t = None;
            }
            !finished
        };
        while turn(&rt2, &mut t2) | turn(&rt3, &mut t3) {}
        done_tx.send(()).unwrap();
    });

    armed.recv_timeout(LIMIT).unwrap();
    armed.recv_timeout(LIMIT).unwrap();
    assert_eq!(disposition(sig), CAUGHT);
    send(sig);
    for _ in 0..4 {
        assert_eq!(got.recv_timeout(LIMIT).unwrap(), sig);
    }
    done.recv_timeout(LIMIT).unwrap();
    done.recv_timeout(LIMIT).unwrap();
    assert!(got.try_recv().is_err(), "a handler ran twice");
    assert_eq!(disposition(sig), DEFAULT);
}

#[tokio::test]
async fn stop_then_start_again() {
    let sig = rt_signal(1);
    let mut w = Signal::new(sig).unwrap();
    send(sig);
    assert_eq!(recv(&mut w).await, Some(sig));
    w.stop();
    assert!(!w.is_active());
    assert_eq!(w.recv().await, None);
    assert_eq!(disposition(sig), DEFAULT);

    w.start().unwrap();
    assert_eq!(disposition(sig), CAUGHT);
    assert_eq!(w.try_recv(), None);
    send(sig);
    assert_eq!(recv(&mut w).await, Some(sig));
    drop(w);
    assert_eq!(disposition(sig), DEFAULT);
}

#[tokio::test]
async fn oneshot_fires_once() {
    let sig = rt_signal(2);
    let mut every = Signal::new(sig).unwrap();
    let mut once = Signal::oneshot(sig).unwrap();
    send(sig);
    assert_eq!(recv(&mut once).await, Some(sig));
    assert_eq!(recv(&mut every).await, Some(sig));
    assert!(!once.is_active());
    assert_eq!(recv(&mut once).await, None);
    send(sig);
    assert_eq!(recv(&mut every).await, Some(sig));
    assert_eq!(once.try_recv(), None);
    drop(every);
    assert_eq!(disposition(sig), DEFAULT);

    // The only watcher, one-shot: its delivery alone gives the old disposition back.
    // SAFETY: sets SIG_IGN for a signal only this test uses.
    unsafe { libc::signal(sig.as_raw(), libc::SIG_IGN) };
    let mut once = Signal::oneshot(sig).unwrap();
    assert_eq!(disposition(sig), CAUGHT);
    send(sig);
    assert_eq!(recv(&mut once).await, Some(sig));
    assert_eq!(disposition(sig), IGNORED);

    // Started again, as a one-shot watcher.
    once.start_oneshot().unwrap();
    assert_eq!(disposition(sig), CAUGHT);
    send(sig);
    assert_eq!(recv(&mut once).await, Some(sig));
    assert_eq!(recv(&mut once).await, None);
    assert_eq!(disposition(sig), IGNORED);
}

static OLD_HANDLER_RUNS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn old_handler(_: libc::c_int) {
    OLD_HANDLER_RUNS.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test]
async fn previous_handler_comes_back() {
    let sig = rt_signal(3);
    // SAFETY: installs a handler (an atomic increment) for a signal only this test uses.
    unsafe {
        libc::signal(
            sig.as_raw(),
            old_handler as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
    let mut w = Signal::new(sig).unwrap();
    send(sig);
    assert_eq!(recv(&mut w).await, Some(sig));
    assert_eq!(OLD_HANDLER_RUNS.load(Ordering::SeqCst), 0);
    w.stop();
    // SAFETY: raise(3) sends to this thread; the handler has run when it returns.
    unsafe { libc::raise(sig.as_raw()) };
    assert_eq!(OLD_HANDLER_RUNS.load(Ordering::SeqCst), 1);
}

/// After the last watcher of SIGINT stops, SIGINT kills again (tokio #7905): a child copy of
/// this test binary watches SIGINT, takes one, stops, raises it and must die by it.
#[tokio::test]
async fn sigint_kills_after_last_watcher_stops() {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe.to_str().unwrap())
        .args([
            "--exact",
            "child_sigint_after_last_watcher",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "sigint")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = timeout(LIMIT, child.wait_with_output())
        .await
        .expect("the child did not end")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("watchers stopped"), "child said: {stdout}");
    assert!(!stdout.contains("survived"), "child said: {stdout}");
    assert_eq!(out.exit.signal, libc::SIGINT, "child ended: {}", out.exit);
}

/// The child half of `sigint_kills_after_last_watcher_stops`; does nothing unless run by it.
#[test]
fn child_sigint_after_last_watcher() {
    if std::env::var(CHILD_ENV).as_deref() != Ok("sigint") {
        eprintln!("not run as a child: nothing to do");
        return;
    }
    let sig = Signum::INT;
    assert_eq!(disposition(sig), DEFAULT);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut a = Signal::new(sig).unwrap();
        let mut b = Signal::new(sig).unwrap();
        send(sig);
        assert_eq!(recv(&mut a).await, Some(sig));
        assert_eq!(recv(&mut b).await, Some(sig));
        a.stop();
        drop(b);
    });
    assert_eq!(disposition(sig), DEFAULT);
    println!("watchers stopped");
    // SAFETY: raise(3) sends SIGINT to this thread; with the default action back, the
    // process is gone before it returns.
    unsafe { libc::raise(sig.as_raw()) };
    println!("survived");
    std::process::exit(3);
}

/// A delivery that was dispatched before a watcher started is not that watcher's.
#[tokio::test]
async fn no_delivery_from_before_the_watcher() {
    let sig = Signum::WINCH; // ignored by default: safe to send with no watcher
    send(sig);
    let mut late = Signal::new(sig).unwrap();
    assert_eq!(late.try_recv(), None);
    drop(late);

    let mut early = Signal::new(sig).unwrap();
    send(sig);
    assert_eq!(recv(&mut early).await, Some(sig));
    let mut late = Signal::new(sig).unwrap();
    assert_eq!(late.try_recv(), None);
    send(sig);
    assert_eq!(recv(&mut late).await, Some(sig));
    assert_eq!(recv(&mut early).await, Some(sig));
    assert_eq!(late.try_recv(), None);
    assert_eq!(early.try_recv(), None);
}

/// A delivery made before the watcher is awaited (but after it started) is kept.
#[tokio::test]
async fn delivery_before_await_is_kept() {
    let sig = Signum::CONT; // default: continue; harmless to a running process
    let mut w = Signal::new(sig).unwrap();
    send(sig);
    // Not awaited yet: the dispatcher thread tells the watcher on its own.
    let got = timeout(LIMIT, async {
        loop {
            if let Some(s) = w.try_recv() {
                return s;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(got, sig);
}

#[tokio::test]
async fn burst_of_a_thousand() {
    let sig = Signum::URG; // ignored by default: late deliveries after the drop are harmless
    let mut w = Signal::new(sig).unwrap();
    let mut other = Signal::new(sig).unwrap();
    for _ in 0..1000 {
        send(sig);
    }
    assert_eq!(recv(&mut w).await, Some(sig));
    assert_eq!(recv(&mut other).await, Some(sig));
    let mut extra = 0;
    while w.try_recv().is_some() {
        extra += 1;
    }
    assert!(extra < 1000);
    // Still working after the burst.
    send(sig);
    assert_eq!(recv(&mut w).await, Some(sig));
}

/// brood children start with an empty mask and every disposition default, whatever the
/// parent watches or blocks; of what it ignores, only SIGPIPE and glibc's own 32 and 33
/// are reset (std's rule; `nohup` keeps working).
#[tokio::test]
async fn child_starts_with_default_dispositions_and_empty_mask() {
    let watched = Signum::HUP;
    let blocked = rt_signal(4);
    let _w = Signal::new(watched).unwrap();
    let parent = std::fs::read_to_string("/proc/self/status").unwrap();
    assert_ne!(mask(&parent, "SigCgt") & bit(watched), 0);
    assert_ne!(
        mask(&parent, "SigIgn") & bit(Signum::PIPE),
        0,
        "Rust ignores SIGPIPE"
    );

    // SAFETY: sigset operations on a local set, applied to this thread's mask only.
    let block = |how| unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, blocked.as_raw());
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    };
    block(libc::SIG_BLOCK);
    let thread = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let spawned = Command::new("cat")
        .arg("/proc/self/status")
        .stdout(Stdio::piped())
        .spawn();
    block(libc::SIG_UNBLOCK);
    assert_ne!(mask(&thread, "SigBlk") & bit(blocked), 0);

    let out = timeout(LIMIT, spawned.unwrap().wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.exit.success());
    let child = String::from_utf8(out.stdout).unwrap();
    assert_eq!(mask(&child, "SigCgt"), 0, "{child}");
    // 32 and 33 are glibc's own (cargo's test runner leaves 32 ignored): the child resets
    // them with the raw syscall, which glibc's sigaction would refuse.
    let reset = bit(Signum::PIPE) | bit(Signum::new(32)) | bit(Signum::new(33));
    assert_eq!(
        mask(&child, "SigIgn"),
        mask(&parent, "SigIgn") & !reset,
        "{child}"
    );
    assert_eq!(mask(&child, "SigBlk"), 0, "{child}");
}

#[test]
fn uncatchable_and_bad_numbers_are_errors() {
    for (raw, words) in [
        (libc::SIGKILL, "watch signal SIGKILL: EINVAL"),
        (libc::SIGSTOP, "watch signal SIGSTOP: EINVAL"),
        (libc::SIGSEGV, "watch signal SIGSEGV: EINVAL"),
        (0, "watch signal signal 0: EINVAL"),
        (-3, "watch signal signal -3: EINVAL"),
        (999, "watch signal signal 999: EINVAL"),
        (32, "watch signal signal 32: sigaction: EINVAL"),
    ] {
        let err = Signal::new(raw).unwrap_err();
        assert_eq!(err.name(), "EINVAL");
        assert!(err.to_string().starts_with(words), "{err}");
    }
}

/// A watcher is not tied to a runtime: started on one thread, received on another.
#[test]
fn watcher_moves_between_runtimes() {
    let sig = rt_signal(5);
    let mut w = Signal::new(sig).unwrap();
    send(sig);
    let handle = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move { recv(&mut w).await })
    });
    assert_eq!(handle.join().unwrap(), Some(sig));
}

/// Watchers starting and stopping on several threads at once while the signal keeps coming:
/// the old disposition (here SIG_IGN) is what is left at the end, never brood's handler.
#[test]
fn concurrent_start_and_stop_restore_the_old_disposition() {
    let sig = rt_signal(6);
    // SAFETY: sets SIG_IGN for a signal only this test uses.
    unsafe { libc::signal(sig.as_raw(), libc::SIG_IGN) };
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..200 {
                    let w = if (i + t) % 3 == 0 {
                        Signal::oneshot(sig)
                    } else {
                        Signal::new(sig)
                    };
                    let w = w.unwrap();
                    if i % 2 == 0 {
                        send(sig);
                    }
                    drop(w);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(disposition(sig), IGNORED);
    // And watching still works afterwards.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut w = Signal::new(sig).unwrap();
    send(sig);
    assert_eq!(rt.block_on(recv(&mut w)), Some(sig));
    drop(w);
    assert_eq!(disposition(sig), IGNORED);
}
