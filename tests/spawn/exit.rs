//! Exit reports, signals, try_wait, kill, kill_on_drop, dropped children, runtimes.

use super::*;

// ---------------------------------------------------------------------------------------
// Exit reports

#[tokio::test]
async fn basic_exit_code() {
    let _g = shared().await;
    for code in [0, 1, 42, 255] {
        let mut child = Command::new("sh")
            .args(["-c", &format!("exit {code}")])
            .spawn()
            .unwrap();
        let exit = bounded("wait", child.wait()).await.unwrap();
        assert_eq!((exit.status, exit.signal), (code, 0), "{exit}");
        assert_eq!(exit.success(), code == 0);
        assert_eq!(exit.code(), Some(code));
        // The report is kept: a second wait gives the same.
        assert_eq!(bounded("wait again", child.wait()).await.unwrap(), exit);
    }
}

#[tokio::test]
async fn basic_killed_by_signal_reports_status_0_and_the_signal() {
    let _g = shared().await;
    // Killed by us.
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let _k = KillGuard::new(pid_of(&child));
    child.kill(Signum::TERM).unwrap();
    let exit = bounded("wait", child.wait()).await.unwrap();
    assert_eq!((exit.status, exit.signal), (0, libc::SIGTERM));
    assert_eq!(exit.term_signal(), Some(Signum::TERM));
    assert_eq!(exit.shell_code(), 128 + libc::SIGTERM);

    // Killed by itself, with a signal we did not send.
    let mut child = Command::new("sh")
        .args(["-c", "kill -KILL $$"])
        .spawn()
        .unwrap();
    let exit = bounded("wait", child.wait()).await.unwrap();
    assert_eq!((exit.status, exit.signal), (0, libc::SIGKILL));

    // A signal the parent ignores (Rust ignores SIGPIPE) is back to default in the child.
    let mut child = Command::new("sh")
        .args(["-c", "kill -PIPE $$"])
        .spawn()
        .unwrap();
    let exit = bounded("wait", child.wait()).await.unwrap();
    assert_eq!((exit.status, exit.signal), (0, libc::SIGPIPE));
}

#[tokio::test]
async fn basic_child_starts_with_default_signal_state() {
    let _g = shared().await;
    // Handlers in the parent (tokio's, for SIGUSR1 and SIGCHLD) are not the child's: there
    // SIGUSR1 kills, as by default, and the parent's handlers keep working after the spawn.
    let mut usr1 =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).unwrap();
    let mut chld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).unwrap();
    let mut child = Command::new("sh")
        .args(["-c", "kill -USR1 $$"])
        .spawn()
        .unwrap();
    let exit = bounded("wait", child.wait()).await.unwrap();
    assert_eq!((exit.status, exit.signal), (0, libc::SIGUSR1));
    // The parent's own handler still works, and its SIGCHLD watcher saw the child go.
    bounded("SIGCHLD", chld.recv()).await;
    // SAFETY: raise sends SIGUSR1 to this thread, which tokio's handler catches.
    unsafe { libc::raise(libc::SIGUSR1) };
    bounded("SIGUSR1", usr1.recv()).await;

    // A signal blocked in the spawning thread is not blocked in the child.
    // SAFETY: plain sigset calls on locals; the mask is restored below.
    let old = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        old
    };
    let spawned = Command::new("sh").args(["-c", "kill -USR2 $$"]).spawn();
    // SAFETY: restores this thread's mask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    let exit = bounded("wait", spawned.unwrap().wait()).await.unwrap();
    assert_eq!((exit.status, exit.signal), (0, libc::SIGUSR2));
}

#[tokio::test]
async fn basic_try_wait() {
    let _g = shared().await;
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = pid_of(&child);
    let _k = KillGuard::new(pid);
    assert_eq!(child.try_wait().unwrap(), None);
    child.kill(Signum::KILL).unwrap();
    wait_zombie(pid);
    let exit = child.try_wait().unwrap().expect("exited");
    assert_eq!((exit.status, exit.signal), (0, libc::SIGKILL));
    assert!(!is_our_child(pid), "try_wait reaped it");
    // Reaped: the pid is no longer the child's to give (tokio's `id`).
    assert_eq!(child.id(), None);
    // Again, and wait, give the same report.
    assert_eq!(child.try_wait().unwrap(), Some(exit));
    assert_eq!(bounded("wait", child.wait()).await.unwrap(), exit);

    let mut child = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
    wait_zombie(pid_of(&child));
    assert_eq!(
        child.try_wait().unwrap(),
        Some(brood::Exit {
            status: 7,
            signal: 0
        })
    );
}

#[tokio::test]
async fn basic_pidfd_follows_the_mode() {
    let _g = shared().await;
    let fallback = std::env::var_os("BROOD_NO_PIDFD").is_some_and(|v| v == "1");
    let mut child = Command::new("true").spawn().unwrap();
    assert_eq!(
        child.pidfd().is_none(),
        fallback,
        "BROOD_NO_PIDFD={fallback}"
    );
    assert!(bounded("wait", child.wait()).await.unwrap().success());
}

// ---------------------------------------------------------------------------------------
// kill, kill_on_drop, dropped children

