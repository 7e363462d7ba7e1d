//! What one server owns while it runs, shared by every front: its tasks (aborted together
//! when it stops, which kills every script still running), the count of live supervisors,
//! and the accept loop's handling of errors.

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::load::{Counted, Load};
use super::log::{Log, LogLine};

/// Tasks of one server (connections, supervisors): aborted together when it stops, which
/// kills every script still running.
#[derive(Clone, Default)]
pub(crate) struct Tasks(Arc<Mutex<JoinSet<()>>>);

impl Tasks {
    pub(crate) fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        // Boxed: a connection's or a script supervisor's future is kilobytes, and tokio
        // copies a task's whole stage when the task completes and when its output is taken
        // (seen with gdb on `memmove`); a box makes those copies a pointer's.
        let fut = Box::pin(fut);
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        while set.try_join_next().is_some() {}
        set.spawn(fut);
    }

    pub(crate) fn abort_all(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).abort_all();
    }
}

/// Aborts a server's tasks when its `serve` future ends or is dropped.
pub(crate) struct AbortOnDrop(pub Tasks);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort_all();
    }
}

pub(crate) use crate::accept_backoff::AcceptBackoff;

/// Every front's accept loop, until `shutdown` resolves: a connection slot first (at the
/// cap, new connections wait in the listen backlog), then one `accept`. A passing error
/// (out of fds, memory, buffers) pauses accepting as `AcceptBackoff` says and is logged
/// at most once a second; a fatal one (the listener itself is unusable) is returned, with
/// `what` as the operation. Each connection goes to `serve` with its slot, which it holds
/// until the connection ends.
pub(crate) async fn accept_loop<C, A: Future<Output = io::Result<C>>>(
    cap: &ConnectionCap,
    log: &Log,
    what: &str,
    mut accept: impl FnMut() -> A,
    mut serve: impl FnMut(C, OwnedSemaphorePermit),
    shutdown: impl Future<Output = ()>,
) -> crate::Result<()> {
    tokio::pin!(shutdown);
    let mut backoff = AcceptBackoff::default();
    loop {
        let slot = tokio::select! {
            s = cap.slot(log) => s,
            () = &mut shutdown => return Ok(()),
        };
        let accepted = tokio::select! {
            a = accept() => a,
            () = &mut shutdown => return Ok(()),
        };
        match accepted {
            Ok(c) => {
                backoff.ok();
                serve(c, slot);
            }
            Err(e) if accept_is_fatal(&e) => return Err(crate::error::from_io(e, what)),
            Err(e) => {
                let pause = accept_failed(&mut backoff, &e, log);
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = &mut shutdown => return Ok(()),
                }
            }
        }
    }
}

/// An accept failed with `e`: how long to pause before the next one (see
/// `AcceptBackoff`), logged through `log` at most once a second.
pub(crate) fn accept_failed(backoff: &mut AcceptBackoff, e: &io::Error, log: &Log) -> Duration {
    let f = backoff.failed(e);
    if let Some(failed) = f.log {
        let pause = if f.pause.is_zero() {
            String::new()
        } else {
            format!("; pausing accepts {} ms", f.pause.as_millis())
        };
        log(&LogLine::Error(format!(
            "accept: {e} ({failed} failed since the last such line){pause}"
        )));
    }
    f.pause
}

/// The cap on a server's open connections (`max_connections`): one permit per connection.
/// At the cap the accept loop waits for a permit (new connections wait in the listen
/// backlog) and says so, at most once every [`CAP_LOG_EVERY`].
#[derive(Debug)]
pub(crate) struct ConnectionCap {
    permits: Arc<Semaphore>,
    max: usize,
    logged: Mutex<Option<Instant>>,
}

/// The least time between two "at the connection cap" lines.
const CAP_LOG_EVERY: Duration = Duration::from_secs(5);

impl ConnectionCap {
    pub(crate) fn new(max: usize) -> ConnectionCap {
        let max = max.min(Semaphore::MAX_PERMITS);
        ConnectionCap {
            permits: Arc::new(Semaphore::new(max)),
            max,
            logged: Mutex::new(None),
        }
    }

    /// A permit for the next connection, held as long as it is open; at the cap, logs
    /// (at most once every [`CAP_LOG_EVERY`]) and waits for one to close.
    pub(crate) async fn slot(&self, log: &Log) -> OwnedSemaphorePermit {
        if let Some(p) = self.try_slot(log) {
            return p;
        }
        match self.permits.clone().acquire_owned().await {
            Ok(p) => p,
            // Never closed.
            Err(_) => std::future::pending().await,
        }
    }

    /// A permit if one is free now; at the cap, `None`, logged at most once every
    /// [`CAP_LOG_EVERY`].
    pub(crate) fn try_slot(&self, log: &Log) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Some(p);
        }
        let now = Instant::now();
        let due = {
            let mut last = self.logged.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|t| now >= t + CAP_LOG_EVERY);
            if due {
                *last = Some(now);
            }
            due
        };
        if due {
            log(&LogLine::Error(format!(
                "{} connections open, the most allowed (--max-connections): new ones wait \
                 in the listen backlog until one closes",
                self.max
            )));
        }
        None
    }
}

/// Whether an accept error concerns one connection (go on) or the listener (stop).
pub(crate) fn accept_is_fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP)
    )
}

/// Counts a running supervisor in the server's live count (what a graceful stop waits
/// for) and in its [`Load`] while it exists.
pub(crate) struct LiveGuard(
    Arc<watch::Sender<usize>>,
    #[allow(dead_code, reason = "held for its drop")] Counted,
);

impl LiveGuard {
    pub(crate) fn new(live: &Arc<watch::Sender<usize>>, load: &Load) -> LiveGuard {
        live.send_modify(|n| *n += 1);
        LiveGuard(live.clone(), load.running())
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_of_exhaustion_pause_doubling_and_are_logged_once_a_second() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        let log: Log = Arc::new(move |l: &LogLine| seen.lock().unwrap().push(l.to_string()));
        let mut b = AcceptBackoff::default();
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(
            accept_failed(&mut b, &emfile, &log),
            Duration::from_millis(20)
        );
        for _ in 0..10 {
            accept_failed(&mut b, &emfile, &log);
        }
        assert_eq!(accept_failed(&mut b, &emfile, &log), Duration::from_secs(1));
        assert_eq!(
            lines.lock().unwrap().len(),
            1,
            "{:?}",
            lines.lock().unwrap()
        );
        b.ok();
        assert_eq!(
            accept_failed(&mut b, &emfile, &log),
            Duration::from_millis(20)
        );
        // An error of one connection (reset before accept) does not pause.
        let aborted = io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert_eq!(accept_failed(&mut b, &aborted, &log), Duration::ZERO);
    }
}
