//! Spawning real processes: libuv's test-spawn.c as a checklist.
//!
//! Tests named `basic_*` run twice: here, and again with `BROOD_NO_PIDFD=1` (the fallback
//! without pidfds) in a re-executed copy of this binary (`no_pidfd_fallback_runs_basic_tests`),
//! because brood reads that switch once per process.
//!
//! Tests that count this process's children or zombies take `common::exclusive()`; every
//! other test takes `common::shared()`, so no other test's child is in the count.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Seek};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use brood::{Command, Signum, Stdio};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pid_of(child: &brood::Child) -> i32 {
    child.id() as i32
}

/// Runs `sh -c script` with stdout and stderr piped and returns (exit, stdout, stderr).
async fn sh(script: &str, cmd: impl FnOnce(Command) -> Command) -> brood::Output {
    bounded(
        script,
        cmd(Command::new("sh").arg("-c").arg(script)).output(),
    )
    .await
    .unwrap()
}

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
    let _k = KillGuard(pid_of(&child));
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
    let _k = KillGuard(pid_of(&child));
    assert_eq!(child.try_wait().unwrap(), None);
    child.kill(Signum::KILL).unwrap();
    wait_zombie(pid_of(&child));
    let exit = child.try_wait().unwrap().expect("exited");
    assert_eq!((exit.status, exit.signal), (0, libc::SIGKILL));
    assert!(!is_our_child(pid_of(&child)), "try_wait reaped it");
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
// Errors: synchronous, with the path, and no child left behind

#[tokio::test]
async fn basic_spawn_errors_name_the_path_and_leave_no_child() {
    let _g = exclusive().await;
    let dir = TempDir::new("errors");
    let not_exec = dir.file("not-executable", b"#!/bin/sh\necho hi\n", 0o644);
    let garbage = dir.file("garbage", b"\x01\x02\x03 this is no program\n", 0o755);
    let in_file = "/etc/passwd/brood-x";
    let missing = dir.path().join("missing");
    let before = children();
    assert!(before.is_empty(), "children before: {before:?}");

    let cases: Vec<(Command, &str, String)> = vec![
        (
            // (A PATH of our own: an entry we may not search would make it EACCES, as execvp.)
            Command::new("brood-no-such-program").env("PATH", "/usr/bin:/bin"),
            "ENOENT",
            "brood-no-such-program".into(),
        ),
        (
            Command::new(&missing),
            "ENOENT",
            missing.display().to_string(),
        ),
        (
            Command::new(&not_exec),
            "EACCES",
            not_exec.display().to_string(),
        ),
        (
            Command::new(&garbage),
            "ENOEXEC",
            garbage.display().to_string(),
        ),
        (Command::new(in_file), "ENOTDIR", in_file.into()),
        (
            Command::new("true").current_dir(&missing),
            "ENOENT",
            missing.display().to_string(),
        ),
        (
            Command::new("true").current_dir(&not_exec),
            "ENOTDIR",
            not_exec.display().to_string(),
        ),
        (Command::new(""), "ENOENT", "spawn \"\"".into()),
    ];
    for (cmd, name, path) in cases {
        let program = cmd.get_program().to_owned();
        let err = cmd.spawn().expect_err("spawn must fail");
        assert_eq!(err.name(), name, "{program:?}: {err}");
        let text = err.to_string();
        assert!(text.contains(&path), "{text:?} does not name {path:?}");
        assert!(text.starts_with("spawn "), "{text}");
    }
    // The bad-cwd error says it was the chdir.
    let err = Command::new("true")
        .current_dir(&missing)
        .spawn()
        .unwrap_err();
    assert!(err.detail().unwrap().starts_with("chdir"), "{err}");

    // No child of ours was left, zombie or not.
    let after = children();
    assert!(after.is_empty(), "children left: {after:?}");
}

