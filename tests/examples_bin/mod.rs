//! Finds the example programs the tests run, building them first (once per test binary)
//! with the cargo that runs the tests, so `cargo test --test NAME` works on its own.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The examples the I/O tests run.
const NEEDED: &[&str] = &[
    "tick",
    "cgi",
    "proc_streams",
    "proc_streams_child",
    "pipe_echo_server",
    "detach",
];

/// The path of example `name`, built.
pub fn example(name: &str) -> PathBuf {
    assert!(NEEDED.contains(&name), "add {name} to NEEDED");
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        // target/<profile>/deps/<this test> -> target/<profile>
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
        let mut cmd =
            std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .arg("build")
            .arg("-q");
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        for ex in NEEDED {
            cmd.args(["--example", ex]);
        }
        let status = cmd.status().expect("run cargo build for the examples");
        assert!(status.success(), "cargo build of the examples failed");
        profile_dir.join("examples")
    });
    dir.join(name)
}
