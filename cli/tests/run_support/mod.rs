//! Helpers shared by the `brood run` tests (`run_*.rs`): the built binary, bounded waits,
//! and what /proc says about a process.

#![allow(
    dead_code,
    reason = "shared by several test binaries; each uses a part"
)]

use std::time::{Duration, Instant};

use brood::{Command, Output};
use tokio::io::AsyncReadExt;

pub const BROOD: &str = env!("CARGO_BIN_EXE_brood");
/// The bound for anything that should take a moment; only a failure waits this long.
pub const LIMIT: Duration = Duration::from_secs(30);

pub async fn bounded<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    bounded_by(LIMIT, what, fut).await
}

pub async fn bounded_by<F: std::future::Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done after {limit:?}"))
}

pub fn run_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(BROOD);
    cmd.arg("run").args(args);
    cmd
}

/// `brood run ARGS` with stdin ignored and stdout/stderr captured.
pub async fn run(args: &[&str]) -> Output {
    bounded(&format!("brood run {args:?}"), run_cmd(args).output())
        .await
        .unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The exit code brood itself gave (it is never killed in these tests).
pub fn code(out: &Output) -> i64 {
    assert_eq!(
        out.exit.signal,
        0,
        "brood itself was killed: {}; stderr: {}",
        out.exit,
        text(&out.stderr)
    );
    out.exit.status
}

/// Reads one line (without the newline) from a pipe, byte by byte so nothing after it is
/// consumed.
pub async fn read_line(r: &mut (impl AsyncReadExt + Unpin), what: &str) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8];
    loop {
        let n = bounded(what, r.read(&mut byte)).await.unwrap();
        assert!(n > 0, "{what}: EOF after {:?}", text(&line));
        if byte[0] == b'\n' {
            return text(&line);
        }
        line.push(byte[0]);
    }
}

/// The fields of /proc/PID/stat after the command name: state, ppid, pgrp, session, ...
/// `None` once the process is gone.
pub fn stat(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        stat[stat.rfind(')')? + 2..]
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    )
}

/// Whether `pid` still runs (exists and is not a zombie).
pub fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|f| f[0] != "Z" && f[0] != "X")
}

/// Polls until `pid` no longer runs; panics after `LIMIT`.
pub fn wait_dead(pid: i32, what: &str) {
    let start = Instant::now();
    while alive(pid) {
        assert!(start.elapsed() < LIMIT, "{what}: pid {pid} still runs");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills `pid` when dropped (a process a test started through brood and must not leave).
pub struct KillOnDrop(pub i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = brood::kill(self.0, brood::Signum::KILL);
    }
}

/// The `Uid:`, `Gid:` and `Groups:` lines of a /proc/PID/status text, as numbers.
pub fn creds(status: &str) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let field = |name: &str| -> Vec<u32> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {status}"));
        line.split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    let mut groups = field("Groups:");
    groups.sort();
    (field("Uid:"), field("Gid:"), groups)
}