#[tokio::test]
async fn basic_path_search_uses_the_childs_path() {
    let _g = exclusive().await; // writes an executable: no concurrent spawn may hold it open
    let dir = TempDir::new("path");
    dir.file("brood-path-probe", b"#!/bin/sh\necho probe-ran\n", 0o755);
    let mut skipped = dir.path().join("first");
    std::fs::create_dir(&skipped).unwrap();
    // An entry without the execute bit earlier in PATH is passed over, as execvp does.
    skipped.push("brood-path-probe");
    std::fs::write(&skipped, b"#!/bin/sh\necho wrong\n").unwrap();

    // Not in this process's PATH:
    assert!(Command::new("brood-path-probe").spawn().is_err());
    let path = format!(
        "{}:{}:/usr/bin:/bin",
        skipped.parent().unwrap().display(),
        dir.path().display()
    );
    let out = bounded(
        "probe",
        Command::new("brood-path-probe").env("PATH", &path).output(),
    )
    .await
    .unwrap();
    assert!(out.exit.success(), "{}", out.exit);
    assert_eq!(out.stdout, b"probe-ran\n");

    // With a cleared env and no PATH, the default /bin:/usr/bin is searched.
    let out = bounded(
        "no PATH",
        Command::new("sh")
            .env_clear()
            .args(["-c", "echo ok"])
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(out.stdout, b"ok\n");

    // Only a non-executable match: EACCES, as execvp says.
    let err = Command::new("brood-path-probe")
        .env("PATH", skipped.parent().unwrap())
        .spawn()
        .unwrap_err();
    assert_eq!(err.name(), "EACCES", "{err}");
    assert!(children().is_empty());
}

// ---------------------------------------------------------------------------------------
// Credentials

#[tokio::test]
async fn basic_root_can_set_uid_and_gid_and_groups_are_dropped() {
    let _g = shared().await;
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("not root: the EPERM test covers this user");
        return;
    }
    for (args, want) in [
        (&["-u"][..], "65534"),
        (&["-g"][..], "65533"),
        (&["-G"][..], "65533"),
    ] {
        let out = bounded(
            "id",
            Command::new("id").args(args).uid(65534).gid(65533).output(),
        )
        .await
        .unwrap();
        assert!(out.exit.success(), "id {args:?}: {}", out.exit);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            want,
            "id {args:?}"
        );
    }
    // With supplementary groups in the parent, they are dropped (checked in a helper that
    // gives itself some).
    run_helper("groups", &[]).await;
}

#[tokio::test]
async fn basic_setuid_setgid_fail_with_eperm_when_unprivileged() {
    let _g = shared().await;
    // The helper drops to uid/gid 65534 itself first when we run as root, then spawns with
    // uid 0 and gid 0.
    run_helper("unprivileged", &[]).await;
}

// ---------------------------------------------------------------------------------------
// Environment, argv[0], cwd

fn env_set(bytes: &[u8]) -> BTreeSet<Vec<u8>> {
    bytes
        .split(|&b| b == 0)
        .filter(|e| !e.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

#[tokio::test]
async fn basic_env_cleared_gives_exactly_the_given_vars() {
    let _g = shared().await;
    let out = bounded("env", Command::new("/usr/bin/env").env_clear().output())
        .await
        .unwrap();
    assert!(out.exit.success());
    assert_eq!(out.stdout, b"", "empty env");

    let out = bounded(
        "env",
        Command::new("/usr/bin/env")
            .arg("-0")
            .env("BROOD_OUTER", "dropped by env_clear")
            .env_clear()
            .env("A", "1")
            .env("EMPTY", "")
            .env("SPACES", "x y  z")
            .env_remove("NOT_THERE")
            .output(),
    )
    .await
    .unwrap();
    let want: BTreeSet<Vec<u8>> = [&b"A=1"[..], b"EMPTY=", b"SPACES=x y  z"]
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    assert_eq!(env_set(&out.stdout), want);
}

#[tokio::test]
async fn basic_env_is_preserved_by_default() {
    use std::os::unix::ffi::OsStrExt;
    let _g = shared().await;
    let ours: BTreeSet<Vec<u8>> = std::env::vars_os()
        .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat())
        .collect();
    let out = bounded("env", Command::new("env").arg("-0").output())
        .await
        .unwrap();
    assert_eq!(env_set(&out.stdout), ours);

    // Changes go on top; a removed variable is gone.
    let (k, _) = std::env::vars_os().next().expect("some variable");
    let out = bounded(
        "env",
        Command::new("env")
            .arg("-0")
            .env("BROOD_ADDED", "yes")
            .env_remove(&k)
            .output(),
    )
    .await
    .unwrap();
    let got = env_set(&out.stdout);
    assert!(got.contains(&b"BROOD_ADDED=yes"[..]));
    assert!(
        !got.iter()
            .any(|e| e.starts_with(&[k.as_bytes(), b"="].concat()))
    );
    assert_eq!(got.len(), ours.len());
}

#[tokio::test]
async fn basic_env_pid_is_the_childs_own_pid() {
    let _g = shared().await;
    let child = Command::new("sh")
        .args(["-c", "echo \"$LISTEN_PID $$\""])
        .env("LISTEN_PID", "overwritten")
        .env_pid("LISTEN_PID")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = bounded("output", child.wait_with_output()).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{pid} {pid}\n")
    );
}

