//! A multi-process server: a master that starts workers and gives them connections, as
//! Node's `cluster`, einhorn or gunicorn do, on tokio. The seed's multi-echo-server, grown up.
//!
//! One binary is both master and worker (like Node's `cluster.isPrimary`): the master runs
//! [`Cluster::run`], which starts the same program again as each worker with
//! `BROOD_CLUSTER_WORKER=1` set; the worker calls [`Worker::from_env`] and accepts
//! connections whatever the strategy:
//!
//! ```no_run
//! use brood::cluster::{Cluster, Strategy, Worker};
//! use tokio::io::AsyncWriteExt;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), brood::Error> {
//!     if brood::cluster::is_worker() {
//!         let mut worker = Worker::from_env().await?;
//!         while let Some(mut conn) = worker.accept().await? {
//!             tokio::spawn(async move {
//!                 let _ = conn.write_all(b"hello from a worker\n").await;
//!             });
//!         }
//!         worker.drain().await; // open connections finish, then the worker exits
//!         return Ok(());
//!     }
//!     Cluster::builder()
//!         .listen("127.0.0.1:8080")
//!         .workers(2)
//!         .strategy(Strategy::RoundRobin)
//!         .build()?
//!         .run()
//!         .await
//! }
//! ```
//!
//! Building a cluster binds its socket and checks the settings; nothing starts until
//! [`Cluster::run`]. Workers can be any program ([`ClusterBuilder::program`]); what they
//! speak is in `docs/protocols.md`:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
//! use brood::cluster::{Cluster, Strategy};
//!
//! let cluster = Cluster::builder()
//!     .listen("127.0.0.1:0")
//!     .workers(2)
//!     .strategy(Strategy::Shared)
//!     .program("python3", ["worker.py"])
//!     .build()?;
//! assert_ne!(cluster.local_addr().port(), 0);
//! assert!(!brood::cluster::is_worker()); // this process is not a cluster's worker
//! assert!(Cluster::builder().listen("127.0.0.1:0").workers(0).build().is_err());
//! # Ok(()) }
//! ```
//!
//! ## Strategies
//!
//! - [`Strategy::RoundRobin`]: the master accepts and hands each connection to the next ready
//!   worker over its IPC channel (libuv's and Node's default on Unix).
//! - [`Strategy::LeastConnections`]: as round-robin, to the worker with the fewest open
//!   connections (workers report each closed connection).
//! - [`Strategy::Shared`]: every worker inherits the listening socket and accepts itself.
//! - [`Strategy::ReusePort`]: each worker gets its own `SO_REUSEPORT` socket on the same
//!   address; the kernel spreads connections.
//!
//! ## What a worker gets (any language)
//!
//! fd 3 is the worker's connection source: for `shared` and `reuseport` a listening TCP
//! socket, with `LISTEN_FDS=1` and `LISTEN_PID` = the worker's own pid (systemd's socket
//! activation convention); for `round-robin` and `least-connections` a Unix stream socket on
//! which each connection arrives as the byte `c` with the connection's fd attached
//! (`SCM_RIGHTS`). `BROOD_CLUSTER_STRATEGY` names the strategy and `BROOD_CLUSTER_WORKER`
//! holds the master's pid, the worker's parent (so the worker's own children, whose parent
//! is the worker, are not workers). A worker that
//! sends the byte `r` on its channel (fd 3, or the channel at `BROOD_CHANNEL_FD` in the
//! listener strategies) is *brood-aware*: it gets heartbeat pings (byte `p`) it must answer
//! with `P` within the heartbeat timeout, and may report each connection it accepted itself
//! with `a` and each finished connection with `d` (least-connections uses that).
//!
//! Retiring a worker (reload, scale down, shutdown) is always the same protocol: the master
//! stops handing it connections and closes its channel (end of stream: take what is still
//! queued, finish open connections, exit); after the grace period it sends the stop signal
//! (`SIGTERM` by default), and `SIGKILL` after the kill timeout. Workers run in their own
//! process group, so a terminal's Ctrl-C reaches only the master, and die with the master
//! process (`PR_SET_PDEATHSIG`, set from a spawning thread that lives as long as the
//! process). A worker that leaves what the master sent it unread gets no new connections
//! after a second and is killed after [`ClusterBuilder::stuck_timeout`]; the connections it
//! never read go to other workers. The full lifecycle is in `docs/cluster.md`.

