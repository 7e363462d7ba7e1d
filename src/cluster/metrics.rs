//! A cluster master's metrics, kept with `prometheus-client` and encoded in the OpenMetrics
//! text format (which Prometheus scrapes). The master updates them from its one task:
//! counters as things happen, gauges every housekeeping tick (50 ms). The master passes
//! the numbers; nothing here knows its state.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::Exit;

type Labels = Vec<(&'static str, String)>;

/// The values of `brood_cluster_workers`'s `state` label.
const STATES: [&str; 5] = ["starting", "ready", "retiring", "failed", "exited"];

/// A cluster master's metrics, shared between the master (which updates them) and whoever
/// serves them (`brood cluster --metrics ADDR` serves [`encode`](Metrics::encode) at
/// `/metrics`). Cloning is cheap: clones share the same values.
///
/// ```
/// use brood::cluster::{Cluster, Metrics};
///
/// let metrics = Metrics::new();
/// let cluster = Cluster::builder()
///     .listen("127.0.0.1:0")
///     .workers(1)
///     .metrics(metrics.clone())
///     .build()?;
/// // Serve `metrics.encode()` over HTTP while `cluster.run()` runs.
/// let text = metrics.encode();
/// assert!(text.contains("# TYPE brood_cluster_workers gauge"));
/// assert!(text.contains("brood_cluster_workers{state=\"ready\"} 0"));
/// # drop(cluster);
/// # Ok::<(), brood::Error>(())
/// ```
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

struct Inner {
    registry: Registry,
    workers: Family<Labels, Gauge>,
    restarts: Family<Labels, Counter>,
    connections: Family<Labels, Counter>,
    queue: Gauge,
    handoff: Histogram,
    heartbeat_misses: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A new set of cluster metrics, all zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let inner = Inner {
            workers: Family::default(),
            restarts: Family::default(),
            connections: Family::default(),
            queue: Gauge::default(),
            // 10 µs to about 2.6 s, ×4 each bucket.
            handoff: Histogram::new(exponential_buckets(0.000_01, 4.0, 10)),
            heartbeat_misses: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "brood_cluster_workers",
            "Workers by state (starting, ready, retiring; failed and exited for empty slots)",
            inner.workers.clone(),
        );
        registry.register(
            "brood_cluster_restarts",
            "Workers restarted after exiting on their own, by cause (error, signal, exit, heartbeat, stuck, not_ready)",
            inner.restarts.clone(),
        );
        registry.register(
            "brood_cluster_connections",
            "Connections handed to (or accepted by) each live worker, by worker id",
            inner.connections.clone(),
        );
        registry.register(
            "brood_cluster_handoff_queue",
            "Accepted connections waiting for a worker with room",
            inner.queue.clone(),
        );
        registry.register(
            "brood_cluster_handoff_seconds",
            "Time from accept to the handoff of a connection to a worker",
            inner.handoff.clone(),
        );
        registry.register(
            "brood_cluster_heartbeat_misses",
            "Workers killed for missing their heartbeats",
            inner.heartbeat_misses.clone(),
        );
        // Every state's series exists from the start, at 0.
        for state in STATES {
            inner.workers.get_or_create(&label("state", state)).set(0);
        }
        Metrics(Arc::new(Inner { registry, ..inner }))
    }

    /// The metrics in the OpenMetrics text format (serve it with the content type
    /// [`CONTENT_TYPE`](Metrics::CONTENT_TYPE)).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.0.registry);
        out
    }

    /// The content type of [`encode`](Metrics::encode)'s text.
    pub const CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";

    pub(super) fn handed(&self, waited: Duration) {
        self.0.handoff.observe(waited.as_secs_f64());
    }
}

fn label(key: &'static str, value: impl ToString) -> Labels {
    vec![(key, value.to_string())]
}

/// Why a worker that exited on its own is restarted: why the master killed it, or how it
/// ended.
fn cause(exit: Exit, killed: Option<&'static str>) -> &'static str {
    if let Some(why) = killed {
        why
    } else if exit.signal != 0 {
        "signal"
    } else if exit.status != 0 {
        "error"
    } else {
        "exit"
    }
}

impl Metrics {
    /// Workers by state, in the order of `STATES` (starting, ready, retiring; failed and
    /// exited slots).
    pub(super) fn set_workers(&self, counts: [i64; 5]) {
        for (i, state) in STATES.iter().enumerate() {
            self.0
                .workers
                .get_or_create(&label("state", state))
                .set(counts[i]);
        }
    }

    /// `n` more connections handed to (or accepted by) worker `id`.
    pub(super) fn connections(&self, id: u64, n: u64) {
        self.0
            .connections
            .get_or_create(&label("worker", id))
            .inc_by(n);
    }

    /// A worker was killed for missing its heartbeats.
    pub(super) fn heartbeat_missed(&self) {
        self.0.heartbeat_misses.inc();
    }

    /// Connections waiting for a worker.
    pub(super) fn set_queue(&self, n: usize) {
        self.0.queue.set(n as i64);
    }

    /// A worker is gone: its series is dropped (so the families hold live workers only).
    pub(super) fn worker_gone(&self, id: u64) {
        self.0.connections.remove(&label("worker", id));
    }

    /// A worker that exited on its own (`exit`), or that the master killed (`killed`:
    /// `heartbeat`, `stuck`, `not_ready`), is restarted.
    pub(super) fn restarted(&self, exit: Exit, killed: Option<&'static str>) {
        let why = cause(exit, killed);
        self.0.restarts.get_or_create(&label("cause", why)).inc();
    }
}
