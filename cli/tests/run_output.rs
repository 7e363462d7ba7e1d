//! What `brood run` itself writes and returns: the `--json` line away from the child's
//! stdout, no panic on a closed stdout or stderr, usage errors as 125, a help text with an
//! example for every option.

mod run_support;

use std::os::unix::net::UnixStream;

use brood::{Command, Stdio};
use run_support::*;

/// A `python3` that reads stdin as one JSON document (it fails on two).
const JSON_LOAD: &str = "import json,sys; json.load(sys.stdin)";

#[tokio::test]
async fn json_never_mixes_with_the_childs_stdout() {
    // `brood run --json -- PROGRAM | python3 -c 'json.load(stdin)'`: the child's stdout
    // alone reaches the pipe.
    let script = format!(
        "{BROOD} run --json -- sh -c 'echo \"{{\\\"a\\\": [1, 2]}}\"; exit 3' | python3 -c '{JSON_LOAD}'"
    );
    let out = bounded(
        "pipeline",
        Command::new("sh").args(["-c", &script]).output(),
    )
    .await
    .unwrap();
    assert!(out.exit.success(), "{}: {}", out.exit, text(&out.stderr));
    // The JSON line is on stderr, and is JSON itself.
    let err = text(&out.stderr);
    let line = err.lines().last().unwrap_or_default();
    let check = "import json,sys; d = json.loads(sys.argv[1]); assert d['exit_status'] == 3, d";
    let out = bounded(
        "python3",
        Command::new("python3").args(["-c", check, line]).output(),
    )
    .await
    .unwrap();
    assert!(out.exit.success(), "{line}: {}", text(&out.stderr));
}

#[tokio::test]
async fn json_fd_and_json_file_take_the_line_instead_of_stderr() {
    // --json-fd 3, fd 3 being a pipe the test reads.
    let mut brood = run_cmd(&[
        "--json-fd",
        "3",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 2",
    ])
    .stdio(3, Stdio::pipe_writable())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut three = brood.take_pipe(3).unwrap();
    let mut json = String::new();
    use tokio::io::AsyncReadExt;
    bounded("fd 3", three.read_to_string(&mut json))
        .await
        .unwrap();
    let out = bounded("brood", brood.wait_with_output()).await.unwrap();
    assert_eq!(code(&out), 2);
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("out\n".into(), "err\n".into())
    );
    assert!(
        json.ends_with(",\"exit_status\":2,\"term_signal\":0}\n"),
        "{json}"
    );
    // The child did not get fd 3.
    let out = run(&["--json-fd", "1", "--", "sh", "-c", "echo x >&3"]).await;
    assert_ne!(code(&out), 0);

    // --json-file: created (or emptied), one line.
    let dir = std::env::temp_dir().join(format!("brood-run-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("status.json");
    std::fs::write(
        &file,
        "old content that is longer than the line ...............\n",
    )
    .unwrap();
    let out = run(&[
        "--json-file",
        file.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo hi",
    ])
    .await;
    let json = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        (code(&out), text(&out.stdout), text(&out.stderr)),
        (0, "hi\n".into(), "".into())
    );
    assert!(
        json.starts_with("{\"pid\":") && json.ends_with(",\"exit_status\":0,\"term_signal\":0}\n"),
        "{json}"
    );

    // A spawn error is a JSON line there too.
    let out = run(&[
        "--json-fd",
        "1",
        "--env",
        "PATH=/usr/bin:/bin",
        "--",
        "brood-no-such-program",
    ])
    .await;
    assert_eq!(code(&out), 127);
    assert!(text(&out.stdout).starts_with("{\"error\":\"ENOENT\",\"message\":"));

    // fds that brood was not given, and files it cannot create, are its own failure.
    let out = run(&["--json-fd", "7", "--", "echo", "ran"]).await;
    assert_eq!(code(&out), 125);
    let err = text(&out.stderr);
    assert!(err.contains("EBADF") && err.contains("fd 7"), "{err}");
    let out = run(&["--json-file", "/brood-no-such-dir/x", "--", "echo", "ran"]).await;
    assert_eq!(code(&out), 125);
    assert!(text(&out.stderr).contains("/brood-no-such-dir/x"));
    assert_eq!(out.stdout, b"");
}

/// A socket whose peer is gone: every write to it fails with EPIPE.
fn closed_pipe() -> Stdio {
    let (ours, theirs) = UnixStream::pair().unwrap();
    drop(ours);
    Stdio::from(theirs)
}

