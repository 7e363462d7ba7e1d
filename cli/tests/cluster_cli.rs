//! `brood cluster`'s own command line: usage and configuration errors exit 125 before
//! "listening" (as `brood run` and `brood cgi`), the worker program is checked before it,
//! and `--worker-protocol auto` reads a script's `#!` line.

#[path = "support/cluster.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio as StdStdio};
use std::sync::mpsc;

use support::*;

/// `brood cluster ARGS` run to its end (bounded: a master that starts serving by mistake
/// is killed and the test fails): its exit code and stderr.
fn cluster(args: &[&str]) -> (Option<i32>, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_brood"))
        .arg("cluster")
        .args(args)
        .stdin(StdStdio::null())
        .stdout(StdStdio::null())
        .stderr(StdStdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(out) => {
            let out = out.unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
        Err(_) => {
            let _ = brood::kill(pid, brood::Signum::KILL);
            panic!("brood cluster {args:?} did not exit");
        }
    }
}

#[test]
fn usage_and_configuration_errors_exit_125_before_listening() {
    let dir = tempdir("cli-config");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let plain = dir.0.join("not-executable");
    std::fs::write(&plain, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let control = dir.0.join("no/such/dir/ctl.sock");
    let (plain, control, d) = (
        plain.to_str().unwrap(),
        control.to_str().unwrap(),
        dir.0.to_str().unwrap(),
    );
    let local = ["--listen", "127.0.0.1:0"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--workers", "0", "--builtin", "echo"], "worker"),
        (
            vec!["--stop-signal", "SIGFOO", "--builtin", "echo"],
            "SIGFOO",
        ),
        (
            vec!["--worker-protocol", "node", "--builtin", "echo"],
            "node",
        ),
        (vec!["--builtin", "echo", "--control", control], "control"),
        (vec!["--", "/nonexistent"], "/nonexistent"),
        (vec!["--", "no-such-program-in-path-x"], "not found in PATH"),
        (vec!["--", d], "is a directory"),
        (vec!["--", plain], "not an executable"),
        (vec![], "--builtin"),
        (
            vec!["--workers", "2", "--max-workers", "1", "--builtin", "echo"],
            "max-workers",
        ),
        // clap's own usage errors: 125 for every subcommand.
        (vec!["--strategy", "bogus", "--builtin", "echo"], "bogus"),
    ];
    for (args, says) in cases {
        let argv = [&local[..], &args].concat();
        let (code, err) = cluster(&argv);
        assert_eq!(code, Some(125), "{args:?}: {err}");
        assert!(!err.contains("listening"), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?} should say {says:?}: {err}");
    }
    for (listen, says) in [
        (busy_addr.as_str(), "EADDRINUSE"),
        ("127.0.0.1:99999", "99999"),
        ("not-an-address", "not-an-address"),
    ] {
        let (code, err) = cluster(&["--listen", listen, "--builtin", "echo"]);
        assert_eq!(code, Some(125), "--listen {listen}: {err}");
        assert!(!err.contains("listening"), "--listen {listen}: {err}");
        assert!(err.contains(says), "--listen {listen}: {err}");
    }
    drop(busy);
}

/// The restart policy giving up on every slot ends the master with 1 and a plain sentence
/// (no errno in front of it).
#[test]
fn no_worker_left_exits_1_with_a_plain_sentence() {
    let (code, err) = cluster(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--restart",
        "never",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(code, Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("brood cluster: no worker left: "), "{err}");
    assert!(!err.contains("ECHILD"), "{err}");
}

#[test]
fn help_gives_the_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_brood"))
        .args(["cluster", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Exit status:") && help.contains("125"),
        "{help}"
    );
    assert!(help.contains("#!/usr/bin/env node"), "{help}");
}

/// A Node app run as a script (`-- ./app.js`, `#!/usr/bin/env node`) gets Node's protocol
/// with the default `--worker-protocol auto`: it says ready (`process.send`, which only a
/// Node channel gives it) and serves. With brood's bytes it never would: no
/// `NODE_CHANNEL_FD`, so it exits at once and is restarted in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_whose_shebang_runs_node_gets_the_node_protocol() {
    let dir = tempdir("cli-shebang");
    let example = format!("{}/../examples/node/worker.js", env!("CARGO_MANIFEST_DIR"));
    for (name, shebang) in [
        ("sheb.js", "#!/usr/bin/env node"),
        ("flags.js", "#!/usr/bin/env -S node --no-warnings"),
    ] {
        let script = dir.0.join(name);
        std::fs::write(&script, format!("{shebang}\nrequire({example:?});\n")).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let m = Master::start(
            &format!("shebang-{name}"),
            &[
                "--workers",
                "2",
                "--wait-ready",
                "--",
                script.to_str().unwrap(),
            ],
        )
        .await;
        for i in 0..20 {
            tokio::time::timeout(LIMIT, exchange(&m.addr, format!("hello {i}").as_bytes()))
                .await
                .expect("an exchange stalled")
                .expect("an exchange failed");
        }
        let rows = m.status().await;
        assert_eq!(rows.iter().map(|r| r.handled).sum::<u64>(), 20, "{rows:?}");
        assert!(rows.iter().all(|r| r.restarts == 0), "{rows:?}");
        m.stop().await;
    }
}