#[tokio::test]
async fn basic_arg0() {
    let _g = shared().await;
    let mut child = Command::new("sleep")
        .arg0("brood-custom-argv0")
        .arg("30")
        .spawn()
        .unwrap();
    let _k = KillGuard(pid_of(&child));
    // spawn returns once the child has left our memory inside execve, which is before the
    // kernel has put the new argv in place: wait for the command line to appear.
    let path = format!("/proc/{}/cmdline", child.id());
    poll_until("cmdline set", || !std::fs::read(&path).unwrap().is_empty());
    let cmdline = std::fs::read(&path).unwrap();
    assert_eq!(cmdline, b"brood-custom-argv0\x0030\x00");
    // The program itself was still found by its name.
    let exe = std::fs::read_link(format!("/proc/{}/exe", child.id())).unwrap();
    assert!(exe.ends_with("sleep"), "{exe:?}");
    child.kill(Signum::KILL).unwrap();
    bounded("wait", child.wait()).await.unwrap();

    // Without arg0, argv[0] is the program as given.
    let out = sh("echo $0", |c| c).await;
    assert_eq!(out.stdout, b"sh\n");
    let out = sh("echo $0", |c| c.arg0("-custom")).await;
    assert_eq!(out.stdout, b"-custom\n");
}

#[tokio::test]
async fn basic_cwd() {
    let _g = shared().await;
    let dir = TempDir::new("cwd");
    let out = bounded(
        "readlink",
        Command::new("readlink")
            .arg("/proc/self/cwd")
            .current_dir(dir.path())
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        dir.path().to_str().unwrap()
    );
    // A relative program path is found from the child's cwd, as execvp after chdir.
    let out = bounded(
        "relative",
        Command::new("./bin/true").current_dir("/usr").output(),
    )
    .await
    .unwrap();
    assert!(out.exit.success(), "{}", out.exit);
}

#[tokio::test]
async fn basic_process_group() {
    let _g = shared().await;
    // A group of its own (pgid 0 = its pid): the whole group can be signalled.
    let mut leader = Command::new("sleep")
        .arg("30")
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = pid_of(&leader);
    let _k = KillGuard(pgid);
    let mut member = Command::new("sleep")
        .arg("30")
        .process_group(pgid)
        .spawn()
        .unwrap();
    let _k2 = KillGuard(pid_of(&member));
    for pid in [pgid, pid_of(&member)] {
        let s = stat(pid).unwrap();
        assert_eq!(s.pgrp, pgid, "{s:?}");
        assert_ne!(s.session, pid, "not a new session: {s:?}");
    }
    brood::kill(-pgid, Signum::TERM).unwrap();
    for child in [&mut leader, &mut member] {
        let exit = bounded("wait", child.wait()).await.unwrap();
        assert_eq!(exit.signal, libc::SIGTERM);
    }
}

