//! systemd's readiness protocol (`sd_notify(3)`, a `Type=notify` service), sent with the
//! [`sd-notify`](https://docs.rs/sd-notify) crate: `READY=1`, `RELOADING=1`, `STOPPING=1`,
//! `STATUS=...` and `WATCHDOG=1` datagrams to the socket named by `NOTIFY_SOCKET`. Without
//! that variable every call does nothing, so the same program runs anywhere.
//!
//! ```
//! use brood::notify::Notifier;
//! let mut n = Notifier::from_env();
//! n.status("4 workers");
//! n.ready();       // once the service answers
//! n.watchdog();    // call often: pings at half of WATCHDOG_USEC when systemd asks for it
//! n.stopping();
//! ```

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Sends a service's state to systemd, when it runs under it (`NOTIFY_SOCKET` is set).
///
/// Each state is sent only when it changes (a second `ready()` in a row sends nothing,
/// a `status()` with the same text neither); `READY=1` carries `MAINPID=` with this
/// process's pid, so systemd follows the process that says it is ready (it accepts that
/// from another process than the one it started only with `NotifyAccess=all`). A send that
/// fails is logged once (tracing, warn) and never stops the service.
#[derive(Debug)]
pub struct Notifier {
    enabled: bool,
    /// Half of `WATCHDOG_USEC`, when systemd asked for pings.
    watchdog: Option<Duration>,
    last_ping: Option<Instant>,
    state: Option<State>,
    status: String,
    warned: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Ready,
    Reloading,
    Stopping,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID` (a watchdog meant for
    /// another process is not this one's).
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty()),
            watchdog: sd_notify::watchdog_enabled()
                .filter(|d| !d.is_zero())
                .map(|d| d / 2),
            last_ping: None,
            state: None,
            status: String::new(),
            warned: false,
        }
    }

    /// Whether a service manager listens (`NOTIFY_SOCKET` is set).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// How often [`watchdog`](Notifier::watchdog) pings: half of `WATCHDOG_USEC`, `None`
    /// when systemd asked for no pings.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.enabled)
    }

    /// `READY=1` (with `MAINPID=`): startup is over, or a reload is.
    pub fn ready(&mut self) {
        if self.set(State::Ready) {
            let pid = std::process::id();
            self.send(&[NotifyState::Ready, NotifyState::MainPid(pid)]);
        }
    }

    /// `RELOADING=1` (with `MONOTONIC_USEC=`, as `Type=notify-reload` wants): a reload
    /// started; [`ready`](Notifier::ready) ends it.
    pub fn reloading(&mut self) {
        if self.set(State::Reloading) {
            match NotifyState::monotonic_usec_now() {
                Ok(now) => self.send(&[NotifyState::Reloading, now]),
                Err(_) => self.send(&[NotifyState::Reloading]),
            }
        }
    }

    /// `STOPPING=1`: the graceful shutdown started.
    pub fn stopping(&mut self) {
        if self.set(State::Stopping) {
            self.send(&[NotifyState::Stopping]);
        }
    }

    /// `STATUS=...`, a line `systemctl status` shows; sent when it changed.
    pub fn status(&mut self, status: &str) {
        if !self.enabled || self.status == status {
            return;
        }
        self.status = status.to_owned();
        // One line: a newline would end the assignment.
        let line = status.replace('\n', " ");
        self.send(&[NotifyState::Status(&line)]);
    }

    /// `WATCHDOG=1` if half of `WATCHDOG_USEC` has passed since the last ping (or none was
    /// sent yet). Call it from the loop that must be alive, more often than that.
    pub fn watchdog(&mut self) {
        let Some(every) = self.watchdog_interval() else {
            return;
        };
        let now = Instant::now();
        if self
            .last_ping
            .is_some_and(|t| now.duration_since(t) < every)
        {
            return;
        }
        self.last_ping = Some(now);
        self.send(&[NotifyState::Watchdog]);
    }

    /// Moves to `state`; whether that is a change worth sending.
    fn set(&mut self, state: State) -> bool {
        if !self.enabled || self.state == Some(state) {
            return false;
        }
        self.state = Some(state);
        true
    }

    fn send(&mut self, states: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(states) {
            if !self.warned {
                self.warned = true;
                tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
            }
        }
    }
}
