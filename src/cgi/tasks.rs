//! What one server owns while it runs, shared by every front: its tasks (aborted together
//! when it stops, which kills every script still running), the count of live supervisors,
//! and the accept loop's handling of errors.

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinSet;

/// Tasks of one server (connections, supervisors): aborted together when it stops, which
/// kills every script still running.
#[derive(Clone, Default)]
pub(crate) struct Tasks(Arc<Mutex<JoinSet<()>>>);

impl Tasks {
    pub(crate) fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
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

/// Whether an accept error concerns one connection (go on) or the listener (stop).
pub(crate) fn accept_is_fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP)
    )
}

/// Counts a running supervisor in [`State::live`] while it exists.
pub(crate) struct LiveGuard(Arc<watch::Sender<usize>>);

impl LiveGuard {
    pub(crate) fn new(live: &Arc<watch::Sender<usize>>) -> LiveGuard {
        live.send_modify(|n| *n += 1);
        LiveGuard(live.clone())
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}
