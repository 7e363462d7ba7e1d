//! The master's signals, watched by a task of their own that passes each one to the
//! master's task as an [`Event::Signal`]. The master's loop then waits on one channel
//! instead of six watchers: each watcher polled in a `select!` registers with (and on
//! leaving, unregisters from) its `Notify`, and the master's loop turns once per accepted
//! batch of connections.

use tokio::sync::{mpsc, oneshot};

use super::proto::Event;
use crate::Signum;
use crate::error::Result;
use crate::signal::Signal;

/// Tells the signals' task that the graceful shutdown started: it stops watching `SIGTERM`
/// and `SIGINT`, so a second one gets the default action (the master ends at once; its
/// workers follow through `PR_SET_PDEATHSIG`).
pub(super) struct StopTermInt(Option<oneshot::Sender<()>>);

impl StopTermInt {
    pub(super) fn stop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Installs brood's watchers of the master's signals (`SIGTERM`, `SIGINT`, `SIGHUP`,
/// `SIGTTIN`, `SIGTTOU`, `SIGUSR2`) and starts the task that sends each delivery to
/// `events`. The task stops `SIGTERM` and `SIGINT` itself once it passed one of them on,
/// and ends (restoring every disposition) when the master's task drops its receiver.
pub(super) fn watch(events: mpsc::Sender<Event>) -> Result<StopTermInt> {
    let (mut term, mut int, mut hup) = (
        Signal::new(Signum::TERM)?,
        Signal::new(Signum::INT)?,
        Signal::new(Signum::HUP)?,
    );
    let (mut ttin, mut ttou) = (Signal::new(Signum::TTIN)?, Signal::new(Signum::TTOU)?);
    let mut usr2 = Signal::new(Signum::USR2)?;
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            let s = tokio::select! {
                Some(s) = term.recv(), if term.is_active() => {
                    term.stop();
                    int.stop();
                    s
                }
                Some(s) = int.recv(), if int.is_active() => {
                    term.stop();
                    int.stop();
                    s
                }
                Some(s) = hup.recv() => s,
                Some(s) = ttin.recv() => s,
                Some(s) = ttou.recv() => s,
                Some(s) = usr2.recv() => s,
                // (Once term is stopped this branch is off: a oneshot is polled once.)
                _ = &mut stop_rx, if term.is_active() => {
                    term.stop();
                    int.stop();
                    continue;
                }
                _ = events.closed() => return,
            };
            if events.send(Event::Signal(s)).await.is_err() {
                return;
            }
        }
    });
    Ok(StopTermInt(Some(stop_tx)))
}