#[tokio::test]
async fn a_closed_stdout_or_stderr_never_panics_brood_and_the_childs_code_wins() {
    // The issue's own case, through a real shell pipeline.
    let out = bounded(
        "brood | true",
        Command::new("bash")
            .args([
                "-c",
                &format!("{BROOD} run --json -- true | true; echo ${{PIPESTATUS[0]}}"),
            ])
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(text(&out.stdout), "0\n", "{}", text(&out.stderr));

    // stderr closed (the JSON line's default place), stdout closed (--json-fd 1): no panic
    // (101), the child's code.
    for (flag, closed) in [("--json", 2), ("--json-fd=1", 1)] {
        let out = bounded(
            "closed output",
            run_cmd(&[flag, "--", "sh", "-c", "exit 3"])
                .stdio(closed, closed_pipe())
                .stdio(3 - closed, Stdio::piped())
                .stdin(Stdio::ignore())
                .output(),
        )
        .await
        .unwrap();
        assert_eq!(code(&out), 3, "{flag}");
        if closed == 1 {
            // Reported once, on stderr.
            let err = text(&out.stderr);
            assert_eq!(err.matches("brood run: cannot write").count(), 1, "{err}");
            assert!(err.contains("Broken pipe"), "{err}");
        }
    }

    // Both closed, and the child killed by a signal: still 128+N.
    let out = bounded(
        "both closed",
        run_cmd(&["--json", "--", "sh", "-c", "kill -TERM $$"])
            .stdout(closed_pipe())
            .stderr(closed_pipe())
            .stdin(Stdio::ignore())
            .status(),
    )
    .await
    .unwrap();
    assert_eq!((out.status, out.signal), (128 + 15, 0));
}

#[tokio::test]
async fn usage_errors_exit_125_like_brood_failures() {
    for args in [
        &["run", "--bogus", "--", "true"][..],
        &["run"],
        &["run", "--timeout"],
        &["run", "--stdio", "1=bogus", "--", "true"],
        &["run", "--user", "a", "--uid", "b", "--", "true"],
        &["run", "--json-fd", "3", "--json-file", "x", "--", "true"],
        &["no-such-subcommand"],
        &["cluster", "--bogus-flag"],
        &[],
    ] {
        let out = bounded("usage", Command::new(BROOD).args(args).output())
            .await
            .unwrap();
        assert_eq!(code(&out), 125, "brood {args:?}: {}", text(&out.stderr));
        assert!(!out.stderr.is_empty(), "brood {args:?} said nothing");
    }
    // Asking for help or the version is no error.
    for args in [&["run", "--help"][..], &["--version"], &["run", "-h"]] {
        let out = bounded("help", Command::new(BROOD).args(args).output())
            .await
            .unwrap();
        assert_eq!(code(&out), 0, "brood {args:?}");
        assert!(!out.stdout.is_empty());
    }
    // The child's own 125 is still passed on as is.
    let out = run(&["--", "sh", "-c", "exit 125"]).await;
    assert_eq!(code(&out), 125);
}

#[tokio::test]
async fn help_gives_an_example_for_every_option() {
    let out = bounded("help", Command::new(BROOD).args(["run", "--help"]).output())
        .await
        .unwrap();
    let help = text(&out.stdout);
    let (options, examples) = help
        .split_once("Examples")
        .unwrap_or_else(|| panic!("no Examples section:\n{help}"));
    // Option lines: `      --timeout <DURATION>`, `  -h, --help`.
    let flags: Vec<&str> = options
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split([' ', ',', '=']).find(|w| w.starts_with("--")))
        .filter(|f| *f != "--help")
        .collect();
    // The options section lists at least what this test knows of.
    for known in [
        "--timeout",
        "--kill-signal",
        "--kill-after",
        "--foreground",
        "--user",
        "--json-fd",
    ] {
        assert!(
            flags.contains(&known),
            "{known} is not in the help:\n{help}"
        );
    }
    let example_lines: Vec<&str> = examples
        .lines()
        .filter(|l| l.trim_start().starts_with("brood run"))
        .collect();
    for flag in flags {
        assert!(
            example_lines
                .iter()
                .any(|l| l.split_whitespace().any(|w| w == flag)),
            "no example uses {flag}:\n{examples}"
        );
    }
}
