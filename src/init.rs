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

use std::collections::{HashMap, HashSet};
use std::os::fd::FromRawFd;
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

/// The pids this process holds a pidfd for (read from `/proc/self/fd` and
/// `/proc/self/fdinfo`): every child a [`Child`](crate::Child) watches, dropped ones the
/// background reaper still waits for, and pidfds made by other libraries (tokio's process
/// module makes them too).
pub fn pidfd_pids() -> Result<HashSet<i32>> {
    let dir = std::fs::read_dir("/proc/self/fd").map_err(|e| from_io(e, "read /proc/self/fd"))?;
    let mut pids = HashSet::new();
    for entry in dir.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue; // closed meanwhile (or the directory's own fd)
        };
        let target = target.as_os_str().as_encoded_bytes();
        if !(target.starts_with(b"anon_inode:[pidfd]") || target.starts_with(b"pidfd:")) {
            continue;
        }
        let info = format!("/proc/self/fdinfo/{}", entry.file_name().to_string_lossy());
        let pid = std::fs::read_to_string(info).ok().and_then(|i| {
            i.lines()
                .find_map(|l| l.strip_prefix("Pid:"))
                .and_then(|p| p.trim().parse::<i32>().ok())
        });
        if let Some(pid) = pid.filter(|&p| p > 0) {
            pids.insert(pid);
        }
    }
    Ok(pids)
}

/// Reaps every ended child of this process that no pidfd of it watches: the orphans, for
/// a process whose own children are all [`Child`](crate::Child)ren (each holds its child's
/// pidfd from the `clone` until it has reaped it, so the two can never both reap one).
/// Looks at the pidfds only when a child has ended. Gives `ENOSYS` where children get no
/// pidfds (Linux before 5.2, or `BROOD_NO_PIDFD=1`): there it cannot tell the orphans apart.
/// A child made without a pidfd (`std::process::Command`) that ends is reaped here too.
pub fn reap_unwatched_orphans() -> Result<Vec<(i32, Exit)>> {
    if !pidfds_work() {
        return Err(Error::new(libc::ENOSYS, "reap orphans")
            .with_detail("children have no pidfds here: own children and orphans look alike"));
    }
    let ended: Vec<i32> = children()?.into_iter().filter(|&p| is_zombie(p)).collect();
    if ended.is_empty() {
        return Ok(Vec::new());
    }
    // Read after `ended`: a child of ours that ended has had its pidfd since before it ran,
    // and keeps it until its owner has reaped it.
    let watched = pidfd_pids()?;
    reap_orphans(|p| watched.contains(&p) || !ended.contains(&p))
}

/// Whether this process's children get pidfds: `pidfd_open` works, and `BROOD_NO_PIDFD=1`
/// does not turn them off.
fn pidfds_work() -> bool {
    static WORK: OnceLock<bool> = OnceLock::new();
    *WORK.get_or_init(|| {
        if std::env::var_os("BROOD_NO_PIDFD").is_some_and(|v| v == "1") {
            return false;
        }
        // SAFETY: pidfd_open of our own pid with no flags returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, std::process::id(), 0) };
        if fd < 0 {
            return false;
        }
        // SAFETY: the fd was just returned by pidfd_open and is ours alone.
        drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) });
        true
    })
}

/// Whether `pid` has ended and waits to be reaped (state `Z` in `/proc/PID/stat`).
pub(crate) fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z")
    })
}

/// Makes this process a child subreaper and reaps the orphans that land on it, on a tokio
/// task of the current runtime, until the returned handle is dropped: what a long-running
/// server that spawns programs (`brood cluster`, `brood cgi`) needs, so that the background
/// jobs of its workers or scripts never pile up as zombies. Every child of this process
/// must be a [`Child`](crate::Child) (see [`reap_unwatched_orphans`]). It looks for ended
/// orphans on SIGCHLD, at most once every 250 ms (a busy server's own children end all the
/// time) and at least once every 10 s.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
/// let reaper = brood::init::OrphanReaper::start()?;
/// // A script that leaves a background job behind.
/// let out = brood::Command::new("sh").args(["-c", "sleep 0.05 >/dev/null & echo $!"])
///     .stdout(brood::Stdio::piped()).output().await?;
/// let orphan: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
/// // The orphan ends 50 ms later and is reaped soon after (within the reaper's pause).
/// for _ in 0..3000 {
///     if reaper.reaped_pids().contains(&orphan) { break }
///     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
/// }
/// assert!(reaper.reaped_pids().contains(&orphan));
/// # Ok(()) }
/// ```
pub struct OrphanReaper {
    task: tokio::task::JoinHandle<()>,
    reaped: std::sync::Arc<std::sync::Mutex<ReapLog>>,
}

