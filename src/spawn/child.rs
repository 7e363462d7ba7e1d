//! The child side of a spawn: what runs between clone and exec.
//!
//! It runs on a stack of its own (mmap'ed, with a guard page) in memory it shares with the
//! parent (CLONE_VM), with the full kernel signal mask set (glibc's 32 and 33 included;
//! SIGCHLD from its first system call on when no handler had it at the clone, `linux.rs`).
//! That blocks every signal the kernel lets a thread block: not SIGKILL and SIGSTOP (which
//! run no handler), and not a fault's own SIGSEGV/SIGBUS/SIGILL/SIGFPE, which the kernel
//! forces through after resetting that handler to SIG_DFL (the child's own copy of the
//! table), so a fault kills the child before exec and no parent handler runs. The child
//! must still not fault: the parent then only sees a child that died before exec, with no
//! report. So it must be async-signal-safe and more: no allocation, no lock, no panic,
//! no unwinding, nothing that touches the parent's heap or glibc's thread list, and no
//! glibc wrapper, since those write the parent thread's `errno` (see `raw.rs`). Only raw
//! system calls on data the parent prepared (see `ChildArgs`); credential changes that way
//! also keep glibc from broadcasting them to the parent's threads (setxid). The order
//! follows Go's `forkAndExecInChild1`: signal dispositions, session and group, credentials,
//! cwd, parent-death signal, fds, signal mask, exec.

use super::args::{ChildArgs, FdAction, Report, Source, Stage};
use super::raw::{self, syscall};

/// Writes the report and exits with 127, as a shell does for "could not run".
///
/// # Safety
/// `args.report` points to the parent's live `Report`.
unsafe fn fail(args: &ChildArgs, stage: Stage, errno: i32, slot: i32) -> ! {
    // SAFETY: the parent waits (vfork) until we exec or exit, so nothing else touches the
    // report; volatile keeps the compiler from dropping a write it cannot see being read.
    unsafe {
        std::ptr::write_volatile(args.report, Report { stage, errno, slot });
        exit(127)
    }
}

/// `exit_group(code)`.
unsafe fn exit(code: i32) -> ! {
    loop {
        // SAFETY: ends this process; it returns only if the kernel refused, then try again.
        let _ = unsafe { syscall(libc::SYS_exit_group, [code as usize, 0, 0, 0, 0, 0]) };
    }
}

/// Runs `syscall`, or fails the spawn at `stage` with its errno.
macro_rules! must {
    ($args:expr, $stage:expr, $slot:expr, $nr:expr, $($a:expr),*) => {{
        let mut a = [0usize; 6];
        let given: &[usize] = &[$($a as usize),*];
        a[..given.len()].copy_from_slice(&given);
        match syscall($nr, a) {
            Ok(v) => v,
            Err(e) => fail($args, $stage, e, $slot),
        }
    }};
}