#[test]
fn basic_spawn_outside_a_runtime() {
    let _g = shared_blocking();
    // No runtime: spawning works (pipes excepted), try_wait works, wait says why not.
    let mut child = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
    let err = Command::new("true")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_err();
    assert_eq!(err.name(), "EINVAL", "{err}");
    wait_zombie(pid_of(&child));
    assert_eq!(child.try_wait().unwrap().unwrap().status, 3);
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let _k = KillGuard(pid_of(&child));
    let err = futures_lite_block_on(child.wait()).unwrap_err();
    assert_eq!(err.name(), "EINVAL", "{err}");
    // ...and a runtime later finishes the job.
    child.kill(Signum::KILL).unwrap();
    let exit = rt().block_on(async { bounded("wait", child.wait()).await.unwrap() });
    assert_eq!(exit.signal, libc::SIGKILL);
}

/// Polls a future to completion on this thread with no runtime (the first poll must finish).
fn futures_lite_block_on<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("pending without a runtime"),
    }
}

// ---------------------------------------------------------------------------------------
// Stdio slots

#[tokio::test]
async fn basic_stdout_and_stderr_to_pipes_and_stdin_from_one() {
    let _g = shared().await;
    let out = sh("echo out; echo err >&2; exit 3", |c| c).await;
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.exit.status, 3);

    let mut child = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // More than a socket buffer, written while read, so a deadlock would show.
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let writer = async {
        stdin.write_all(&data).await.unwrap();
        drop(stdin);
    };
    let mut got = Vec::new();
    let reader = stdout.read_to_end(&mut got);
    let ((), n) = bounded("cat", async { tokio::join!(writer, reader) }).await;
    assert_eq!(n.unwrap(), data.len());
    assert!(got == data, "cat gave back other bytes");
    assert!(bounded("wait", child.wait()).await.unwrap().success());
}

#[tokio::test]
async fn basic_stdout_and_stderr_to_one_file() {
    let _g = shared().await;
    let dir = TempDir::new("file");
    let path = dir.path().join("out.txt");
    let file = std::fs::File::create(&path).unwrap();
    let exit = bounded(
        "wait",
        Command::new("sh")
            .args(["-c", "echo one; echo two >&2; echo three"])
            .stdio(1, Stdio::inherit_fd(file.as_raw_fd()))
            .stdio(2, Stdio::from(file.try_clone().unwrap()))
            .status(),
    )
    .await
    .unwrap();
    assert!(exit.success());
    // One open file description: the writes follow each other.
    assert_eq!(std::fs::read(&path).unwrap(), b"one\ntwo\nthree\n");
    // The parent's own handle is still open and shares the offset.
    let mut file = file;
    assert_eq!(file.stream_position().unwrap(), 14);
}

#[tokio::test]
async fn basic_slots_that_name_each_other_are_swapped() {
    let _g = shared().await;
    let dir = TempDir::new("swap");
    let a = std::fs::File::create(dir.path().join("a")).unwrap();
    let b = std::fs::File::create(dir.path().join("b")).unwrap();
    let (fa, fb) = (a.as_raw_fd(), b.as_raw_fd());
    // Slot fa gets the parent's fd fb and slot fb gets fa: each source is the other's target.
    let exit = bounded(
        "wait",
        Command::new("bash")
            .args([
                "-c",
                &format!("echo to-slot-a >&{fa}; echo to-slot-b >&{fb}"),
            ])
            .stdio(fa, Stdio::inherit_fd(fb))
            .stdio(fb, Stdio::inherit_fd(fa))
            .status(),
    )
    .await
    .unwrap();
    assert!(exit.success(), "{exit}");
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"to-slot-b\n");
    assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), b"to-slot-a\n");
}

#[tokio::test]
async fn basic_stdout_and_stderr_swapped() {
    let _g = shared().await;
    // The helper's own stdout and stderr are our pipes; it spawns with 1→its 2, 2→its 1.
    let out = run_helper("swap", &[]).await;
    // (The test harness of the helper writes to its stdout too: look for the words.)
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("written-to-2"), "{stdout:?}");
    assert!(!stdout.contains("written-to-1"), "{stdout:?}");
    assert!(stderr.contains("written-to-1"), "{stderr:?}");
    assert!(!stderr.contains("written-to-2"), "{stderr:?}");
}

