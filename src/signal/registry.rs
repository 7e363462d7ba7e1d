//! Who watches which signal: the process-wide table of watchers, the install of brood's
//! handler when a signal's first watcher starts and the restore of the old disposition when
//! its last one stops, and the dispatcher thread that tells every watcher.
//!
//! Every `sigaction` call and every dispatch happens under one lock, so "first watcher
//! starts" and "last watcher stops" never interleave with each other or with a dispatch.
//! The handler itself takes no lock (see `sys`).

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

use super::sys;
use crate::Signum;
use crate::error::{Error, Result};

/// One watched signal.
struct Watched {
    /// What was there before the first watcher.
    old: sys::Disposition,
    /// A count of dispatches; every watcher holds a receiver.
    tx: watch::Sender<u64>,
    /// The watchers by id: `true` for one-shot ones.
    watchers: BTreeMap<u64, bool>,
}

struct Registry {
    dispatcher: bool,
    next_id: u64,
    signals: BTreeMap<i32, Watched>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    dispatcher: false,
    next_id: 0,
    signals: BTreeMap::new(),
});

fn lock() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// A started watcher: its id in the table and its view of the dispatch count.
pub(super) struct Registration {
    pub(super) id: u64,
    pub(super) rx: watch::Receiver<u64>,
    /// The count when it started, or when it last took a delivery.
    pub(super) seen: u64,
}

/// Signals whose handler would run again on the same faulting instruction, forever.
const FAULTS: [i32; 4] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE];

/// Starts a watcher of `sig`, installing brood's handler if it is the first one.
pub(super) fn start(sig: Signum, oneshot: bool) -> Result<Registration> {
    let raw = sig.as_raw();
    let op = || format!("watch signal {sig}");
    if !sys::in_range(raw) || raw > crate::signum::max_signal() {
        return Err(Error::invalid(op(), "not a signal number"));
    }
    if raw == libc::SIGKILL || raw == libc::SIGSTOP {
        return Err(Error::invalid(op(), "SIGKILL and SIGSTOP cannot be caught"));
    }
    if FAULTS.contains(&raw) {
        return Err(Error::invalid(
            op(),
            "a fault signal: its handler would return to the faulting instruction",
        ));
    }
    let mut reg = lock();
    if !reg.dispatcher {
        start_dispatcher().map_err(|e| e.context(op()))?;
        reg.dispatcher = true;
    }
    let id = reg.next_id;
    reg.next_id += 1;
    let watched = match reg.signals.entry(raw) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(v) => {
            // A catch left from an earlier period of watching is not this period's news.
            sys::clear_pending(raw);
            let old = sys::install(raw).map_err(|errno| {
                let e = Error::new(errno, format!("{}: sigaction", op()));
                if errno == libc::EINVAL {
                    e.with_detail("the C library reserves this signal")
                } else {
                    e
                }
            })?;
            v.insert(Watched {
                old,
                tx: watch::channel(0).0,
                watchers: BTreeMap::new(),
            })
        }
    };
    watched.watchers.insert(id, oneshot);
    let rx = watched.tx.subscribe();
    let seen = *rx.borrow();
    Ok(Registration { id, rx, seen })
}

/// Stops the watcher `id` of `sig` (nothing if it was already stopped, as a one-shot
/// watcher is once dispatched), restoring the old disposition if it was the last.
pub(super) fn stop(sig: Signum, id: u64) {
    let raw = sig.as_raw();
    let mut reg = lock();
    let Some(watched) = reg.signals.get_mut(&raw) else {
        return;
    };
    watched.watchers.remove(&id);
    if watched.watchers.is_empty() {
        sys::restore(raw, &watched.old);
        reg.signals.remove(&raw);
    }
}

/// The self-pipe and the thread that reads it. Started once, runs for the process's life
/// (as libuv's signal pipe): a handler may still run after every watcher stopped.
fn start_dispatcher() -> Result<()> {
    let (read, write) = sys::wake_pipe()?;
    std::thread::Builder::new()
        .name("brood-signal".into())
        .spawn(move || {
            sys::block_all_signals();
            while sys::wait_wake(std::os::fd::AsFd::as_fd(&read)) {
                dispatch();
            }
        })
        .map_err(|e| crate::error::from_io(e, "start the signal dispatcher thread"))?;
    sys::publish_wake_fd(write);
    Ok(())
}

/// Tells the watchers of every signal caught since the last dispatch; one-shot watchers
/// stop there, and a signal left without watchers gets its old disposition back.
fn dispatch() {
    let mut reg = lock();
    reg.signals.retain(|&raw, watched| {
        if !sys::take_pending(raw) {
            return true;
        }
        // Restore first, so a one-shot watcher that wakes finds the disposition back.
        watched.watchers.retain(|_, oneshot| !*oneshot);
        let keep = !watched.watchers.is_empty();
        if !keep {
            sys::restore(raw, &watched.old);
        }
        watched.tx.send_modify(|n| *n = n.wrapping_add(1));
        keep
    });
}
