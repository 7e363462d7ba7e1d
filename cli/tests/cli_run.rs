//! `brood run` end to end: the built binary, real children, real signals.
//!
//! This file lives in the CLI crate so that Cargo builds the `brood` binary before the test
//! and hands its path over in `CARGO_BIN_EXE_brood` (a test of the library crate cannot get
//! it: that variable only exists for the package that owns the binary). Run it with
//! `cargo test -p brood-cli --test cli_run` (or `cargo test --workspace`).
//!
//! The binary is run through brood itself (pipes, bounded waits), so a hung run fails the
//! test instead of hanging it.

use std::time::Duration;

use brood::{Command, Output, Stdio};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BROOD: &str = env!("CARGO_BIN_EXE_brood");
const LIMIT: Duration = Duration::from_secs(30);

async fn bounded<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done after {LIMIT:?}"))
}

fn run_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(BROOD);
    cmd.arg("run").args(args);
    cmd
}

/// `brood run ARGS` with stdin ignored and stdout/stderr captured.
async fn run(args: &[&str]) -> Output {
    bounded(&format!("brood run {args:?}"), run_cmd(args).output())
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The exit code brood itself gave (it is never killed in these tests).
fn code(out: &Output) -> i64 {
    assert_eq!(out.exit.signal, 0, "brood itself was killed: {}", out.exit);
    out.exit.status
}

#[tokio::test]
async fn exit_codes_follow_the_shell() {
    let out = run(&["--", "true"]).await;
    assert_eq!(code(&out), 0);
    let out = run(&["--", "sh", "-c", "echo hi; exit 7"]).await;
    assert_eq!((code(&out), text(&out.stdout)), (7, "hi\n".into()));
    // Killed by a signal: 128 + N.
    let out = run(&["--", "sh", "-c", "kill -TERM $$"]).await;
    assert_eq!(code(&out), 128 + 15);
    let out = run(&["--", "sh", "-c", "kill -KILL $$"]).await;
    assert_eq!(code(&out), 128 + 9);
}

#[tokio::test]
async fn spawn_errors_give_127_126_125_with_the_error_on_stderr() {
    // (A PATH of our own: an entry we may not search would make it EACCES, as execvp.)
    let path = "PATH=/usr/bin:/bin";
    let out = run(&["--env", path, "--", "brood-no-such-program"]).await;
    assert_eq!(code(&out), 127);
    let err = text(&out.stderr);
    assert!(
        err.contains("ENOENT") && err.contains("brood-no-such-program"),
        "{err}"
    );
    assert_eq!(out.stdout, b"");

    // Found but not executable (no execute bit; root cannot run it either).
    let dir = std::env::temp_dir().join(format!("brood-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("not-executable");
    std::fs::write(&file, "#!/bin/sh\necho hi\n").unwrap();
    let out = run(&["--", file.to_str().unwrap()]).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code(&out), 126);
    let err = text(&out.stderr);
    assert!(
        err.contains("EACCES") && err.contains("not-executable"),
        "{err}"
    );

    // Not a directory on the way to the program: not found.
    let out = run(&["--", "/etc/passwd/x"]).await;
    assert_eq!(code(&out), 127, "{}", text(&out.stderr));

    // brood's own failure (bad --cwd): 125, naming the directory.
    let out = run(&["--cwd", "/brood-no-such-dir", "--", "true"]).await;
    assert_eq!(code(&out), 125);
    let err = text(&out.stderr);
    assert!(
        err.contains("ENOENT") && err.contains("/brood-no-such-dir"),
        "{err}"
    );
}

#[tokio::test]
async fn json_reports_pid_status_and_signal_on_stderr() {
    let out = run(&["--json", "--", "sh", "-c", "echo $$; exit 3"]).await;
    assert_eq!(code(&out), 3);
    let pid: u32 = text(&out.stdout).trim().parse().unwrap();
    assert_eq!(
        text(&out.stderr),
        format!("{{\"pid\":{pid},\"exit_status\":3,\"term_signal\":0}}\n")
    );

    let out = run(&["--json", "--", "sh", "-c", "echo $$; kill -KILL $$"]).await;
    assert_eq!(code(&out), 137);
    let pid: u32 = text(&out.stdout).trim().parse().unwrap();
    assert_eq!(
        text(&out.stderr),
        format!("{{\"pid\":{pid},\"exit_status\":0,\"term_signal\":9}}\n")
    );

    // A spawn error is one JSON line too, with the libuv error name, then the message.
    let path = "PATH=/usr/bin:/bin";
    let out = run(&["--json", "--env", path, "--", "brood-no-such-program"]).await;
    assert_eq!(code(&out), 127);
    assert_eq!(out.stdout, b"");
    let stderr = text(&out.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("{\"error\":\"ENOENT\",\"message\":\"")
            && first.ends_with("\"}")
            && first.contains("brood-no-such-program")
            && stderr
                .lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("brood run: ")),
        "{stderr}"
    );
}

#[tokio::test]
async fn timeout_terms_then_kills_and_exits_124() {
    let out = run(&["--json", "--timeout", "0.2", "--", "sleep", "30"]).await;
    assert_eq!(code(&out), 124);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("\"exit_status\":0,\"term_signal\":15,\"timed_out\":true}"),
        "{stderr}"
    );

    // A child that the first signal does not end gets SIGKILL after --kill-after (CONT:
    // a running sleep ignores it, from its first instruction on).
    let out = run(&[
        "--json",
        "--timeout",
        "0.2",
        "--kill-signal",
        "CONT",
        "--kill-after",
        "0.2",
        "--",
        "sleep",
        "30",
    ])
    .await;
    assert_eq!(code(&out), 124);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("\"term_signal\":9,\"timed_out\":true}"),
        "{stderr}"
    );

    // Seconds that are no Duration are brood's own error (125), before any spawn, and no panic.
    for bad in ["1e30", "nan", "inf"] {
        let out = run(&["--timeout", bad, "--", "sh", "-c", "echo ran"]).await;
        assert_eq!(code(&out), 125, "--timeout {bad}: {}", text(&out.stderr));
        assert_eq!(out.stdout, b"", "--timeout {bad}");
    }
    let out = run(&["--timeout", "1", "--kill-after", "1e30", "--", "true"]).await;
    assert_eq!(code(&out), 125);

    // A child that ends in time is not a timeout.
    let out = run(&["--timeout", "20", "--", "sh", "-c", "exit 4"]).await;
    assert_eq!(code(&out), 4);
}

