//! Spawning real processes: libuv's test-spawn.c as a checklist.
//!
//! Tests named `basic_*` run four times: here, and again in re-executed copies of this binary
//! with `BROOD_NO_PIDFD=1` (no pidfds: `no_pidfd_fallback_runs_basic_tests`),
//! `BROOD_NO_PIDFD_POLL=1` (Linux 5.2's shape) and `BROOD_NO_PIDFD_WAITID=1` (5.3's), because
//! brood reads those switches once per process.
//!
//! Tests that count this process's children or zombies take `common::exclusive()`; every
//! other test takes `common::shared()`, so no other test's child is in the count.

mod common;
// One test binary (so the no-pidfd rerun covers them all), several files.
#[path = "spawn/concurrency.rs"]
mod concurrency;
#[path = "spawn/env.rs"]
mod env;
#[path = "spawn/errors.rs"]
mod errors;
#[path = "spawn/exit.rs"]
mod exit;
#[path = "spawn/parity.rs"]
mod parity;
#[path = "spawn/stdio.rs"]
mod stdio;

use std::collections::BTreeSet;
use std::io::{Read, Seek};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use brood::{Command, Signum, Stdio};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pid_of(child: &brood::Child) -> i32 {
    child.id().unwrap() as i32
}

/// Runs `sh -c script` with stdout and stderr piped and returns (exit, stdout, stderr).
async fn sh(script: &str, cmd: impl FnOnce(&mut Command) -> &mut Command) -> brood::Output {
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(script);
    bounded(script, cmd(&mut sh).output()).await.unwrap()
}

// ---------------------------------------------------------------------------------------
// The fallback without pidfds

#[tokio::test]
async fn no_pidfd_fallback_runs_basic_tests() {
    let _g = shared().await;
    if [
        "BROOD_NO_PIDFD",
        "BROOD_NO_PIDFD_WAITID",
        "BROOD_NO_PIDFD_POLL",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
    {
        return; // already a re-executed copy
    }
    let exe = std::env::current_exe().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(exe)
            .args(["basic_"])
            .env("BROOD_NO_PIDFD", "1")
            .output(),
    )
    .await
    .expect("the fallback run took over 120 s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.exit.success(),
        "basic tests failed with BROOD_NO_PIDFD=1:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passed: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("test result: ok. "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a test summary");
    assert!(passed >= 20, "only {passed} basic tests ran:\n{stdout}");
}

// ---------------------------------------------------------------------------------------
// Helper modes for a re-executed copy of this binary

