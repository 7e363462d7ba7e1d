//! What the child reads and writes between clone and exec: plain `#[repr(C)]` data that
//! [`Plan`](super::Plan) owns, so the child and the platform file need nothing else of the
//! engine.

use std::os::fd::RawFd;

/// Where a slot's fd comes from, as the child sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub(crate) enum Source {
    /// Open `/dev/null` there.
    DevNull,
    /// Close the slot.
    Close,
    /// Duplicate this fd of the parent onto the slot (or clear close-on-exec if equal).
    Fd(RawFd),
}

/// One slot of the child's fd table.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct FdAction {
    pub target: RawFd,
    pub source: Source,
    /// Clear `O_NONBLOCK` when the slot is 0-2 (given explicitly from an fd).
    pub make_blocking: bool,
}

/// Which step of the child failed; the parent turns it into the error's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Stage {
    None = 0,
    Setsid,
    Setpgid,
    Setgroups,
    Setgid,
    Setuid,
    Chdir,
    ParentDeath,
    Stdio,
    Exec,
}

/// What the child writes back when a step fails. The parent reads it after the child has
/// exec'd or exited (vfork semantics), so there is no race.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct Report {
    pub stage: Stage,
    pub errno: i32,
    /// The slot for `Stage::Stdio`.
    pub slot: i32,
}

/// Everything the child reads, as raw pointers into memory that [`Plan`] owns and keeps
/// alive until the child has exec'd.
#[repr(C)]
pub(crate) struct ChildArgs {
    /// NUL-terminated candidates to `execve`, in PATH order.
    pub paths: *const *const libc::c_char,
    pub npaths: usize,
    /// An open file to exec first (`execveat` with `AT_EMPTY_PATH`), or -1.
    pub exec_fd: i32,
    pub argv: *const *const libc::c_char,
    pub envp: *const *const libc::c_char,
    /// Where the child writes its pid in decimal (room for 20 digits and a NUL), or null.
    pub pid_digits: *mut u8,
    pub cwd: *const libc::c_char,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// `setgroups(ngroups, groups)` when set; else groups are dropped with a uid/gid change.
    pub set_groups: bool,
    pub groups: *const libc::gid_t,
    pub ngroups: usize,
    pub setsid: bool,
    pub pgid: Option<i32>,
    pub pdeathsig: i32,
    pub parent_pid: i32,
    /// Every signal to SIG_DFL (libuv), not only caught ones and SIGPIPE (std).
    pub reset_signals: bool,
    /// `SIGRTMIN` as the C library gives it (signals from 32 below it are its own).
    pub first_rt_signal: i32,
    /// This process runs as root (real uid 0): a failed setgroups is an error.
    pub as_root: bool,
    /// The parent left SIGCHLD unblocked around the clone (`linux.rs`): the child blocks it
    /// first thing.
    pub block_sigchld: bool,
    /// The kernel reset every caught signal at the clone (`clone3` with
    /// CLONE_CLEAR_SIGHAND, `linux.rs`).
    pub handlers_cleared: bool,
    pub actions: *mut FdAction,
    pub nactions: usize,
    pub report: *mut Report,
}
