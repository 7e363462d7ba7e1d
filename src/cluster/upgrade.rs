//! Hot upgrade of the master (nginx's `USR2`, einhorn's `upgrade`): `ctl upgrade` or
//! `SIGUSR2` starts a new master from the program on disk with the same arguments, handing
//! it the listening socket (fd 3, `LISTEN_FDS=1`, `LISTEN_PID`, as systemd does), the
//! control socket (fd 4, `BROOD_CONTROL_FD`) and a channel (fd 5, `BROOD_UPGRADE_FD`). The
//! new master starts its workers and accepts nothing until they are all ready; then it
//! writes `r` on the channel, and the old master stops serving `ctl`, tells systemd the
//! new `MAINPID` (when `NOTIFY_SOCKET` is set), retires its workers and exits. A new
//! master that exits, or is not ready within the upgrade timeout (it is then killed), leaves
//! the old one serving, which logs why and answers `ctl upgrade` with an error.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};

use super::proto::{
    CONTROL_FD_ENV, Event, GENERATION_ENV, LISTEN_ENV, Outcome, Source, UPGRADE_FD_ENV,
};
use super::state::{Master, Pending, State};
use crate::error::Result;
use crate::{Child, Command, Signum, Stdio};

/// Whether this process is a new master started by an upgrade (`LISTEN_PID` names it).
fn for_me() -> bool {
    std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id())
}

/// An fd named by `var`, handed by the old master.
pub(crate) fn inherited(var: &str) -> Option<OwnedFd> {
    if !for_me() {
        return None;
    }
    let fd = std::env::var(var).ok()?.parse().ok()?;
    crate::ipc::own_inherited(fd).ok()
}

/// The reuseport address handed by the old master.
pub(crate) fn inherited_listen() -> Option<String> {
    for_me().then(|| std::env::var(LISTEN_ENV).ok()).flatten()
}

/// Sends `MAINPID=pid` to systemd's `NOTIFY_SOCKET`, if set (`@` = abstract name).
fn notify_mainpid(pid: u32) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)?
            }
            None => std::os::unix::net::SocketAddr::from_pathname(&path)?,
        };
        sock.send_to_addr(format!("MAINPID={pid}\n").as_bytes(), &addr)?;
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!("NOTIFY_SOCKET: MAINPID={pid}: {e}");
    }
}

impl Master {
    /// Starts a new master (`ctl upgrade`, `SIGUSR2`). `listener` is the accepting
    /// listener the master's task owns (round-robin, least-connections).
    pub(super) fn start_upgrade(
        &mut self,
        listener: Option<&tokio::io::unix::AsyncFd<std::net::TcpListener>>,
        waiter: Option<oneshot::Sender<String>>,
    ) {
        let refuse = |waiter: Option<oneshot::Sender<String>>, why: &str| {
            tracing::warn!("upgrade refused: {why}");
            if let Some(w) = waiter {
                let _ = w.send(format!("error: upgrade refused: {why}\n"));
            }
        };
        if self.shutting_down.is_some() {
            return refuse(waiter, "the master is shutting down");
        }
        if let Some(p) = &mut self.upgrade {
            // One at a time: this caller learns the outcome of the one going on.
            p.waiters.extend(waiter);
            return;
        }
        match self.spawn_new_master(listener) {
            Ok(pid) => {
                tracing::info!(pid, "upgrade: new master started");
                self.upgrade = Some(Pending {
                    pid,
                    waiters: waiter.into_iter().collect(),
                });
            }
            Err(e) => {
                let why = format!("cannot start the new master: {e}");
                tracing::error!("upgrade failed: {why}; this master keeps serving");
                if let Some(w) = waiter {
                    let _ = w.send(format!(
                        "error: upgrade failed: {why}; the old master keeps serving\n"
                    ));
                }
            }
        }
    }

