//! The accept loop's backoff when the process is out of fds or memory (pure: no I/O).

use std::time::{Duration, Instant};

use super::Every;

/// Backoff of the accept loop after errors that come back at once until something else
/// changes (out of fds or memory): pause accepting, doubling up to a second, and log at
/// most once a second how many failed.
#[derive(Default)]
pub(crate) struct AcceptBackoff {
    until: Option<Instant>,
    delay: Duration,
    log: Every,
}

const PAUSE_MIN: Duration = Duration::from_millis(20);
const PAUSE_MAX: Duration = Duration::from_secs(1);

impl AcceptBackoff {
    pub fn paused(&self) -> bool {
        self.until.is_some_and(|t| Instant::now() < t)
    }

    pub fn ok(&mut self) {
        self.delay = Duration::ZERO;
        self.until = None;
    }

    pub fn failed(&mut self, e: &std::io::Error) {
        let exhausted = matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        );
        if exhausted {
            self.delay = (self.delay * 2).clamp(PAUSE_MIN, PAUSE_MAX);
            self.until = Some(Instant::now() + self.delay);
        }
        if let Some(failed) = self.log.hit() {
            if exhausted {
                tracing::warn!(
                    failed,
                    pause_ms = self.delay.as_millis() as u64,
                    "accept: {e}; pausing accepts"
                );
            } else {
                tracing::warn!(failed, "accept: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_of_exhaustion_pause_with_a_doubling_delay() {
        let mut b = AcceptBackoff::default();
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        b.failed(&emfile);
        assert!(b.paused());
        assert_eq!(b.delay, PAUSE_MIN);
        for _ in 0..10 {
            b.failed(&emfile);
        }
        assert_eq!(b.delay, PAUSE_MAX);
        b.ok();
        assert!(!b.paused());
        // Other errors (a connection reset before accept) do not pause.
        b.failed(&std::io::Error::from_raw_os_error(libc::ECONNABORTED));
        assert!(!b.paused());
    }
}
