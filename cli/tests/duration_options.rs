//! Duration options out of range are usage errors (exit 125 with a sentence), never a panic
//! (exit 101) or a server that panics on every request later.

use std::process::Command;

fn brood(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_brood"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn huge_or_meaningless_durations_are_usage_errors() {
    let dir = std::env::temp_dir();
    let root = dir.to_str().unwrap();
    for args in [
        &[
            "cluster",
            "--listen",
            "127.0.0.1:0",
            "--grace",
            "1e30",
            "--builtin",
            "echo",
        ][..],
        &[
            "cluster",
            "--listen",
            "127.0.0.1:0",
            "--kill-after",
            "1e300",
            "--builtin",
            "echo",
        ],
        &[
            "cluster",
            "--listen",
            "127.0.0.1:0",
            "--heartbeat-timeout",
            "0",
            "--builtin",
            "echo",
        ],
        &[
            "cgi",
            "--listen",
            "127.0.0.1:0",
            "--root",
            root,
            "--timeout",
            "1e19",
        ],
        &["run", "--timeout", "1e300", "--", "true"],
        &["run", "--timeout", "99999999999999999999", "--", "true"],
    ] {
        let (code, err) = brood(args);
        // 125, a usage error, for run, cluster and cgi alike.
        assert_eq!(code, 125, "{args:?}: {err}");
        assert!(
            err.contains("takes seconds")
                || err.contains("not a duration")
                || err.contains("longer than brood takes"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
