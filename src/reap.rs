//! Knowing when a child ends, and reaping it: through its pidfd on the tokio reactor (no
//! global SIGCHLD handler), a blocking waiter thread where the kernel has no pidfds, and a
//! background reaper for children whose `Child` was dropped.
//!
//! Kernels with part of pidfd support are handled: 5.2 gives a pidfd with CLONE_PIDFD
//! but cannot poll it (then `wait` uses the waiter thread), 5.3 polls it but has no
//! `waitid(P_PIDFD)` (then the reap goes by pid, which cannot have been reused while the
//! child is an unreaped zombie: true as long as nothing else in the process reaps brood's
//! children, such as a `waitpid(-1)` elsewhere or SIGCHLD set to `SIG_IGN`, which break
//! libuv and tokio too). `BROOD_NO_PIDFD=1` forces the no-pidfd path,
//! `BROOD_NO_PIDFD_POLL=1` the 5.2 one and `BROOD_NO_PIDFD_WAITID=1` the 5.3 one, for tests. Dropped children are reaped by one
//! background thread; if it cannot be started (no memory, thread limit), a dropped child
//! stays a zombie until this process exits.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use crate::Signum;
use crate::error::{Error, Result, from_io};
use crate::exit::Exit;

/// How a child is watched: its pidfd (plain, or registered with the reactor), or its pid.
#[derive(Default)]
enum Watch {
    #[default]
    Pid,
    Fd(OwnedFd),
    /// Registered with the reactor of the runtime with this id.
    Async(AsyncFd<OwnedFd>, tokio::runtime::Id),
}

/// Without pidfds: a thread that waits (without reaping, `WNOWAIT`) and then wakes `wait`.
struct Waiter {
    notify: Notify,
    started: AtomicBool,
}

/// A child's identity for waiting, reaping and signalling.
#[derive(Default)]
pub(crate) struct PidFd {
    pid: i32,
    watch: Watch,
    waiter: Option<Arc<Waiter>>,
}

impl PidFd {
    pub(crate) fn new(pid: i32, fd: Option<OwnedFd>) -> PidFd {
        PidFd {
            pid,
            watch: fd.map_or(Watch::Pid, Watch::Fd),
            waiter: None,
        }
    }

    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.watch {
            Watch::Pid => None,
            Watch::Fd(fd) => Some(fd.as_fd()),
            Watch::Async(a, _) => Some(a.get_ref().as_fd()),
        }
    }

    /// Reaps the child if it has exited.
    pub(crate) fn try_wait(&self) -> Result<Option<Exit>> {
        if let Some(fd) = self.fd() {
            match waitid_pidfd(fd) {
                Err(e) if e.errno() == libc::EINVAL => {} // no P_PIDFD (< 5.4): use the pid
                other => return other,
            }
        }
        try_wait_pid(self.pid)
    }

    /// Waits for the exit and reaps.
    pub(crate) async fn wait(&mut self) -> Result<Exit> {
        if let Some(exit) = self.try_wait()? {
            return Ok(exit);
        }
        let Ok(here) = tokio::runtime::Handle::try_current().map(|h| h.id()) else {
            return Err(Error::invalid("wait", "needs a tokio runtime"));
        };
        if matches!(self.watch, Watch::Async(_, id) if id != here) {
            // Registered by a wait in another runtime, whose reactor may be gone or not
            // running (then its readiness would never reach us): move it to this one.
            let Watch::Async(a, _) = std::mem::take(&mut self.watch) else {
                unreachable!()
            };
            self.watch = Watch::Fd(a.into_inner());
        }
        if let Watch::Fd(_) = self.watch {
            let Watch::Fd(fd) = std::mem::take(&mut self.watch) else {
                unreachable!()
            };
            match register(fd) {
                Ok(a) => self.watch = Watch::Async(a, here),
                Err((fd, e)) => {
                    self.watch = Watch::Fd(fd);
                    // Linux 5.2 makes pidfds that cannot be polled (epoll says EPERM):
                    // wait with the thread below instead.
                    if e.raw_os_error() != Some(libc::EPERM) {
                        return Err(from_io(e, "register pidfd"));
                    }
                }
            }
        }
        if let Watch::Async(a, _) = &self.watch {
            loop {
                let mut ready = a.readable().await.map_err(|e| from_io(e, "poll pidfd"))?;
                if let Some(exit) = self.try_wait()? {
                    return Ok(exit);
                }
                ready.clear_ready();
            }
        }
        // No pidfd: a thread waits for the exit without reaping it, then wakes us.
        let waiter = self
            .waiter
            .get_or_insert_with(|| {
                Arc::new(Waiter {
                    notify: Notify::new(),
                    started: AtomicBool::new(false),
                })
            })
            .clone();
        if !waiter.started.swap(true, Ordering::AcqRel) {
            let (pid, w) = (self.pid, waiter.clone());
            std::thread::Builder::new()
                .name("brood-wait".into())
                .spawn(move || {
                    wait_no_reap(pid);
                    w.notify.notify_one();
                })
                .map_err(|e| from_io(e, "start waiter thread"))?;
        }
        loop {
            if let Some(exit) = self.try_wait()? {
                return Ok(exit);
            }
            waiter.notify.notified().await;
        }
    }

    /// Sends a signal through the pidfd (no pid-reuse race), or to the pid without one.
    pub(crate) fn send_signal(&self, signal: Signum) -> Result<()> {
        if let Some(fd) = self.fd() {
            // SAFETY: raw syscall with a valid pidfd and a null siginfo.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    signal.as_raw(),
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            if r == 0 {
                return Ok(());
            }
            let err = Error::last("pidfd_send_signal");
            if err.errno() != libc::ENOSYS {
                return Err(err);
            }
        }
        kill_pid(self.pid, signal)
    }

    /// The plain pidfd (deregistered from the reactor), for the reaper.
    fn into_fd(self) -> Option<OwnedFd> {
        match self.watch {
            Watch::Pid => None,
            Watch::Fd(fd) => Some(fd),
            Watch::Async(a, _) => Some(a.into_inner()),
        }
    }
}

