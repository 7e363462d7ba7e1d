//! One task per worker: owns its `Child` and the reading side of its channel, and reports
//! to the master. What the worker says is summed up per read (one event per read, never one
//! per byte), the events queue is bounded (a flooding worker waits for the master, so the
//! master's memory stays flat), and fds a worker attaches to its messages are closed at once.

use std::time::Duration;

use tokio::sync::mpsc;

use super::Every;
use super::proto::{Event, Report};
use crate::ipc::Channel;
use crate::{Exit, Signum};

/// After an error, reading that worker pauses this long (a worker that floods errors is
/// slowed down, never a spin); errors are logged at most once a second.
const ERROR_PAUSE: Duration = Duration::from_millis(5);

pub(super) async fn watch_worker(
    id: u64,
    mut child: crate::Child,
    mut channel: Option<Channel>,
    mut kill: mpsc::UnboundedReceiver<Signum>,
    events: mpsc::Sender<Event>,
) {
    let mut buf = [0u8; 4096];
    let mut errors = Every::default();
    if let Some(ch) = &mut channel {
        // A worker never sends handles: take as many as the kernel allows, so none is an
        // error, and close them (below).
        ch.set_max_handles(usize::MAX);
    }
    loop {
        tokio::select! {
            exit = child.wait() => {
                let exit = exit.unwrap_or(Exit { status: -1, signal: 0 });
                let _ = events.send(Event::Exited(id, exit)).await;
                return;
            }
            r = async { channel.as_mut().unwrap().recv(&mut buf).await }, if channel.is_some() => {
                let ch = channel.as_mut().unwrap();
                while ch.accept_handle().is_some() {} // dropped: closed
                match r {
                    Ok(0) => channel = None, // the worker closed it; its exit follows
                    Ok(n) => {
                        let mut report = Report::default();
                        report.add(&buf[..n]);
                        if !report.is_empty() && events.send(Event::Report(id, report)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        if let Some(n) = errors.hit() {
                            tracing::warn!(id, errors = n, "worker channel: {e}");
                        }
                        tokio::time::sleep(ERROR_PAUSE).await;
                    }
                }
            }
            Some(sig) = kill.recv() => {
                let _ = child.kill(sig);
            }
        }
    }
}