/// Runs the child to `execve`; never returns.
///
/// # Safety
/// `args` must come from `Plan::child_args` of a plan that lives until the child has
/// exec'd or exited, and the caller must be the new child.
pub(super) unsafe fn run(args: &ChildArgs) -> ! {
    // SAFETY: (for the whole function) every pointer in `args` is into the parent's live `Plan`,
    // arrays are the lengths given, and only this child touches them until it execs.
    unsafe {
        // 0. SIGCHLD, if the parent left it open (`linux.rs`: no handler had it then),
        //    joins the rest of the blocked signals before anything else runs here.
        if args.block_sigchld {
            let _ = raw::set_mask(&raw::FULL_SET, std::ptr::null_mut());
        }

        // 1. Signal dispositions. A caught signal becomes SIG_DFL, so no parent handler can
        //    run in this shared memory once the mask is emptied (exec would reset it
        //    anyway). An ignored one stays ignored, as std, Go and posix_spawn leave it
        //    (nohup, `trap '' HUP`), except SIGPIPE, reset as std does; with
        //    `reset_signal_dispositions(true)` every one goes back to SIG_DFL, as libuv.
        //    After clone3 with CLONE_CLEAR_SIGHAND the kernel has reset the caught ones
        //    already: what is left is SIGPIPE and glibc's own, whether caught or ignored.
        if args.handlers_cleared && !args.reset_signals {
            sys::default_disposition(libc::SIGPIPE);
            for sig in 32..args.first_rt_signal {
                sys::default_disposition(sig);
            }
        } else {
            for sig in 1..crate::signum::max_signal() + 1 {
                if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                    continue;
                }
                // glibc's own signals (32 and 33, below SIGRTMIN) were not ignored by
                // choice: no program can set them through glibc.
                let keep_ignored =
                    sig != libc::SIGPIPE && !(32..args.first_rt_signal).contains(&sig);
                if !args.reset_signals {
                    let handler = sys::handler(sig);
                    if handler == libc::SIG_DFL || handler == libc::SIG_IGN && keep_ignored {
                        continue;
                    }
                }
                sys::default_disposition(sig);
            }
        }

        // 2. Session and process group.
        if args.setsid {
            must!(args, Stage::Setsid, -1, libc::SYS_setsid,);
        }
        if let Some(pgid) = args.pgid {
            must!(args, Stage::Setpgid, -1, libc::SYS_setpgid, 0, pgid);
        }

        // 3. Credentials: supplementary groups first (while we may still change them), then
        //    gid, then uid. Groups the caller listed must be set. Otherwise a uid/gid change
        //    drops them; as std does, a failed drop is an error when this process runs as
        //    root (a child that kept root's groups after a uid change would be a hole), and
        //    expected to fail otherwise (setgid/setuid then say EPERM themselves).
        if args.set_groups {
            must!(
                args,
                Stage::Setgroups,
                -1,
                sys::SETGROUPS,
                args.ngroups,
                args.groups
            );
        } else if args.uid.is_some() || args.gid.is_some() {
            if let Err(e) = syscall(sys::SETGROUPS, [0; 6]) {
                if args.as_root {
                    fail(args, Stage::Setgroups, e, -1);
                }
            }
        }
        if let Some(gid) = args.gid {
            must!(args, Stage::Setgid, -1, sys::SETGID, gid);
        }
        if let Some(uid) = args.uid {
            must!(args, Stage::Setuid, -1, sys::SETUID, uid);
        }

        // 4. Working directory.
        if !args.cwd.is_null() {
            must!(args, Stage::Chdir, -1, libc::SYS_chdir, args.cwd);
        }

        // 5. Parent-death signal (after the credential change, which would clear it).
        if args.pdeathsig != 0 {
            must!(
                args,
                Stage::ParentDeath,
                -1,
                libc::SYS_prctl,
                libc::PR_SET_PDEATHSIG,
                args.pdeathsig
            );
            // The parent may have died before the call: then nobody would ever signal us.
            if syscall(libc::SYS_getppid, [0; 6]) != Ok(args.parent_pid as usize) {
                exit(127);
            }
        }

        // 6. The fd table.
        let actions = std::slice::from_raw_parts_mut(args.actions, args.nactions);
        setup_fds(args, actions);

        // 7. The environment's own-pid entry (LISTEN_PID and the like).
        if !args.pid_digits.is_null() {
            let pid = syscall(libc::SYS_getpid, [0; 6]).unwrap_or(0);
            write_decimal(args.pid_digits, pid as u32);
        }

        // 8. An empty signal mask, then exec each candidate as execvp does.
        let _ = raw::set_mask(&raw::EMPTY_SET, std::ptr::null_mut());

        let mut err = libc::ENOENT;
        let mut saw_eacces = false;
        if args.exec_fd >= 0 {
            // The open file itself (its name becomes the process's name); only a kernel
            // without execveat (ENOSYS) falls back to the paths.
            let exec = [
                args.exec_fd as usize,
                c"".as_ptr() as usize,
                args.argv as usize,
                args.envp as usize,
                libc::AT_EMPTY_PATH as usize,
                0,
            ];
            err = syscall(libc::SYS_execveat, exec)
                .err()
                .unwrap_or(libc::ENOEXEC);
            if err != libc::ENOSYS {
                let _ = raw::set_mask(&raw::FULL_SET, std::ptr::null_mut());
                fail(args, Stage::Exec, err, -1)
            }
        }
        for i in 0..args.npaths {
            let exec = [
                *args.paths.add(i) as usize,
                args.argv as usize,
                args.envp as usize,
                0,
                0,
                0,
            ];
            err = syscall(libc::SYS_execve, exec)
                .err()
                .unwrap_or(libc::ENOEXEC);
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
        let _ = raw::set_mask(&raw::FULL_SET, std::ptr::null_mut());
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
                    let moved = must!(
                        args,
                        Stage::Stdio,
                        a.target,
                        libc::SYS_fcntl,
                        src,
                        libc::F_DUPFD_CLOEXEC,
                        count
                    );
                    a.source = Source::Fd(moved as i32);
                }
            }
        }
        for a in actions.iter() {
            let t = a.target;
            match a.source {
                Source::Fd(src) if src == t => {
                    must!(args, Stage::Stdio, t, libc::SYS_fcntl, t, libc::F_SETFD, 0);
                }
                Source::Fd(src) => {
                    must!(args, Stage::Stdio, t, libc::SYS_dup3, src, t, 0);
                }
                Source::DevNull => {
                    let flags = if t == 0 { libc::O_RDONLY } else { libc::O_RDWR };
                    let fd = must!(
                        args,
                        Stage::Stdio,
                        t,
                        libc::SYS_openat,
                        libc::AT_FDCWD,
                        c"/dev/null".as_ptr(),
                        flags,
                        0
                    ) as i32;
                    if fd != t {
                        must!(args, Stage::Stdio, t, libc::SYS_dup3, fd, t, 0);
                        let _ = syscall(libc::SYS_close, [fd as usize, 0, 0, 0, 0, 0]);
                    }
                }
                Source::Close => {
                    let _ = syscall(libc::SYS_close, [t as usize, 0, 0, 0, 0, 0]);
                }
            }
            // stdin, stdout and stderr the caller gave explicitly from an fd
            // (`inherit_fd`, `inherit_stream`, `Stdio::from`) are made blocking, as libuv
            // does: programs do not expect EAGAIN there, and a stream the parent holds for
            // tokio (an accepted TCP connection: the CGI case) is non-blocking. The flag is
            // the open file description's, so the parent's copy changes too: that is why
            // the parent's own stdio, inherited by default, is left as it is.
            if t <= 2 && a.make_blocking {
                if let Ok(fl) = syscall(
                    libc::SYS_fcntl,
                    [t as usize, libc::F_GETFL as usize, 0, 0, 0, 0],
                ) {
                    let fl = fl as i32;
                    if fl & libc::O_NONBLOCK != 0 {
                        let _ = syscall(
                            libc::SYS_fcntl,
                            [
                                t as usize,
                                libc::F_SETFL as usize,
                                (fl & !libc::O_NONBLOCK) as usize,
                                0,
                                0,
                                0,
                            ],
                        );
                    }
                }
            }
        }
        // Every other fd is marked close-on-exec, so the child gets exactly its slots. Linux
        // before 5.11 has no CLOSE_RANGE_CLOEXEC: then an fd this process inherited without
        // close-on-exec (and never marked, see `disable_stdio_inheritance`) does reach the
        // child. Every fd brood and Rust's std open is close-on-exec already.
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