/// `kill(2)`.
pub(crate) fn kill_pid(pid: i32, signal: Signum) -> Result<()> {
    // SAFETY: kill(2) takes plain integers.
    if unsafe { libc::kill(pid, signal.as_raw()) } < 0 {
        return Err(Error::last("kill"));
    }
    Ok(())
}

/// Reaps `pid` if it has exited.
fn try_wait_pid(pid: i32) -> Result<Option<Exit>> {
    let mut status = 0;
    // SAFETY: waitpid on our own child's pid, which cannot be reused before we reap it.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    match r {
        0 => Ok(None),
        r if r > 0 => Ok(Some(Exit::from_wait_status(status))),
        _ => Err(Error::last("waitpid")),
    }
}

/// Whether the environment variable `name` is `1` (read once per name).
fn forced(name: &str, cell: &'static OnceLock<bool>) -> bool {
    *cell.get_or_init(|| std::env::var_os(name).is_some_and(|v| v == "1"))
}

/// Whether to act as Linux 5.3 (pidfds, no `waitid(P_PIDFD)`): `BROOD_NO_PIDFD_WAITID=1`,
/// or as 5.2 (also no polling): `BROOD_NO_PIDFD_POLL=1`.
fn no_pidfd_waitid() -> bool {
    static OFF: OnceLock<bool> = OnceLock::new();
    forced("BROOD_NO_PIDFD_WAITID", &OFF) || no_pidfd_poll()
}

/// Whether to act as Linux 5.2, whose pidfds cannot be polled (`BROOD_NO_PIDFD_POLL=1`).
fn no_pidfd_poll() -> bool {
    static OFF: OnceLock<bool> = OnceLock::new();
    forced("BROOD_NO_PIDFD_POLL", &OFF)
}

/// Registers a pidfd with the reactor; `EPERM` (what epoll says on 5.2) when forced.
fn register(fd: OwnedFd) -> std::result::Result<AsyncFd<OwnedFd>, (OwnedFd, std::io::Error)> {
    if no_pidfd_poll() {
        return Err((fd, std::io::Error::from_raw_os_error(libc::EPERM)));
    }
    // SAFETY: an OwnedFd stays open and the same for the AsyncFd's whole life.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts())
}

