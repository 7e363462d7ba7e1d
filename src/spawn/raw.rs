//! Raw Linux system calls for the code between clone and exec.
//!
//! The child shares the parent's memory and thread pointer (CLONE_VM without CLONE_SETTLS),
//! so glibc's wrappers, which store a failure in the *parent thread's* `errno`, would write
//! into the suspended parent. On x86_64 and aarch64 these calls are made with inline
//! assembly: the error comes back in the return value (`-errno`) and nothing else is
//! written. On other architectures they go through `libc::syscall`, which also sets the
//! calling thread's `errno` on failure (the parent thread's, then): the error still comes
//! back in the return value, the parent only finds its `errno` changed.

/// `Err(errno)` for a kernel return in `-4095..=-1`, else the value.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn result(ret: isize) -> Result<usize, i32> {
    if (-4095..0).contains(&ret) {
        Err(-ret as i32)
    } else {
        Ok(ret as usize)
    }
}

/// System call `nr` with up to six word arguments.
///
/// # Safety
/// The arguments must be what the kernel expects for `nr` (valid pointers for its reads and
/// writes); the call may change this process as the system call does.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn syscall(nr: libc::c_long, a: [usize; 6]) -> Result<usize, i32> {
    let ret: isize;
    // SAFETY: the x86_64 Linux system call convention; rcx and r11 are clobbered by the
    // `syscall` instruction; the caller vouches for the arguments.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
            in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    result(ret)
}

/// System call `nr` with up to six word arguments.
///
/// # Safety
/// As for x86_64 above.
#[cfg(target_arch = "aarch64")]
pub(super) unsafe fn syscall(nr: libc::c_long, a: [usize; 6]) -> Result<usize, i32> {
    let ret: isize;
    // SAFETY: the aarch64 Linux system call convention (number in x8, result in x0); the
    // caller vouches for the arguments.
    unsafe {
        core::arch::asm!(
            "svc 0",
            in("x8") nr as usize,
            inlateout("x0") a[0] => ret,
            in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") a[4], in("x5") a[5],
            options(nostack),
        );
    }
    result(ret)
}

/// System call `nr` through `libc::syscall` (which also sets `errno` on failure).
///
/// # Safety
/// As for x86_64 above.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(super) unsafe fn syscall(nr: libc::c_long, a: [usize; 6]) -> Result<usize, i32> {
    // SAFETY: the caller vouches for the arguments.
    let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if r == -1 {
        // SAFETY: reads this thread's errno right after the failed call.
        return Err(unsafe { *libc::__errno_location() });
    }
    Ok(r as usize)
}

/// The kernel's `struct clone_args` as Linux 5.3 first took it (`CLONE_ARGS_SIZE_VER0`:
/// brood needs none of the later fields).
#[cfg(all(target_arch = "x86_64", target_pointer_width = "64"))]
#[repr(C)]
pub(super) struct CloneArgs {
    pub flags: u64,
    /// Where the kernel writes the pidfd (an `int`) with CLONE_PIDFD.
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    /// The lowest address of the child's stack, and its size: the child starts with its
    /// stack pointer at `stack + stack_size`.
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
}

/// `CLONE_CLEAR_SIGHAND` (Linux 5.5, `clone3` only): the child starts with every caught
/// signal at SIG_DFL; ignored ones stay ignored.
#[cfg(all(target_arch = "x86_64", target_pointer_width = "64"))]
pub(super) const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;

