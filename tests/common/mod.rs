//! Helpers shared by the integration tests: /proc inspection (children, zombies, sessions),
//! temp dirs, time limits, and re-running this test binary in a helper mode.
#![allow(
    dead_code,
    reason = "shared by several test binaries; each uses a part"
)]

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long any single await in a test may take before the test fails.
pub const LIMIT: Duration = Duration::from_secs(30);

/// Awaits `fut` with the [`LIMIT`], panicking with `what` when it takes longer.
pub async fn bounded<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: still not done after {LIMIT:?}"),
    }
}

/// A current-thread runtime with everything enabled.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Tests that count the children or zombies of this process take the lock exclusively;
/// every other test that spawns takes it shared, so the counts see no other test's child.
/// (tokio's lock: async tests hold it across awaits.)
static CHILDREN: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

pub async fn shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    CHILDREN.read().await
}

pub async fn exclusive() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    CHILDREN.write().await
}

/// For plain `#[test]`s (outside any runtime).
pub fn shared_blocking() -> tokio::sync::RwLockReadGuard<'static, ()> {
    CHILDREN.blocking_read()
}

/// For plain `#[test]`s (outside any runtime).
pub fn exclusive_blocking() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    CHILDREN.blocking_write()
}

/// The fields of `/proc/<pid>/stat` the tests look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
}

/// `/proc/<pid>/stat`, or `None` when the process is gone (reaped).
pub fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    let session = f.next()?.parse().ok()?;
    Some(Stat {
        pid,
        state,
        ppid,
        pgrp,
        session,
    })
}

/// Every process whose parent is this process, in any state.
pub fn children() -> Vec<Stat> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(s) = stat(pid) {
            if s.ppid == me {
                out.push(s);
            }
        }
    }
    out
}

/// The zombie children of this process.
pub fn zombies() -> Vec<i32> {
    children()
        .into_iter()
        .filter(|s| s.state == 'Z')
        .map(|s| s.pid)
        .collect()
}

/// Whether `pid` is still a child of this process (running or zombie).
pub fn is_our_child(pid: i32) -> bool {
    stat(pid).is_some_and(|s| s.ppid == std::process::id() as i32)
}

/// Polls until `cond` holds, at most [`LIMIT`]. Only for states no event announces (a
/// background reaper's work, another process's state), never in place of an awaitable event.
pub fn poll_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < LIMIT,
            "{what}: still not true after {LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until our child `pid` has been reaped by someone else (brood's background reaper).
pub fn wait_reaped(pid: i32) {
    poll_until(&format!("child {pid} reaped"), || !is_our_child(pid));
}

/// Waits until our child `pid` has exited (a zombie) without reaping it.
pub fn wait_zombie(pid: i32) {
    poll_until(&format!("child {pid} exited"), || {
        stat(pid).is_some_and(|s| s.state == 'Z')
    });
}

/// The fd numbers open in process `pid`.
pub fn fds_of(pid: i32) -> BTreeSet<i32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// This process's open fds and what they point at (for messages when a count is off).
pub fn own_fds() -> Vec<(i32, PathBuf)> {
    let me = std::process::id() as i32;
    fds_of(me)
        .into_iter()
        .filter_map(|fd| Some((fd, std::fs::read_link(format!("/proc/{me}/fd/{fd}")).ok()?)))
        .collect()
}

/// Starts brood's lazy parts (the background reaper's thread and epoll fd) by dropping a
/// running child, and waits until it is reaped, so fd counts taken after are stable.
pub fn warm_up_reaper() {
    let child = brood::Command::new("sleep")
        .arg("30")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap() as i32;
    drop(child);
    wait_reaped(pid);
}

/// What fd `fd` of process `pid` points at.
pub fn fd_target(pid: i32, fd: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap()
}

/// A directory removed (with its contents) when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "brood-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path.canonicalize().unwrap())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` with permission bits `mode` and returns the path.
    pub fn file(&self, name: &str, contents: &[u8], mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.0.join(name);
        std::fs::write(&p, contents).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills a process with SIGKILL when dropped, so a failing test leaves no process behind.
/// It holds a pidfd taken when the guard is made (while the process is still this test's,
/// not yet reaped): once that process is gone the guard signals nothing, even when the
/// kernel has given its pid to another process (a plain `kill(pid)` on drop killed the
/// children of concurrent tests that got a reaped pid again).
pub struct KillGuard(Option<std::os::fd::OwnedFd>);

impl KillGuard {
    /// A guard on the process `pid` is now; make it before the process is reaped.
    pub fn new(pid: i32) -> KillGuard {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open(2) with plain integers: it returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        // SAFETY: a non-negative return is a new fd that nothing else owns.
        KillGuard((fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// The process was reaped by the test: nothing to kill.
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        if let Some(fd) = &self.0 {
            // SAFETY: pidfd_send_signal(2) on our own pidfd, no siginfo; it signals only
            // the process the pidfd was opened on (ESRCH once that one is gone).
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }
    }
}

/// The environment variable that selects a helper mode of a re-executed test binary.
pub const HELPER_ENV: &str = "BROOD_TEST_HELPER";
/// The line a helper prints last when it finished its checks.
pub const HELPER_DONE: &str = "BROOD-HELPER-DONE";

/// Re-runs this test binary's `helper` entry point (a no-op unless `BROOD_TEST_HELPER` is set) in `mode`, with pipes for its
/// stdout and stderr, and returns how it ended and what it printed.
pub async fn run_helper(mode: &str, envs: &[(&str, &str)]) -> brood::Output {
    let exe = std::env::current_exe().unwrap();
    let out = bounded(
        &format!("helper {mode}"),
        brood::Command::new(exe)
            .args(["--exact", "helper", "--nocapture", "--test-threads=1"])
            .env(HELPER_ENV, mode)
            .envs(envs.iter().copied())
            .output(),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.exit.success() && stdout.contains(HELPER_DONE),
        "helper {mode} failed: {}\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.exit,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The lines of `bytes`.
pub fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::to_owned)
        .collect()
}
