//! Linux child creation: `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)` on a stack of our own.
//!
//! CLONE_VM shares the parent's memory instead of copying its page tables, so the cost does
//! not grow with the parent's size (fork copies them: 70 ms from a 2 GiB parent); CLONE_VFORK
//! suspends the calling thread until the child execs or exits, so the child can write its
//! error report straight into the parent's memory, and `spawn` can return it synchronously.
//! This is glibc's own `posix_spawn` design, extended to every libuv option. CLONE_PIDFD
//! gives a pidfd atomically with the pid; kernels before 5.2 refuse the flag and then brood
//! asks for one with `pidfd_open` (5.3), or goes on with the pid alone.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};

use super::{Plan, child};

/// The child's stack. Its code is a few small frames; 64 KiB leaves a wide margin.
const STACK_SIZE: usize = 64 * 1024;

const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;
/// Whether the kernel takes CLONE_PIDFD (learnt at the first spawn).
static CLONE_PIDFD_OK: AtomicU8 = AtomicU8::new(UNKNOWN);
/// Whether pidfds work at all (CLONE_PIDFD or pidfd_open); `BROOD_NO_PIDFD=1` turns them
/// off to exercise the fallback.
static PIDFD_OK: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Whether children get a pidfd (`BROOD_NO_PIDFD=1` in the environment says no).
pub(crate) fn pidfd_supported() -> bool {
    match PIDFD_OK.load(Ordering::Relaxed) {
        YES => true,
        NO => false,
        _ => {
            let off = std::env::var_os("BROOD_NO_PIDFD").is_some_and(|v| v == "1");
            PIDFD_OK.store(if off { NO } else { YES }, Ordering::Relaxed);
            if off {
                CLONE_PIDFD_OK.store(NO, Ordering::Relaxed);
            }
            !off
        }
    }
}

extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` on the suspended parent's stack (see `start`).
    unsafe { child::run(&*(arg as *const super::ChildArgs)) }
}

/// Creates the child and returns its pid and pidfd, or the clone errno. The child's report
/// (in `plan.report`) says whether exec worked.
pub(super) fn start(plan: &mut Plan) -> Result<(i32, Option<OwnedFd>), i32> {
    let use_pidfd = pidfd_supported();
    let mut args = plan.child_args();
    // The stack grows down on every Linux architecture Rust supports but parisc; align the
    // top to 16 bytes as the ABIs want.
    // Uninitialised is fine for a stack (the child writes before it reads), and saves
    // zeroing 64 KiB per spawn.
    let mut stack: Vec<u8> = Vec::with_capacity(STACK_SIZE);
    let top = (stack.as_mut_ptr() as usize + STACK_SIZE) & !15;

    // Block every signal so no handler runs in the child while it shares our memory; the
    // child unblocks them after resetting dispositions.
    // SAFETY: plain sigset manipulation on local values.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }

    let mut pidfd: libc::c_int = -1;
    let mut pid;
    loop {
        let with_pidfd = use_pidfd && CLONE_PIDFD_OK.load(Ordering::Relaxed) != NO;
        let mut flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
        if with_pidfd {
            flags |= libc::CLONE_PIDFD;
        }
        // SAFETY: `child_entry` runs on `stack`, which outlives the call (the parent is
        // suspended until the child execs or exits); `args` points into `plan`, which does
        // not move meanwhile; `pidfd` receives the pidfd (CLONE_PIDFD's parent_tid slot).
        pid = unsafe {
            libc::clone(
                child_entry,
                top as *mut libc::c_void,
                flags,
                (&mut args as *mut super::ChildArgs).cast(),
                &mut pidfd as *mut libc::c_int,
            )
        };
        if pid < 0 && with_pidfd && last_errno() == libc::EINVAL {
            // A kernel older than 5.2: no CLONE_PIDFD. Learn it once and retry without.
            CLONE_PIDFD_OK.store(NO, Ordering::Relaxed);
            continue;
        }
        if pid >= 0 && with_pidfd {
            CLONE_PIDFD_OK.store(YES, Ordering::Relaxed);
        }
        break;
    }
    let clone_errno = last_errno();
    // SAFETY: restores the mask saved above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
    drop(stack);
    if pid < 0 {
        return Err(clone_errno);
    }
    let pidfd = if pidfd >= 0 {
        // SAFETY: the kernel gave us this new fd (close-on-exec, as every pidfd).
        Some(unsafe { OwnedFd::from_raw_fd(pidfd) })
    } else if use_pidfd {
        pidfd_open(pid)
    } else {
        None
    };
    Ok((pid, pidfd))
}

/// A pidfd for our own child, which cannot have been reaped yet (only brood reaps it), so
/// its pid is still its own: no reuse race.
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: raw syscall; returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel gave us this new fd.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Reaps a child that failed before exec (it has exited already: vfork returned).
pub(super) fn reap_failed(pid: i32, pidfd: Option<OwnedFd>) {
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 || last_errno() != libc::EINTR {
            break;
        }
    }
    drop(pidfd);
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}
