//! What happens when a worker exits on its own: restart or not, after which delay, and when
//! a slot has failed too often. Pure logic, tested without processes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::Exit;

/// When the master starts a new worker in place of one that exited on its own (not retired).
///
/// ```
/// use brood::cluster::{Cluster, Restart};
/// use std::time::Duration;
///
/// // Restart crashed workers only, and give up on a slot after 5 restarts in a minute.
/// let cluster = Cluster::builder()
///     .listen("127.0.0.1:0")
///     .workers(2)
///     .restart(Restart::OnFailure)
///     .max_restarts(5, Duration::from_secs(60))
///     .build()?;
/// assert_ne!(cluster.local_addr().port(), 0);
/// assert_eq!("never".parse::<Restart>()?, Restart::Never);
/// # Ok::<(), brood::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Restart {
    /// Always (the default).
    #[default]
    Always,
    /// Only after a failure: an exit status other than 0, or a signal.
    OnFailure,
    /// Never: the slot stays empty (shown as `exited` by `ctl status`).
    Never,
}

impl std::str::FromStr for Restart {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Restart, crate::Error> {
        match s {
            "always" => Ok(Restart::Always),
            "on-failure" => Ok(Restart::OnFailure),
            "never" => Ok(Restart::Never),
            _ => Err(crate::Error::invalid(
                format!("restart policy {s:?}"),
                "use always, on-failure or never",
            )),
        }
    }
}

/// The restart settings of a cluster.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    pub restart: Restart,
    /// At most this many restarts of one slot within the window, then the slot has failed.
    pub max_restarts: Option<(u32, Duration)>,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A worker that lived this long is healthy: its exit resets its slot's backoff.
    pub healthy_after: Duration,
}

/// One worker slot's history, handed from each worker to its replacement: the backoff of
/// one slot never slows another's respawn.
#[derive(Clone, Debug, Default)]
pub(crate) struct Lineage {
    pub restarts: u32,
    /// Early deaths in a row (each doubles the delay).
    pub streak: u32,
    /// When the slot's recent restarts happened (for `max_restarts`).
    pub recent: VecDeque<Instant>,
    /// How the slot's previous worker ended (for `ctl status`).
    pub last_exit: Option<Exit>,
}

/// What to do about a worker that exited on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Start a replacement after this delay.
    Respawn(Duration),
    /// The policy says no restart: the slot stays empty.
    Exited,
    /// Too many restarts within the window: the slot has failed.
    Failed,
}

/// Signals someone outside sends to stop a process (an operator, the OOM killer, a
/// supervisor): a worker that was ready and then died of one did not crash by itself.
fn external(signal: i32) -> bool {
    matches!(
        signal,
        libc::SIGKILL | libc::SIGTERM | libc::SIGINT | libc::SIGHUP | libc::SIGQUIT
    )
}

impl Policy {
    /// Decides about a worker that lived `lived`, was ready (or not), and ended with `exit`;
    /// updates the slot's `lineage`.
    pub fn on_exit(
        &self,
        lineage: &mut Lineage,
        exit: Exit,
        lived: Duration,
        was_ready: bool,
        now: Instant,
    ) -> Verdict {
        let failed = !exit.success();
        match self.restart {
            Restart::Never => return Verdict::Exited,
            Restart::OnFailure if !failed => return Verdict::Exited,
            _ => {}
        }
        if let Some((max, within)) = self.max_restarts {
            while lineage
                .recent
                .front()
                .is_some_and(|t| now.duration_since(*t) > within)
            {
                lineage.recent.pop_front();
            }
            if lineage.recent.len() >= max as usize {
                return Verdict::Failed;
            }
            lineage.recent.push_back(now);
        }
        lineage.restarts += 1;
        if lived >= self.healthy_after || (was_ready && external(exit.signal)) {
            lineage.streak = 0;
            return Verdict::Respawn(Duration::ZERO);
        }
        lineage.streak = (lineage.streak + 1).min(20);
        Verdict::Respawn(
            self.backoff_min
                .saturating_mul(1 << (lineage.streak - 1).min(16))
                .min(self.backoff_max),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            restart: Restart::Always,
            max_restarts: None,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            healthy_after: Duration::from_secs(5),
        }
    }

    const CRASH: Exit = Exit {
        status: 3,
        signal: 0,
    };
    const KILLED: Exit = Exit {
        status: 0,
        signal: libc::SIGKILL,
    };
    const CLEAN: Exit = Exit {
        status: 0,
        signal: 0,
    };

    #[test]
    fn early_crashes_double_the_delay_per_slot() {
        let p = policy();
        let (mut a, mut b) = (Lineage::default(), Lineage::default());
        let now = Instant::now();
        let young = Duration::from_millis(10);
        let delays: Vec<_> = (0..4)
            .map(|_| p.on_exit(&mut a, CRASH, young, false, now))
            .collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800].map(|ms| Verdict::Respawn(Duration::from_millis(ms)))
        );
        // Another slot starts from scratch.
        assert_eq!(
            p.on_exit(&mut b, CRASH, young, false, now),
            Verdict::Respawn(Duration::from_millis(100))
        );
        assert_eq!(a.restarts, 4);
    }

    #[test]
    fn a_ready_worker_killed_from_outside_is_not_a_crash_loop() {
        let p = policy();
        let mut l = Lineage::default();
        for _ in 0..5 {
            let v = p.on_exit(
                &mut l,
                KILLED,
                Duration::from_millis(50),
                true,
                Instant::now(),
            );
            assert_eq!(v, Verdict::Respawn(Duration::ZERO));
        }
        // Killed before it was ready: that counts.
        let v = p.on_exit(
            &mut l,
            KILLED,
            Duration::from_millis(50),
            false,
            Instant::now(),
        );
        assert_eq!(v, Verdict::Respawn(Duration::from_millis(100)));
    }

    #[test]
    fn restart_policies_and_the_restart_limit() {
        let mut p = policy();
        let now = Instant::now();
        let lived = Duration::from_secs(60);
        p.restart = Restart::Never;
        assert_eq!(
            p.on_exit(&mut Lineage::default(), CRASH, lived, true, now),
            Verdict::Exited
        );
        p.restart = Restart::OnFailure;
        assert_eq!(
            p.on_exit(&mut Lineage::default(), CLEAN, lived, true, now),
            Verdict::Exited
        );
        assert_eq!(
            p.on_exit(&mut Lineage::default(), CRASH, lived, true, now),
            Verdict::Respawn(Duration::ZERO)
        );
        p.restart = Restart::Always;
        p.max_restarts = Some((2, Duration::from_secs(10)));
        let mut l = Lineage::default();
        assert!(matches!(
            p.on_exit(&mut l, CRASH, lived, true, now),
            Verdict::Respawn(_)
        ));
        assert!(matches!(
            p.on_exit(&mut l, CRASH, lived, true, now),
            Verdict::Respawn(_)
        ));
        assert_eq!(p.on_exit(&mut l, CRASH, lived, true, now), Verdict::Failed);
        // Outside the window the old restarts no longer count.
        let later = now + Duration::from_secs(11);
        assert!(matches!(
            p.on_exit(&mut l, CRASH, lived, true, later),
            Verdict::Respawn(_)
        ));
    }
}