    fn spawn_new_master(
        &mut self,
        listener: Option<&tokio::io::unix::AsyncFd<std::net::TcpListener>>,
    ) -> Result<u32> {
        let program = match &self.cfg.upgrade_program {
            Some(p) => p.clone(),
            None => self.program_on_disk.clone().ok_or_else(|| {
                crate::Error::new(libc::ENOENT, "upgrade")
                    .with_detail("this program's path is unknown")
            })?,
        };
        let mut cmd = Command::new(&program);
        cmd.args(std::env::args_os().skip(1))
            .env(GENERATION_ENV, (self.generation + 1).to_string())
            .env_remove(UPGRADE_FD_ENV)
            .env_remove(CONTROL_FD_ENV)
            .env_remove(LISTEN_ENV)
            .env_remove("LISTEN_FDNAMES");
        let listen_fd = match (&self.source, listener) {
            (_, Some(l)) => Some(l.get_ref().as_fd().try_clone_to_owned()),
            (Source::Shared(l), None) => Some(l.as_fd().try_clone_to_owned()),
            _ => None,
        };
        match listen_fd {
            Some(fd) => {
                let fd = fd.map_err(|e| crate::error::from_io(e, "upgrade: listener"))?;
                cmd.stdio(3, Stdio::from(fd))
                    .env("LISTEN_FDS", "1")
                    .env_pid("LISTEN_PID");
            }
            None => {
                // Reuseport: the new master's workers bind their own sockets in the group.
                cmd.stdio(3, Stdio::null())
                    .env_remove("LISTEN_FDS")
                    .env(LISTEN_ENV, self.cfg.local_addr.to_string())
                    .env_pid("LISTEN_PID");
            }
        }
        if let Some(fd) = &self.control_fd {
            let fd = fd
                .try_clone()
                .map_err(|e| crate::error::from_io(e, "upgrade: control socket"))?;
            cmd.stdio(4, Stdio::from(fd)).env(CONTROL_FD_ENV, "4");
        } else {
            cmd.stdio(4, Stdio::null());
        }
        // A plain socketpair, not `Stdio::ipc`, whose `BROOD_CHANNEL_FD` the new master's
        // workers would inherit.
        let op = "upgrade: channel";
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|e| crate::error::from_io(e, op))?;
        ours.set_nonblocking(true)
            .map_err(|e| crate::error::from_io(e, op))?;
        let ours =
            tokio::net::UnixStream::from_std(ours).map_err(|e| crate::error::from_io(e, op))?;
        cmd.stdio(5, Stdio::from(OwnedFd::from(theirs)))
            .env(UPGRADE_FD_ENV, "5");
        let child = cmd.spawn()?;
        let pid = child.id().expect("a child not waited for has its pid");
        tokio::spawn(watch_new_master(
            child,
            ours,
            self.cfg.upgrade_timeout,
            self.events_tx.clone(),
        ));
        Ok(pid)
    }

    /// The new master reported (ready or failed).
    pub(super) fn on_upgrade(&mut self, outcome: Outcome) {
        let Some(p) = self.upgrade.take() else {
            return;
        };
        let answer = match outcome {
            Outcome::Ready(pid) => {
                tracing::info!(
                    pid,
                    "upgrade: new master ready; this master stops serving and exits"
                );
                notify_mainpid(pid);
                // The control socket is the new master's now: stop answering on it and
                // leave the socket file in place.
                if let Some(t) = self.control_task.take() {
                    t.abort();
                }
                self.control_fd = None;
                self.handed_over = true;
                self.stop_requested = Some("upgrade");
                format!("upgraded: new master {pid}\n")
            }
            Outcome::Failed(why) => {
                tracing::error!(
                    pid = p.pid,
                    "upgrade failed: {why}; this master keeps serving"
                );
                format!("error: upgrade failed: {why}; the old master keeps serving\n")
            }
        };
        for w in p.waiters {
            let _ = w.send(answer.clone());
        }
    }

    /// In a new master: once every worker is ready, tells the old master (once).
    pub(super) fn report_ready_to_old_master(&mut self) {
        if self.upgrade_parent.is_none()
            || self.workers.len() < self.target
            || !self.workers.values().all(|w| w.state == State::Ready)
        {
            return;
        }
        if let Some(ch) = self.upgrade_parent.take() {
            use std::io::Write;
            let mut s = std::os::unix::net::UnixStream::from(ch);
            match s.write_all(b"r") {
                Ok(()) => tracing::info!("upgrade: ready; the old master hands over"),
                Err(e) => tracing::warn!("upgrade: telling the old master: {e}"),
            }
        }
    }
}

/// Waits for the new master's `r`, its exit, or the timeout (then kills it).
async fn watch_new_master(
    mut child: Child,
    channel: tokio::net::UnixStream,
    timeout: Duration,
    events: mpsc::Sender<Event>,
) {
    let pid = child.id().unwrap_or(0);
    let deadline = Instant::now() + timeout;
    let mut channel = Some(channel);
    let mut buf = [0u8; 16];
    let outcome = loop {
        tokio::select! {
            r = async { channel.as_mut().unwrap().read(&mut buf).await }, if channel.is_some() => {
                match r {
                    Ok(n) if buf[..n].contains(&b'r') => break Outcome::Ready(pid),
                    Ok(n) if n > 0 => {}
                    // Closed without a word: its exit tells why.
                    _ => channel = None,
                }
            }
            exit = child.wait() => {
                let why = match exit {
                    Ok(e) => format!("new master {pid} {e} before it was ready"),
                    Err(e) => format!("new master {pid}: {e}"),
                };
                break Outcome::Failed(why);
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                let _ = child.kill(Signum::KILL);
                let _ = child.wait().await;
                break Outcome::Failed(format!(
                    "new master {pid} not ready within {:.0} s; killed it",
                    timeout.as_secs_f64()
                ));
            }
        }
    };
    // A ready new master outlives this one: its `Child` is dropped without a kill (the
    // reaper takes it if it ends while this master still runs).
    drop(child);
    let _ = events.send(Event::Upgrade(outcome)).await;
}
