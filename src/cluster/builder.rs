//! `Cluster` and its builder: the settings (checked into a plain `Config`), the listening
//! socket, and `run`, which hands both to the master.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::config::Config;
use super::proto::Source;
use super::state::{EVENTS_MAX, Master};
use super::{Metrics, Restart, Strategy, Timings, WorkerOutput, WorkerProtocol, control, listen};
use crate::Signum;
use crate::error::{Error, Result, from_io};

/// Builds a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    pub(super) listen: Option<String>,
    pub(super) workers: Option<usize>,
    pub(super) strategy: Strategy,
    pub(super) timings: Timings,
    pub(super) program: Option<(OsString, Vec<OsString>)>,
    pub(super) expect_ready: Option<bool>,
    pub(super) worker_protocol: WorkerProtocol,
    pub(super) control: Option<PathBuf>,
    pub(super) env: Vec<(OsString, OsString)>,
    pub(super) stop_signal: Signum,
    pub(super) max_workers: Option<usize>,
    pub(super) restart: Restart,
    pub(super) max_restarts: Option<(u32, Duration)>,
    pub(super) worker_output: WorkerOutput,
    pub(super) metrics: Option<Metrics>,
    pub(super) upgrade_program: Option<OsString>,
    pub(super) upgrade_timeout: Duration,
}

/// A master process of a multi-process server. See the [module docs](super).
#[derive(Debug)]
pub struct Cluster {
    cfg: Config,
    source: Source,
    control: Option<(PathBuf, std::os::unix::net::UnixListener)>,
}

impl Cluster {
    /// A builder with the defaults: one worker per CPU, round-robin, 30 s grace.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            listen: None,
            workers: None,
            strategy: Strategy::RoundRobin,
            timings: Timings::default(),
            program: None,
            expect_ready: None,
            worker_protocol: WorkerProtocol::Brood,
            control: None,
            env: Vec::new(),
            stop_signal: Signum::TERM,
            max_workers: None,
            restart: Restart::Always,
            max_restarts: None,
            worker_output: WorkerOutput::Inherit,
            metrics: None,
            upgrade_program: None,
            upgrade_timeout: Duration::from_secs(60),
        }
    }

    /// The address the cluster listens on (the port is known even when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.cfg.local_addr
    }

    /// Runs the master until `SIGTERM` or `SIGINT` (graceful shutdown) and returns when every
    /// worker is gone. `SIGHUP` restarts the workers one by one, `SIGTTIN`/`SIGTTOU` add or
    /// remove one. When the restart policy has given up on every slot (no worker left, none
    /// to start) it stops accepting and returns: an error when a slot failed or a worker
    /// ended unsuccessfully, `Ok` when every worker exited with status 0.
    pub async fn run(mut self) -> Result<()> {
        let (events_tx, events) = mpsc::channel(EVENTS_MAX);
        let control = match self.control.take() {
            Some((path, l)) => {
                // A copy, to hand to the new master of an upgrade.
                let copy = l.try_clone().map_err(|e| from_io(e, "control socket"))?;
                let task = control::serve(l, events_tx.clone())?;
                Some((path, task, copy))
            }
            None => None,
        };
        // The master's accepting listener lives in `Master::run` only, so shutdown closes it.
        let (accept, source) = match std::mem::replace(&mut self.source, Source::Closed) {
            Source::Accept(l) => {
                l.set_nonblocking(true)
                    .map_err(|e| from_io(e, "listener"))?;
                let l = TcpListener::from_std(l).map_err(|e| from_io(e, "listener"))?;
                (Some(l), Source::Closed)
            }
            other => (None, other),
        };
        let mut master = Master::start(self.cfg, source, events_tx)?;
        let path = control.map(|(path, task, copy)| {
            master.control_task = Some(task);
            master.control_fd = Some(copy.into());
            path
        });
        let result = master.run(accept, events).await;
        // The master is done: so is its control socket (a library caller's runtime may
        // go on).
        if let Some(task) = master.control_task.take() {
            task.abort();
        }
        // After an upgrade the socket file is the new master's.
        if let Some(path) = path.filter(|_| !master.handed_over) {
            let _ = std::fs::remove_file(path);
        }
        result
    }
}

