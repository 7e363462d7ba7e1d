//! What the master sent a worker that the worker has not read yet, told by the kernel.
//!
//! On a Unix stream socket, each `sendmsg` of the master is one buffer (skb) charged to the
//! master's socket until the worker reads it: `ioctl(SIOCOUTQ)` on the master's end gives
//! the bytes charged (the buffers' `truesize`, not their payload). The worker reads them in
//! order, so the unread ones are always the newest sends. The master keeps each handed
//! connection open (its own copy of the fd) in an [`Inflight`] queue until the kernel says
//! the worker has read it: a worker that stops reading (stopped, hung) is seen within a
//! housekeeping tick, and when it is killed the connections it never read are still the
//! master's to hand to another worker (measured while the worker is stopped, so it cannot
//! read meanwhile).
//!
//! The size of one buffer is measured once per process on a socketpair ([`sizes`]); where
//! the kernel does not report it (`SIOCOUTQ` fails or says 0), nothing is tracked and each
//! connection is closed as soon as it is sent.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;
use std::time::Instant;

/// At most this many sends per worker are kept: the kernel lets a channel (8 KiB send
/// buffer) hold about 11 unread ones, so past this the oldest were read and are let go
/// at the next look.
pub(crate) const WINDOW: usize = 16;

/// The most connections handed to one worker in one `sendmsg` (one buffer for the kernel).
pub(crate) const HANDOFF_BATCH: usize = 8;

/// The bytes the kernel charges for one unread send: a ping (one byte, no fd), and a
/// batch of `k` connections (`k` bytes, `k` fds) for each `k` up to `HANDOFF_BATCH`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sizes {
    pub plain: usize,
    batches: [usize; HANDOFF_BATCH],
}

impl Sizes {
    /// The size of one send of `k` connections (1 ≤ `k` ≤ `HANDOFF_BATCH`).
    pub(crate) fn with_fds(&self, k: usize) -> usize {
        self.batches[k.clamp(1, HANDOFF_BATCH) - 1]
    }
}

/// The bytes of the master's sends on `fd` that the peer has not read (`SIOCOUTQ`).
pub(crate) fn unread_bytes(fd: RawFd) -> std::io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int through the pointer, which points to `n`
    // for the duration of the call; a bad fd is an error, not undefined behaviour.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Whether the channel on `fd` is hung up (`POLLHUP`): the worker closed its end (its
/// unread sends were then dropped by the kernel, which counts them as no longer queued:
/// that is no progress), or each side shut its writing (a worker on its way out).
pub(crate) fn peer_closed(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one pollfd passed, which lives for the call; a
    // zero timeout never blocks; a bad fd is reported in `revents`, not undefined behaviour.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r == 1 && p.revents & libc::POLLHUP != 0
}

/// The sizes this kernel charges (measured once), or `None` where it cannot be told.
pub(crate) fn sizes() -> Option<Sizes> {
    static SIZES: OnceLock<Option<Sizes>> = OnceLock::new();
    *SIZES.get_or_init(|| {
        let measured = measure();
        if measured.is_none() {
            tracing::warn!(
                "SIOCOUTQ does not count unread handoffs here: connections queued to a stuck worker cannot be taken back"
            );
        }
        measured
    })
}

fn measure() -> Option<Sizes> {
    let (a, b) = std::os::unix::net::UnixStream::pair().ok()?;
    let fd = a.as_raw_fd();
    let before = unread_bytes(fd).ok()?;
    crate::ipc::send_raw(fd, b"p", &[]).ok()?;
    let mut last = unread_bytes(fd).ok()?;
    let plain = last.checked_sub(before)?;
    let mut batches = [0; HANDOFF_BATCH];
    for (i, size) in batches.iter_mut().enumerate() {
        // A batch of i + 1 connections: as many bytes, as many fds (this socket's, again).
        let k = i + 1;
        crate::ipc::send_raw(fd, &[b'c'; HANDOFF_BATCH][..k], &[fd; HANDOFF_BATCH][..k]).ok()?;
        let now = unread_bytes(fd).ok()?;
        *size = now.checked_sub(last)?;
        last = now;
    }
    // (The fds in flight close with the sockets.)
    drop((a, b));
    (plain > 0 && batches.iter().all(|&s| s > 0)).then_some(Sizes { plain, batches })
}

/// One send not known to be read.
#[derive(Debug)]
struct Sent<T> {
    /// The connection handed (`None`: a ping).
    conn: Option<T>,
    size: usize,
    at: Instant,
}

/// A worker's sends not known to be read, oldest first (pure: the kernel's count comes in
/// as a number, so this is tested without sockets).
#[derive(Debug)]
pub(crate) struct Inflight<T> {
    sent: VecDeque<Sent<T>>,
    /// When the worker was last seen to have read one of them (its progress).
    last_read: Option<Instant>,
}

impl<T> Default for Inflight<T> {
    fn default() -> Self {
        Inflight {
            sent: VecDeque::new(),
            last_read: None,
        }
    }
}

impl<T> Inflight<T> {
    /// Records a send of `size` bytes (as the kernel charges it) carrying `conn`.
    pub(crate) fn push(&mut self, conn: Option<T>, size: usize, at: Instant) {
        self.sent.push_back(Sent { conn, size, at });
    }

    pub(crate) fn len(&self) -> usize {
        self.sent.len()
    }

    /// The kernel says `unread` bytes are still queued: the newest sends whose sizes add
    /// up to at most that are unread, every older one was read and is let go (its
    /// connection dropped: the worker has its own copy). Rounding down counts a send as
    /// read when in doubt: it is then never handed twice. A send let go is progress, seen
    /// `now`.
    pub(crate) fn read_up_to(&mut self, unread: usize, now: Instant) {
        let mut sum = 0;
        let mut keep = 0;
        for s in self.sent.iter().rev() {
            if sum + s.size > unread {
                break;
            }
            sum += s.size;
            keep += 1;
        }
        let read = self.sent.len() - keep;
        if read > 0 {
            self.sent.drain(..read);
            self.last_read = Some(now);
        }
    }