/// `waitid(P_PIDFD, WNOHANG)`: `EINVAL` on kernels before 5.4, which lack `P_PIDFD`.
fn waitid_pidfd(fd: BorrowedFd<'_>) -> Result<Option<Exit>> {
    if no_pidfd_waitid() {
        return Err(Error::new(libc::EINVAL, "waitid"));
    }
    // SAFETY: zeroed siginfo is a valid out-parameter; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid with P_PIDFD on a pidfd we own.
    let r = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            fd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    if r < 0 {
        return Err(Error::last("waitid"));
    }
    // SAFETY: waitid filled `info` (si_pid stays 0 when nothing has exited yet).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => Exit {
            status: status as i64,
            signal: 0,
        },
        _ => Exit {
            status: 0,
            signal: status,
        },
    }))
}

/// Blocks until `pid` has exited, leaving it to be reaped.
fn wait_no_reap(pid: i32) {
    loop {
        // SAFETY: zeroed siginfo is a valid out-parameter.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child, WNOWAIT leaves it a zombie for `try_wait`.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// The background reaper: one thread, one epoll set of the pidfds of dropped children.
struct Reaper {
    epoll: OwnedFd,
    /// The pidfd of each orphan, and its pid.
    orphans: Mutex<HashMap<RawFd, (OwnedFd, i32)>>,
}

static REAPER: OnceLock<Option<Reaper>> = OnceLock::new();

fn reaper() -> Option<&'static Reaper> {
    REAPER
        .get_or_init(|| {
            // SAFETY: creates a new close-on-exec epoll fd.
            let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            if ep < 0 {
                return None;
            }
            // SAFETY: the fd is new and ours.
            let epoll = unsafe { OwnedFd::from_raw_fd(ep) };
            std::thread::Builder::new()
                .name("brood-reaper".into())
                .spawn(reaper_loop)
                .ok()?;
            Some(Reaper {
                epoll,
                orphans: Mutex::new(HashMap::new()),
            })
        })
        .as_ref()
}

fn reaper_loop() {
    let r = loop {
        if let Some(r) = REAPER.get() {
            break r.as_ref();
        }
        std::thread::yield_now();
    };
    let Some(r) = r else { return };
    // SAFETY: zeroed epoll_event structs are valid out-parameters.
    let mut events: [libc::epoll_event; 64] = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits on our epoll fd into our buffer.
        let n = unsafe { libc::epoll_wait(r.epoll.as_raw_fd(), events.as_mut_ptr(), 64, -1) };
        for ev in events.iter().take(n.max(0) as usize) {
            let fd = ev.u64 as RawFd;
            let owned = r
                .orphans
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&fd);
            let Some((owned, pid)) = owned else { continue };
            let reaped = match waitid_pidfd(owned.as_fd()) {
                // No P_PIDFD (5.3): the pid is still this child's until it is reaped.
                Err(e) if e.errno() == libc::EINVAL => try_wait_pid(pid),
                other => other,
            };
            if let Ok(None) = reaped {
                // Not exited yet (a spurious event): keep it; it is still in the set.
                r.orphans
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(fd, (owned, pid));
                continue;
            }
            // Reaped, or an error that says it is not our child any more (ECHILD).
            // Remove it from the set explicitly before closing: a child being spawned on
            // another thread holds a copy of every fd until its exec, and while any copy
            // lives, closing ours would leave the registration behind, firing (it is
            // level-triggered and the pidfd stays readable) under a number the next orphan's
            // pidfd may get; its event would then make us give up on that next one.
            // SAFETY: removes our own fd from our epoll set; the event argument is unused.
            unsafe {
                libc::epoll_ctl(
                    r.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    fd,
                    std::ptr::null_mut(),
                );
            }
            drop(owned);
        }
    }
}

/// Takes over a child whose `Child` was dropped while it still ran, and reaps it when it ends.
pub(crate) fn adopt(p: PidFd) {
    let pid = p.pid;
    if let (Some(fd), Some(r)) = (p.into_fd(), reaper()) {
        let raw = fd.as_raw_fd();
        let mut orphans = r.orphans.lock().unwrap_or_else(|p| p.into_inner());
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: raw as u64,
        };
        let added = !no_pidfd_poll() && {
            // SAFETY: adds our pidfd to our epoll set.
            unsafe { libc::epoll_ctl(r.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, raw, &mut ev) == 0 }
        };
        if added {
            orphans.insert(raw, (fd, pid));
            return;
        }
    }
    // No pidfd (or no epoll): a thread that blocks until the child ends and reaps it.
    let _ = std::thread::Builder::new()
        .name("brood-reap".into())
        .spawn(move || {
            let mut status = 0;
            // SAFETY: waits for our own child.
            while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
        });
}