#[tokio::test]
async fn detach_prints_the_pid_and_returns_while_the_child_lives_on() {
    // The detached child will be orphaned when brood exits; as a subreaper we get it (and
    // not pid 1, which does not reap here), so we can reap it after killing it.
    assert_eq!(
        // SAFETY: prctl with integer arguments on this test process.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    for json in [false, true] {
        let flags: &[&str] = if json { &["--json"] } else { &[] };
        let mut brood = run_cmd(&[flags, &["--detach", "--", "sleep", "30"]].concat())
            .stdin(Stdio::ignore())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let brood_pid = brood.id().unwrap();
        let mut stdout = brood.stdout.take().unwrap();
        // brood exits at once, though the child runs on.
        let exit = bounded("brood --detach", brood.wait()).await.unwrap();
        assert!(exit.success(), "{exit}");
        let mut line = Vec::new();
        let mut byte = [0u8];
        while byte[0] != b'\n' {
            bounded("pid line", stdout.read_exact(&mut byte))
                .await
                .unwrap();
            line.push(byte[0]);
        }
        let pid: i32 = text(&line).trim().parse().expect("a pid");
        if json {
            let mut err = String::new();
            let mut stderr = brood.stderr.take().unwrap();
            bounded("stderr", stderr.read_to_string(&mut err))
                .await
                .unwrap();
            assert_eq!(err, format!("{{\"pid\":{pid},\"detached\":true}}\n"));
        }
        struct Reap(i32);
        impl Drop for Reap {
            fn drop(&mut self) {
                // SAFETY: kill and waitpid on the orphan we adopted as subreaper.
                unsafe {
                    libc::kill(self.0, libc::SIGKILL);
                    libc::waitpid(self.0, std::ptr::null_mut(), 0);
                }
            }
        }
        let reap = Reap(pid);

        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        // state, ppid, pgrp, session
        assert_ne!(fields[0], "Z", "{stat}");
        assert_eq!(
            fields[1],
            std::process::id().to_string(),
            "outlived brood {brood_pid}"
        );
        assert_eq!(fields[3], pid.to_string(), "its own session");
        drop(reap);
    }
}