/// How long [`OrphanReaper`] leaves the owners of ended children to reap them before it
/// looks at who is left.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(10);

/// How long [`OrphanReaper`] waits after a look before it waits for SIGCHLD again: under a
/// steady stream of children (a busy `brood cgi`), it looks about four times a second
/// instead of at every exit (a look at every exit was 15% of `brood cgi --fastcgi`'s CPU
/// per request).
const PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

/// The longest [`OrphanReaper`] goes without a look, SIGCHLD or not.
const LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Reaps the orphans that have ended, if any child has. Most children that end are a
/// `Child`'s, reaped by its owner in a moment: the owners get that moment (SETTLE), so the
/// pidfds are read (a walk over every fd) only for what is still there after it.
async fn reap_ended(log: &std::sync::Mutex<ReapLog>) {
    let ended = children().is_ok_and(|c| c.into_iter().any(is_zombie));
    if !ended {
        return;
    }
    tokio::time::sleep(SETTLE).await;
    if let Ok(done) = reap_unwatched_orphans() {
        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
        for (pid, _) in done {
            log.count += 1;
            if log.last.len() == ReapLog::KEEP {
                log.last.pop_front();
            }
            log.last.push_back(pid);
        }
    }
}

/// The last pids reaped (at most [`ReapLog::KEEP`]) and the count.
#[derive(Default)]
struct ReapLog {
    count: u64,
    last: std::collections::VecDeque<i32>,
}

impl ReapLog {
    const KEEP: usize = 64;
}

impl OrphanReaper {
    /// Becomes a subreaper, watches SIGCHLD, and starts reaping (the orphans already here
    /// first). Needs a tokio runtime; fails with `ENOSYS` without pidfds.
    pub fn start() -> Result<OrphanReaper> {
        if !pidfds_work() {
            return Err(Error::new(libc::ENOSYS, "reap orphans")
                .with_detail("children have no pidfds here: own children and orphans look alike"));
        }
        let sigchld = crate::signal::Signal::new(crate::Signum::CHLD)?;
        set_child_subreaper()?;
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::invalid("reap orphans", "needs a tokio runtime"))?;
        let reaped = std::sync::Arc::new(std::sync::Mutex::new(ReapLog::default()));
        let log = reaped.clone();
        let task = handle.spawn(async move {
            let mut sigchld = sigchld;
            // The orphans already here first.
            reap_ended(&log).await;
            loop {
                // The watcher stays for the reaper's life (the disposition is never swapped
                // back and forth under other handlers); the deliveries that come while it is
                // not awaited are counted, and the next wait returns at once for all of
                // them. Without any (SIGCHLD blocked in every thread, or a handler that
                // replaced brood's), it still looks every LOOK_EVERY.
                if let Ok(None) = tokio::time::timeout(LOOK_EVERY, sigchld.recv()).await {
                    return;
                }
                // A child ended (or one was signalled since the last look: the watcher was
                // there before it). Look, then pause before waiting again: while children
                // come and go (a server's scripts), a look at every exit (`/proc` reads of
                // each child) cost more than the scripts' own handling.
                reap_ended(&log).await;
                tokio::time::sleep(PAUSE).await;
            }
        });
        Ok(OrphanReaper { task, reaped })
    }

    /// How many orphans it has reaped.
    pub fn reaped(&self) -> u64 {
        self.reaped.lock().unwrap_or_else(|p| p.into_inner()).count
    }

    /// The pids of the last orphans it reaped (at most 64), oldest first.
    pub fn reaped_pids(&self) -> Vec<i32> {
        let log = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        log.last.iter().copied().collect()
    }
}

impl Drop for OrphanReaper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for OrphanReaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrphanReaper")
            .field("reaped", &self.reaped())
            .finish()
    }
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
