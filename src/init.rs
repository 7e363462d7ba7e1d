//! What an init process needs from the kernel, as `tini` and `docker run --init` do: becoming
//! a child subreaper, listing children and descendants, reaping the orphans that land on it
//! **by pid** (never with a blanket `waitpid(-1)`, which would steal the exit status of a
//! child that a [`Child`](crate::Child) waits for through its pidfd), and ignoring the
//! terminal's stop signals.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
//! use brood::{Command, Signum, init, signal::Signal};
//! init::set_child_subreaper()?;
//! let mut sigchld = Signal::new(Signum::CHLD)?;
//! // The shell's background job outlives the shell and lands on us.
//! let mut child = Command::new("sh").args(["-c", "sleep 0.1 & echo $!"])
//!     .stdout(brood::Stdio::piped()).spawn()?;
//! let out = child.communicate(b"").await?;
//! let orphan: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
//! let mut reaped = Vec::new();
//! while !reaped.iter().any(|(pid, _)| *pid == orphan) {
//!     sigchld.recv().await;
//!     // `keep` names the children we wait for ourselves (none left here).
//!     reaped.extend(init::reap_orphans(|_| false)?);
//! }
//! assert!(reaped.iter().any(|(pid, exit)| *pid == orphan && exit.success()));
//! # Ok(()) }
//! ```
//!
//! Linux only: children are read from `/proc/PID/task/TID/children` (or, on kernels built
//! without it, from every `/proc/PID/stat`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use crate::error::{Error, Result, from_io};
use crate::process::Exit;

/// Makes this process a child subreaper (`prctl(PR_SET_CHILD_SUBREAPER, 1)`): a descendant
/// whose parent dies is re-parented to the nearest living subreaper ancestor instead of to
/// the machine's (or the PID namespace's) init, and its exit must be reaped there. PID 1 of a
/// namespace gets orphans anyway; the call succeeds there too.
///
/// ```
/// brood::init::set_child_subreaper()?;
/// assert!(brood::init::is_child_subreaper()?);
/// # Ok::<(), brood::Error>(())
/// ```
pub fn set_child_subreaper() -> Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag; the unused arguments are 0.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if r < 0 {
        return Err(Error::last("prctl PR_SET_CHILD_SUBREAPER"));
    }
    Ok(())
}