impl ClusterBuilder {
    /// The address to listen on, e.g. `"127.0.0.1:8080"` (port 0 picks one). A master started
    /// by systemd with `LISTEN_FDS` uses the socket it was given instead.
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = Some(addr.into());
        self
    }

    /// How many workers (default: the number of CPUs).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// How connections reach workers (default round-robin).
    pub fn strategy(mut self, s: Strategy) -> Self {
        self.strategy = s;
        self
    }

    /// How long a retiring worker (its channel closed) may take to finish its connections
    /// and exit before it gets the [stop signal](Self::stop_signal) (default 30 s).
    pub fn grace(mut self, d: Duration) -> Self {
        self.timings.grace = d;
        self
    }

    /// The signal a retiring worker gets when the grace period is over (default `SIGTERM`).
    ///
    /// ```
    /// use brood::{Signum, cluster::Cluster};
    /// use std::time::Duration;
    ///
    /// // Retire: close the channel, wait 10 s, SIGQUIT, SIGKILL 2 s later.
    /// let cluster = Cluster::builder()
    ///     .listen("127.0.0.1:0")
    ///     .workers(1)
    ///     .grace(Duration::from_secs(10))
    ///     .stop_signal(Signum::QUIT)
    ///     .kill_after(Duration::from_secs(2))
    ///     .ready_timeout(Duration::from_secs(5))
    ///     .max_workers(8)
    ///     .build()?;
    /// # drop(cluster);
    /// # Ok::<(), brood::Error>(())
    /// ```
    pub fn stop_signal(mut self, signal: Signum) -> Self {
        self.stop_signal = signal;
        self
    }

    /// How long after the stop signal a worker still running gets `SIGKILL` (default 5 s).
    pub fn kill_after(mut self, d: Duration) -> Self {
        self.timings.kill_after = d;
        self
    }

    /// How long a worker that says when it is ready (see [`expect_ready`](Self::expect_ready))
    /// may take to say so (default 30 s). A late worker is stopped and counts as a failed
    /// start; in a rolling restart, the reload stops and the old workers keep serving.
    pub fn ready_timeout(mut self, d: Duration) -> Self {
        self.timings.ready_timeout = d;
        self
    }

    /// In a rolling restart, how long a replacement that does not say when it is ready
    /// must stay up before it is taken as ready and the old worker it replaces retires
    /// (default 1 s). A replacement that exits sooner (a broken deploy) stops the reload
    /// and the old workers keep serving. Workers that say when they are ready
    /// ([`expect_ready`](Self::expect_ready)) are ready when they say so.
    pub fn reload_settle(mut self, d: Duration) -> Self {
        self.timings.reload_settle = d;
        self
    }

    /// How long a worker may leave what the master sent it (a connection, a heartbeat
    /// ping) unread before it is killed (default 10 s). The master first stops it
    /// (`SIGSTOP`), asks the kernel which connections it never read, kills it, and hands
    /// those to other workers. A worker that has left something unread for a second
    /// already gets no new connections until it reads again.
    ///
    /// ```
    /// use brood::cluster::Cluster;
    /// use std::time::Duration;
    ///
    /// let cluster = Cluster::builder()
    ///     .listen("127.0.0.1:0")
    ///     .workers(2)
    ///     .stuck_timeout(Duration::from_secs(3))
    ///     .build()?;
    /// # drop(cluster);
    /// # Ok::<(), brood::Error>(())
    /// ```
    pub fn stuck_timeout(mut self, d: Duration) -> Self {
        self.timings.stuck_timeout = d.max(Duration::from_millis(10));
        self
    }

    /// The most workers `ctl scale` and `SIGTTIN` may ask for (default 4 × CPUs, at least
    /// the initial count).
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = Some(n);
        self
    }

    /// When a worker that exited on its own is replaced (default [`Restart::Always`]).
    pub fn restart(mut self, policy: Restart) -> Self {
        self.restart = policy;
        self
    }

    /// After `n` restarts of one worker slot within `within`, the master stops restarting
    /// it, logs it, and `ctl status` shows the slot as `failed` (a reload starts it again).
    /// When no slot is left serving, [`Cluster::run`] closes the listener and returns an
    /// error.
    pub fn max_restarts(mut self, n: u32, within: Duration) -> Self {
        self.max_restarts = Some((n, within));
        self
    }

    /// Heartbeat interval and the silence after which a brood-aware worker is replaced.
    pub fn heartbeat(mut self, every: Duration, timeout: Duration) -> Self {
        self.timings.heartbeat = every.max(Duration::from_millis(10));
        self.timings.heartbeat_timeout = timeout.max(self.timings.heartbeat);
        self
    }

    /// The first and the longest delay before respawning a worker that crashes soon after
    /// its start (doubling in between).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.timings.backoff_min = min;
        self.timings.backoff_max = max.max(min);
        self
    }

    /// Runs `program args` as the worker instead of this program itself: any program that
    /// takes connections from fd 3 (see the [module docs](super)).
    pub fn program<I, S>(mut self, program: impl Into<OsString>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.program = Some((program.into(), args.into_iter().map(Into::into).collect()));
        self
    }

    /// Whether workers say when they are ready (byte `r`). Default: yes for this program
    /// itself (brood workers do), no for another [`program`](Self::program).
    pub fn expect_ready(mut self, yes: bool) -> Self {
        self.expect_ready = Some(yes);
        self
    }

    /// What the workers speak on their channel (default [`WorkerProtocol::Brood`]);
    /// [`WorkerProtocol::Node`] runs a Node.js app as a worker with no brood code in it.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), brood::Error> {
    /// use brood::cluster::{Cluster, WorkerProtocol};
    ///
    /// let cluster = Cluster::builder()
    ///     .listen("127.0.0.1:7000")
    ///     .workers(2)
    ///     .program("node", ["examples/node/worker.js"])
    ///     .worker_protocol(WorkerProtocol::Node)
    ///     .build()?;
    /// # let _ = cluster; Ok(()) }
    /// ```
    pub fn worker_protocol(mut self, protocol: WorkerProtocol) -> Self {
        self.worker_protocol = protocol;
        self
    }

    /// Opens a control socket at `path` (mode 0600, same user only) for `brood ctl`.
    pub fn control(mut self, path: impl Into<PathBuf>) -> Self {
        self.control = Some(path.into());
        self
    }

    /// What becomes of workers' stdout and stderr (default [`WorkerOutput::Inherit`]).
    pub fn worker_output(mut self, mode: WorkerOutput) -> Self {
        self.worker_output = mode;
        self
    }

    /// Keeps the master's [`Metrics`] up to date (serve [`Metrics::encode`] to Prometheus).
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The program a hot upgrade (`ctl upgrade`, `SIGUSR2`) starts as the new master, with
    /// this master's arguments (default: this program, as it is on disk when the master
    /// started: replace the file, then upgrade).
    pub fn upgrade_program(mut self, program: impl Into<OsString>) -> Self {
        self.upgrade_program = Some(program.into());
        self
    }

    /// How long the new master of an upgrade may take to have all its workers ready before
    /// it is killed and this master keeps serving (default 60 s).
    pub fn upgrade_timeout(mut self, d: Duration) -> Self {
        self.upgrade_timeout = d;
        self
    }

    /// An environment variable for every worker.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Binds the listening socket and checks the settings.
    pub fn build(self) -> Result<Cluster> {
        let addr = self
            .listen
            .clone()
            .ok_or_else(|| Error::invalid("cluster", "no listen address"))?;
        let workers = match self.workers {
            Some(0) => return Err(Error::invalid("cluster", "at least one worker")),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let max_workers = match self.max_workers {
            Some(m) if m < workers => {
                return Err(Error::invalid(
                    "cluster",
                    format!("{workers} workers is more than --max-workers {m}"),
                ));
            }
            Some(m) => m,
            None => (4 * std::thread::available_parallelism().map_or(1, |n| n.get())).max(workers),
        };
        let (source, local_addr) = match self.strategy {
            Strategy::RoundRobin | Strategy::LeastConnections | Strategy::Shared => {
                let l = listen::listener(&addr)?;
                let local = l
                    .local_addr()
                    .map_err(|e| from_io(e, format!("listen {addr:?}")))?;
                if self.strategy == Strategy::Shared {
                    (Source::Shared(l), local)
                } else {
                    (Source::Accept(l), local)
                }
            }
            Strategy::ReusePort => {
                let addr = super::upgrade::inherited_listen().unwrap_or(addr);
                let (anchor, local) = listen::reuseport_anchor(&addr)?;
                (Source::ReusePort { _anchor: anchor }, local)
            }
        };
        if self.worker_protocol == WorkerProtocol::Node && self.program.is_none() {
            return Err(Error::invalid(
                "cluster",
                "Node's worker protocol is for a program (a Node app), not this program's own workers",
            ));
        }
        let control = match &self.control {
            Some(path) => Some((path.clone(), control::bind(path)?)),
            None => None,
        };
        let cfg = Config {
            local_addr,
            workers,
            max_workers,
            strategy: self.strategy,
            timings: self.timings,
            program: self.program,
            expect_ready: self.expect_ready,
            worker_protocol: self.worker_protocol,
            env: self.env,
            stop_signal: self.stop_signal,
            restart: self.restart,
            max_restarts: self.max_restarts,
            worker_output: self.worker_output,
            metrics: self.metrics,
            upgrade_program: self.upgrade_program,
            upgrade_timeout: self.upgrade_timeout,
        };
        Ok(Cluster {
            cfg,
            source,
            control,
        })
    }
}
