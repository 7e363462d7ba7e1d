//! The settings a master runs with: plain data made by `ClusterBuilder::build`, so the
//! master never sees the builder.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use super::{Metrics, Restart, Strategy, Timings, WorkerOutput, WorkerProtocol};
use crate::Signum;

/// A cluster's checked settings.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The address the cluster listens on (the port is known even when 0 was asked for).
    pub local_addr: SocketAddr,
    /// The initial worker count, and the most `ctl scale` may ask for.
    pub workers: usize,
    pub max_workers: usize,
    pub strategy: Strategy,
    pub timings: Timings,
    /// The worker program and its arguments (`None`: this program itself).
    pub program: Option<(OsString, Vec<OsString>)>,
    pub expect_ready: Option<bool>,
    pub worker_protocol: WorkerProtocol,
    pub env: Vec<(OsString, OsString)>,
    pub stop_signal: Signum,
    pub restart: Restart,
    pub max_restarts: Option<(u32, Duration)>,
    pub worker_output: WorkerOutput,
    pub metrics: Option<Metrics>,
    pub upgrade_program: Option<OsString>,
    pub upgrade_timeout: Duration,
}
