//! The child side of a spawn: what runs between clone and exec.
//!
//! It runs on a borrowed stack in memory it shares with the parent (CLONE_VM), with every
//! signal blocked. So it must be async-signal-safe: no allocation, no lock, no panic, no
//! unwinding, nothing that touches the parent's heap or glibc's thread list. Only plain
//! system calls on data the parent prepared (see `ChildArgs`). Credential changes use raw
//! syscalls: glibc's `setuid` would broadcast to the parent's threads (setxid), which share
//! this memory. The order follows Go's `forkAndExecInChild1`: session and group, then
//! credentials, cwd, parent-death signal, fds, signal state, exec.

use super::{ChildArgs, FdAction, Report, Source, Stage};

/// The errno of the last failed call.
fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EINVAL)
}

/// Writes the report and exits with 127, as a shell does for "could not run".
///
/// # Safety
/// `args.report` points to the parent's live `Report`.
unsafe fn fail(args: &ChildArgs, stage: Stage, errno: i32, slot: i32) -> ! {
    // SAFETY: the parent waits (vfork) until we exec or exit, so nothing else touches the
    // report; volatile keeps the compiler from dropping a write it cannot see being read.
    unsafe {
        std::ptr::write_volatile(args.report, Report { stage, errno, slot });
        libc::_exit(127)
    }
}

/// Runs the child to `execve`; never returns.
///
/// # Safety
/// `args` must come from `Plan::child_args` of a plan that lives until the child has
/// exec'd or exited, and the caller must be the new child.
pub(super) unsafe fn run(args: &ChildArgs) -> ! {
    // SAFETY (whole function): every pointer in `args` is into the parent's live `Plan`,
    // arrays are the lengths given, and only this child touches them until it execs.
    unsafe {
        // 1. Signal dispositions back to default, so no parent handler runs in this shared
        //    memory, and the program starts as if from a fresh fork+exec. All signals stay
        //    blocked until just before exec.
        for sig in 1..crate::signum::max_signal() + 1 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                sys::default_disposition(sig);
            }
        }

        // 2. Session and process group.
        if args.setsid && libc::setsid() < 0 {
            fail(args, Stage::Setsid, errno(), -1);
        }
        if let Some(pgid) = args.pgid {
            if libc::setpgid(0, pgid) < 0 {
                fail(args, Stage::Setpgid, errno(), -1);
            }
        }

        // 3. Credentials: supplementary groups first (while we may still change them), then
        //    gid, then uid. Groups the caller listed must be set; otherwise a uid/gid change
        //    drops them, as libuv, best effort (it fails when not root, and then
        //    setgid/setuid say EPERM themselves).
        if args.set_groups {
            if sys::setgroups(args.ngroups, args.groups) < 0 {
                fail(args, Stage::Setgroups, errno(), -1);
            }
        } else if args.uid.is_some() || args.gid.is_some() {
            sys::setgroups_none();
        }
        if let Some(gid) = args.gid {
            if sys::setgid(gid) < 0 {
                fail(args, Stage::Setgid, errno(), -1);
            }
        }
        if let Some(uid) = args.uid {
            if sys::setuid(uid) < 0 {
                fail(args, Stage::Setuid, errno(), -1);
            }
        }

        // 4. Working directory.
        if !args.cwd.is_null() && libc::chdir(args.cwd) < 0 {
            fail(args, Stage::Chdir, errno(), -1);
        }

        // 5. Parent-death signal (after the credential change, which would clear it).
        if args.pdeathsig != 0 {
            if sys::set_pdeathsig(args.pdeathsig) < 0 {
                fail(args, Stage::ParentDeath, errno(), -1);
            }
            // The parent may have died before the call: then nobody would ever signal us.
            if libc::getppid() != args.parent_pid {
                libc::_exit(127);
            }
        }

        // 6. The fd table.
        let actions = std::slice::from_raw_parts_mut(args.actions, args.nactions);
        setup_fds(args, actions);

        // 7. The environment's own-pid entry (LISTEN_PID and the like).
        if !args.pid_digits.is_null() {
            write_decimal(args.pid_digits, libc::getpid() as u32);
        }

        // 8. An empty signal mask, then exec each candidate as execvp does.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

        let mut err = libc::ENOENT;
        let mut saw_eacces = false;
        for i in 0..args.npaths {
            libc::execve(*args.paths.add(i), args.argv, args.envp);
            err = errno();
            match err {
                libc::EACCES => saw_eacces = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => break,
            }
        }
        if saw_eacces && matches!(err, libc::ENOENT | libc::ENOTDIR) {
            err = libc::EACCES;
        }
        // The exec failed: block signals again so a signal cannot kill us before the report.
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        fail(args, Stage::Exec, err, -1)
    }
}