mod builder;
mod config;
pub(crate) mod control;
mod handoff;
mod inflight;
mod lifecycle;
mod listen;
mod master;
mod metrics;
mod node;
mod notify;
mod output;
mod policy;
pub(crate) mod proto;
mod signals;
mod spawner;
mod state;
mod status;
mod stuck;
mod upgrade;
mod watch;
mod worker;

use std::time::Duration;

pub use builder::{Cluster, ClusterBuilder};
pub use control::ctl;
pub use metrics::Metrics;
pub use output::WorkerOutput;
pub use policy::Restart;
pub use worker::{Connection, Worker};

/// The environment variable that marks a worker process: it holds the pid of the master,
/// the worker's parent.
pub const WORKER_ENV: &str = "BROOD_CLUSTER_WORKER";
/// The environment variable that names the strategy in a worker.
pub const STRATEGY_ENV: &str = "BROOD_CLUSTER_STRATEGY";

/// Bytes of the master ⇄ worker protocol on the channel.
pub(crate) mod wire {
    /// master → worker: a connection (its fd attached).
    pub const CONN: u8 = b'c';
    /// master → worker: heartbeat ping.
    pub const PING: u8 = b'p';
    /// worker → master: ready to take connections.
    pub const READY: u8 = b'r';
    /// worker → master: heartbeat answer.
    pub const PONG: u8 = b'P';
    /// worker → master: one connection finished.
    pub const DONE: u8 = b'd';
    /// worker → master: accepted one connection itself (shared, reuseport).
    pub const ACCEPTED: u8 = b'a';
    /// worker → master, once, before its first `r`: it takes several connections per
    /// message (as many `c` bytes, their fds in order). Brood's `Worker` says so; a worker
    /// that does not (one that reads one byte and one fd at a time) gets one per message.
    pub const BATCHES: u8 = b'b';
}

/// A log limiter: `hit` counts an occurrence and says whether to log now, with how many
/// occurred since the last log. The first line comes at once; while occurrences keep
/// coming, the gap between lines doubles from a second to a minute (a worker flooding for
/// an hour writes a dozen lines, not 3,600); after a quiet spell of twice the gap, the next
/// one is logged at once and the gap starts again at a second.
#[derive(Debug, Default)]
pub(crate) struct Every {
    last: Option<std::time::Instant>,
    count: u64,
    /// The current gap (zero until the first line: then `EVERY_FIRST`).
    gap: Duration,
}

const EVERY_FIRST: Duration = Duration::from_secs(1);
const EVERY_MAX: Duration = Duration::from_secs(60);

impl Every {
    pub(crate) fn hit(&mut self) -> Option<u64> {
        self.hit_at(std::time::Instant::now())
    }

