//! `Options`: what one spawn needs, as plain data (libuv's `uv_process_options_t`).
//! [`Command`](crate::Command) is the builder in front of it; the engine reads only this,
//! so the engine does not know the builder.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use crate::Signum;
use crate::stdio::Stdio;

/// The options of a spawn. The engine takes `&mut` because it hands `Stdio::owned` fds to
/// the child and marks them given.
#[derive(Debug)]
pub(crate) struct Options {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub arg0: Option<OsString>,
    pub env_clear: bool,
    /// Changes on top of the inherited (or cleared) environment: `None` removes.
    pub env: BTreeMap<OsString, Option<OsString>>,
    pub env_pid: Option<OsString>,
    pub cwd: Option<PathBuf>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Supplementary groups to set (`setgroups`); `None` keeps the rule of `uid`/`gid`.
    pub groups: Option<Vec<u32>>,
    pub detached: bool,
    pub process_group: Option<i32>,
    pub parent_death_signal: Option<Signum>,
    pub kill_on_drop: bool,
    pub reset_signals: bool,
    pub stdio: BTreeMap<i32, Stdio>,
    /// Exec this open file (`execveat(fd, "", AT_EMPTY_PATH)`) rather than a path: the
    /// CGI runner's checked script. The program's paths stay the fallback for kernels
    /// without `execveat` (before 3.19).
    pub exec_fd: Option<i32>,
}
