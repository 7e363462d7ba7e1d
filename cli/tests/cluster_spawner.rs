//! `PR_SET_PDEATHSIG` fires when the thread that spawned a child exits. A `Cluster` whose
//! first poll ran on a short-lived thread must not lose its workers when that thread ends:
//! workers are spawned from a thread that lives as long as the process.
//! (Its own test binary: the master here is this process, and it watches SIGTERM.)

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

use brood::cluster::Cluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// (id, pid, state) of each worker.
async fn rows(ctl: &std::path::Path) -> Vec<(String, u32, String)> {
    let text = timeout(LIMIT, brood::cluster::ctl(ctl, "status"))
        .await
        .unwrap()
        .unwrap();
    text.lines()
        .skip(2)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].to_string(),
                f[1].parse().unwrap_or(0),
                f[2].to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    clippy::async_yields_async,
    reason = "the thread's block_on returns the master's JoinHandle"
)]
async fn workers_survive_the_exit_of_the_thread_that_started_them() {
    let dir = std::env::temp_dir().join(format!("brood-spawner-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ctl = dir.join("ctl.sock");
    let cluster = Cluster::builder()
        .listen("127.0.0.1:0")
        .workers(2)
        .program(
            env!("CARGO_BIN_EXE_brood"),
            ["cluster", "--listen", "127.0.0.1:0", "--builtin", "echo"],
        )
        .expect_ready(true)
        .grace(Duration::from_secs(5))
        .control(&ctl)
        .build()
        .unwrap();
    let addr = cluster.local_addr().to_string();
    // A thread polls the master once (that starts the workers), hands it to the runtime
    // and ends.
    let handle = tokio::runtime::Handle::current();
    let (tid, master) = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let master = handle.block_on(async move {
            // Returns the master's JoinHandle, awaited by the test below.
            let mut run = Box::pin(cluster.run());
            std::future::poll_fn(|cx| {
                assert!(run.as_mut().poll(cx).is_pending());
                Poll::Ready(())
            })
            .await;
            tokio::spawn(run)
        });
        (tid, master)
    })
    .join()
    .unwrap();
    // The thread is fully gone (its parent-death signals, if any, were sent).
    let t = Instant::now();
    while std::path::Path::new(&format!("/proc/self/task/{tid}")).exists() {
        assert!(t.elapsed() < LIMIT);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t = Instant::now();
    let first = loop {
        let r = rows(&ctl).await;
        if r.len() == 2 && r.iter().all(|(_, _, s)| s == "ready") {
            break r;
        }
        assert!(t.elapsed() < LIMIT, "{r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Both workers serve (round-robin alternates) and are the ones first started.
    for i in 0..10 {
        let msg = format!("hello {i}");
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        timeout(LIMIT, s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg.as_bytes());
    }
    let after = rows(&ctl).await;
    assert_eq!(after, first, "workers were replaced");
    let ids: Vec<&str> = first.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        ["1", "2"],
        "the first workers were replaced: {first:?}"
    );
    for (_, pid, _) in &first {
        assert!(alive(*pid), "worker {pid} died with the spawning thread");
    }
    // SAFETY: kill with our own pid.
    unsafe { libc::kill(std::process::id() as i32, libc::SIGTERM) };
    timeout(LIMIT, master).await.unwrap().unwrap().unwrap();
    for (_, pid, _) in &first {
        assert!(!alive(*pid), "worker {pid} outlived the master");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