/// The entry point of the helper modes that `common::run_helper` re-executes (a no-op as a test)
/// this binary into (`BROOD_TEST_HELPER=mode`). Ignored, so a plain test run skips it.
#[test]
fn helper() {
    let Some(mode) = std::env::var_os(HELPER_ENV) else {
        return;
    };
    let rt = rt();
    match mode.to_str().unwrap() {
        "swap" => rt.block_on(async {
            let exit = bounded(
                "swap",
                Command::new("sh")
                    .args(["-c", "echo written-to-1; echo written-to-2 >&2"])
                    .stdio(1, Stdio::inherit_fd(2))
                    .stdio(2, Stdio::inherit_fd(1))
                    .status(),
            )
            .await
            .unwrap();
            assert!(exit.success());
        }),
        "unprivileged" => {
            // As root, drop to nobody first; an unprivileged runner is there already.
            // SAFETY: plain credential calls on this helper process (glibc applies them to
            // every thread).
            unsafe {
                if libc::getuid() == 0 {
                    assert_eq!(libc::setgroups(0, std::ptr::null()), 0);
                    assert_eq!(libc::setgid(65534), 0);
                    assert_eq!(libc::setuid(65534), 0);
                }
            }
            // SAFETY: getuid/getgid have no preconditions.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            rt.block_on(async {
                for (cmd, stage) in [
                    (Command::new("true").uid(0), "setuid 0"),
                    (Command::new("true").gid(0), "setgid 0"),
                    (Command::new("true").uid(0).gid(0), "setgid 0"),
                ] {
                    let err = cmd.spawn().expect_err("a uid change must fail");
                    assert_eq!(err.name(), "EPERM", "{err}");
                    assert!(err.to_string().contains(stage), "{err}");
                    assert!(err.to_string().contains("\"true\""), "{err}");
                }
                assert!(children().is_empty(), "a failed spawn left a child");
                // Our own ids are allowed.
                let out = bounded(
                    "id",
                    Command::new("id").arg("-u").uid(uid).gid(gid).output(),
                )
                .await
                .unwrap();
                assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{uid}\n"));
            });
        }
        "groups" => {
            let groups = [4242 as libc::gid_t, 4343];
            // SAFETY: sets this helper process's supplementary groups from a valid array.
            assert_eq!(unsafe { libc::setgroups(2, groups.as_ptr()) }, 0);
            rt.block_on(async {
                let id_g = |mut cmd: Command| async move {
                    let out = bounded("id -G", cmd.arg("-G").output()).await.unwrap();
                    assert!(out.exit.success());
                    String::from_utf8(out.stdout).unwrap().trim().to_owned()
                };
                // Control: without uid/gid the groups are inherited.
                assert_eq!(id_g(Command::new("id")).await, "0 4242 4343");
                let mut id = Command::new("id");
                id.gid(65533);
                assert_eq!(id_g(id).await, "65533");
                let mut id = Command::new("id");
                id.uid(65534);
                assert_eq!(id_g(id).await, "0");
            });
        }
        "closed-stdin" => {
            // SAFETY: closes this helper's stdin, which nothing here uses.
            assert_eq!(unsafe { libc::close(0) }, 0);
            rt.block_on(async {
                // Inherited as it is: closed.
                let out = bounded(
                    "closed 0",
                    Command::new("sh")
                        .args(["-c", "[ -e /proc/$$/fd/0 ] && echo open || echo closed"])
                        .stdout(Stdio::piped())
                        .spawn()
                        .unwrap()
                        .wait_with_output(), // (output() would make stdin /dev/null)
                )
                .await
                .unwrap();
                assert_eq!(out.stdout, b"closed\n");
                // Asking for fd 0 is an error, even when a pipe made for another slot of the
                // same spawn takes the number 0 meanwhile.
                let err = Command::new("true")
                    .stdout(Stdio::piped())
                    .stdio(5, Stdio::inherit_fd(0))
                    .spawn()
                    .expect_err("fd 0 is closed");
                assert_eq!(err.name(), "EBADF", "{err}");
                let err = Command::new("true")
                    .stdio(4, Stdio::piped())
                    .stdin(Stdio::inherit())
                    .spawn()
                    .expect_err("fd 0 is closed");
                assert_eq!(err.name(), "EBADF", "{err}");
                // Pipes work though they land on 0 in this process.
                let mut child = Command::new("cat")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut stdin = child.stdin.take().unwrap();
                stdin.write_all(b"through\n").await.unwrap();
                drop(stdin);
                let out = bounded("cat", child.wait_with_output()).await.unwrap();
                assert_eq!(out.stdout, b"through\n");
            });
        }
        "sig-ign" => rt.block_on(async {
            // Whatever ignored signals this helper was started with (nohup: SIGHUP), plus
            // SIGPIPE, ignored by std before main.
            for reset in [false, true] {
                let out = bounded(
                    "cat status",
                    Command::new("cat")
                        .arg("/proc/self/status")
                        .reset_signal_dispositions(reset)
                        .output(),
                )
                .await
                .unwrap();
                let text = String::from_utf8(out.stdout).unwrap();
                let ign = text.lines().find(|l| l.starts_with("SigIgn:")).unwrap();
                println!("reset={reset} {ign}");
            }
        }),
        "stdio-flags" => {
            // This helper's stderr (a pipe from the test) made non-blocking, as a program
            // driving its own stdio through tokio would have it.
            let flags = || {
                // SAFETY: F_GETFL only reads fd 2's status flags.
                unsafe { libc::fcntl(2, libc::F_GETFL) }
            };
            // SAFETY: changes fd 2's status flags only.
            unsafe { libc::fcntl(2, libc::F_SETFL, flags() | libc::O_NONBLOCK) };
            rt.block_on(async {
                let exit = bounded("true", Command::new("true").status())
                    .await
                    .unwrap();
                assert!(exit.success());
                println!("inherited nonblock={}", flags() & libc::O_NONBLOCK != 0);
                let exit = bounded(
                    "true",
                    Command::new("true").stderr(Stdio::inherit_fd(2)).status(),
                )
                .await
                .unwrap();
                assert!(exit.success());
                println!("inherit_fd nonblock={}", flags() & libc::O_NONBLOCK != 0);
            });
        }
        "sigpipe-default" => {
            // As in a C host or a program built with -Zon-broken-pipe=inherit.
            // SAFETY: resets one disposition of this helper process.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            rt.block_on(async {
                let mut child = Command::new("true").stdin(Stdio::piped()).spawn().unwrap();
                let mut stdin = child.stdin.take().unwrap();
                assert!(bounded("wait", child.wait()).await.unwrap().success());
                let err = bounded("write", stdin.write_all(&[0u8; 1 << 20]))
                    .await
                    .expect_err("nobody reads the pipe");
                assert_eq!(err.raw_os_error(), Some(libc::EPIPE), "{err}");
                println!("EPIPE, still alive");
            });
        }
        "setgroups-denied" => rt.block_on(async {
            // Root in a user namespace whose setgroups is denied (`unshare -Ur`): a uid
            // change that cannot drop root's supplementary groups must not run.
            // SAFETY: getuid has no preconditions.
            assert_eq!(unsafe { libc::getuid() }, 0);
            for cmd in [Command::new("true").uid(0), Command::new("true").gid(0)] {
                let err = cmd.spawn().expect_err("setgroups fails here");
                assert_eq!(err.name(), "EPERM", "{err}");
                assert!(err.to_string().contains("setgroups"), "{err}");
            }
            assert!(children().is_empty(), "a failed spawn left a child");
        }),
        other => panic!("unknown helper mode {other}"),
    }
    println!("{HELPER_DONE}");
}
