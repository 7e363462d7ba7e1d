//! Workers that stop reading their channel (stopped, a hung event loop): seen within a
//! housekeeping tick by what the kernel says they left unread (`inflight.rs`), given no
//! more connections after `STUCK_AFTER`, and killed after the stuck timeout; the
//! connections they never read go to other workers.

use std::time::{Duration, Instant};

use super::handoff::read_up_to_now;
use super::state::Master;

/// A worker that has left a send unread this long gets no more connections until it reads.
pub(super) const STUCK_AFTER: Duration = Duration::from_secs(1);

impl Master {
    /// Every tick: lets go of what workers have read, marks the ones that left something
    /// unread for `STUCK_AFTER` (no more connections) or back, and kills those past the
    /// stuck timeout.
    pub(super) fn check_unread(&mut self) {
        let now = Instant::now();
        let timeout = self.cfg.timings.stuck_timeout;
        let mut kill = Vec::new();
        let mut unstuck = false;
        for (id, w) in &mut self.workers {
            if w.reclaiming || w.inflight.len() == 0 {
                if w.stuck && !w.reclaiming {
                    w.stuck = false;
                    unstuck = true;
                }
                continue;
            }
            read_up_to_now(w);
            let waited = w
                .inflight
                .oldest()
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
            if waited >= timeout {
                tracing::warn!(
                    pid = w.pid,
                    id,
                    "worker has not read its channel for {:.1} s; killing it (its unread connections go to other workers)",
                    waited.as_secs_f64()
                );
                w.stuck_killed = true;
                kill.push(*id);
            } else if waited >= STUCK_AFTER.min(timeout) {
                if !w.stuck {
                    tracing::warn!(
                        pid = w.pid,
                        id,
                        "worker has not read its channel for {:.1} s: no more connections to it",
                        waited.as_secs_f64()
                    );
                    w.stuck = true;
                }
            } else if w.stuck {
                tracing::info!(pid = w.pid, id, "worker reads its channel again");
                w.stuck = false;
                unstuck = true;
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
        w.inflight.read_up_to(unread);
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