/// The child's system calls that differ per platform.
#[cfg(target_os = "linux")]
mod sys {
    use super::raw::{SIGSET_SIZE, syscall};

    /// The 32-bit id calls: on 32-bit x86, arm and sparc `SYS_setuid` and friends take
    /// 16-bit ids (`.uid(65536)` would become `setuid(0)`).
    #[cfg(any(target_arch = "x86", target_arch = "arm", target_arch = "sparc"))]
    pub const SETUID: libc::c_long = libc::SYS_setuid32;
    #[cfg(any(target_arch = "x86", target_arch = "arm", target_arch = "sparc"))]
    pub const SETGID: libc::c_long = libc::SYS_setgid32;
    #[cfg(any(target_arch = "x86", target_arch = "arm", target_arch = "sparc"))]
    pub const SETGROUPS: libc::c_long = libc::SYS_setgroups32;
    #[cfg(not(any(target_arch = "x86", target_arch = "arm", target_arch = "sparc")))]
    pub const SETUID: libc::c_long = libc::SYS_setuid;
    #[cfg(not(any(target_arch = "x86", target_arch = "arm", target_arch = "sparc")))]
    pub const SETGID: libc::c_long = libc::SYS_setgid;
    #[cfg(not(any(target_arch = "x86", target_arch = "arm", target_arch = "sparc")))]
    pub const SETGROUPS: libc::c_long = libc::SYS_setgroups;

    /// Where the handler is in the kernel's `struct sigaction`, in words: MIPS puts
    /// `sa_flags` first.
    #[cfg(any(target_arch = "mips", target_arch = "mips64"))]
    const HANDLER_AT: usize = 1;
    #[cfg(not(any(target_arch = "mips", target_arch = "mips64")))]
    const HANDLER_AT: usize = 0;

    /// The current handler of `sig` (`SIG_DFL`, `SIG_IGN` or a function), through the raw
    /// syscall (glibc's `sigaction` refuses its own 32 and 33). `SIG_DFL` if it cannot be read.
    pub unsafe fn handler(sig: i32) -> libc::sighandler_t {
        // Room for the largest kernel `struct sigaction` (32 bytes).
        let mut old = [0usize; 8];
        // SAFETY: the kernel writes at most one `struct sigaction` into `old`.
        let r = unsafe {
            syscall(
                libc::SYS_rt_sigaction,
                [
                    sig as usize,
                    0,
                    old.as_mut_ptr() as usize,
                    SIGSET_SIZE,
                    0,
                    0,
                ],
            )
        };
        match r {
            Ok(_) => old[HANDLER_AT] as libc::sighandler_t,
            Err(_) => libc::SIG_DFL,
        }
    }

    /// `SIG_DFL` for `sig`, through the raw syscall. An all-zero kernel `sigaction` is
    /// `SIG_DFL` with no flags and an empty mask on every architecture.
    pub unsafe fn default_disposition(sig: i32) {
        let dfl = [0usize; 8];
        // SAFETY: the kernel reads one `struct sigaction` (at most 32 bytes) from `dfl`.
        let _ = unsafe {
            syscall(
                libc::SYS_rt_sigaction,
                [sig as usize, dfl.as_ptr() as usize, 0, SIGSET_SIZE, 0, 0],
            )
        };
    }

    /// Marks fds `first..=last` close-on-exec (Linux 5.11+; a no-op before, see the caller).
    pub unsafe fn cloexec_range(first: u32, last: u32) {
        // SAFETY: changes only the close-on-exec flags of this process's fds.
        let _ = unsafe {
            syscall(
                libc::SYS_close_range,
                [
                    first as usize,
                    last as usize,
                    libc::CLOSE_RANGE_CLOEXEC as usize,
                    0,
                    0,
                    0,
                ],
            )
        };
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