#[tokio::test]
async fn stdio_specs() {
    // 1=fd:2: the child's stdout is brood's stderr.
    let out = run(&["--stdio", "1=fd:2", "--", "sh", "-c", "echo moved"]).await;
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("".into(), "moved\n".into())
    );
    // Swapped: slots naming each other.
    let out = run(&[
        "--stdio",
        "1=fd:2",
        "--stdio",
        "2=fd:1",
        "--",
        "sh",
        "-c",
        "echo one; echo two >&2",
    ])
    .await;
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("two\n".into(), "one\n".into())
    );
    // An extra slot.
    let out = run(&["--stdio", "3=fd:1", "--", "sh", "-c", "echo three >&3"]).await;
    assert_eq!(text(&out.stdout), "three\n");
    // inherit: brood's own fd 3, which we give it as a pipe.
    let mut brood = run_cmd(&["--stdio", "3=inherit", "--", "sh", "-c", "echo x >&3"])
        .stdio(3, Stdio::pipe_writable())
        .spawn()
        .unwrap();
    let mut three = brood.take_pipe(3).unwrap();
    let mut got = String::new();
    bounded("read 3", three.read_to_string(&mut got))
        .await
        .unwrap();
    assert_eq!(got, "x\n");
    assert!(bounded("wait", brood.wait()).await.unwrap().success());
    // ignore: /dev/null below 3.
    let out = run(&[
        "--stdio",
        "1=ignore",
        "--",
        "sh",
        "-c",
        "echo gone; echo kept >&2",
    ])
    .await;
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("".into(), "kept\n".into())
    );

    // 0=ignore: the child reads EOF although brood's stdin is an open pipe.
    let mut brood = run_cmd(&["--stdio", "0=ignore", "--", "sh", "-c", "cat; echo eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = brood.stdin.take().unwrap();
    let out = bounded("cat on /dev/null", brood.wait_with_output())
        .await
        .unwrap();
    assert_eq!(text(&out.stdout), "eof\n");
    drop(stdin);

    // Without it, brood's stdin is the child's.
    let mut brood = run_cmd(&["--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = brood.stdin.take().unwrap();
    stdin.write_all(b"through\n").await.unwrap();
    drop(stdin);
    let out = bounded("cat", brood.wait_with_output()).await.unwrap();
    assert_eq!(text(&out.stdout), "through\n");

    // A bad spec is a usage error.
    let out = run(&["--stdio", "1=bogus", "--", "true"]).await;
    assert_eq!(code(&out), 125);
    assert!(text(&out.stderr).contains("bogus"));
}

#[tokio::test]
async fn env_clear_env_cwd_arg0_uid_gid() {
    let out = run(&[
        "--clear-env",
        "--env",
        "A=1",
        "--env",
        "B=x=y",
        "--",
        "/usr/bin/env",
    ])
    .await;
    assert_eq!(code(&out), 0);
    let mut vars: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    vars.sort();
    assert_eq!(vars, ["A=1", "B=x=y"]);

    // Without --clear-env the environment is inherited, with --env on top.
    let out = bounded(
        "env",
        run_cmd(&["--env", "BROOD_ADDED=1", "--", "env"])
            .env("BROOD_FROM_PARENT", "yes")
            .output(),
    )
    .await
    .unwrap();
    let env = text(&out.stdout);
    assert!(env.lines().any(|l| l == "BROOD_FROM_PARENT=yes"), "{env}");
    assert!(env.lines().any(|l| l == "BROOD_ADDED=1"), "{env}");

    // PATH from --env is the one searched.
    let out = run(&["--clear-env", "--env", "PATH=/nonexistent", "--", "true"]).await;
    assert_eq!(code(&out), 127);

    let out = run(&["--cwd", "/usr/share", "--", "readlink", "/proc/self/cwd"]).await;
    assert_eq!(text(&out.stdout), "/usr/share\n");

    let out = run(&["--arg0", "brood-name", "--", "sh", "-c", "echo $0"]).await;
    assert_eq!(text(&out.stdout), "brood-name\n");

    // A bad fd for a slot: brood's own error, naming the slot.
    let out = run(&["--stdio", "3=fd:999", "--", "true"]).await;
    assert_eq!(code(&out), 125);
    let err = text(&out.stderr);
    assert!(err.contains("EBADF") && err.contains("fd 999"), "{err}");

    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        // Unprivileged (brood itself started as nobody), a uid or gid change is EPERM: 125.
        for (flag, stage) in [("--uid", "setuid 0"), ("--gid", "setgid 0")] {
            let out = bounded(
                "unprivileged",
                run_cmd(&[flag, "0", "--", "true"])
                    .uid(65534)
                    .gid(65534)
                    .output(),
            )
            .await
            .unwrap();
            assert_eq!(code(&out), 125, "{}", text(&out.stderr));
            let err = text(&out.stderr);
            assert!(err.contains("EPERM") && err.contains(stage), "{err}");
        }

        let out = run(&["--uid", "65534", "--gid", "65533", "--", "id"]).await;
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
        let id = text(&out.stdout);
        assert!(
            id.starts_with("uid=65534") && id.contains("gid=65533"),
            "{id}"
        );
        assert!(!id.contains("groups=0"), "{id}");
    }
}

#[tokio::test]
async fn signals_to_brood_are_passed_on_to_the_child() {
    // The child announces it runs (so brood's watchers are set up), then waits; USR1 and
    // TERM sent to brood must reach it.
    let mut brood = run_cmd(&[
        "--json",
        "--",
        "sh",
        "-c",
        "trap 'echo got-usr1' USR1; echo started; while :; do sleep 0.05; done",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut out = brood.stdout.take().unwrap();
    let mut err = brood.stderr.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    while !seen.contains("started") {
        let n = bounded("started", out.read(&mut buf)).await.unwrap();
        assert!(n > 0, "brood ended early: {seen}");
        seen.push_str(&text(&buf[..n]));
    }
    brood.kill(brood::Signum::USR1).unwrap();
    while !seen.contains("got-usr1") {
        let n = bounded("got-usr1", out.read(&mut buf)).await.unwrap();
        assert!(n > 0, "brood ended early: {seen}");
        seen.push_str(&text(&buf[..n]));
    }
    brood.kill(brood::Signum::TERM).unwrap();
    let exit = bounded("brood exit", brood.wait()).await.unwrap();
    let mut rest = String::new();
    bounded("rest", err.read_to_string(&mut rest))
        .await
        .unwrap();
    assert_eq!(exit.status, 128 + 15, "{exit}: {seen}{rest}");
    assert!(rest.contains("\"term_signal\":15"), "{rest}");
}