#[tokio::test]
async fn basic_kill_after_exit_is_esrch() {
    let _g = shared().await;
    let mut child = Command::new("true").spawn().unwrap();
    bounded("wait", child.wait()).await.unwrap();
    let err = child.kill(Signum::TERM).unwrap_err();
    assert_eq!(err.name(), "ESRCH", "{err}");
    let err = child.kill(0).unwrap_err();
    assert_eq!(err.name(), "ESRCH", "{err}");

    // Exited but not yet reaped: still ESRCH, and the exit report stays.
    let mut child = Command::new("sh").args(["-c", "exit 5"]).spawn().unwrap();
    wait_zombie(pid_of(&child));
    let err = child.kill(Signum::TERM).unwrap_err();
    assert_eq!(err.name(), "ESRCH", "{err}");
    assert_eq!(bounded("wait", child.wait()).await.unwrap().status, 5);

    // The free function: a pid that does not exist.
    let err = brood::kill(i32::MAX, 0).unwrap_err();
    assert_eq!(err.name(), "ESRCH");
}

/// After a child is reaped its pid can go to another process; `Child::kill` must never
/// reach that one. We force the reuse with `ns_last_pid` (root, our own pid namespace).
#[tokio::test]
async fn basic_kill_never_hits_a_process_that_reused_the_pid() {
    let _g = exclusive().await; // nobody else of ours may take the pid
    let mut old = Command::new("true").spawn().unwrap();
    let old_pid = pid_of(&old);
    bounded("wait", old.wait()).await.unwrap();
    let err = old.kill(Signum::KILL).unwrap_err();
    assert_eq!(err.name(), "ESRCH");
    let mut reused = None;
    // Other processes on the machine fork too and may take the pid first: retry, and if
    // the machine is that busy, check only the ESRCH part (it cannot be forced then).
    for _ in 0..500 {
        if std::fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", old_pid - 1)).is_err() {
            eprintln!("ns_last_pid not writable: only the ESRCH part is checked");
            return;
        }
        let new = Command::new("sleep").arg("30").spawn().unwrap();
        if pid_of(&new) == old_pid {
            reused = Some(new);
            break;
        }
        let mut new = new;
        new.kill(Signum::KILL).unwrap();
        bounded("wait", new.wait()).await.unwrap();
    }
    let err = old.kill(Signum::KILL).unwrap_err();
    assert_eq!(err.name(), "ESRCH");
    // The free function, `uv_kill`, is a plain kill(2): it is the caller's to get right.
    let Some(mut new) = reused else {
        eprintln!("the pid was taken by other processes 500 times: only ESRCH was checked");
        return;
    };
    let mut guard = KillGuard::new(pid_of(&new));
    assert_eq!(new.try_wait().unwrap(), None, "the new process was hit");
    new.kill(Signum::KILL).unwrap();
    assert_eq!(
        bounded("wait", new.wait()).await.unwrap().signal,
        libc::SIGKILL
    );
    // Reaped: the guard must not SIGKILL the pid now, which this very test makes the kernel
    // hand out again (a thread of any process that took it would take its process down).
    guard.disarm();
}

#[tokio::test]
async fn basic_kill_on_drop_kills() {
    let _g = shared().await;
    let child = Command::new("sleep")
        .arg("30")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = pid_of(&child);
    let _k = KillGuard::new(pid);
    drop(child);
    // Killed and reaped in the background: well before sleep would end by itself.
    wait_reaped(pid);
}

#[tokio::test]
async fn basic_dropped_running_child_is_reaped_in_the_background() {
    let _g = shared().await;
    // `cat` runs until its stdin closes; we drop the Child first, then close stdin.
    let mut child = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::ignore())
        .spawn()
        .unwrap();
    let pid = pid_of(&child);
    let _k = KillGuard::new(pid);
    let mut stdin = child.stdin.take().unwrap();
    drop(child);
    // Still running: the drop did not kill it.
    bounded("write", stdin.write_all(b"still there\n"))
        .await
        .unwrap();
    assert!(stat(pid).is_some_and(|s| s.state != 'Z'));
    drop(stdin);
    wait_reaped(pid);
}

#[test]
fn basic_dropped_child_after_the_runtime_is_gone_is_reaped() {
    let _g = shared_blocking();
    let rt = rt();
    let (child, stdin) = rt.block_on(async {
        let mut child = Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::ignore())
            .spawn()
            .unwrap();
        // Kept open (wait() would close it).
        let stdin = child.stdin.take().unwrap().into_owned_fd().unwrap();
        // Registers the pidfd with this runtime's reactor, then gives up.
        assert!(
            tokio::time::timeout(Duration::from_millis(1), child.wait())
                .await
                .is_err()
        );
        (child, stdin)
    });
    let pid = pid_of(&child);
    let _k = KillGuard::new(pid);
    drop(rt);
    drop(child);
    drop(stdin);
    wait_reaped(pid);
}

#[test]
fn basic_wait_moves_between_runtimes() {
    let _g = shared_blocking();
    let a = rt();
    // Spawned and first waited for in runtime `a` (which registers the pidfd there)...
    let (mut child, stdin) = a.block_on(async {
        let mut child = Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::ignore())
            .spawn()
            .unwrap();
        // Kept open (wait() would close it).
        let stdin = child.stdin.take().unwrap().into_owned_fd().unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(1), child.wait())
                .await
                .is_err()
        );
        (child, stdin)
    });
    let _k = KillGuard::new(pid_of(&child));
    // ...then waited for in runtime `b`, while `a` lives on but nobody drives it.
    let b = rt();
    drop(stdin);
    let exit = b.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("wait in a second runtime never saw the exit")
            .unwrap()
    });
    assert!(exit.success());

    // And once `a` is gone altogether.
    let mut child = a.block_on(async {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(1), child.wait())
                .await
                .is_err()
        );
        child
    });
    let _k = KillGuard::new(pid_of(&child));
    drop(a);
    child.kill(Signum::TERM).unwrap();
    let exit = b.block_on(async { bounded("wait after runtime a", child.wait()).await.unwrap() });
    assert_eq!(exit.signal, libc::SIGTERM);
}
