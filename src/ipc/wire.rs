//! `sendmsg`/`recvmsg` with `SCM_RIGHTS`: the only place brood touches control messages.
//!
//! The wire format is libuv's on Unix: plain bytes on a `SOCK_STREAM` Unix socket, with the
//! fds of a write attached (one `SCM_RIGHTS` message) to its first byte. Linux does merge
//! the bytes of earlier fd-less writes into the read that brings fds, and stops that read
//! inside the write that carried them; so the receiver learns which read the fds came with,
//! not which byte. `framing.rs` binds them to the read's last byte, which is in the write
//! that carried them.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The kernel's limit of fds in one `SCM_RIGHTS` message (`SCM_MAX_FD`).
pub(crate) const MAX_FDS: usize = 253;

/// Room for a control message of `MAX_FDS` fds, 8-byte aligned as `cmsghdr` wants.
/// (CMSG_SPACE(253 * 4) is 1032 bytes on 64-bit Linux; 1040 leaves a margin.)
const CMSG_WORDS: usize = 130;

/// One `sendmsg` of `data` with `fds` attached to its first byte. Never blocks (the socket
/// is non-blocking and `MSG_DONTWAIT` is set) and never raises SIGPIPE.
pub(crate) fn send(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    if fds.is_empty() {
        // Plain bytes: send(2) is the cheapest path (no msghdr to copy in).
        // SAFETY: `data` is a live buffer of its length.
        let n = unsafe {
            libc::send(
                sock,
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(n as usize);
    }
    // A control buffer just big enough (8-byte words, as `cmsghdr` is aligned): on the stack
    // for up to 16 fds, the usual case.
    // SAFETY: pure arithmetic.
    let words =
        (unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) } as usize).div_ceil(8);
    let mut small = [0u64; 12];
    let mut big: Vec<u64>;
    let cbuf: &mut [u64] = if words <= small.len() {
        &mut small
    } else {
        big = vec![0u64; words];
        &mut big
    };
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: a zeroed msghdr is valid; every pointer set below points to live locals.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    {
        let payload = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_* are pure arithmetic on sizes; the header and data are written
        // inside `cbuf`, which has room for MAX_FDS fds (checked above).
        unsafe {
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(payload) as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(payload) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(c),
                payload as usize,
            );
        }
    }
    // SAFETY: `msg` is fully initialised and points to live buffers.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// What one `recvmsg` gave.
pub(crate) struct Received {
    pub bytes: usize,
    /// `MSG_CTRUNC`: some fds were lost on the way (more than `max_fds`, or this process at
    /// its fd limit, where the kernel installs what fits); the caller closes the ones in
    /// `fds` and reports the loss.
    pub truncated: bool,
}

/// One `recvmsg` into `buf`; the fds that came with this read are pushed to `fds`, already
/// close-on-exec (`MSG_CMSG_CLOEXEC`). At most `max_fds` fds fit; more (or fds the kernel
/// could not install, at the fd limit) is `truncated`.
pub(crate) fn recv(
    sock: RawFd,
    buf: &mut [u8],
    max_fds: usize,
    fds: &mut Vec<OwnedFd>,
) -> io::Result<Received> {
    let max_fds = max_fds.min(MAX_FDS);
    let mut cbuf = [0u64; CMSG_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is valid; pointers set below point to live locals.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: pure arithmetic.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE((max_fds * 4) as u32) } as _;
    // SAFETY: `msg` points to live buffers of the given sizes.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: walks the control messages the kernel wrote into `cbuf`, within
    // `msg_controllen`; fd values are read unaligned and each is a new fd owned by us.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let len = (*c).cmsg_len as usize - (data as usize - c as usize);
                for i in 0..len / 4 {
                    let fd: RawFd = std::ptr::read_unaligned(data.add(i * 4).cast());
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Received {
        bytes: n as usize,
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}
