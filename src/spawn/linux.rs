//! Linux child creation: `clone3(CLONE_VM | CLONE_VFORK | CLONE_PIDFD | CLONE_CLEAR_SIGHAND)`
//! on a stack of our own, or `clone` without the last flag where the kernel refuses it.
//!
//! CLONE_VM shares the parent's memory instead of copying its page tables, so the cost does
//! not grow with the parent's size (fork copies them: 70 ms from a 2 GiB parent); CLONE_VFORK
//! suspends the calling thread until the child execs or exits, so the child can write its
//! error report straight into the parent's memory, and `spawn` can return it synchronously.
//! This is glibc's own `posix_spawn` design, extended to every libuv option. CLONE_PIDFD
//! gives a pidfd atomically with the pid; kernels before 5.2 refuse the flag and then brood
//! asks for one with `pidfd_open` (5.3), or goes on with the pid alone. CLONE_CLEAR_SIGHAND
//! (5.5; 64-bit x86 only: the `clone3` wrapper is assembly, other architectures use `clone`) starts the child with every caught
//! signal at SIG_DFL, which otherwise takes it one system call per signal (`child.rs`):
//! `spawn` of `/bin/true` returned 12-34 µs sooner with it on this project's test machine
//! (126-132 µs against 138-166, 3,000 in a row, three alternating runs).

use std::cell::Cell;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};

use super::args::ChildArgs;
use super::{child, raw};

/// The child's stack. Its code is a few small frames; 64 KiB leaves a wide margin.
const STACK_SIZE: usize = 64 * 1024;

/// A child stack: `STACK_SIZE` bytes above one inaccessible guard page, so an overflow
/// faults instead of writing into whatever the parent has below.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    fn new() -> Option<Stack> {
        // SAFETY: sysconf reads a constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = STACK_SIZE + page;
        // SAFETY: a new private anonymous mapping; checked for MAP_FAILED below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let stack = Stack { base, len };
        // SAFETY: the lowest page of our own mapping becomes the guard.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return None; // `stack` unmaps on drop
        }
        Some(stack)
    }

    /// The initial stack pointer: the top, 16-byte aligned (the stack grows down on every
    /// Linux architecture Rust supports).
    fn top(&self) -> usize {
        (self.base as usize + self.len) & !15
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

thread_local! {
    /// One stack per spawning thread, reused: a thread is suspended while its child uses
    /// the stack (CLONE_VFORK), so it never serves two children at once.
    static STACK: Cell<Option<Stack>> = const { Cell::new(None) };
}

const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;
/// Whether the kernel takes CLONE_PIDFD (learnt at the first spawn).
static CLONE_PIDFD_OK: AtomicU8 = AtomicU8::new(UNKNOWN);
/// Whether `clone3` takes CLONE_CLEAR_SIGHAND (Linux 5.5; learnt at the first spawn).
#[cfg(all(target_arch = "x86_64", target_pointer_width = "64"))]
static CLONE3_OK: AtomicU8 = AtomicU8::new(UNKNOWN);
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
    unsafe { child::run(&*(arg as *const ChildArgs)) }
}

