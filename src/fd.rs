//! Small fd helpers shared by the modules. Every fd made here is close-on-exec.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;

use crate::error::{Error, Result, from_io};

/// A close-on-exec duplicate (`F_DUPFD_CLOEXEC`, at 3 or above).
pub(crate) fn dup_cloexec(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    fd.try_clone_to_owned()
        .map_err(|e| from_io(e, format!("dup fd {}", fd.as_raw_fd())))
}

/// A connected pair of Unix stream sockets, both close-on-exec and blocking:
/// what libuv makes for `UV_CREATE_PIPE`.
pub(crate) fn socketpair() -> Result<(StdUnixStream, StdUnixStream)> {
    StdUnixStream::pair().map_err(|e| from_io(e, "socketpair"))
}

/// A kernel pipe, both ends close-on-exec and blocking: `(read end, write end)`.
pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two fds into `fds` or fails.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(Error::last("pipe2"));
    }
    // SAFETY: pipe2 succeeded: both are new fds that only we own.
    unsafe { Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))) }
}

/// Sets `O_NONBLOCK` on `fd` (its open file description): one `ioctl(FIONBIO)`, which Linux
/// takes for every kind of fd, where `F_GETFL` + `F_SETFL` take two calls (libuv's
/// `uv__nonblock_ioctl`; std's `set_nonblocking` on sockets).
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: FIONBIO reads one int through the pointer and changes only `fd`'s O_NONBLOCK.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONBIO, &on) } < 0 {
        return Err(Error::last("ioctl FIONBIO"));
    }
    Ok(())
}

/// Whether `fd` is open in this process (`fcntl(F_GETFD)` succeeds).
pub(crate) fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor flags of `fd`; an invalid fd gives EBADF.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// The bytes written so far to a connected TCP socket, by any process that holds it: what
/// the peer has acknowledged (`TCP_INFO`'s `tcpi_bytes_acked`, Linux 4.1+) plus what is
/// still in the send queue (`SIOCOUTQ`). `None` where the kernel does not say.
#[cfg_attr(
    not(feature = "cgi"),
    allow(dead_code, reason = "used by cgi's raw mode")
)]
pub(crate) fn tcp_bytes_written(fd: BorrowedFd<'_>) -> Option<u64> {
    // SAFETY: tcp_info is plain integers: all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is that large and
    // lives for the call, and sets `len` to what it wrote; a bad fd is an error.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + 8;
    if r < 0 || (len as usize) < needed {
        return None;
    }
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int through the pointer, which points to
    // `queued` for the duration of the call; a bad fd is an error.
    if unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCOUTQ,
            &mut queued as *mut libc::c_int,
        )
    } < 0
    {
        return None;
    }
    Some(info.tcpi_bytes_acked + u64::try_from(queued).unwrap_or(0))
}

/// The number of fds open in this process (entries of `/proc/self/fd`, less the one
/// used to read it). Linux only; tests and benchmarks use it to prove nothing leaks.
pub fn open_fd_count() -> Result<usize> {
    let dir = std::fs::read_dir("/proc/self/fd").map_err(|e| from_io(e, "read /proc/self/fd"))?;
    Ok(dir.count().saturating_sub(1))
}

/// Checks that `fd` is a usable fd number for a slot.
pub(crate) fn check_slot(slot: i32) -> Result<()> {
    if slot < 0 {
        return Err(Error::invalid(
            format!("stdio slot {slot}"),
            "fd numbers are 0 or more",
        ));
    }
    Ok(())
}

/// Marks every fd from `first` up close-on-exec.
pub(crate) fn cloexec_from(first: RawFd) {
    // SAFETY: close_range only changes flags of this process's fds.
    #[cfg(target_os = "linux")]
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) == 0
    };
    #[cfg(not(target_os = "linux"))]
    let done = false;
    if done {
        return;
    }
    // Without close_range: as libuv, try a few unconditionally, then stop at the first gap.
    let mut fd = first;
    loop {
        // SAFETY: F_GETFD/F_SETFD change only the flags of `fd`, or fail with EBADF.
        let ok = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            flags >= 0 && libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) >= 0
        };
        if !ok && fd > 15 {
            break;
        }
        fd += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn status_flags(fd: BorrowedFd<'_>) -> libc::c_int {
        // SAFETY: F_GETFL only reads the status flags of an fd we hold.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) }
    }

    #[test]
    fn set_nonblocking_sets_it_on_that_end_only() {
        let (read, write) = pipe().unwrap();
        set_nonblocking(read.as_fd()).unwrap();
        assert_ne!(status_flags(read.as_fd()) & libc::O_NONBLOCK, 0);
        // The other end of a pipe has a file description of its own: still blocking.
        assert_eq!(status_flags(write.as_fd()) & libc::O_NONBLOCK, 0);
        // Nothing to read: EAGAIN, not a wait.
        let mut buf = [0u8; 1];
        let err = std::io::Read::read(&mut std::fs::File::from(read), &mut buf).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    }
}
