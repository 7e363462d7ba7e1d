//! Workers' output collected by the master: each line in the master's log, tagged with the
//! worker's id and pid; a worker printing 100 MB leaves the master small.

#[path = "support/cluster.rs"]
mod support;

use brood::{Command, Signum, Stdio};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::timeout;

/// 100 MB of 1000-byte lines, one line of 1 MiB, a line on stderr, then waits for the
/// master to retire it.
const PY_FLOOD: &str = r#"
import socket, sys
out = sys.stdout.buffer
block = (b"x" * 999 + b"\n") * 1000
for i in range(100):
    out.write(block)
out.write(b"y" * (1 << 20) + b"\n")
out.write(b"done\n")
out.flush()
sys.stderr.write("to stderr\n")
sys.stderr.flush()
ch = socket.socket(fileno=3)
while ch.recv(64):
    pass
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_printing_100_mb_is_logged_line_by_line_with_its_id_and_pid_and_the_master_stays_small()
 {
    let dir = tempdir("output-flood");
    let control = dir.0.join("ctl.sock");
    // The default --worker-output is prefix.
    let mut master = Command::new(env!("CARGO_BIN_EXE_brood"))
        .arg("cluster")
        .args(["--listen", "127.0.0.1:0", "--control"])
        .arg(&control)
        .args(["--workers", "1", "--restart", "never", "--grace", "5"])
        .args(["--", "python3", "-c", PY_FLOOD])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mpid = master.id().unwrap();
    let mut lines = BufReader::new(master.stderr.take().unwrap()).lines();
    let (mut x_lines, mut other) = (0u64, Vec::new());
    let mut cut_line = None;
    let mut tag = None::<String>;
    let mut peak = 0;
    let result = timeout(std::time::Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("worker started") {
                // The worker's pid, from the master's own log line.
                let pid = line
                    .split("pid=")
                    .nth(1)
                    .unwrap()
                    .split_whitespace()
                    .next()
                    .unwrap();
                tag = Some(format!("[worker 1 pid {pid}]"));
            }
            if line.ends_with(&"x".repeat(999)) {
                let t = tag.as_deref().expect("the start is logged first");
                assert!(line.contains(&format!("{t} xxx")), "untagged: {line:.200}");
                x_lines += 1;
                if x_lines % 10_000 == 0 {
                    peak = peak.max(rss_kib(mpid).0);
                }
            } else if line.contains("[line cut:") {
                cut_line = Some(line);
            } else {
                let done = line.contains(" done");
                other.push(line);
                if done {
                    break;
                }
            }
        }
    })
    .await;
    peak = peak.max(rss_kib(mpid).0);
    assert!(
        result.is_ok(),
        "timed out after {x_lines} lines; others: {other:?}"
    );
    eprintln!("100 MB of worker output: master VmHWM {peak} KiB");
    assert_eq!(x_lines, 100_000);
    let tag = tag.unwrap();
    let cut = cut_line.expect("the 1 MiB line is logged, cut");
    let kept = cut.split(|c| c != 'y').map(str::len).max().unwrap();
    assert_eq!(kept, 16 * 1024, "cut at 16 KiB");
    assert!(
        cut.contains(&format!("{tag} yyy"))
            && cut.ends_with(&format!("[line cut: {} more bytes]", (1 << 20) - 16 * 1024)),
        "{:.100}…{}",
        cut,
        &cut[cut.len() - 60..]
    );
    assert!(
        other.iter().any(|l| l.contains(&format!("{tag} done"))),
        "{other:?}"
    );
    assert!(peak < 48 * 1024, "master RSS peaked at {peak} KiB");
    // stderr too, tagged as such.
    let stderr_tag = format!("{} stderr] to stderr", tag.trim_end_matches(']'));
    // (Both pipes are read at once: it may have come before the end of stdout.)
    let seen = other.iter().any(|l| l.contains(&stderr_tag));
    let found = timeout(LIMIT, async {
        if seen {
            return true;
        }
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(&stderr_tag) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "no {stderr_tag:?}");
    master.kill(Signum::TERM).unwrap();
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let exit = timeout(LIMIT, master.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "master: {exit}");
    drain.await.unwrap();
}

/// Prints a line, then marks that it did with a file, then waits to be retired.
const PY_HELLO: &str = r#"
import socket, sys
print("hello from the worker", flush=True)
open(sys.argv[1], "w").close()
ch = socket.socket(fileno=3)
while ch.recv(64):
    pass
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_output_null_drops_it_and_inherit_leaves_it_untagged() {
    for mode in ["null", "inherit"] {
        let dir = tempdir(&format!("output-{mode}"));
        let mark = dir.0.join("printed");
        let mut master = Command::new(env!("CARGO_BIN_EXE_brood"))
            .arg("cluster")
            .args([
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "1",
                "--worker-output",
                mode,
            ])
            .args(["--", "python3", "-c", PY_HELLO])
            .arg(&mark)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let out = master.stdout.take().unwrap();
        let err = master.stderr.take().unwrap();
        let read_all = |pipe: brood::ChildPipe| {
            tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                let mut all = Vec::new();
                while let Ok(Some(l)) = lines.next_line().await {
                    all.push(l);
                }
                all
            })
        };
        let (out, err) = (read_all(out), read_all(err));
        until("the worker to print", || mark.exists()).await;
        master.kill(Signum::TERM).unwrap();
        let exit = timeout(LIMIT, master.wait()).await.unwrap().unwrap();
        assert!(exit.success(), "{mode}: master {exit}");
        let (out, err) = (out.await.unwrap(), err.await.unwrap());
        let everything: Vec<&String> = out.iter().chain(err.iter()).collect();
        if mode == "null" {
            assert!(
                !everything
                    .iter()
                    .any(|l| l.contains("hello from the worker")),
                "{everything:?}"
            );
        } else {
            assert_eq!(
                out.iter().filter(|l| *l == "hello from the worker").count(),
                1,
                "on the master's own stdout, untagged: {out:?}"
            );
            assert!(!err.iter().any(|l| l.contains("[worker ")), "{err:?}");
        }
    }
}