/// Creates the child and returns its pid and pidfd, or the clone errno. The child's report
/// (through `args.report`) says whether exec worked.
///
/// # Safety
///
/// Every pointer in `args` is valid (it comes from `Plan::child_args` of a plan that
/// neither moves nor changes until this returns).
pub(super) unsafe fn start(args: &mut ChildArgs) -> Result<(i32, Option<OwnedFd>), i32> {
    let use_pidfd = pidfd_supported();
    // (`try_with`: a spawn from a thread-local destructor gets a stack of its own.)
    let cached = STACK.try_with(|s| s.take()).ok().flatten();
    let Some(stack) = cached.or_else(Stack::new) else {
        return Err(last_errno());
    };
    let top = stack.top();

    // Block every blockable signal, with the raw call and a full kernel set (glibc's
    // pthread_sigmask would leave its own 32 and 33 open), so no handler of ours runs in
    // the child while it shares our memory. SIGKILL and SIGSTOP cannot be blocked but run
    // no handler. A fault's own signal (SIGSEGV...) is forced through the mask, but the
    // kernel then resets that handler to SIG_DFL (in the child's own copy of the table: no
    // CLONE_SIGHAND), so a faulting child dies without running ours. The child empties its
    // mask only after resetting every caught signal to SIG_DFL; only the calling thread
    // blocks, and signals sent to this process meanwhile go to its other threads or wait.
    // (`tests/spawn_signals.rs` sends a storm of signals to the group while spawning.)
    //
    // SIGCHLD is left as this thread had it when no handler has it (SIG_DFL or SIG_IGN):
    // then it runs nothing of ours in the child either, and blocking it here would cost
    // each of this thread's earlier children that exits while it waits out the exec (a
    // large share of the time under load): a SIGCHLD whose parent thread blocks it is
    // queued instead of dropped, and wakes another thread of this process for nothing
    // (brood's FastCGI bench: 0.7 such wake-ups per request). SIG_BLOCK, not SIG_SETMASK,
    // so a thread that blocks SIGCHLD itself (for a signalfd or sigwait) keeps it blocked.
    // The child blocks it as its first system call. After `clone3` no handler of ours is
    // left in the child at all (CLONE_CLEAR_SIGHAND). After `clone` one thing stays open: a
    // handler installed by another thread between this check and the clone would run in the
    // child if a SIGCHLD were sent to that child before its first system call (its pid is
    // not out yet: only a signal to its process group, to every process, or to a guessed pid
    // can reach it).
    let sigchld_open = !sigchld_caught();
    args.block_sigchld = sigchld_open;
    let mask = if sigchld_open {
        &raw::FULL_SET_BUT_SIGCHLD
    } else {
        &raw::FULL_SET
    };
    let mut old = raw::EMPTY_SET;
    // SAFETY: `old` has room for a kernel signal set.
    if let Err(e) = unsafe { raw::block_mask(mask, &mut old) } {
        keep(stack);
        return Err(e);
    }

    let mut pidfd: libc::c_int = -1;
    let mut pid = -1;
    let mut clone_errno = 0;
    // First choice: clone3 with CLONE_CLEAR_SIGHAND, which spares the child a system call
    // per signal (`child.rs`, step 1). A kernel before 5.5, or a seccomp filter that hides
    // clone3 (ENOSYS, as Docker's), sends every spawn to `clone` from then on.
    #[cfg(all(target_arch = "x86_64", target_pointer_width = "64"))]
    if clone3_usable() {
        args.handlers_cleared = true;
        // SAFETY: as for `clone` below; `stack` is this thread's and idle (see `STACK`).
        match unsafe { clone3_child(args, &stack, use_pidfd, &mut pidfd) } {
            Ok(p) => pid = p,
            // (EPERM: seccomp profiles that refused unknown calls so, Docker's before 20.10.
            // Any refusal turns clone3 off for this process: `clone` does the same work.)
            Err(libc::ENOSYS | libc::EINVAL | libc::E2BIG | libc::EPERM) => {
                CLONE3_OK.store(NO, Ordering::Relaxed);
                args.handlers_cleared = false;
            }
            Err(e) => clone_errno = e,
        }
    }
    while pid < 0 && clone_errno == 0 {
        args.handlers_cleared = false;
        let with_pidfd = use_pidfd && CLONE_PIDFD_OK.load(Ordering::Relaxed) != NO;
        let mut flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
        if with_pidfd {
            flags |= libc::CLONE_PIDFD;
        }
        // SAFETY: `child_entry` runs on `stack`, which outlives the call (the parent is
        // suspended until the child execs or exits); `args` points into the caller's plan, which does
        // not move meanwhile (the contract of `start`); `pidfd` receives the pidfd (CLONE_PIDFD's parent_tid slot).
        pid = unsafe {
            libc::clone(
                child_entry,
                top as *mut libc::c_void,
                flags,
                (args as *mut ChildArgs).cast(),
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
        if pid < 0 {
            clone_errno = last_errno();
        }
    }
    // SAFETY: restores the mask saved above; null: the old one is not wanted.
    let _ = unsafe { raw::set_mask(&old, std::ptr::null_mut()) };
    keep(stack);
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

/// Whether SIGCHLD runs a handler in this process (not SIG_DFL or SIG_IGN); yes when the
/// kernel will not say.
fn sigchld_caught() -> bool {
    // SAFETY: a query only (null new action); `old` is a valid out-parameter.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old) != 0 {
            return true;
        }
        old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN
    }
}

/// Whether spawns use `clone3` with CLONE_CLEAR_SIGHAND: until the kernel refuses it once,
/// and never with `BROOD_NO_CLONE3=1` in the environment (to exercise the fallback).
#[cfg(all(target_arch = "x86_64", target_pointer_width = "64"))]
fn clone3_usable() -> bool {
    match CLONE3_OK.load(Ordering::Relaxed) {
        NO => false,
        YES => true,
        _ => {
            let off = std::env::var_os("BROOD_NO_CLONE3").is_some_and(|v| v == "1");
            CLONE3_OK.store(if off { NO } else { YES }, Ordering::Relaxed);
            !off
        }
    }
}

/// `clone3(CLONE_VM | CLONE_VFORK | CLONE_CLEAR_SIGHAND [| CLONE_PIDFD])` running
/// `child_entry(args)` on `stack`: the child's pid, or the errno.
///
/// # Safety
/// As `start`'s, and `stack` is not in use by another child.
#[cfg(all(target_arch = "x86_64", target_pointer_width = "64"))]
unsafe fn clone3_child(
    args: &mut ChildArgs,
    stack: &Stack,
    with_pidfd: bool,
    pidfd: &mut libc::c_int,
) -> Result<i32, i32> {
    let mut flags = (libc::CLONE_VM | libc::CLONE_VFORK) as u64 | raw::CLONE_CLEAR_SIGHAND;
    if with_pidfd {
        flags |= libc::CLONE_PIDFD as u64;
    }
    let cl = raw::CloneArgs {
        flags,
        pidfd: pidfd as *mut libc::c_int as u64,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.base as u64,
        stack_size: (stack.top() - stack.base as usize) as u64,
        tls: 0,
    };
    // SAFETY: the stack is ours, mapped and idle, its top aligned (`Stack::top`); the
    // parent is suspended until the child execs or exits, so `args` and `pidfd` stay put;
    // `child_entry` never returns.
    unsafe { raw::clone3(&cl, child_entry, (args as *mut ChildArgs).cast()) }.map(|p| p as i32)
}

/// Keeps `stack` for this thread's next spawn (unmapped if the thread is exiting).
fn keep(stack: Stack) {
    let _ = STACK.try_with(|s| s.set(Some(stack)));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The permissions `/proc/self/maps` gives the mapping that holds `addr`.
    fn perms_at(addr: usize) -> String {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for line in maps.lines() {
            let (range, rest) = line.split_once(' ').unwrap();
            let (lo, hi) = range.split_once('-').unwrap();
            let (lo, hi) = (
                usize::from_str_radix(lo, 16).unwrap(),
                usize::from_str_radix(hi, 16).unwrap(),
            );
            if (lo..hi).contains(&addr) {
                return rest[..4].to_owned();
            }
        }
        panic!("{addr:#x} is not mapped");
    }

    #[test]
    fn child_stack_has_a_guard_page_below_it() {
        let stack = Stack::new().unwrap();
        let base = stack.base as usize;
        // SAFETY: sysconf reads a constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        assert_eq!(perms_at(base), "---p", "the lowest page is the guard");
        assert_eq!(perms_at(base + page), "rw-p");
        assert_eq!(perms_at(stack.top() - 16), "rw-p");
        assert!(stack.top() - (base + page) >= STACK_SIZE - 16);
    }
}