#[tokio::test]
async fn basic_slots_at_fd_3_and_fd_9() {
    let _g = shared().await;
    let mut child = Command::new("sh")
        .args([
            "-c",
            "echo three >&3; echo nine >&9; read x <&9; echo \"got $x\" >&3",
        ])
        .stdio(3, Stdio::pipe_writable())
        .stdio(9, Stdio::pipe_duplex())
        .spawn()
        .unwrap();
    let mut three = child.take_pipe(3).unwrap();
    let mut nine = child.take_pipe(9).unwrap();
    assert!(child.take_pipe(4).is_none());
    let mut buf = [0u8; 5];
    bounded("read 9", nine.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"nine\n");
    bounded("write 9", nine.write_all(b"hello\n"))
        .await
        .unwrap();
    let mut text = String::new();
    bounded("read 3", three.read_to_string(&mut text))
        .await
        .unwrap();
    assert_eq!(text, "three\ngot hello\n");
    assert!(bounded("wait", child.wait()).await.unwrap().success());
}

#[tokio::test]
async fn basic_inherit_stream_gives_the_socket() {
    let _g = shared().await;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let exit = bounded(
        "wait",
        Command::new("sh")
            .args(["-c", "echo via-stream"])
            .stdout(Stdio::inherit_stream(&theirs))
            .status(),
    )
    .await
    .unwrap();
    assert!(exit.success());
    drop(theirs); // brood's duplicate is closed already: EOF comes once ours goes.
    let mut text = String::new();
    let mut ours = ours;
    ours.read_to_string(&mut text).unwrap();
    assert_eq!(text, "via-stream\n");
}

#[tokio::test]
async fn basic_inherit_stream_tcp_connection_as_stdin_and_stdout() {
    let _g = shared().await;
    // The CGI case: an accepted TCP connection is the child's stdin and stdout.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = bounded("connect", async {
        tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept())
    })
    .await;
    let (mut client, (conn, _)) = (client.unwrap(), accepted.unwrap());
    let mut child = Command::new("sh")
        .args(["-c", "read line; echo \"got $line\""])
        .stdin(Stdio::inherit_stream(&conn))
        .stdout(Stdio::inherit_stream(&conn))
        .spawn()
        .unwrap();
    drop(conn); // the child has its own copies; ours may go at once
    bounded("write", client.write_all(b"hello\n"))
        .await
        .unwrap();
    let mut reply = String::new();
    bounded("read", client.read_to_string(&mut reply))
        .await
        .unwrap();
    assert_eq!(reply, "got hello\n");
    assert!(bounded("wait", child.wait()).await.unwrap().success());
}

#[tokio::test]
async fn basic_ignored_stdio_is_dev_null_below_3_and_closed_above() {
    let _g = shared().await;
    let mut child = Command::new("sh")
        .args([
            "-c",
            // Builtins only: a redirection or a $(...) would change the shell's own fds
            // while it looks at them.
            "r=; for n in 0 1 2 3; do \
               if [ /proc/$$/fd/$n -ef /dev/null ]; then r=\"$r null\"; \
               elif [ -e /proc/$$/fd/$n ]; then r=\"$r open\"; \
               else r=\"$r closed\"; fi; done; echo $r >&4",
        ])
        .stdio(0, Stdio::ignore())
        .stdio(1, Stdio::ignore())
        .stdio(2, Stdio::ignore())
        .stdio(3, Stdio::ignore())
        .stdio(4, Stdio::pipe_writable())
        .spawn()
        .unwrap();
    let mut report = child.take_pipe(4).unwrap();
    let mut text = String::new();
    bounded("read", report.read_to_string(&mut text))
        .await
        .unwrap();
    assert_eq!(text, "null null null closed\n");
    assert!(bounded("wait", child.wait()).await.unwrap().success());

    // stdin from /dev/null reads EOF at once; output to it is swallowed.
    let out = bounded(
        "cat",
        Command::new("cat")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .output(),
    )
    .await
    .unwrap();
    assert!(out.exit.success());
    assert_eq!(out.stdout, b"");
}

