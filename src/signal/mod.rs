//! Signal watchers (`uv_signal_t`): many per signal, on any runtime or thread, each told of
//! every delivery; and when the last watcher of a signal stops, the disposition that was
//! there before the first one comes back.
//!
//! ```
//! use brood::{Signum, signal::Signal};
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
//! let mut a = Signal::new(Signum::USR1)?;
//! let mut b = Signal::new(Signum::USR1)?;
//! brood::kill(std::process::id() as i32, Signum::USR1)?;
//! assert_eq!(a.recv().await, Some(Signum::USR1));
//! assert_eq!(b.recv().await, Some(Signum::USR1));
//! // Dropping (or stopping) the last watcher gives SIGUSR1 its default action back.
//! drop((a, b));
//! # Ok(()) }
//! ```
//!
//! How it works: one handler for every watched signal records the catch in an atomic flag
//! and writes a byte to a close-on-exec self-pipe (nothing else: it must be
//! async-signal-safe). A dispatcher thread reads the pipe and bumps a per-signal count in
//! a `tokio::sync::watch` channel that every watcher holds, so a watcher wakes on whichever
//! runtime (or plain executor) polls it. Deliveries that arrive before a watcher awaits are
//! kept; several deliveries before it awaits are one, as the kernel coalesces them.
//!
//! The self-pipe and the dispatcher thread live as long as the process once the first
//! watcher starts. After a plain `fork(2)` (not brood's spawn, whose children start with
//! default dispositions), watchers in the forked child are not told: the thread is not
//! copied.

mod registry;
mod sys;

use std::fmt;

use crate::Signum;
use crate::error::Result;

/// A watcher of one signal (`uv_signal_t`).
///
/// [`Signal::new`] starts it; every delivery of the signal from then on is seen by
/// [`recv`](Signal::recv) (deliveries that come before it is awaited are kept, several are
/// one). All watchers of a signal are told, whatever runtime or thread they live on.
/// [`stop`](Signal::stop) (or drop) ends it; when the last watcher of a signal stops, the
/// disposition that was there before the first one (the default action, `SIG_IGN`, or
/// another handler) is put back, so a second Ctrl-C kills the program as it should.
///
/// SIGKILL and SIGSTOP cannot be watched, nor the fault signals (SIGSEGV, SIGBUS, SIGILL,
/// SIGFPE), whose handler would return to the faulting instruction: those give `EINVAL`.
///
/// ```
/// use brood::{Signum, signal::Signal};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
/// let mut sig = Signal::new(Signum::HUP)?;
/// brood::kill(std::process::id() as i32, Signum::HUP)?;
/// assert_eq!(sig.recv().await, Some(Signum::HUP));
/// sig.stop();
/// assert_eq!(sig.recv().await, None);
///
/// let err = Signal::new(Signum::KILL).unwrap_err();
/// assert_eq!(err.name(), "EINVAL");
/// # Ok(()) }
/// ```
pub struct Signal {
    signum: Signum,
    oneshot: bool,
    reg: Option<registry::Registration>,
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signal")
            .field("signum", &self.signum)
            .field("oneshot", &self.oneshot)
            .field("active", &self.is_active())
            .finish()
    }
}

impl Signal {
    /// Starts watching `signum` (`uv_signal_init` + `uv_signal_start`). Every delivery from
    /// now on reaches [`recv`](Signal::recv). Needs no runtime.
    pub fn new(signum: impl Into<Signum>) -> Result<Signal> {
        Signal::started(signum.into(), false)
    }

    /// A watcher that fires once and then stops itself (`uv_signal_start_oneshot`): the
    /// first delivery stops it, even before it is received, so if it was the signal's last
    /// watcher the next delivery gets the old disposition.
    ///
    /// ```
    /// use brood::{Signum, signal::Signal};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
    /// let mut once = Signal::oneshot(Signum::WINCH)?;
    /// brood::kill(std::process::id() as i32, Signum::WINCH)?;
    /// assert_eq!(once.recv().await, Some(Signum::WINCH));
    /// assert!(!once.is_active());
    /// assert_eq!(once.recv().await, None);
    /// # Ok(()) }
    /// ```
    pub fn oneshot(signum: impl Into<Signum>) -> Result<Signal> {
        Signal::started(signum.into(), true)
    }

    fn started(signum: Signum, oneshot: bool) -> Result<Signal> {
        let reg = registry::start(signum, oneshot)?;
        Ok(Signal {
            signum,
            oneshot,
            reg: Some(reg),
        })
    }

    /// The signal watched.
    pub fn signum(&self) -> Signum {
        self.signum
    }

    /// Whether it is started (a fired one-shot watcher whose delivery has not been received
    /// yet still counts).
    pub fn is_active(&self) -> bool {
        self.reg.is_some()
    }

    /// Starts a stopped watcher again (installing brood's handler again if no other watcher
    /// of the signal is left), watching every delivery. Nothing if it already does.
    pub fn start(&mut self) -> Result<()> {
        self.restart(false)
    }

    /// Starts the watcher again as a one-shot watcher. Nothing if it already is one.
    pub fn start_oneshot(&mut self) -> Result<()> {
        self.restart(true)
    }

    fn restart(&mut self, oneshot: bool) -> Result<()> {
        if self.reg.is_some() && self.oneshot == oneshot {
            return Ok(());
        }
        // The new registration first, so the signal is never without a handler between.
        let new = registry::start(self.signum, oneshot)?;
        self.stop();
        self.reg = Some(new);
        self.oneshot = oneshot;
        Ok(())
    }

    /// Stops watching (`uv_signal_stop`). If this was the signal's last watcher, its
    /// previous disposition comes back. A stopped watcher's `recv` gives `None`.
    pub fn stop(&mut self) {
        if let Some(reg) = self.reg.take() {
            registry::stop(self.signum, reg.id);
        }
    }

    /// Waits for the next delivery (or takes one that came since the last call) and gives
    /// the signal number, as libuv's callback gets it. `None` when the watcher is stopped;
    /// a one-shot watcher stops after its one delivery. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Signum> {
        loop {
            if let Some(signum) = self.try_recv() {
                return Some(signum);
            }
            let reg = self.reg.as_mut()?;
            if reg.rx.changed().await.is_err() && *reg.rx.borrow() == reg.seen {
                // No sender and nothing new: the table forgot this watcher.
                self.reg = None;
                return None;
            }
        }
    }

    /// Takes a delivery that came since the last one taken, without waiting.
    pub fn try_recv(&mut self) -> Option<Signum> {
        let reg = self.reg.as_mut()?;
        let count = *reg.rx.borrow_and_update();
        if count == reg.seen {
            return None;
        }
        reg.seen = count;
        if self.oneshot {
            self.stop();
        }
        Some(self.signum)
    }
}

/// Whether `signum` is ignored (`SIG_IGN`) in this process right now, as `nohup` or a
/// shell's `trap '' HUP` leave it. A program that forwards signals to its children should
/// leave such a signal alone, so that the children inherit the ignore (what `brood run`
/// does).
///
/// ```
/// assert!(!brood::signal::is_ignored(brood::Signum::USR1));
/// ```
pub fn is_ignored(signum: impl Into<Signum>) -> bool {
    sys::is_ignored(signum.into().as_raw())
}

impl Drop for Signal {
    fn drop(&mut self) {
        self.stop();
    }
}
