//! The fds `brood run` takes from its caller (`--stdio N=fd:M`, `N=inherit`, `--json-fd`).
//!
//! They are duplicated as the very first thing `brood run` does, before the runtime, the
//! signal watchers or a user lookup open fds of their own. A number that was not open when
//! brood started is then `EBADF`, even if brood has since opened something there itself
//! (its epoll fd, a signal pipe), which the child must never get.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// A close-on-exec duplicate of `fd` as brood's caller gave it, or the errno (`EBADF` when
/// `fd` is not open).
pub fn dup_inherited(fd: RawFd) -> Result<OwnedFd, i32> {
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
