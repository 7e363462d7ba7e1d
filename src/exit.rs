//! `Exit`: how a child ended (libuv's `exit_status` and `term_signal`).

use std::fmt;

use crate::signum::Signum;

/// How a child ended, exactly as libuv's `exit_cb` gets it: `status` is the exit code (0
/// when killed) and `signal` the terminating signal (0 when it exited).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
/// let mut child = brood::Command::new("sleep").arg("10").spawn()?;
/// child.kill(brood::Signum::TERM)?;
/// let exit = child.wait().await?;
/// assert_eq!((exit.status, exit.signal), (0, libc::SIGTERM));
/// assert_eq!(exit.to_string(), "killed by SIGTERM");
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Exit {
    /// The exit code, 0 when the child was killed by a signal.
    pub status: i64,
    /// The signal that killed the child, 0 when it exited.
    pub signal: i32,
}

impl Exit {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        self.status == 0 && self.signal == 0
    }

    /// The exit code when the child exited (not killed).
    pub fn code(&self) -> Option<i64> {
        (self.signal == 0).then_some(self.status)
    }

    /// The terminating signal, when killed.
    pub fn term_signal(&self) -> Option<Signum> {
        (self.signal != 0).then_some(Signum::new(self.signal))
    }

    /// What a shell would give as `$?`: the status, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        if self.signal != 0 {
            128 + self.signal
        } else {
            (self.status & 0xff) as i32
        }
    }

    pub(crate) fn from_wait_status(status: libc::c_int) -> Exit {
        if libc::WIFSIGNALED(status) {
            Exit {
                status: 0,
                signal: libc::WTERMSIG(status),
            }
        } else {
            Exit {
                status: libc::WEXITSTATUS(status) as i64,
                signal: 0,
            }
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.signal != 0 {
            write!(f, "killed by {}", Signum::new(self.signal))
        } else {
            write!(f, "exited with status {}", self.status)
        }
    }
}
