//! A server whose stderr goes away (a terminal closed, a FIFO or pipe whose reader left:
//! every write is EPIPE) keeps serving and stops cleanly: `brood cluster` and `brood cgi`.

#[path = "support/cluster.rs"]
mod support;

use brood::{Command, Signum, Stdio};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Starts `brood args..` with stderr on a pipe, reads up to the line with `needle`, then
/// closes the pipe's reading end. Returns the child and that line.
async fn start_then_close_stderr(args: &[&str], needle: &str) -> (brood::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_brood"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = timeout(LIMIT, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("exited early");
            if line.contains(needle) {
                return line;
            }
        }
    })
    .await
    .unwrap();
    drop(lines); // nobody reads stderr any more
    (child, line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_survives_its_stderr_going_away() {
    let dir = tempdir("stderr");
    let control = dir.0.join("ctl.sock");
    let args = [
        "cluster",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--builtin",
        "echo",
        "--control",
        control.to_str().unwrap(),
    ];
    let (mut child, line) = start_then_close_stderr(&args, "listening on").await;
    let addr = line.rsplit(' ').next().unwrap().to_string();
    let status = || async { timeout(LIMIT, brood::cluster::ctl(&control, "status")).await };
    // Wait for the workers, then make the master log a lot: a killed worker, a scale-up.
    let t = std::time::Instant::now();
    let pids = loop {
        let text = status().await.unwrap().unwrap();
        let pids: Vec<i32> = text
            .lines()
            .skip(2)
            .filter(|l| l.contains(" ready "))
            .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
            .collect();
        if pids.len() == 2 {
            break pids;
        }
        assert!(t.elapsed() < LIMIT);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    brood::kill(pids[0], Signum::KILL).unwrap();
    let answer = status().await.unwrap().unwrap();
    assert!(answer.contains("strategy"), "{answer}");
    assert!(status().await.unwrap().unwrap().contains("workers"));
    let _ = timeout(LIMIT, brood::cluster::ctl(&control, "scale 3")).await;
    for i in 0..20 {
        timeout(LIMIT, exchange(&addr, format!("x{i}").as_bytes()))
            .await
            .unwrap()
            .unwrap();
    }
    child.kill(Signum::TERM).unwrap();
    let exit = timeout(LIMIT, child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "master: {exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cgi_server_survives_its_stderr_going_away() {
    let dir = tempdir("stderr-cgi");
    let script = dir.0.join("hello.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'a line on stderr' >&2\nprintf 'Content-Type: text/plain\\r\\n\\r\\nhello\\n'\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let args = [
        "cgi",
        "--listen",
        "127.0.0.1:0",
        "--script",
        script.to_str().unwrap(),
    ];
    let (mut child, line) = start_then_close_stderr(&args, "listening on").await;
    let addr = line
        .split_whitespace()
        .nth(4)
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    for _ in 0..5 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        timeout(LIMIT, s.read_to_string(&mut resp))
            .await
            .unwrap()
            .unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.contains("\r\nhello\n"), "{resp}");
    }
    child.kill(Signum::TERM).unwrap();
    let exit = timeout(LIMIT, child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "cgi: {exit}");
}