#[tokio::test]
async fn basic_child_has_exactly_the_fds_given() {
    let _g = shared().await;
    // A non-close-on-exec fd in the parent must not leak into the child.
    let dir = TempDir::new("fds");
    let file = std::fs::File::create(dir.path().join("nine")).unwrap();
    // SAFETY: dup of an open fd; the result is owned right away.
    let leaky = unsafe { OwnedFd::from_raw_fd(libc::dup(file.as_raw_fd())) };
    // SAFETY: F_GETFD on an fd we own.
    let flags = unsafe { libc::fcntl(leaky.as_raw_fd(), libc::F_GETFD) };
    assert_eq!(flags & libc::FD_CLOEXEC, 0, "the leaky fd is inheritable");

    // `cat` with stdin and stdout as pipes; once it has echoed a line it sits in read(),
    // its fd table settled (the dynamic loader's own opens are over). We list it from
    // outside, so the lister's fd is not in the list.
    let mut child = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::ignore())
        .stdio(9, Stdio::inherit_fd(file.as_raw_fd()))
        .spawn()
        .unwrap();
    let pid = pid_of(&child);
    let _k = KillGuard(pid);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    bounded("write", stdin.write_all(b"ping\n")).await.unwrap();
    let mut buf = [0u8; 5];
    bounded("read", stdout.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"ping\n");

    assert_eq!(fds_of(pid), BTreeSet::from([0, 1, 2, 9]));
    assert_eq!(fd_target(pid, 2), std::path::Path::new("/dev/null"));
    assert_eq!(fd_target(pid, 9), dir.path().join("nine"));
    assert!(fd_target(pid, 0).to_string_lossy().starts_with("socket:"));
    drop(stdin);
    assert!(bounded("wait", child.wait()).await.unwrap().success());
    drop(leaky);
}

#[tokio::test]
async fn basic_closed_stdin_in_the_parent() {
    let _g = shared().await;
    // The helper closes its fd 0 first: new fds (pipes) then land at 0.
    run_helper("closed-stdin", &[]).await;
}

#[tokio::test]
async fn basic_disable_stdio_inheritance_marks_fds_cloexec() {
    let _g = exclusive().await; // changes every fd of this process
    // SAFETY: dup of fd 1, owned right away; fcntl reads its flags.
    let fd = unsafe { OwnedFd::from_raw_fd(libc::dup(1)) };
    let cloexec = || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) } & libc::FD_CLOEXEC;
    assert_eq!(cloexec(), 0);
    brood::disable_stdio_inheritance();
    assert_eq!(cloexec(), libc::FD_CLOEXEC);
    // 0-2 are left alone.
    // SAFETY: F_GETFD on fd 1.
    assert_eq!(
        unsafe { libc::fcntl(1, libc::F_GETFD) } & libc::FD_CLOEXEC,
        0
    );
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
    for _ in 0..50 {
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
    let mut new = reused.expect("could not get the pid reused in 50 tries");
    let _k = KillGuard(pid_of(&new));
    assert_eq!(new.try_wait().unwrap(), None, "the new process was hit");
    new.kill(Signum::KILL).unwrap();
    assert_eq!(
        bounded("wait", new.wait()).await.unwrap().signal,
        libc::SIGKILL
    );
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
    let _k = KillGuard(pid);
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
    let _k = KillGuard(pid);
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
        // Registers the pidfd with this runtime's reactor, then gives up.
        assert!(
            tokio::time::timeout(Duration::from_millis(1), child.wait())
                .await
                .is_err()
        );
        let stdin = child.stdin.take().unwrap().into_std().unwrap();
        (child, stdin)
    });
    let pid = pid_of(&child);
    let _k = KillGuard(pid);
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
        assert!(
            tokio::time::timeout(Duration::from_millis(1), child.wait())
                .await
                .is_err()
        );
        let stdin = child.stdin.take().unwrap().into_std().unwrap();
        (child, stdin)
    });
    let _k = KillGuard(pid_of(&child));
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
    let _k = KillGuard(pid_of(&child));
    drop(a);
    child.kill(Signum::TERM).unwrap();
    let exit = b.block_on(async { bounded("wait after runtime a", child.wait()).await.unwrap() });
    assert_eq!(exit.signal, libc::SIGTERM);
}

