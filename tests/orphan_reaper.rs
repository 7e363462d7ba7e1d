//! `brood::init::OrphanReaper`, the background reaper of `brood cluster` and `brood cgi`:
//! orphans are reaped as they end, while every `Child` of the process still gets its own
//! exit status. Its own test binary: it reaps every unwatched child of its process.

use std::time::{Duration, Instant};

use brood::{Command, Stdio, init::OrphanReaper};
use tokio::io::AsyncReadExt;

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_reaped_while_every_child_keeps_its_own_exit_status() {
    let reaper = OrphanReaper::start().unwrap();
    // 20 children, each exiting with its own code while leaving 5 orphans behind, all at
    // once: a reaper that took a child's status would make its wait fail with ECHILD. (The
    // subshell execs echo, which never reaps: each `true` lands here, ended or not.)
    let mut tasks = Vec::new();
    for code in 0..20 {
        tasks.push(tokio::spawn(async move {
            let script =
                format!("for i in 1 2 3 4 5; do (true & exec /bin/echo $!) ; done; exit {code}");
            let mut child = Command::new("sh")
                .args(["-c", &script])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut pids = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut pids)
                .await
                .unwrap();
            let exit = child.wait().await.unwrap();
            assert_eq!(exit.code(), Some(code));
            pids.lines()
                .map(|l| l.parse::<i32>().unwrap())
                .collect::<Vec<_>>()
        }));
    }
    let mut orphans = Vec::new();
    for t in tasks {
        orphans.extend(t.await.unwrap());
    }
    assert_eq!(orphans.len(), 100);
    // All of them are reaped: none is left under this process, zombie or not.
    let start = Instant::now();
    loop {
        let zombies: Vec<i32> = brood::init::children()
            .unwrap()
            .into_iter()
            .filter(|p| orphans.contains(p))
            .collect();
        if zombies.is_empty() && reaper.reaped() >= 100 {
            break;
        }
        assert!(
            start.elapsed() < LIMIT,
            "left: {zombies:?}, reaped {}",
            reaper.reaped()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(reaper.reaped(), 100);
}
