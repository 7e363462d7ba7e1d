//! The accept loops' backoff (the cluster master's and each CGI front's) after errors that
//! come back at once until something else changes: out of fds or memory, the connection
//! stays in the backlog and the listener stays readable. Accepting pauses, doubling from
//! 20 ms up to 1 s, and a line is due at most once a second with how many accepts failed.
//! Pure (no I/O): each caller logs in its own way.

use std::io;
use std::time::{Duration, Instant};

const PAUSE_MIN: Duration = Duration::from_millis(20);
const PAUSE_MAX: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub(crate) struct AcceptBackoff {
    delay: Duration,
    until: Option<Instant>,
    failed: u64,
    logged: Option<Instant>,
}

/// What one failed accept means.
#[derive(Debug, PartialEq)]
pub(crate) struct Failed {
    /// How long to pause accepting: zero for an error of one connection (a reset before
    /// accept), which does not pause.
    pub pause: Duration,
    /// A log line is due: how many accepts failed since the last one.
    pub log: Option<u64>,
}

impl AcceptBackoff {
    /// An accept worked: no more pause.
    pub(crate) fn ok(&mut self) {
        self.delay = Duration::ZERO;
        self.until = None;
    }

    /// Whether accepting is paused now (the cluster master asks; the CGI fronts sleep).
    #[cfg_attr(
        not(feature = "cluster"),
        allow(dead_code, reason = "only the cluster master asks")
    )]
    pub(crate) fn paused(&self) -> bool {
        self.until.is_some_and(|t| Instant::now() < t)
    }

    /// An accept failed with `e`.
    pub(crate) fn failed(&mut self, e: &io::Error) -> Failed {
        let exhausted = matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        );
        let now = Instant::now();
        let pause = if exhausted {
            self.delay = (self.delay * 2).clamp(PAUSE_MIN, PAUSE_MAX);
            self.until = Some(now + self.delay);
            self.delay
        } else {
            Duration::ZERO
        };
        self.failed += 1;
        let log = self.logged.is_none_or(|t| now >= t + LOG_EVERY).then(|| {
            self.logged = Some(now);
            std::mem::take(&mut self.failed)
        });
        Failed { pause, log }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_pauses_doubling_and_a_line_is_due_once_a_second() {
        let mut b = AcceptBackoff::default();
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let first = b.failed(&emfile);
        assert_eq!(
            first,
            Failed {
                pause: PAUSE_MIN,
                log: Some(1)
            }
        );
        assert!(b.paused());
        let mut lines = 0;
        for _ in 0..10 {
            lines += b.failed(&emfile).log.is_some() as u32;
        }
        assert_eq!(lines, 0, "at most one line a second");
        assert_eq!(b.failed(&emfile).pause, PAUSE_MAX);
        b.ok();
        assert!(!b.paused());
        assert_eq!(b.failed(&emfile).pause, PAUSE_MIN);
        // An error of one connection (a reset before accept) does not pause.
        b.ok();
        assert_eq!(
            b.failed(&io::Error::from_raw_os_error(libc::ECONNABORTED))
                .pause,
            Duration::ZERO
        );
        assert!(!b.paused());
    }
}
