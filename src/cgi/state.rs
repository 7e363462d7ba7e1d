//! A server's fixed settings and shared runtime state, made by `Cgi` when it starts and
//! read by both fronts (HTTP, FastCGI) and the script runner.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::auth::Htpasswd;
use super::load::Load;
use super::log::Log;
use super::map::Mapping;
use super::script::KILL_GRACE;
use super::tasks::{ConnectionCap, Tasks};
use super::upload::Budget;

/// A server's fixed settings.
pub(crate) struct State {
    pub mapping: Mapping,
    pub env: Vec<(OsString, OsString)>,
    pub timeout: Option<Duration>,
    pub limit: Option<Arc<Semaphore>>,
    pub queue: Duration,
    pub max_header: usize,
    pub auth: Option<Arc<Htpasswd>>,
    pub realm: String,
    pub max_body: u64,
    /// `#!` scripts are handed to their interpreter as `/dev/fd/3`, not by path.
    pub scripts_by_fd: bool,
    /// Scripts running and requests queued, for metrics.
    pub load: Load,
    /// The disk that bodies in temporary files may take, all requests together.
    pub disk: Arc<Budget>,
    /// One permit per open client connection.
    pub connections: ConnectionCap,
    pub body_timeout: Duration,
    pub log: Log,
    pub tasks: Tasks,
    /// Set when a graceful stop begins: supervisors end their groups.
    pub stopping: watch::Sender<bool>,
    /// Supervisors still running.
    pub live: Arc<watch::Sender<usize>>,
    /// `/dev/null` opened once for reading: the stdin of every script without a body is a
    /// copy (a `dup3` in the child instead of a path lookup and an `openat` each time).
    pub dev_null: Option<std::os::fd::OwnedFd>,
}

impl State {
    /// The stdin of a script that gets no body: `/dev/null`.
    pub(crate) fn no_body(&self) -> crate::Stdio {
        use std::os::fd::AsRawFd;
        match &self.dev_null {
            Some(fd) => crate::Stdio::inherit_fd(fd.as_raw_fd()),
            None => crate::Stdio::null(),
        }
    }

    /// A `max_children` slot, waiting up to `queue` (counted in [`Load::queued`]);
    /// `Some(None)` without a limit, `None` when no slot came free.
    pub(crate) async fn slot(&self) -> Option<Option<OwnedSemaphorePermit>> {
        let Some(sem) = self.limit.clone() else {
            return Some(None);
        };
        if let Ok(p) = sem.clone().try_acquire_owned() {
            return Some(Some(p));
        }
        if self.queue.is_zero() {
            return None;
        }
        let _waiting = self.load.waiting();
        tokio::time::timeout(self.queue, sem.acquire_owned())
            .await
            .ok()
            .and_then(|r| r.ok())
            .map(Some)
    }

    /// A graceful stop: every running script's group gets SIGTERM, then SIGKILL after the
    /// grace (its supervisor sees `stopping`); returns once they are gone, or after twice
    /// the grace.
    pub(crate) async fn stop_scripts(&self) {
        self.stopping.send_replace(true);
        let mut live = self.live.subscribe();
        let _ = tokio::time::timeout(KILL_GRACE * 2, live.wait_for(|n| *n == 0)).await;
    }
}