    /// When the oldest send not known to be read was made.
    pub(crate) fn oldest(&self) -> Option<Instant> {
        self.sent.front().map(|s| s.at)
    }

    /// Since when the worker has made no progress on what it has unread: the later of the
    /// oldest unread send and the last time it was seen to read one (`None`: nothing is
    /// unread). A worker that reads slowly but steadily keeps this recent however long its
    /// queue; one that stopped reading lets it age.
    pub(crate) fn stalled_since(&self) -> Option<Instant> {
        let oldest = self.oldest()?;
        Some(self.last_read.map_or(oldest, |r| r.max(oldest)))
    }

    /// Every connection still held, oldest first, with when it was sent; the queue is
    /// left empty. After `read_up_to` with the count of a stopped worker, these are the
    /// connections it never read.
    pub(crate) fn take(&mut self) -> impl Iterator<Item = (T, Instant)> + '_ {
        self.sent
            .drain(..)
            .filter_map(|s| s.conn.map(|c| (c, s.at)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn queue(sizes: &[usize]) -> Inflight<usize> {
        let mut q = Inflight::default();
        let now = Instant::now();
        for (i, &s) in sizes.iter().enumerate() {
            q.push(Some(i), s, now);
        }
        q
    }

    #[test]
    fn the_unread_sends_are_the_newest_that_fit_the_count() {
        let now = Instant::now();
        let mut q = queue(&[768, 768, 768, 768]);
        q.read_up_to(2 * 768, now);
        assert_eq!(q.take().map(|(c, _)| c).collect::<Vec<_>>(), [2, 3]);
        let mut q = queue(&[768, 1024, 768]);
        q.read_up_to(1024 + 768, now);
        assert_eq!(q.take().map(|(c, _)| c).collect::<Vec<_>>(), [1, 2]);
        // A count that matches no suffix rounds down: in doubt, read.
        let mut q = queue(&[768, 768, 768]);
        q.read_up_to(768 + 700, now);
        assert_eq!(q.len(), 1);
        q.read_up_to(0, now);
        assert_eq!(q.len(), 0);
        assert!(q.oldest().is_none());
    }

    #[test]
    fn a_batch_is_one_buffer_read_or_unread_as_a_whole() {
        // Two batches of three (the size goes with the last of each) and a single one.
        let now = Instant::now();
        let mut q = queue(&[0, 0, 768, 0, 0, 768, 768]);
        q.read_up_to(2 * 768, now);
        assert_eq!(q.len(), 4, "the first batch was read");
        assert_eq!(q.take().map(|(c, _)| c).collect::<Vec<_>>(), [3, 4, 5, 6]);
        let mut q = queue(&[0, 0, 768, 0, 0, 768]);
        q.read_up_to(0, now);
        assert_eq!(q.len(), 0);
        let mut q = queue(&[0, 0, 768, 0, 0, 768]);
        q.read_up_to(2 * 768, now);
        assert_eq!(q.take().count(), 6, "nothing read");
    }

    #[test]
    fn pings_count_but_are_not_taken() {
        let mut q: Inflight<usize> = Inflight::default();
        let now = Instant::now();
        q.push(Some(1), 768, now);
        q.push(None, 768, now);
        q.push(Some(2), 768, now);
        q.read_up_to(3 * 768, now);
        assert_eq!(q.take().map(|(c, _)| c).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn a_worker_that_reads_steadily_is_never_stalled_for_long_however_long_its_queue() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut q: Inflight<usize> = Inflight::default();
        for i in 0..10 {
            q.push(Some(i), 768, t0);
        }
        assert_eq!(q.stalled_since(), Some(t0));
        // One read a second: the oldest unread waits ever longer, the stall does not.
        for n in 1..10 {
            q.read_up_to((10 - n) * 768, t0 + n as u32 * s);
            assert_eq!(q.oldest(), Some(t0));
            assert_eq!(q.stalled_since(), Some(t0 + n as u32 * s));
        }
        // A count that lets nothing go is no progress.
        q.read_up_to(768, t0 + 20 * s);
        assert_eq!(q.stalled_since(), Some(t0 + 9 * s));
        // A send after the last read: the stall starts at that send.
        q.read_up_to(0, t0 + 21 * s);
        q.push(Some(11), 768, t0 + 30 * s);
        assert_eq!(q.stalled_since(), Some(t0 + 30 * s));
        q.read_up_to(0, t0 + 31 * s);
        assert_eq!(q.stalled_since(), None);
    }

    #[test]
    fn a_closed_peer_is_told_from_one_that_shut_its_writing_or_ours() {
        use std::os::unix::net::UnixStream;
        let (a, b) = UnixStream::pair().unwrap();
        assert!(!peer_closed(a.as_raw_fd()));
        a.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(!peer_closed(a.as_raw_fd()), "only ours shut");
        drop(b);
        assert!(peer_closed(a.as_raw_fd()), "closed");
        let (a, b) = UnixStream::pair().unwrap();
        b.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(!peer_closed(a.as_raw_fd()), "only the peer's writing shut");
        a.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(peer_closed(a.as_raw_fd()), "both shut");
    }

    #[test]
    fn this_kernel_counts_unread_sends() {
        let s = sizes().expect("SIOCOUTQ on a Unix stream socket");
        assert!(s.plain > 0 && s.with_fds(1) > 0, "{s:?}");
        assert!((1..=HANDOFF_BATCH).all(|k| s.with_fds(k) > 0), "{s:?}");
    }
}
