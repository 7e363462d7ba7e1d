//! The fds `brood run` takes from its caller (`--stdio N=fd:M`, `N=inherit`, `--json-fd`),
//! and which of 0-2 the caller left closed.
//!
//! They are duplicated as the very first thing `brood run` does, before the runtime, the
//! signal watchers or a user lookup open fds of their own. A number that was not open when
//! brood started is then `EBADF`, even if brood has since opened something there itself
//! (its epoll fd, a signal pipe), which the child must never get.
//!
//! Rust's runtime opens `/dev/null` at any of fds 0-2 that is closed, before `main`. So
//! which of them the caller closed is recorded earlier still, by an ELF constructor
//! (`.init_array` runs before `main`): a closed 0-2 is then closed for the child too, as
//! `env` and `timeout` pass it on, and naming it (`--stdio 3=fd:1`) is `EBADF` like any
//! other fd that was not open.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};

/// Bit N set: fd N (0-2) was closed when this process started.
static CLOSED_AT_START: AtomicU8 = AtomicU8::new(0);

/// Runs before `main` (and so before Rust's runtime fills closed 0-2 with `/dev/null`).
extern "C" fn record_closed_stdio() {
    let mut closed = 0;
    for fd in 0..3 {
        // SAFETY: F_GETFD only reads the fd's flags; on a closed fd it returns -1 (EBADF).
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            closed |= 1 << fd;
        }
    }
    CLOSED_AT_START.store(closed, Ordering::Relaxed);
}

// SAFETY: an `.init_array` entry is called once by the dynamic loader (or the static
// start-up code) before `main`, with no arguments: the signature given here. The function
// only makes three fcntl calls and an atomic store.
#[used]
#[unsafe(link_section = ".init_array")]
static RECORD_CLOSED_STDIO: extern "C" fn() = record_closed_stdio;

/// Whether `fd` (0, 1 or 2) was closed when brood started; false for other fds.
pub fn closed_at_start(fd: RawFd) -> bool {
    (0..3).contains(&fd) && CLOSED_AT_START.load(Ordering::Relaxed) & (1 << fd) != 0
}

/// A close-on-exec duplicate of `fd` as brood's caller gave it, or the errno (`EBADF` when
/// `fd` is not open, or is one of 0-2 the caller left closed).
pub fn dup_inherited(fd: RawFd) -> Result<OwnedFd, i32> {
    if closed_at_start(fd) {
        return Err(libc::EBADF);
    }
    // SAFETY: F_DUPFD_CLOEXEC only reads the fd table; on a closed or bad fd it returns -1
    // with EBADF and changes nothing.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EBADF));
    }
    // SAFETY: fcntl returned >= 0: a new fd that nothing else in this process owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}
