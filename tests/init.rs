//! `brood::init`: a subreaper reaps the orphans that land on it by pid, and leaves the
//! children it is told to keep to their own `Child::wait`. Its own test binary: reaping
//! orphans in a process reaps every unkept child of it.

use std::time::Duration;

use brood::{Command, Signum, Stdio, init, signal::Signal};

use tokio::io::AsyncReadExt;

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn orphans_are_reaped_by_pid_and_a_kept_child_keeps_its_exit_status() {
    init::set_child_subreaper().unwrap();
    assert!(init::is_child_subreaper().unwrap());
    let mut sigchld = Signal::new(Signum::CHLD).unwrap();
    // The kept child ends first with 5, while ten orphans of another shell land here.
    let mut kept = Command::new("sh").args(["-c", "exit 5"]).spawn().unwrap();
    let keep = kept.id().unwrap() as i32;
    let mut maker = Command::new("sh")
        .args([
            "-c",
            "for i in 1 2 3 4 5 6 7 8 9 10; do (sleep 0.05 & echo $!); done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pids = String::new();
    maker
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut pids)
        .await
        .unwrap();
    assert!(maker.wait().await.unwrap().success());
    let mut orphans: Vec<i32> = pids.lines().map(|l| l.parse().unwrap()).collect();
    orphans.sort();
    assert_eq!(orphans.len(), 10);
    let mut reaped = Vec::new();
    tokio::time::timeout(LIMIT, async {
        loop {
            let got = init::reap_orphans(|p| p == keep).unwrap();
            assert!(
                got.iter().all(|(p, exit)| *p != keep && exit.success()),
                "{got:?}"
            );
            reaped.extend(got.into_iter().map(|(p, _)| p));
            if orphans.iter().all(|p| reaped.contains(p)) {
                break;
            }
            sigchld.recv().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("orphans {orphans:?} not all reaped: {reaped:?}"));
    reaped.sort();
    assert_eq!(reaped, orphans);
    // The kept child was left alone: its own wait has its status.
    assert_eq!(kept.wait().await.unwrap().code(), Some(5));
    assert!(init::children().unwrap().is_empty());
}
