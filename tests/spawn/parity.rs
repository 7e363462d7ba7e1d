//! What programs expect from a spawn (std, posix_spawn and libuv agree): kernel pipes,
//! inherited ignored signals, the parent's stdio flags left alone, `wait` closing stdin,
//! partial pidfd support, and the std-like `Command` API.

use std::time::Duration;

use brood::{Command, Stdio};
use tokio::io::AsyncWriteExt;

use crate::common::*;

#[tokio::test]
async fn basic_one_way_pipes_open_by_path() {
    let _g = shared().await;
    // /dev/stdin, /dev/stdout and /proc/self/fd/N reopen the fd: ENXIO on a socket.
    let child = Command::new("sh")
        .args([
            "-c",
            "body=$(cat /dev/stdin); echo \"got $body\" > /dev/stdout; echo three > /proc/self/fd/3",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stdio(3, Stdio::pipe_writable())
        .spawn()
        .unwrap();
    let mut child = child;
    let mut three = child.take_pipe(3).unwrap();
    let read3 = async {
        let mut s = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut three, &mut s)
            .await
            .unwrap();
        s
    };
    let (out, three) = tokio::join!(child.communicate(b"post body"), read3);
    let out = out.unwrap();
    assert!(
        out.exit.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"got post body\n");
    assert_eq!(three, "three\n");
}

#[tokio::test]
async fn basic_duplex_slot_is_still_a_socket() {
    let _g = shared().await;
    let mut child = Command::new("sh")
        .args(["-c", "readlink /proc/self/fd/3"])
        .stdout(Stdio::piped())
        .stdio(3, Stdio::pipe_duplex())
        .spawn()
        .unwrap();
    let pipe = child.take_pipe(3).unwrap();
    assert!(pipe.into_unix_stream().is_ok());
    let out = bounded("readlink", child.wait_with_output()).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("socket:"));
}

#[tokio::test]
async fn write_to_exited_child_is_epipe_even_with_sigpipe_default() {
    let _g = shared().await;
    run_helper("sigpipe-default", &[]).await;
}

/// `SigIgn:` masks the helper's children got, without and with the reset.
fn sig_ign(out: &brood::Output) -> (u64, u64) {
    let text = String::from_utf8_lossy(&out.stdout);
    let mask = |reset: bool| {
        let tag = format!("reset={reset} ");
        let line = text
            .lines()
            .find_map(|l| l.find(&tag).map(|at| &l[at..]))
            .unwrap_or_else(|| panic!("no {tag} line in {text}"));
        u64::from_str_radix(line.rsplit('\t').next().unwrap().trim(), 16).unwrap()
    };
    (mask(false), mask(true))
}

#[tokio::test]
async fn ignored_signals_survive_nohup_and_trap() {
    let _g = shared().await;
    let exe = std::env::current_exe().unwrap();
    let helper = ["--exact", "helper", "--nocapture", "--test-threads=1"];
    let hup = 1u64 << (libc::SIGHUP - 1);
    let pipe = 1u64 << (libc::SIGPIPE - 1);
    // With clone3 (the kernel resets caught signals) and without (`BROOD_NO_CLONE3=1`).
    for no_clone3 in ["0", "1"] {
        let mut nohup = Command::new("nohup");
        nohup
            .arg(&exe)
            .args(helper)
            .env(HELPER_ENV, "sig-ign")
            .env("BROOD_NO_CLONE3", no_clone3);
        let mut trap = Command::new("sh");
        trap.args(["-c", "trap '' HUP; exec \"$0\" \"$@\""])
            .arg(&exe)
            .args(helper)
            .env(HELPER_ENV, "sig-ign")
            .env("BROOD_NO_CLONE3", no_clone3);
        for (what, cmd) in [("nohup", &mut nohup), ("trap", &mut trap)] {
            let out = bounded(what, cmd.stdin(Stdio::ignore()).output())
                .await
                .unwrap();
            assert!(
                out.exit.success(),
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let (kept, reset) = sig_ign(&out);
            assert_ne!(
                kept & hup,
                0,
                "{what} (BROOD_NO_CLONE3={no_clone3}): SIGHUP not ignored in the child"
            );
            assert_eq!(
                kept & pipe,
                0,
                "{what} (BROOD_NO_CLONE3={no_clone3}): SIGPIPE must be reset, as std does"
            );
            assert_eq!(
                reset, 0,
                "{what}: reset_signal_dispositions(true) leaves none"
            );
        }
    }
}

#[tokio::test]
async fn parent_stdio_flags_are_left_alone() {
    let _g = shared().await;
    let out = run_helper("stdio-flags", &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("inherited nonblock=true"), "{text}");
    // Given explicitly at 0-2 from an fd: made blocking, as documented (libuv).
    assert!(text.contains("inherit_fd nonblock=false"), "{text}");
}

#[tokio::test]
async fn basic_wait_closes_stdin() {
    let _g = shared().await;
    let mut child = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::ignore())
        .spawn()
        .unwrap();
    let exit = bounded("wait on cat with a piped stdin", child.wait())
        .await
        .unwrap();
    assert!(exit.success());
    assert!(child.stdin.is_none());
}

#[tokio::test]
async fn basic_detached_with_process_group_is_einval() {
    let _g = exclusive().await;
    let before = children();
    let err = Command::new("true")
        .detached(true)
        .process_group(0)
        .spawn()
        .expect_err("setsid and setpgid do not combine");
    assert_eq!(err.name(), "EINVAL", "{err}");
    assert!(err.to_string().contains("process_group"), "{err}");
    assert_eq!(children(), before);
}