// ---------------------------------------------------------------------------------------
// Concurrency

#[test]
fn basic_sixteen_threads_spawning_at_once() {
    let _g = shared_blocking();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let rt = rt();
                barrier.wait();
                rt.block_on(async {
                    for i in 0..10 {
                        // Each child echoes its own words through its own pipes: crossed
                        // wires between concurrent spawns would show.
                        let words = format!("thread-{t}-child-{i}");
                        let mut child = Command::new("sh")
                            .args(["-c", "read x; echo \"$x $1\"; echo \"$1\" >&3", "sh"])
                            .arg(&words)
                            .stdin(Stdio::piped())
                            .stdout(Stdio::piped())
                            .stdio(3, Stdio::pipe_writable())
                            .spawn()
                            .unwrap();
                        let mut stdin = child.stdin.take().unwrap();
                        stdin.write_all(format!("{t}\n").as_bytes()).await.unwrap();
                        drop(stdin);
                        let mut three = child.take_pipe(3).unwrap();
                        let mut t3 = String::new();
                        bounded("read 3", three.read_to_string(&mut t3))
                            .await
                            .unwrap();
                        let out = bounded("output", child.wait_with_output()).await.unwrap();
                        assert!(out.exit.success());
                        assert_eq!(
                            String::from_utf8(out.stdout).unwrap(),
                            format!("{t} {words}\n")
                        );
                        assert_eq!(t3, format!("{words}\n"));
                    }
                });
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a spawning thread failed");
    }
}

/// A smaller `spawn_stress`, here so that it runs in the fallback without pidfds too.
#[test]
fn basic_many_spawns_leave_fd_and_zombie_counts_unchanged() {
    let _g = exclusive_blocking();
    let rt = rt();
    rt.block_on(async {
        // Warm up brood's lazy parts (the reaper thread and its epoll fd).
        Command::new("true").status().await.unwrap();
        warm_up_reaper();
    });
    let fds = brood::open_fd_count().unwrap();
    let fd_list = own_fds();
    rt.block_on(async {
        bounded("1000 spawns", async {
            let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..1000 {
                let permit = slots.clone().acquire_owned().await.unwrap();
                tasks.spawn(async move {
                    let _permit = permit;
                    let mut child = Command::new("/bin/true").spawn().unwrap();
                    if i % 10 != 9 {
                        assert!(child.wait().await.unwrap().success());
                    } // else dropped running: reaped in the background
                });
            }
            while let Some(t) = tasks.join_next().await {
                t.unwrap();
            }
        })
        .await;
    });
    poll_until("dropped children reaped", || children().is_empty());
    assert_eq!(
        brood::open_fd_count().unwrap(),
        fds,
        "fds leaked: before {fd_list:?}, after {:?}",
        own_fds()
    );
}

// ---------------------------------------------------------------------------------------
// The fallback without pidfds

#[tokio::test]
async fn no_pidfd_fallback_runs_basic_tests() {
    let _g = shared().await;
    if std::env::var_os("BROOD_NO_PIDFD").is_some() {
        return; // already the re-executed copy
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

/// Not a test: the entry point of the helper modes that `common::run_helper` re-executes
/// this binary into (`BROOD_TEST_HELPER=mode`). Ignored, so a plain test run skips it.
#[test]
#[ignore = "entry point of helper processes, run by other tests"]
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
                let id_g = |cmd: Command| async {
                    let out = bounded("id -G", cmd.arg("-G").output()).await.unwrap();
                    assert!(out.exit.success());
                    String::from_utf8(out.stdout).unwrap().trim().to_owned()
                };
                // Control: without uid/gid the groups are inherited.
                assert_eq!(id_g(Command::new("id")).await, "0 4242 4343");
                assert_eq!(id_g(Command::new("id").gid(65533)).await, "65533");
                assert_eq!(id_g(Command::new("id").uid(65534)).await, "0");
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
        other => panic!("unknown helper mode {other}"),
    }
    println!("{HELPER_DONE}");
}