/// Whether this process is a child subreaper (`PR_GET_CHILD_SUBREAPER`).
pub fn is_child_subreaper() -> Result<bool> {
    let mut flag: libc::c_int = 0;
    // SAFETY: PR_GET_CHILD_SUBREAPER writes one int through the pointer, which points to a
    // live local int.
    let r = unsafe {
        libc::prctl(
            libc::PR_GET_CHILD_SUBREAPER,
            &mut flag as *mut libc::c_int as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if r < 0 {
        return Err(Error::last("prctl PR_GET_CHILD_SUBREAPER"));
    }
    Ok(flag != 0)
}

/// The pids of this process's children (of all its threads), running or not yet reaped.
/// A snapshot: children may start or end while it is read.
pub fn children() -> Result<Vec<i32>> {
    children_of(std::process::id() as i32)
}

/// The pids of every descendant of this process (children, their children, ...), parents
/// before their children. A snapshot, as [`children`]; zombies are included.
pub fn descendants() -> Result<Vec<i32>> {
    let mut all = children()?;
    let mut i = 0;
    while i < all.len() {
        // A process that ended meanwhile has no children file left: it has none to add.
        all.extend(children_of(all[i]).unwrap_or_default());
        i += 1;
    }
    Ok(all)
}

/// The children of `pid`, from `/proc/PID/task/*/children`; on a kernel built without
/// those files (`CONFIG_PROC_CHILDREN`), from the parent field of every `/proc/*/stat`.
fn children_of(pid: i32) -> Result<Vec<i32>> {
    static CHILDREN_FILES: OnceLock<bool> = OnceLock::new();
    if !*CHILDREN_FILES.get_or_init(|| Path::new("/proc/thread-self/children").exists()) {
        return Ok(parents()?.remove(&pid).unwrap_or_default());
    }
    let tasks = format!("/proc/{pid}/task");
    let dir = std::fs::read_dir(&tasks).map_err(|e| from_io(e, format!("read {tasks}")))?;
    let mut pids = Vec::new();
    for task in dir.flatten() {
        // A thread that ended while we read has no file left, and no children.
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    Ok(pids)
}

/// Every process's parent, read from `/proc/*/stat`: parent → children.
fn parents() -> Result<HashMap<i32, Vec<i32>>> {
    let dir = std::fs::read_dir("/proc").map_err(|e| from_io(e, "read /proc"))?;
    let mut map: HashMap<i32, Vec<i32>> = HashMap::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses: the fields start after the last ')'.
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            map.entry(ppid).or_default().push(pid);
        }
    }
    Ok(map)
}

/// Reaps every child of this process that has ended, except the ones `keep` returns true
/// for (the children someone waits for, e.g. through a [`Child`](crate::Child)), each by
/// its own pid (`waitpid(pid, WNOHANG)`), and says who ended and how. Children still
/// running are left alone.
///
/// Call it when SIGCHLD comes (watch it with [`Signal`](crate::signal::Signal)): every
/// child that ends, and every orphan that lands here already ended, sends one; several
/// may come as one, which is why each call looks at every child.
///
/// `keep` must know a child before it can end: spawn the children you wait for yourself
/// before the first call, or make the pid known to `keep` before another thread can call
/// this (hold a lock over the spawn and over this call). A child unknown to `keep` that
/// ends is reaped here, and its own waiter then gets `ECHILD`.
pub fn reap_orphans(keep: impl Fn(i32) -> bool) -> Result<Vec<(i32, Exit)>> {
    let mut reaped = Vec::new();
    for pid in children()? {
        if keep(pid) {
            continue;
        }
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid on one child's pid with a pointer to a live local int. The pid
        // cannot be another process's: a child's pid is not reused until it is reaped, and
        // `keep` excludes every child reaped elsewhere.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            reaped.push((pid, Exit::from_wait_status(status)));
        }
        // 0: still running. ECHILD: reaped by someone else meanwhile, or not our child
        // (the snapshot was stale). Neither is an error for the caller.
    }
    Ok(reaped)
}

/// Ignores SIGTTIN and SIGTTOU in this process (`SIG_IGN`), as `tini` does: an init that
/// writes to the terminal from a background process group is then never stopped by the
/// terminal, and a terminal read fails with `EIO` instead. Children spawned by brood start
/// with the default action again.
pub fn ignore_terminal_stops() -> Result<()> {
    for sig in [libc::SIGTTIN, libc::SIGTTOU] {
        // SAFETY: signal(2) with SIG_IGN installs no handler code, only a disposition.
        if unsafe { libc::signal(sig, libc::SIG_IGN) } == libc::SIG_ERR {
            return Err(Error::last(format!("ignore {}", crate::Signum::new(sig))));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_finds_this_process_under_its_parent() {
        let me = std::process::id() as i32;
        // SAFETY: getppid has no arguments and cannot fail.
        let parent = unsafe { libc::getppid() };
        assert!(parents().unwrap()[&parent].contains(&me));
    }

    #[test]
    fn children_and_descendants_list_a_running_child() {
        // Read-only: reap_orphans is tested in its own process (tests/init.rs), as it would
        // reap the children of the other tests running in this one.
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(children().unwrap().contains(&pid));
        assert!(descendants().unwrap().contains(&pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!children().unwrap().contains(&pid));
    }

    #[test]
    fn descendants_lists_grandchildren_after_their_parents() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        let all = descendants().unwrap();
        let (c, g) = (
            all.iter().position(|&p| p == child.id() as i32),
            all.iter().position(|&p| p == grandchild),
        );
        assert!(matches!((c, g), (Some(c), Some(g)) if c < g), "{all:?}");
        crate::kill(grandchild, crate::Signum::KILL).unwrap();
        child.wait().unwrap();
    }
}