#[tokio::test]
async fn basic_command_is_reusable() {
    let _g = shared().await;
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo $X"]).stdout(Stdio::piped());
    if cmd.get_envs().len() == 0 {
        cmd.env("X", "1");
    }
    for _ in 0..2 {
        let out = bounded("sh", cmd.spawn().unwrap().wait_with_output())
            .await
            .unwrap();
        assert_eq!(out.stdout, b"1\n");
    }
    assert_eq!(cmd.get_args().count(), 2);

    // An fd given by value goes to the first child only.
    let w = std::fs::File::create("/dev/null").unwrap();
    let mut cmd = Command::new("true");
    cmd.stdout(Stdio::from(w));
    assert!(bounded("true", cmd.status()).await.unwrap().success());
    let err = cmd.spawn().expect_err("the fd was given away");
    assert_eq!(err.name(), "EBADF", "{err}");
}

/// Reruns the `basic_` tests in a copy of this binary with `var=1`.
async fn rerun_basic_tests(var: &str) {
    if [
        "BROOD_NO_PIDFD",
        "BROOD_NO_PIDFD_WAITID",
        "BROOD_NO_PIDFD_POLL",
        "BROOD_NO_CLONE3",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
    {
        return; // already a re-executed copy
    }
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["basic_"]).env(var, "1");
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("the {var}=1 run took over 120 s"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.exit.success(),
        "basic tests failed with {var}=1 ({}):\n{stdout}\n{}",
        out.exit,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("basic_dropped_running_child_is_reaped_in_the_background ... ok"));
    assert!(stdout.contains("basic_wait_closes_stdin ... ok"));
}

/// Linux 5.3's shape: pidfds that poll, but no `waitid(P_PIDFD)`.
#[tokio::test]
async fn no_pidfd_waitid_fallback_runs_basic_tests() {
    let _g = shared().await;
    rerun_basic_tests("BROOD_NO_PIDFD_WAITID").await;
}

/// Linux 5.2's shape: CLONE_PIDFD gives pidfds, but they cannot be polled (and no
/// `waitid(P_PIDFD)` either).
#[tokio::test]
async fn no_pidfd_poll_fallback_runs_basic_tests() {
    let _g = shared().await;
    rerun_basic_tests("BROOD_NO_PIDFD_POLL").await;
}

/// A kernel before 5.5, or a seccomp filter that hides clone3: `clone`, with the child
/// resetting each caught signal itself.
#[tokio::test]
async fn no_clone3_fallback_runs_basic_tests() {
    let _g = shared().await;
    rerun_basic_tests("BROOD_NO_CLONE3").await;
}

#[tokio::test]
async fn basic_pidfd_is_borrowed_and_id_is_none_after_reap() {
    let _g = shared().await;
    let mut child = Command::new("sh")
        .args(["-c", "exit 0"])
        .stdin(Stdio::ignore())
        .spawn()
        .unwrap();
    let with_pidfd = std::env::var_os("BROOD_NO_PIDFD").is_none();
    assert_eq!(child.pidfd().is_some(), with_pidfd);
    assert!(child.id().is_some());
    bounded("wait", child.wait()).await.unwrap();
    assert_eq!(child.id(), None);
    // start_kill after the exit: ESRCH, as kill.
    assert_eq!(child.start_kill().unwrap_err().name(), "ESRCH");
    let mut stdin_writer = Command::new("true").stdin(Stdio::piped()).spawn().unwrap();
    let mut w = stdin_writer.stdin.take().unwrap();
    let _ = w.write_all(b"").await;
    bounded("wait", stdin_writer.wait()).await.unwrap();
}

#[tokio::test]
async fn setgroups_failure_as_root_is_an_error() {
    let _g = shared().await;
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        // Unprivileged runners cannot be root in a user namespace here either; the
        // non-root path is covered by `unprivileged` in errors.rs.
        eprintln!("setgroups_failure_as_root_is_an_error: needs root, checked as root in CI");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("unshare");
    cmd.arg("-Ur")
        .arg(exe)
        .args(["--exact", "helper", "--nocapture", "--test-threads=1"])
        .env(HELPER_ENV, "setgroups-denied")
        .stdin(Stdio::ignore());
    let out = bounded("unshare helper", cmd.output()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.exit.success() && stdout.contains(HELPER_DONE),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn basic_child_never_writes_the_parents_errno() {
    let _g = shared().await;
    // The child shares this thread's memory and TLS until it execs: a failed glibc wrapper
    // in it (execve, chdir) would leave its errno in ours.
    let mut missing = Command::new("/nonexistent/brood-no-such-program");
    let mut bad_cwd = Command::new("true");
    bad_cwd.current_dir("/nonexistent/brood-no-such-dir");
    for cmd in [&mut missing, &mut bad_cwd] {
        // SAFETY: writes this thread's errno.
        unsafe { *libc::__errno_location() = 12345 };
        let err = cmd.spawn().expect_err("the child fails before exec");
        // SAFETY: reads this thread's errno.
        let errno = unsafe { *libc::__errno_location() };
        assert_eq!(err.name(), "ENOENT", "{err}");
        assert_eq!(errno, 12345, "errno changed by the spawn of {cmd:?}");
    }
}
