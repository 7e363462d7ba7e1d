//! Many spawns leave nothing behind: 20,000 runs of /bin/true, 64 in flight, and the fd
//! count and zombie count of this process are the same afterwards. Its own binary, so no
//! other test's fds or children are counted.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use brood::Command;
use common::*;

const SPAWNS: usize = 20_000;
const IN_FLIGHT: usize = 64;
/// The whole run must finish within this: it takes 10-12 s (about 1,800 spawns/s, debug
/// build) on 2 cores shared with other builds.
const BUDGET: Duration = Duration::from_secs(60);

#[test]
fn twenty_thousand_spawns_leave_fd_and_zombie_counts_unchanged() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Warm up: the runtime's fds, brood's lazy statics, the reaper.
        Command::new("/bin/true").status().await.unwrap();
        warm_up_reaper();
    });
    let fds_before = brood::open_fd_count().unwrap();
    let fd_list = own_fds();
    let zombies_before = zombies();
    assert!(zombies_before.is_empty(), "{zombies_before:?}");

    let start = Instant::now();
    rt.block_on(async {
        let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..SPAWNS {
            let permit = slots.clone().acquire_owned().await.unwrap();
            tasks.spawn(async move {
                let _permit = permit;
                let mut child = Command::new("/bin/true").spawn().unwrap();
                if i % 10 == 9 {
                    // Every tenth is dropped unwaited: the background reaper's job.
                    drop(child);
                    return;
                }
                let exit = child.wait().await.unwrap();
                assert!(exit.success(), "spawn {i}: {exit}");
            });
            while let Some(done) = tasks.try_join_next() {
                done.unwrap();
            }
            assert!(start.elapsed() < BUDGET, "only {i} spawns after {BUDGET:?}");
        }
        tokio::time::timeout(BUDGET, async {
            while let Some(done) = tasks.join_next().await {
                done.unwrap();
            }
        })
        .await
        .expect("the last spawns did not finish");
    });
    let took = start.elapsed();
    eprintln!(
        "{SPAWNS} spawns, {IN_FLIGHT} in flight: {took:?} ({:.0}/s)",
        SPAWNS as f64 / took.as_secs_f64()
    );

    // The dropped ones are reaped in the background: wait for that (no event tells us), then
    // count.
    let start = Instant::now();
    while !children().is_empty() && start.elapsed() < LIMIT {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left = children();
    assert!(
        left.is_empty(),
        "{} children never reaped, e.g. {:?}",
        left.len(),
        &left[..left.len().min(5)]
    );
    assert_eq!(zombies(), Vec::<i32>::new());
    assert_eq!(
        brood::open_fd_count().unwrap(),
        fds_before,
        "fds leaked: before {fd_list:?}, after {:?}",
        own_fds()
    );
}
