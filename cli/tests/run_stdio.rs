//! `brood run`'s fd wiring: `--detach` gives /dev/null, only fds brood inherited can be
//! passed on, and `file:`, `truncate:`, `append:`, `null` specs.

mod run_support;

use brood::Stdio;
use run_support::*;
use tokio::io::AsyncReadExt;

/// Become the subreaper of this test process, so a detached child orphaned by brood is
/// ours to reap (and not pid 1's, which may not reap here).
fn subreaper() {
    assert_eq!(
        // SAFETY: prctl with integer arguments on this test process.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
}

/// Kills and reaps an orphan we adopted as subreaper.
struct Reap(i32);

impl Drop for Reap {
    fn drop(&mut self) {
        // SAFETY: kill and waitpid on the orphan we adopted; waitpid fills a local int.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

#[tokio::test]
async fn detach_gives_dev_null_so_the_callers_pipe_sees_eof() {
    subreaper();
    // `pid=$(brood run --detach -- sleep 60)`: brood's stdout reaches EOF as brood exits,
    // not when the sleep ends.
    let mut brood = run_cmd(&["--detach", "--", "sleep", "60"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    let mut stdout = brood.stdout.take().unwrap();
    bounded("EOF on brood's stdout", stdout.read_to_string(&mut out))
        .await
        .unwrap();
    let exit = bounded("brood", brood.wait_with_output()).await.unwrap();
    assert_eq!(code(&exit), 0, "{}", text(&exit.stderr));
    let pid: i32 = out.trim().parse().expect("the pid on stdout");
    let _reap = Reap(pid);
    for fd in 0..3 {
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(target.to_str(), Some("/dev/null"), "fd {fd}");
    }
    assert_eq!(stat(pid).unwrap()[3], pid.to_string(), "its own session");

    // --stdio still says what a slot gets: 1=inherit keeps brood's stdout.
    let mut brood = run_cmd(&["--detach", "--stdio", "1=inherit", "--", "sleep", "60"])
        .stdin(Stdio::ignore())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = brood.stdout.take().unwrap();
    let pid: i32 = read_line(&mut stdout, "pid").await.parse().unwrap();
    let _reap = Reap(pid);
    assert!(bounded("brood", brood.wait()).await.unwrap().success());
    let one = std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap();
    // brood's stdout here is the test's pipe to it: the child has that same pipe.
    assert!(one.to_string_lossy().starts_with("pipe:"), "{one:?}");
    let zero = std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap();
    assert_eq!(zero.to_str(), Some("/dev/null"));
}

#[tokio::test]
async fn detach_with_timeout_or_kill_after_is_a_usage_error_that_says_why() {
    for flags in [
        &["--timeout", "1"][..],
        &["--timeout", "1", "--kill-after", "1"],
        &["--timeout", "1", "--kill-signal", "INT"],
        &["--timeout", "0"],
    ] {
        let args = [&["--detach"], flags, &["--", "echo", "ran"]].concat();
        let out = run(&args).await;
        assert_eq!(code(&out), 125, "{args:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("--detach") && err.contains("--timeout"),
            "{err}"
        );
        assert_eq!(out.stdout, b"", "nothing was started");
    }
}

#[tokio::test]
async fn stdio_fd_must_be_one_brood_inherited() {
    // brood gets exactly 0-2 here. Its runtime opens fds of its own (epoll, signal pipe)
    // at 3 and up: naming one of them is EBADF, not a copy of brood's internals.
    for m in 3..8 {
        let m = m.to_string();
        let spec = format!("3=fd:{m}");
        let out = run(&["--stdio", &spec, "--", "readlink", "/proc/self/fd/3"]).await;
        let err = text(&out.stderr);
        assert_eq!(
            code(&out),
            125,
            "{spec} gave the child {}",
            text(&out.stdout)
        );
        assert!(
            err.contains("EBADF") && err.contains(&format!("fd {m} was not open")),
            "{err}"
        );
        let spec = format!("{m}=inherit");
        let out = run(&["--stdio", &spec, "--", "true"]).await;
        assert_eq!(code(&out), 125, "{spec}");
    }
    // One that brood did inherit is passed on.
    let mut brood = run_cmd(&["--stdio", "3=fd:5", "--", "sh", "-c", "echo via-five >&3"])
        .stdio(5, Stdio::pipe_writable())
        .spawn()
        .unwrap();
    let mut five = brood.take_pipe(5).unwrap();
    let mut got = String::new();
    bounded("fd 5", five.read_to_string(&mut got))
        .await
        .unwrap();
    assert!(bounded("brood", brood.wait()).await.unwrap().success());
    assert_eq!(got, "via-five\n");
}

#[tokio::test]
async fn file_truncate_append_and_null_specs() {
    let dir = std::env::temp_dir().join(format!("brood-run-stdio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();

    // truncate: is the shell's `>`.
    for word in ["first-and-longer", "second"] {
        let spec = format!("1=truncate:{}", path("t"));
        let out = run(&["--stdio", &spec, "--", "echo", word]).await;
        assert_eq!((code(&out), out.stdout.len()), (0, 0));
    }
    assert_eq!(read("t"), "second\n");
    // append: is `>>`, at any slot.
    for word in ["one", "two"] {
        let spec = format!("2=append:{}", path("a"));
        let out = run(&[
            "--stdio",
            &spec,
            "--",
            "sh",
            "-c",
            &format!("echo {word} >&2"),
        ])
        .await;
        assert_eq!((code(&out), out.stderr.len()), (0, 0));
    }
    assert_eq!(read("a"), "one\ntwo\n");
    // file: writes from the start without truncating (systemd's file:), creating it if
    // missing; at fd 0 it is read.
    std::fs::write(dir.join("f"), "XXXXXXXXXX\n").unwrap();
    let spec = format!("4=file:{}", path("f"));
    let out = run(&["--stdio", &spec, "--", "sh", "-c", "printf ab >&4"]).await;
    assert_eq!(code(&out), 0);
    assert_eq!(read("f"), "abXXXXXXXX\n");
    let spec = format!("1=file:{}", path("new"));
    let out = run(&["--stdio", &spec, "--", "echo", "made"]).await;
    assert_eq!(code(&out), 0);
    assert_eq!(read("new"), "made\n");
    let spec = format!("0=file:{}", path("a"));
    let out = run(&["--stdio", &spec, "--", "cat"]).await;
    assert_eq!(text(&out.stdout), "one\ntwo\n");
    // null: /dev/null at any slot (ignore closes slots above 2).
    let out = run(&[
        "--stdio",
        "3=null",
        "--stdio",
        "1=null",
        "--",
        "sh",
        "-c",
        "readlink /proc/self/fd/3 >&2; echo gone",
    ])
    .await;
    assert_eq!(
        (code(&out), text(&out.stdout), text(&out.stderr)),
        (0, "".into(), "/dev/null\n".into())
    );

    // A file that cannot be opened is brood's failure, naming it; nothing runs.
    let spec = format!("1=file:{}", path("no-dir/x"));
    let out = run(&["--stdio", &spec, "--", "echo", "ran"]).await;
    assert_eq!(code(&out), 125);
    let err = text(&out.stderr);
    assert!(err.contains("ENOENT") && err.contains("no-dir/x"), "{err}");
    assert_eq!(out.stdout, b"");
    // fd 0 is read: append: there is a usage error.
    let out = run(&["--stdio", "0=append:/tmp/x", "--", "true"]).await;
    assert_eq!(code(&out), 125);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Which of fds 0-2 the program brood runs has: `sh` writes `0:open 1:closed ...` to fd 3.
const REPORT_STDIO: &str = "s=; for fd in 0 1 2; do \
    if [ -e /proc/$$/fd/$fd ]; then s=\"$s $fd:open\"; else s=\"$s $fd:closed\"; fi; \
    done; echo $s >&3";

/// Runs `brood run ARGS -- sh -c REPORT_STDIO` with brood's fds 0-2 as `stdio` gives them
/// (`None`: closed) and fd 3 a pipe passed on with `--stdio 3=inherit`; returns brood's exit
/// code, the report and brood's stderr (empty when fd 2 was closed).
async fn stdio_report(closed: [bool; 3], args: &[&str]) -> (i64, String, String) {
    let args = [
        args,
        &["--stdio", "3=inherit", "--", "sh", "-c", REPORT_STDIO],
    ]
    .concat();
    let mut cmd = run_cmd(&args);
    cmd.stdio(3, Stdio::piped());
    for (fd, closed) in closed.into_iter().enumerate() {
        let fd = fd as i32;
        cmd.stdio(
            fd,
            match (closed, fd) {
                (true, _) => Stdio::closed(),
                (false, 2) => Stdio::piped(),
                (false, _) => Stdio::ignore(),
            },
        );
    }
    let mut brood = cmd.spawn().unwrap();
    let mut three = brood.take_pipe(3).unwrap();
    let mut report = String::new();
    bounded("the report on fd 3", three.read_to_string(&mut report))
        .await
        .unwrap();
    let out = bounded("brood", brood.wait_with_output()).await.unwrap();
    (code(&out), report.trim().to_owned(), text(&out.stderr))
}

/// A 0-2 closed when brood starts is closed for the child too, as `env` and `timeout` pass
/// it on (Rust's runtime put /dev/null there for brood itself, which the child got before).
#[tokio::test]
async fn fds_closed_for_brood_are_closed_for_the_child() {
    let (code, report, _) = stdio_report([true, true, true], &[]).await;
    assert_eq!((code, report.as_str()), (0, "0:closed 1:closed 2:closed"));
    let (code, report, err) = stdio_report([true, false, false], &[]).await;
    assert_eq!(
        (code, report.as_str()),
        (0, "0:closed 1:open 2:open"),
        "{err}"
    );
    let (code, report, err) = stdio_report([false, true, false], &["--init"]).await;
    assert_eq!(
        (code, report.as_str()),
        (0, "0:open 1:closed 2:open"),
        "{err}"
    );
    let (code, report, err) = stdio_report([false, false, false], &[]).await;
    assert_eq!(
        (code, report.as_str()),
        (0, "0:open 1:open 2:open"),
        "{err}"
    );
    // Asked for, the child gets /dev/null there.
    let (code, report, err) = stdio_report([true, true, false], &["--stdio", "0=null"]).await;
    assert_eq!(
        (code, report.as_str()),
        (0, "0:open 1:closed 2:open"),
        "{err}"
    );
    // Detached, it gets /dev/null at 0-2 whatever brood had (see detach_gives_dev_null...).
}

/// Naming a 0-2 that was closed when brood started is EBADF, as for any fd that was not open.
#[tokio::test]
async fn naming_a_closed_stdio_fd_is_ebadf() {
    for args in [
        &["--stdio", "3=fd:1"][..],
        &["--stdio", "1=inherit"],
        &["--json-fd", "1"],
    ] {
        let mut cmd = run_cmd(args);
        cmd.args(["--", "echo", "ran"])
            .stdin(Stdio::ignore())
            .stdout(Stdio::closed())
            .stderr(Stdio::piped());
        let out = bounded("brood", cmd.output()).await.unwrap();
        let err = text(&out.stderr);
        assert_eq!(code(&out), 125, "{args:?}: {err}");
        assert!(
            err.contains("EBADF") && err.contains("fd 1 was not open"),
            "{args:?}: {err}"
        );
    }
}