/// `clone3(args)`: in the parent, the child's pid or the errno; the child calls
/// `entry(arg)` on the stack `args` gives and never comes back here (`entry` must not
/// return).
///
/// A wrapper of our own because no C library exports one: after the system call the child
/// runs on a new stack with no frame to return to, so the call into `entry` must be made in
/// the same assembly block.
///
/// # Safety
/// `args` is valid for the kernel; its stack is mapped and not in use, its top 16-byte
/// aligned, and it stays so until the child execs or exits (CLONE_VFORK); `entry` runs in the
/// child under the rules of `child.rs` and never returns.
#[cfg(all(target_arch = "x86_64", target_pointer_width = "64"))]
pub(super) unsafe fn clone3(
    args: &CloneArgs,
    entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> Result<usize, i32> {
    let ret: isize;
    // SAFETY: the x86_64 system call convention (rcx and r11 clobbered). The child resumes
    // after `syscall` with this thread's registers but rax = 0 and rsp at its new stack's
    // top: r12 and r13 still hold `arg` and `entry`, the frame pointer is cleared (the
    // child's stack has no frame below) and `call` sees the 16-byte alignment the ABI asks
    // for. `entry` never returns; `ud2` stops the child if it ever did. The parent skips to
    // `2:` with the pid or -errno in rax, its stack untouched (`nostack`: nothing is pushed
    // on it).
    unsafe {
        core::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "and rsp, -16",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 as isize => ret,
            in("rdi") args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    result(ret)
}

/// The size of the kernel's signal set, in bytes (`_NSIG / 8`).
#[cfg(any(target_arch = "mips", target_arch = "mips64"))]
pub(super) const SIGSET_SIZE: usize = 16;
/// The size of the kernel's signal set, in bytes (`_NSIG / 8`).
#[cfg(not(any(target_arch = "mips", target_arch = "mips64")))]
pub(super) const SIGSET_SIZE: usize = 8;

/// A kernel signal set with every bit set: glibc's `sigfillset` leaves out its own 32 and
/// 33, this one does not.
pub(super) const FULL_SET: [u64; 2] = [u64::MAX; 2];
/// `FULL_SET` without SIGCHLD.
pub(super) const FULL_SET_BUT_SIGCHLD: [u64; 2] = full_set_without(libc::SIGCHLD);

/// A full set without `sig`, laid out as the kernel reads a set: `unsigned long` words,
/// signal n at bit (n - 1) % BITS of word (n - 1) / BITS. On a 32-bit big-endian machine
/// that is not bit n - 1 of a `u64`.
const fn full_set_without(sig: i32) -> [u64; 2] {
    let mut bytes = [0xffu8; 16];
    let word_bytes = std::mem::size_of::<libc::c_ulong>();
    let n = (sig - 1) as usize;
    let (word, bit) = (n / (word_bytes * 8), n % (word_bytes * 8));
    let byte = if cfg!(target_endian = "little") {
        bit / 8
    } else {
        word_bytes - 1 - bit / 8
    };
    bytes[word * word_bytes + byte] &= !(1u8 << (bit % 8));
    let (mut lo, mut hi) = ([0u8; 8], [0u8; 8]);
    let mut i = 0;
    while i < 8 {
        lo[i] = bytes[i];
        hi[i] = bytes[8 + i];
        i += 1;
    }
    [u64::from_ne_bytes(lo), u64::from_ne_bytes(hi)]
}

/// An empty kernel signal set.
pub(super) const EMPTY_SET: [u64; 2] = [0; 2];

/// `rt_sigprocmask(SIG_SETMASK, set, old)`.
///
/// # Safety
/// `old` is null or has room for a kernel signal set.
pub(super) unsafe fn set_mask(set: &[u64; 2], old: *mut [u64; 2]) -> Result<usize, i32> {
    // SAFETY: as `sigprocmask`'s.
    unsafe { sigprocmask(libc::SIG_SETMASK, set, old) }
}

/// `rt_sigprocmask(SIG_BLOCK, set, old)`: `set` added to the blocked ones.
///
/// # Safety
/// `old` is null or has room for a kernel signal set.
pub(super) unsafe fn block_mask(set: &[u64; 2], old: *mut [u64; 2]) -> Result<usize, i32> {
    // SAFETY: as `sigprocmask`'s.
    unsafe { sigprocmask(libc::SIG_BLOCK, set, old) }
}

/// # Safety
/// `old` is null or has room for a kernel signal set.
unsafe fn sigprocmask(how: i32, set: &[u64; 2], old: *mut [u64; 2]) -> Result<usize, i32> {
    // SAFETY: both sets are 16 bytes, at least SIGSET_SIZE.
    unsafe {
        syscall(
            libc::SYS_rt_sigprocmask,
            [
                how as usize,
                set.as_ptr() as usize,
                old as usize,
                SIGSET_SIZE,
                0,
                0,
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_without_sigchld_lacks_only_sigchld() {
        // Read back as the kernel does: `unsigned long` words in memory order.
        let set = FULL_SET_BUT_SIGCHLD;
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&set[0].to_ne_bytes());
        bytes[8..].copy_from_slice(&set[1].to_ne_bytes());
        let w = std::mem::size_of::<libc::c_ulong>();
        let open: Vec<i32> = (1..=128)
            .filter(|&sig| {
                let n = sig as usize - 1;
                let word =
                    libc::c_ulong::from_ne_bytes(bytes[n / (w * 8) * w..][..w].try_into().unwrap());
                word & (1 << (n % (w * 8))) == 0
            })
            .collect();
        assert_eq!(open, vec![libc::SIGCHLD]);
    }
}