/// Puts every slot in place, as libuv's `uv__process_child_init`.
///
/// # Safety
/// Called only in the child, with `actions` sorted by target.
unsafe fn setup_fds(args: &ChildArgs, actions: &mut [FdAction]) {
    let count = actions.last().map_or(0, |a| a.target + 1);
    // SAFETY: plain fd system calls in the child.
    unsafe {
        // A source below its own slot may be overwritten by an earlier slot's dup2 (the
        // stdout/stderr swap), so move it above every slot first.
        for a in actions.iter_mut() {
            if let Source::Fd(src) = a.source {
                if src < a.target {
                    let moved = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, count);
                    if moved < 0 {
                        fail(args, Stage::Stdio, errno(), a.target);
                    }
                    a.source = Source::Fd(moved);
                }
            }
        }
        for a in actions.iter() {
            let t = a.target;
            match a.source {
                Source::Fd(src) if src == t => {
                    if libc::fcntl(t, libc::F_SETFD, 0) < 0 {
                        fail(args, Stage::Stdio, errno(), t);
                    }
                }
                Source::Fd(src) => {
                    if libc::dup2(src, t) < 0 {
                        fail(args, Stage::Stdio, errno(), t);
                    }
                }
                Source::DevNull => {
                    let flags = if t == 0 { libc::O_RDONLY } else { libc::O_RDWR };
                    let fd = libc::open(c"/dev/null".as_ptr(), flags);
                    if fd < 0 {
                        fail(args, Stage::Stdio, errno(), t);
                    }
                    if fd != t {
                        if libc::dup2(fd, t) < 0 {
                            fail(args, Stage::Stdio, errno(), t);
                        }
                        libc::close(fd);
                    }
                }
                Source::Close => {
                    libc::close(t);
                }
            }
            // stdin, stdout and stderr given from an fd of the parent are made blocking, as
            // libuv does: programs do not expect EAGAIN there, and a stream the parent
            // holds for tokio (an accepted TCP connection: the CGI case) is non-blocking.
            // The flag is the open file description's, so the parent's copy changes too.
            if t <= 2 && matches!(a.source, Source::Fd(_)) {
                let fl = libc::fcntl(t, libc::F_GETFL);
                if fl >= 0 && fl & libc::O_NONBLOCK != 0 {
                    libc::fcntl(t, libc::F_SETFL, fl & !libc::O_NONBLOCK);
                }
            }
        }
        // Every other fd is closed at exec: the child gets exactly its slots.
        let mut from = 0;
        for a in actions.iter() {
            if a.target > from {
                sys::cloexec_range(from as u32, (a.target - 1) as u32);
            }
            from = a.target + 1;
        }
        sys::cloexec_range(from as u32, u32::MAX);
    }
}

/// Writes `n` in decimal at `out`, NUL-terminated (at most 11 bytes for a u32).
///
/// # Safety
/// `out` has room for 21 bytes.
unsafe fn write_decimal(out: *mut u8, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 || len == digits.len() {
            break;
        }
    }
    // SAFETY: len <= 10 and `out` has room for 21 bytes.
    unsafe {
        for i in 0..len {
            *out.add(i) = digits[len - 1 - i];
        }
        *out.add(len) = 0;
    }
}

/// The raw system calls of the child, per platform.
#[cfg(target_os = "linux")]
mod sys {
    /// Drops supplementary groups; errors ignored (see the caller).
    pub unsafe fn setgroups_none() {
        // SAFETY: a raw syscall with a null list of length 0.
        unsafe {
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>());
        }
    }

    /// `setgroups(n, list)`: the 32-bit-id call on the 32-bit targets whose plain
    /// `SYS_setgroups` takes 16-bit ids.
    pub unsafe fn setgroups(n: usize, list: *const libc::gid_t) -> libc::c_long {
        #[cfg(any(target_arch = "x86", target_arch = "arm"))]
        const NR: libc::c_long = libc::SYS_setgroups32;
        #[cfg(not(any(target_arch = "x86", target_arch = "arm")))]
        const NR: libc::c_long = libc::SYS_setgroups;
        // SAFETY: the kernel reads `n` gids from `list`, which the caller's plan holds (a
        // null list is only passed with n = 0).
        unsafe { libc::syscall(NR, n, list) }
    }

    /// `SIG_DFL` for `sig`, through the raw syscall: glibc's `sigaction` refuses 32 and 33
    /// (its own), so an ignored 32 would otherwise reach the program. An all-zero kernel
    /// `sigaction` is `SIG_DFL` with no flags and an empty mask on every architecture.
    pub unsafe fn default_disposition(sig: i32) {
        let dfl = [0u64; 4];
        // SAFETY: the kernel reads a `struct sigaction` (at most 32 bytes) from `dfl`.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                dfl.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            );
        }
    }

    pub unsafe fn setgid(gid: u32) -> libc::c_long {
        // SAFETY: raw syscall, changes only this (child) process.
        unsafe { libc::syscall(libc::SYS_setgid, gid) }
    }

    pub unsafe fn setuid(uid: u32) -> libc::c_long {
        // SAFETY: raw syscall, changes only this (child) process.
        unsafe { libc::syscall(libc::SYS_setuid, uid) }
    }

    pub unsafe fn set_pdeathsig(sig: i32) -> libc::c_int {
        // SAFETY: prctl with an integer argument.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong) }
    }

    /// Marks fds `first..=last` close-on-exec. Kernels before 5.11 lack the flag; then
    /// only brood's own close-on-exec fds are kept from the child.
    pub unsafe fn cloexec_range(first: u32, last: u32) {
        // SAFETY: raw syscall on this process's fd table.
        unsafe {
            libc::syscall(
                libc::SYS_close_range,
                first,
                last,
                libc::CLOSE_RANGE_CLOEXEC,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn decimal() {
        let mut buf = [0xffu8; 21];
        for (n, want) in [
            (0u32, "0"),
            (7, "7"),
            (1234, "1234"),
            (u32::MAX, "4294967295"),
        ] {
            // SAFETY: buf has 21 bytes.
            unsafe { super::write_decimal(buf.as_mut_ptr(), n) };
            let end = buf.iter().position(|&b| b == 0).unwrap();
            assert_eq!(&buf[..end], want.as_bytes());
        }
    }
}
