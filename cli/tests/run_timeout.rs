//! `brood run --timeout` as `timeout(1)`: the whole process group, `--kill-signal`,
//! `--kill-after`, `--foreground`, durations with units, `0` for none.
//!
//! Every child that must outlive a moment sleeps 60 s; the test bounds are 20-30 s, so a
//! brood that waits for the sleep fails the test instead of passing slowly.

mod run_support;

use std::time::Duration;

use brood::{Signum, Stdio};
use run_support::*;
use tokio::io::AsyncReadExt;

/// A shell whose background `sleep 60` holds brood's stdout, as in
/// `brood run --timeout 3 -- sh -c 'sleep 60 & wait' | cat`. It prints the sleep's pid.
const JOB: &str = "sleep 60 & echo $!; wait";

/// Runs brood with stdout piped (the `| cat`), reads the sleep's pid, then stdout to EOF
/// within `limit`; returns brood's exit code, the pid, and brood's stderr.
async fn piped_job(args: &[&str], limit: Duration) -> (i64, i32, String) {
    let mut brood = run_cmd(args)
        .stdin(Stdio::ignore())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = brood.stdout.take().unwrap();
    let line = read_line(&mut stdout, "the background job's pid").await;
    let pid: i32 = line
        .parse()
        .unwrap_or_else(|_| panic!("the shell did not start its job in time: {line:?}"));
    let _guard = KillOnDrop(pid);
    let mut rest = Vec::new();
    bounded_by(
        limit,
        "EOF on brood's stdout",
        stdout.read_to_end(&mut rest),
    )
    .await
    .unwrap();
    let out = bounded("brood's exit", brood.wait_with_output())
        .await
        .unwrap();
    wait_dead(pid, "the background sleep");
    (code(&out), pid, text(&out.stderr))
}

#[tokio::test]
async fn timeout_ends_the_whole_process_group_so_a_pipe_reader_sees_eof() {
    // The old brood signalled only the shell: the sleep kept the pipe for 60 s.
    let (code, _, err) = piped_job(
        &["--timeout", "5", "--", "sh", "-c", JOB],
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(code, 124, "{err}");
}

#[tokio::test]
async fn kill_after_sigkills_the_group_when_the_signal_is_ignored() {
    // Shell and sleep both ignore TERM (an ignored signal is inherited), so only the
    // escalation to SIGKILL of the whole group ends them.
    let job = format!("trap '' TERM; {JOB}");
    let (code, _, err) = piped_job(
        &[
            "--timeout",
            "5",
            "--kill-after",
            "200ms",
            "--",
            "sh",
            "-c",
            &job,
        ],
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(code, 124, "{err}");
}

#[tokio::test]
async fn signals_sent_to_brood_reach_the_childs_group_under_timeout() {
    let mut brood = run_cmd(&["--timeout", "1h", "--", "sh", "-c", JOB])
        .stdin(Stdio::ignore())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = brood.stdout.take().unwrap();
    let pid: i32 = read_line(&mut stdout, "job pid").await.parse().unwrap();
    let _guard = KillOnDrop(pid);
    brood.kill(Signum::TERM).unwrap();
    let mut rest = Vec::new();
    bounded_by(
        Duration::from_secs(20),
        "EOF after TERM",
        stdout.read_to_end(&mut rest),
    )
    .await
    .unwrap();
    let exit = bounded("brood exit", brood.wait()).await.unwrap();
    assert_eq!(exit.status, 128 + 15, "{exit}");
    wait_dead(pid, "the background sleep");
}

/// The process group of the child brood runs (`sh` prints its own /proc stat).
async fn child_pgrp(flags: &[&str]) -> (i32, i32) {
    let args = [flags, &["--", "sh", "-c", "cat /proc/$$/stat"]].concat();
    let out = run(&args).await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let stat = text(&out.stdout);
    let pid: i32 = stat.split_whitespace().next().unwrap().parse().unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    (pid, fields[2].parse().unwrap())
}

#[tokio::test]
async fn the_child_gets_its_own_group_with_timeout_unless_foreground() {
    // SAFETY: getpgrp has no preconditions.
    let ours = unsafe { libc::getpgrp() };
    // brood runs in our group; so does its child without --timeout ...
    let (_, pgrp) = child_pgrp(&[]).await;
    assert_eq!(pgrp, ours);
    // ... and with --timeout 0 (no timeout, as timeout(1)).
    let (_, pgrp) = child_pgrp(&["--timeout", "0"]).await;
    assert_eq!(pgrp, ours);
    // With a timeout it leads a group of its own, which the timeout signals.
    let (pid, pgrp) = child_pgrp(&["--timeout", "1h"]).await;
    assert_eq!(pgrp, pid);
    // --foreground keeps it in brood's group (the terminal's foreground job).
    let (_, pgrp) = child_pgrp(&["--timeout", "1h", "--foreground"]).await;
    assert_eq!(pgrp, ours);
}

#[tokio::test]
async fn foreground_signals_only_the_child_as_timeout_foreground() {
    let mut brood = run_cmd(&["--timeout", "5", "--foreground", "--", "sh", "-c", JOB])
        .stdin(Stdio::ignore())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = brood.stdout.take().unwrap();
    let line = read_line(&mut stdout, "job pid").await;
    let pid: i32 = line
        .parse()
        .unwrap_or_else(|_| panic!("the shell did not start its job in time: {line:?}"));
    let _guard = KillOnDrop(pid);
    let exit = bounded("brood exit", brood.wait()).await.unwrap();
    assert_eq!(exit.status, 124, "{exit}");
    // The shell was ended; its background sleep, not signalled, runs on.
    assert!(
        alive(pid),
        "--foreground signalled the child's children too"
    );
}

#[tokio::test]
async fn kill_signal_chooses_the_signal_the_timeout_sends() {
    for (sig, num) in [("USR1", 10), ("SIGINT", 2), ("9", 9), ("hup", 1)] {
        let out = run(&[
            "--json",
            "--timeout",
            "200ms",
            "--kill-signal",
            sig,
            "--",
            "sleep",
            "60",
        ])
        .await;
        assert_eq!(code(&out), 124, "{sig}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("\"term_signal\":{num},\"timed_out\":true")),
            "{sig}: {err}"
        );
    }
    // A name that is no signal is a usage error that says so; nothing runs.
    let out = run(&[
        "--timeout",
        "1",
        "--kill-signal",
        "NOPE",
        "--",
        "echo",
        "ran",
    ])
    .await;
    assert_eq!(code(&out), 125);
    assert!(text(&out.stderr).contains("\"NOPE\" is not a signal"));
    assert_eq!(out.stdout, b"");
    // Without --timeout it would mean nothing: a usage error.
    let out = run(&["--kill-signal", "INT", "--", "echo", "ran"]).await;
    assert_eq!(code(&out), 125);
    assert_eq!(out.stdout, b"");
}

