//! The kernel side of signal watching: the one process-wide handler, the self-pipe it writes
//! to, and `sigaction` itself.
//!
//! Written by hand because no crate does what brood's watchers promise: tokio's `signal`
//! (through signal-hook-registry) installs a handler for good and never gives the previous
//! disposition back, and brood must (a second Ctrl-C kills once the last watcher is gone).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use crate::error::{Error, Result};

/// One flag per signal number (1 to 64, `SIGRTMAX` on Linux), set by the handler.
const SLOTS: usize = 65;
static PENDING: [AtomicBool; SLOTS] = [const { AtomicBool::new(false) }; SLOTS];

/// The write end of the self-pipe, -1 until the dispatcher runs. Set once, never closed:
/// a handler may run on any thread at any moment, so the fd it writes to must stay valid.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

/// Whether `sig` has a pending flag here (a number the handler can record).
pub(super) fn in_range(sig: i32) -> bool {
    sig > 0 && (sig as usize) < SLOTS
}

/// The signal handler. Async-signal-safe: it only stores to an atomic and calls `write(2)`
/// on a non-blocking pipe, and gives `errno` back as it found it.
extern "C" fn on_signal(sig: libc::c_int) {
    let saved = errno();
    if let Some(flag) = usize::try_from(sig).ok().and_then(|i| PENDING.get(i)) {
        flag.store(true, Ordering::SeqCst);
    }
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = sig as u8;
        // SAFETY: write(2) is async-signal-safe; `fd` is the pipe's write end, never closed.
        // A full pipe (EAGAIN) is fine: the dispatcher has wake-ups queued already.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
    set_errno(saved);
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn errno_ptr() -> *mut libc::c_int {
    // SAFETY: returns the calling thread's errno slot; async-signal-safe.
    unsafe { libc::__errno_location() }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn errno_ptr() -> *mut libc::c_int {
    // SAFETY: returns the calling thread's errno slot; async-signal-safe.
    unsafe { libc::__error() }
}

fn errno() -> libc::c_int {
    // SAFETY: the pointer is this thread's errno, valid for the thread's life.
    unsafe { *errno_ptr() }
}

fn set_errno(value: libc::c_int) {
    // SAFETY: as in `errno`.
    unsafe { *errno_ptr() = value }
}

/// Takes the pending flag of `sig`: whether the handler ran for it since the last take.
pub(super) fn take_pending(sig: i32) -> bool {
    PENDING[sig as usize].swap(false, Ordering::SeqCst)
}

/// Forgets a catch of `sig` from an earlier period of watching.
pub(super) fn clear_pending(sig: i32) {
    PENDING[sig as usize].store(false, Ordering::SeqCst);
}

/// Makes the self-pipe: (read end, blocking; write end, non-blocking). Both close-on-exec.
pub(super) fn wake_pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 fills `fds` with two new fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return Err(Error::last("watch signal: pipe2"));
    }
    // SAFETY: both fds are new and ours alone.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_SETFL on our own fd; the dispatcher blocks on the read end.
    if unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETFL, 0) } < 0 {
        return Err(Error::last("watch signal: fcntl"));
    }
    Ok((read, write))
}

/// Hands the write end to the handler, for the rest of the process's life.
pub(super) fn publish_wake_fd(write: OwnedFd) {
    WAKE_FD.store(write.into_raw_fd(), Ordering::SeqCst);
}

/// Blocks until the handler has written to the pipe, and drains what is there. False when
/// the pipe can no longer be read (never, in practice: the write end is never closed).
pub(super) fn wait_wake(read: BorrowedFd<'_>) -> bool {
    let mut buf = [0u8; 128];
    loop {
        // SAFETY: reads into our own buffer from our own fd.
        let n = unsafe { libc::read(read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            return true;
        }
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        return false;
    }
}

/// Blocks every signal in the calling thread (the dispatcher), so handlers run on the
/// program's threads and the dispatcher's `read` is never interrupted.
pub(super) fn block_all_signals() {
    // SAFETY: a filled sigset applied to this thread's mask only.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    }
}

/// A disposition as `sigaction(2)` gave it, to be put back later.
pub(super) struct Disposition(libc::sigaction);

/// Installs brood's handler for `sig` and returns the disposition it replaced. The errno
/// on failure (`EINVAL` for numbers that cannot be caught).
pub(super) fn install(sig: i32) -> std::result::Result<Disposition, i32> {
    // SAFETY: a zeroed sigaction is valid; we fill handler, mask and flags, and sigaction
    // writes the old one into `old`.
    unsafe {
        let mut new: libc::sigaction = std::mem::zeroed();
        new.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigfillset(&mut new.sa_mask);
        new.sa_flags = libc::SA_RESTART | libc::SA_ONSTACK;
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, &new, &mut old) < 0 {
            return Err(errno());
        }
        Ok(Disposition(old))
    }
}

/// Puts `old` back for `sig`, unless someone else has replaced brood's handler since (then
/// theirs stays: it is not brood's to remove).
pub(super) fn restore(sig: i32, old: &Disposition) {
    // SAFETY: queries, then sets, the disposition of `sig` with valid structs.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut current) < 0 {
            return;
        }
        if current.sa_sigaction == on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t {
            libc::sigaction(sig, &old.0, std::ptr::null_mut());
        }
    }
}

/// Whether `sig`'s disposition in this process is `SIG_IGN` (false if it cannot be read).
pub(super) fn is_ignored(sig: i32) -> bool {
    // SAFETY: a query only (null new action); sigaction writes the current one into `cur`,
    // a zeroed, valid struct.
    unsafe {
        let mut cur: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut cur) == 0 && cur.sa_sigaction == libc::SIG_IGN
    }
}
