//! A server's fixed settings and shared runtime state, made by `Cgi` when it starts and
//! read by both fronts (HTTP, FastCGI) and the script runner.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use super::auth::Htpasswd;
use super::log::Log;
use super::map::Mapping;
use super::script::KILL_GRACE;
use super::tasks::Tasks;

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
    pub body_timeout: Duration,
    pub log: Log,
    pub tasks: Tasks,
    /// Set when a graceful stop begins: supervisors end their groups.
    pub stopping: watch::Sender<bool>,
    /// Supervisors still running.
    pub live: Arc<watch::Sender<usize>>,
}

impl State {
    /// A graceful stop: every running script's group gets SIGTERM, then SIGKILL after the
    /// grace (its supervisor sees `stopping`); returns once they are gone, or after twice
    /// the grace.
    pub(crate) async fn stop_scripts(&self) {
        self.stopping.send_replace(true);
        let mut live = self.live.subscribe();
        let _ = tokio::time::timeout(KILL_GRACE * 2, live.wait_for(|n| *n == 0)).await;
    }
}