    fn hit_at(&mut self, now: std::time::Instant) -> Option<u64> {
        self.count += 1;
        if let Some(last) = self.last {
            let since = now.saturating_duration_since(last);
            if since < self.gap {
                return None;
            }
            self.gap = if since > self.gap * 2 {
                EVERY_FIRST
            } else {
                (self.gap * 2).min(EVERY_MAX)
            };
        } else {
            self.gap = EVERY_FIRST;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

/// Whether this process was started by a [`Cluster`] master as a worker: the variable
/// `BROOD_CLUSTER_WORKER` names this process's parent, so a child the worker starts itself
/// (`app migrate`), which inherits the variable but has the worker as its parent, is not
/// taken for a worker.
///
/// ```
/// // A test process was not started by a master.
/// assert!(!brood::cluster::is_worker());
/// ```
pub fn is_worker() -> bool {
    std::env::var(WORKER_ENV).is_ok_and(|v| v == std::os::unix::process::parent_id().to_string())
}

/// What a worker program speaks on its channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum WorkerProtocol {
    /// brood's bytes (`c` + fd, `r`, `p`/`P`, `a`/`d`; `docs/protocols.md`).
    #[default]
    Brood,
    /// Node.js's IPC protocol, for a Node app with no brood code in it: the channel is
    /// the worker's `NODE_CHANNEL_FD` (`process.send`, `process.on('message')`,
    /// `'disconnect'`), each connection arrives as Node's own handle message (a
    /// `net.Socket` with `{"brood":"connection"}`), one at a time until Node acknowledges
    /// it, and `process.send('ready')` is the readiness signal.
    Node,
}

/// How connections reach workers. See the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// The master accepts and hands connections out in turn.
    RoundRobin,
    /// The master accepts and hands each connection to the least-loaded worker.
    LeastConnections,
    /// Workers share the listening socket and accept themselves.
    Shared,
    /// Each worker has its own `SO_REUSEPORT` socket.
    ReusePort,
}

impl Strategy {
    /// The name used on the command line and in `BROOD_CLUSTER_STRATEGY`.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::LeastConnections => "least-connections",
            Strategy::Shared => "shared",
            Strategy::ReusePort => "reuseport",
        }
    }

    /// Whether the master accepts connections itself.
    pub fn master_accepts(self) -> bool {
        matches!(self, Strategy::RoundRobin | Strategy::LeastConnections)
    }
}

impl std::str::FromStr for Strategy {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Strategy, crate::Error> {
        Ok(match s {
            "round-robin" | "rr" => Strategy::RoundRobin,
            "least-connections" | "least-conn" => Strategy::LeastConnections,
            "shared" => Strategy::Shared,
            "reuseport" | "reuse-port" => Strategy::ReusePort,
            _ => {
                return Err(crate::Error::invalid(
                    format!("strategy {s:?}"),
                    "use round-robin, least-connections, shared or reuseport",
                ));
            }
        })
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Timings of a cluster's lifecycle, with defaults that suit most servers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timings {
    pub grace: Duration,
    pub heartbeat: Duration,
    pub heartbeat_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A worker that lived this long is healthy: its crash resets the backoff.
    pub healthy_after: Duration,
    /// How long a worker that says when it is ready may take to say so.
    pub ready_timeout: Duration,
    /// After the stop signal, how long before `SIGKILL`.
    pub kill_after: Duration,
    /// How long a worker may leave what the master sent it unread before it is killed
    /// (and the connections it never read go to other workers).
    pub stuck_timeout: Duration,
    /// In a rolling restart, how long a replacement that does not say when it is ready must
    /// stay up before it counts as ready and an old worker retires.
    pub reload_settle: Duration,
}

impl Default for Timings {
    fn default() -> Timings {
        Timings {
            grace: Duration::from_secs(30),
            heartbeat: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            healthy_after: Duration::from_secs(5),
            ready_timeout: Duration::from_secs(30),
            kill_after: Duration::from_secs(5),
            stuck_timeout: Duration::from_secs(10),
            reload_settle: Duration::from_secs(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_stream_is_logged_ever_more_rarely_and_a_new_one_at_once() {
        let t0 = std::time::Instant::now();
        let mut e = Every::default();
        // Ten occurrences a second for an hour.
        let mut lines = Vec::new();
        for i in 0..36_000u64 {
            let at = t0 + Duration::from_millis(100 * i);
            if let Some(n) = e.hit_at(at) {
                lines.push((at - t0, n));
            }
        }
        assert_eq!(lines[0], (Duration::ZERO, 1), "the first one at once");
        // 1 s, 2 s, 4 s … 32 s, then a line a minute: 7 + 59.
        assert!(lines.len() < 80, "{} lines in an hour", lines.len());
        let total: u64 = lines.iter().map(|(_, n)| n).sum();
        assert!(
            total <= 36_000 && total > 35_000,
            "every occurrence counted: {total}"
        );
        // After ten quiet minutes the next one is logged at once, and the gap is a second again.
        let later = t0 + Duration::from_secs(4_200);
        assert!(e.hit_at(later).is_some());
        assert!(e.hit_at(later + Duration::from_millis(500)).is_none());
        assert_eq!(e.hit_at(later + Duration::from_millis(1_000)), Some(2));
    }
}
