//! What the master tells systemd (`Type=notify`, through [`crate::notify::Notifier`]):
//! `READY=1` once every worker is ready and the listener is open, `RELOADING=1` ...
//! `READY=1` around a rolling restart, `STOPPING=1` when the graceful shutdown starts,
//! `STATUS=` with the workers and restarts, and `WATCHDOG=1` at half of `WATCHDOG_USEC`
//! while the master's loop runs. All derived from the master's state after each of its
//! events (the master passes what it is: `Systemd::update`), so no other code of the master
//! has to know about systemd.

use crate::notify::Notifier;

/// The notifier, and whether startup readiness was reached (after it, a worker that dies
/// does not make the service "not ready" again: systemd has no such state).
#[derive(Debug)]
pub(super) struct Systemd {
    notifier: Notifier,
    started: bool,
    /// When the state was last looked at, and the two flags then: between ticks, only a
    /// change of phase is looked at again (not every accepted connection).
    last: Option<(std::time::Instant, bool, bool)>,
}

impl Systemd {
    pub(super) fn from_env() -> Systemd {
        Systemd {
            notifier: Notifier::from_env(),
            started: false,
            last: None,
        }
    }

    /// Sends systemd whatever changed since the last call (nothing without
    /// `NOTIFY_SOCKET`). Called after every event of the master's loop, and at least every
    /// 50 ms (its housekeeping tick), which also paces the watchdog. `counts` gives the
    /// ready workers and the restarts so far (asked only when something is sent).
    pub(super) fn update(
        &mut self,
        reloading: bool,
        stopping: bool,
        target: usize,
        counts: impl FnOnce() -> (usize, u64),
    ) {
        if !self.notifier.is_enabled() {
            return;
        }
        let now = std::time::Instant::now();
        let recent = self.last.is_some_and(|(at, r, s)| {
            (r, s) == (reloading, stopping)
                && now.duration_since(at) < std::time::Duration::from_millis(20)
        });
        if recent {
            return;
        }
        self.last = Some((now, reloading, stopping));
        let (ready, restarts) = counts();
        let phase = if stopping {
            ", stopping"
        } else if reloading && self.started {
            ", reloading"
        } else {
            ""
        };
        let status = format!("{ready}/{target} workers ready, {restarts} restarts{phase}");
        let sd = self;
        // The status first: `systemctl status` then shows why the state changed.
        sd.notifier.status(&status);
        if stopping {
            sd.notifier.stopping();
        } else if !sd.started {
            // The listener is open from `Cluster::build` on; the workers must all be ready.
            if ready >= target && !reloading {
                sd.started = true;
                sd.notifier.ready();
            }
        } else if reloading {
            sd.notifier.reloading();
        } else {
            sd.notifier.ready();
        }
        sd.notifier.watchdog();
    }
}
