//! One task per worker: owns its `Child` and the reading side of its channel, and reports
//! to the master. What the worker says is summed up per read (one event per read, never one
//! per byte), the events queue is bounded (a flooding worker waits for the master, so the
//! master's memory stays flat), and fds a worker attaches to its messages are closed at once.

use std::time::Duration;

use tokio::sync::mpsc;

use super::proto::{Event, Report};
use super::{Every, node};
use crate::ipc::Channel;
use crate::{Exit, Signum};

/// After an error, reading that worker pauses this long (a worker that floods errors is
/// slowed down, never a spin); errors are logged at most once a second.
const ERROR_PAUSE: Duration = Duration::from_millis(5);

pub(super) async fn watch_worker(
    id: u64,
    mut child: crate::Child,
    mut channel: Option<Channel>,
    node: bool,
    mut kill: mpsc::UnboundedReceiver<Signum>,
    events: mpsc::Sender<Event>,
) {
    let mut buf = [0u8; 4096];
    let mut errors = Every::default();
    if let Some(ch) = &mut channel {
        // A worker never sends handles: take as many as the kernel allows, so none is an
        // error, and close them (below).
        ch.set_max_handles(usize::MAX);
        ch.set_max_message(node::MAX_LINE);
    }
    loop {
        tokio::select! {
            exit = child.wait() => {
                let exit = exit.unwrap_or(Exit { status: -1, signal: 0 });
                let _ = events.send(Event::Exited(id, exit)).await;
                return;
            }
            r = async {
                let ch = channel.as_mut().unwrap();
                if node {
                    return node::read(ch).await;
                }
                let r = ch.recv(&mut buf).await;
                while ch.accept_handle().is_some() {} // dropped: closed
                r.map(|n| {
                    (n > 0).then(|| {
                        let mut report = Report::default();
                        report.add(&buf[..n]);
                        report
                    })
                })
            }, if channel.is_some() => {
                match r {
                    Ok(None) => channel = None, // the worker closed it; its exit follows
                    Ok(Some(report)) => {
                        if !report.is_empty() && events.send(Event::Report(id, report)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) if node && e.name() == "EMSGSIZE" => {
                        // A Node line that never ends: nothing after it can be read.
                        tracing::warn!(id, "worker channel: {e}; no longer read");
                        channel = None;
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
