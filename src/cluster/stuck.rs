//! Workers that stop reading their channel (stopped, a hung event loop): seen within a
//! housekeeping tick by what the kernel says they left unread (`inflight.rs`), or, for a
//! Node worker, by the connection it has not acknowledged (`node.rs`). A worker whose
//! oldest unread send has waited `STUCK_AFTER` gets no more connections until it catches
//! up (load balancing: a slow worker's queue stays short); one that has made no progress
//! (read nothing, acknowledged nothing) for the stuck timeout is killed, and the
//! connections it never read (or acknowledged) go to other workers. A slow worker that keeps
//! reading is never killed, however long its queue.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::handoff::read_up_to_now;
use super::inflight::peer_closed;
use super::state::Master;

/// A worker that has left a send unread this long gets no more connections until it reads.
pub(super) const STUCK_AFTER: Duration = Duration::from_secs(1);

impl Master {
    /// Every tick: lets go of what workers have read, marks the ones whose oldest unread
    /// send waited `STUCK_AFTER` (no more connections) or back, and kills those that have
    /// made no progress for the stuck timeout.
    pub(super) fn check_unread(&mut self) {
        let now = Instant::now();
        let timeout = self.cfg.timings.stuck_timeout;
        let after = STUCK_AFTER.min(timeout);
        let since =
            |t: Option<Instant>| t.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let mut kill = Vec::new();
        let mut unstuck = false;
        for (id, w) in &mut self.workers {
            if w.reclaiming {
                continue;
            }
            // How long its oldest unread send has waited, and how long it has made no
            // progress. A Node worker has one connection in flight until its ACK.
            let node = w.node_in_flight.is_some();
            let (waited, stalled) = if let Some(f) = &w.node_in_flight {
                (since(Some(f.at)), since(Some(f.at)))
            } else if w.inflight.len() > 0 {
                read_up_to_now(w);
                (
                    since(w.inflight.oldest()),
                    since(w.inflight.stalled_since()),
                )
            } else {
                (Duration::ZERO, Duration::ZERO)
            };
            let what = if node {
                "acknowledged its connection"
            } else {
                "read its channel"
            };
            if stalled >= timeout {
                if node {
                    tracing::warn!(
                        pid = w.pid,
                        id,
                        "worker has not {what} for {:.1} s; killing it (its connection goes to another worker)",
                        stalled.as_secs_f64()
                    );
                } else {
                    tracing::warn!(
                        pid = w.pid,
                        id,
                        "worker has not {what} for {:.1} s; killing it (its unread connections go to other workers)",
                        stalled.as_secs_f64()
                    );
                }
                w.stuck_killed = true;
                kill.push(*id);
                continue;
            }
            if stalled >= after && !w.stalled {
                tracing::warn!(
                    pid = w.pid,
                    id,
                    "worker has not {what} for {:.1} s: no more connections to it",
                    stalled.as_secs_f64()
                );
                w.stalled = true;
            } else if stalled < after && w.stalled {
                w.stalled = false;
                // (A worker that closed its channel or died leaves nothing unread: it is
                // gone, not back.)
                let hung_up = w.sock.as_ref().is_some_and(|s| peer_closed(s.as_raw_fd()));
                if !hung_up && running(w.pid) {
                    tracing::info!(pid = w.pid, id, "worker reads its channel again");
                }
            }
            let behind = waited >= after;
            if w.stuck != behind {
                w.stuck = behind;
                unstuck |= !behind;
            }
        }
        for id in kill {
            self.kill_and_reclaim(id);
        }
        // Workers that read what they had, or came back, may take what waits.
        if unstuck || !self.backlog.is_empty() {
            self.flush_backlog();
        }
    }

    /// A worker being killed was stopped with `unread` bytes of the master's sends still
    /// queued to it: the connections among them go back to the front of the queue, in
    /// order, for the other workers (the worker gets `SIGKILL` before this event, so it
    /// never reads them).
    pub(super) fn on_reclaimed(&mut self, id: u64, unread: usize) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        w.inflight.read_up_to(unread, Instant::now());
        let mut back = 0u64;
        for (conn, at) in w.inflight.take().collect::<Vec<_>>().into_iter().rev() {
            self.backlog.push_front(conn);
            self.backlog_at.push_front(at);
            back += 1;
        }
        w.open = w.open.saturating_sub(back);
        if back > 0 {
            tracing::warn!(
                pid = w.pid,
                id,
                connections = back,
                "connections the killed worker never read go to other workers"
            );
        }
        self.flush_backlog();
    }
}

/// Whether `pid` still runs (not a zombie, not reaped).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| !matches!(state, 'Z' | 'X'))
    })
}