#[tokio::test]
async fn durations_take_units_and_zero_means_no_timeout() {
    let out = run(&["--json", "--timeout", "300ms", "--", "sleep", "60"]).await;
    assert_eq!(code(&out), 124, "{}", text(&out.stderr));
    for t in ["1m", "2s", "1h", "1.5", "1d"] {
        let out = run(&["--timeout", t, "--", "sh", "-c", "exit 4"]).await;
        assert_eq!(code(&out), 4, "--timeout {t}: {}", text(&out.stderr));
    }
    // `timeout 0` runs the program without a limit; it must not be killed at once.
    let out = run(&["--timeout", "0", "--", "sh", "-c", "sleep 0.5; exit 3"]).await;
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
    // --kill-after 0: never escalate. CONT does not stop a running child, so it ends by
    // itself after the timeout; any escalation would show as SIGKILL.
    let out = run(&[
        "--timeout",
        "200ms",
        "--kill-signal",
        "CONT",
        "--kill-after",
        "0",
        "--json",
        "--",
        "sh",
        "-c",
        "sleep 2; exit 5",
    ])
    .await;
    assert_eq!(code(&out), 124);
    let err = text(&out.stderr);
    assert!(err.contains("\"exit_status\":5,\"term_signal\":0"), "{err}");
    // Bad durations are usage errors naming the value, before anything runs.
    for bad in ["5x", "1e30", "nan", "1.2.3"] {
        let out = run(&["--timeout", bad, "--", "echo", "ran"]).await;
        assert_eq!(code(&out), 125, "{bad}");
        assert!(text(&out.stderr).contains(&format!("{bad:?}")), "{bad}");
        assert_eq!(out.stdout, b"");
    }
}

/// A positive timeout too small for a nanosecond is the smallest timeout, not "none": the
/// child is signalled at once (it rounded to zero, which meant no timeout, before).
#[tokio::test]
async fn a_positive_timeout_below_a_nanosecond_is_still_a_timeout() {
    for t in ["0.0000000001", "0.0000000000001ms"] {
        let out = bounded_by(
            Duration::from_secs(20),
            "a tiny timeout",
            run_cmd(&["--timeout", t, "--json", "--", "sleep", "60"])
                .stdin(Stdio::ignore())
                .output(),
        )
        .await
        .unwrap();
        assert_eq!(code(&out), 124, "--timeout {t}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("\"timed_out\":true"), "{t}");
    }
    // The same for --kill-after: a tiny one escalates to SIGKILL, it does not mean never.
    let out = bounded_by(
        Duration::from_secs(20),
        "a tiny kill-after",
        run_cmd(&[
            "--timeout",
            "100ms",
            "--kill-signal",
            "CONT",
            "--kill-after",
            "0.0000000001",
            "--json",
            "--",
            "sleep",
            "60",
        ])
        .stdin(Stdio::ignore())
        .output(),
    )
    .await
    .unwrap();
    assert_eq!(code(&out), 124, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("\"term_signal\":9"),
        "{}",
        text(&out.stderr)
    );
}
