//! The thread that spawns workers. `PR_SET_PDEATHSIG` fires when the *thread* that spawned
//! a child exits, not the process: a worker spawned from a runtime thread that ends (a
//! `block_on` on a short-lived thread, a blocking-pool thread) would be killed while the
//! master lives. So every worker is spawned from this one thread, which is never stopped:
//! it ends only with the process, and then the workers should die.

use std::sync::mpsc::{Sender, channel, sync_channel};
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};
use crate::{Child, Command};

type Job = Box<dyn FnOnce() + Send>;

static SPAWNER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();

fn spawner() -> Result<&'static Mutex<Sender<Job>>> {
    if let Some(s) = SPAWNER.get() {
        return Ok(s);
    }
    let (tx, rx) = channel::<Job>();
    let started = std::thread::Builder::new()
        .name("brood-spawner".into())
        .spawn(move || {
            // Ends only if every sender is gone, and the static one never is.
            while let Ok(job) = rx.recv() {
                job();
            }
        });
    if let Err(e) = started {
        return Err(Error::new(
            e.raw_os_error().unwrap_or(libc::EAGAIN),
            "cluster: start the spawner thread",
        ));
    }
    // Two callers racing here both start a thread; the loser's thread ends at once (its
    // sender is dropped), so one spawner remains.
    Ok(SPAWNER.get_or_init(|| Mutex::new(tx)))
}

/// Spawns `cmd` from the spawner thread, registering the child's fds with the caller's
/// tokio runtime. Blocks the caller for the time of the spawn (as an inline spawn would).
pub(super) fn spawn(mut cmd: Command) -> Result<Child> {
    let handle = tokio::runtime::Handle::current();
    let (tx, rx) = sync_channel(1);
    let job: Job = Box::new(move || {
        let _runtime = handle.enter();
        let _ = tx.send(cmd.spawn());
    });
    let sent = spawner()?
        .lock()
        .map_err(|_| Error::new(libc::EIO, "cluster: spawner thread"))?
        .send(job);
    if sent.is_err() {
        return Err(Error::new(libc::EIO, "cluster: spawner thread is gone"));
    }
    rx.recv()
        .map_err(|_| Error::new(libc::EIO, "cluster: spawner thread did not answer"))?
}
