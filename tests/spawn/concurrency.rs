//! Many spawns at once: threads, and counts that must not move.

use super::*;

// ---------------------------------------------------------------------------------------
// Concurrency

#[test]
fn basic_sixteen_threads_spawning_at_once() {
    let _g = shared_blocking();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let rt = rt();
                barrier.wait();
                rt.block_on(async {
                    for i in 0..10 {
                        // Each child echoes its own words through its own pipes: crossed
                        // wires between concurrent spawns would show.
                        let words = format!("thread-{t}-child-{i}");
                        let mut child = Command::new("sh")
                            .args(["-c", "read x; echo \"$x $1\"; echo \"$1\" >&3", "sh"])
                            .arg(&words)
                            .stdin(Stdio::piped())
                            .stdout(Stdio::piped())
                            .stdio(3, Stdio::pipe_writable())
                            .spawn()
                            .unwrap();
                        let mut stdin = child.stdin.take().unwrap();
                        stdin.write_all(format!("{t}\n").as_bytes()).await.unwrap();
                        drop(stdin);
                        let mut three = child.take_pipe(3).unwrap();
                        let mut t3 = String::new();
                        bounded("read 3", three.read_to_string(&mut t3))
                            .await
                            .unwrap();
                        let out = bounded("output", child.wait_with_output()).await.unwrap();
                        assert!(out.exit.success());
                        assert_eq!(
                            String::from_utf8(out.stdout).unwrap(),
                            format!("{t} {words}\n")
                        );
                        assert_eq!(t3, format!("{words}\n"));
                    }
                });
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a spawning thread failed");
    }
}

/// A smaller `spawn_stress`, here so that it runs in the fallback without pidfds too.
#[test]
fn basic_many_spawns_leave_fd_and_zombie_counts_unchanged() {
    let _g = exclusive_blocking();
    let rt = rt();
    rt.block_on(async {
        // Warm up brood's lazy parts (the reaper thread and its epoll fd).
        Command::new("true").status().await.unwrap();
        warm_up_reaper();
    });
    let fds = brood::open_fd_count().unwrap();
    let fd_list = own_fds();
    rt.block_on(async {
        bounded("1000 spawns", async {
            let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..1000 {
                let permit = slots.clone().acquire_owned().await.unwrap();
                tasks.spawn(async move {
                    let _permit = permit;
                    let mut child = Command::new("/bin/true").spawn().unwrap();
                    if i % 10 != 9 {
                        assert!(child.wait().await.unwrap().success());
                    } // else dropped running: reaped in the background
                });
            }
            while let Some(t) = tasks.join_next().await {
                t.unwrap();
            }
        })
        .await;
    });
    poll_until("dropped children reaped", || children().is_empty());
    assert_eq!(
        brood::open_fd_count().unwrap(),
        fds,
        "fds leaked: before {fd_list:?}, after {:?}",
        own_fds()
    );
}
