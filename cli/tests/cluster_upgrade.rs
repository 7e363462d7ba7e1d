//! Hot upgrade of a cluster master (`brood ctl PATH upgrade`, `SIGUSR2`): under a steady load
//! of new connections no connection fails, the listening port never closes, every pid
//! changes; a new master that cannot start leaves the old one serving.

#[path = "support/cluster.rs"]
mod support;

use std::time::{Duration, Instant};

use brood::Signum;
use support::*;
use tokio::time::timeout;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

async fn status(m: &Master) -> serde_json::Value {
    json(&m.ctl("status --json").await)
}

fn worker_pids(s: &serde_json::Value) -> Vec<u32> {
    s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_u64().unwrap() as u32)
        .collect()
}

fn all_ready(s: &serde_json::Value, n: usize) -> bool {
    let w = s["workers"].as_array().unwrap();
    w.len() == n && w.iter().all(|w| w["state"] == "ready")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_under_load_fails_no_connection_and_changes_every_pid() {
    upgrade_under_load("upgrade", "round-robin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_of_a_shared_listener_cluster_under_load_fails_no_connection() {
    upgrade_under_load("upgrade-shared", "shared").await;
}

async fn upgrade_under_load(tag: &str, strategy: &str) {
    let dir = tempdir(&format!("{tag}-notify"));
    let notify_path = dir.0.join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).unwrap();
    let env = format!("NOTIFY_SOCKET={}", notify_path.display());
    let mut m = Master::launch(
        tag,
        &["env", &env],
        &[
            "--workers",
            "2",
            "--grace",
            "5",
            "--strategy",
            strategy,
            "--builtin",
            "echo",
        ],
    )
    .await;
    m.wait_for(
        |r| r.len() == 2 && r.iter().all(|r| r.state == "ready"),
        "ready",
    )
    .await;
    let old = status(&m).await;
    let old_master = old["master"]["pid"].as_u64().unwrap() as u32;
    assert_eq!(old_master, m.child.id().unwrap());
    assert_eq!(old["master"]["generation"], 1);
    let old_workers = worker_pids(&old);

    // A steady load of new connections through the whole upgrade.
    let (stop_load, load) = load(m.addr.clone(), 4);
    // Let the load get going before the upgrade.
    let warm = Instant::now();
    while m.status().await.iter().map(|r| r.handled).sum::<u64>() < 50 {
        assert!(warm.elapsed() < LIMIT, "no load");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = timeout(
        LIMIT,
        brood::Command::new(env!("CARGO_BIN_EXE_brood"))
            .arg("ctl")
            .arg(&m.control)
            .arg("upgrade")
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.exit.success(), "{answer}");
    let new_master: u32 = answer
        .strip_prefix("upgraded: new master ")
        .unwrap_or_else(|| panic!("{answer}"))
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new_master, old_master);
    // The old master drains and exits cleanly, its workers with it.
    let exit = timeout(LIMIT, m.child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "old master: {exit}");
    for pid in &old_workers {
        until("the old workers to exit", || !alive(*pid)).await;
    }
    // Load on the new master alone for a while.
    let handed = |s: &serde_json::Value| -> u64 {
        s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["connections"].as_u64().unwrap())
            .sum()
    };
    let start = Instant::now();
    let new = loop {
        let s = status(&m).await;
        if s["master"]["pid"] == new_master && all_ready(&s, 2) && handed(&s) >= 50 {
            break s;
        }
        assert!(start.elapsed() < LIMIT, "new master not serving: {s}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    stop_load.send(true).unwrap();
    let (ok, failed) = timeout(LIMIT, load).await.unwrap().unwrap();
    eprintln!("upgrade under load ({strategy}): {ok} exchanges ok, {failed} failed");
    assert_eq!(failed, 0, "{ok} ok");
    assert_eq!(new["master"]["generation"], 2);
    let new_workers = worker_pids(&new);
    for pid in &new_workers {
        assert!(
            !old_workers.contains(pid),
            "{old_workers:?} vs {new_workers:?}"
        );
    }
    // systemd was told the new main pid.
    // (The masters also send READY/STATUS lines there; the MAINPID one is what counts.)
    let mut buf = [0u8; 256];
    let mainpid = timeout(LIMIT, async {
        loop {
            let n = notify.recv(&mut buf).await.unwrap();
            let text = std::str::from_utf8(&buf[..n]).unwrap().to_string();
            if text.starts_with("MAINPID=") {
                return text;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(mainpid, format!("MAINPID={new_master}\n"));
    // The new master stops like any master; then nothing is left.
    brood::kill(new_master as i32, Signum::TERM).unwrap();
    until("the new master to exit", || !alive(new_master)).await;
    for pid in &new_workers {
        until("the new workers to exit", || !alive(*pid)).await;
    }
    assert!(
        !m.control.exists(),
        "the new master removed the control socket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_a_binary_that_exits_at_once_leaves_the_old_master_serving() {
    let dir = tempdir("upgrade-bad-bin");
    let bad = dir.0.join("bad-brood");
    std::fs::write(&bad, "#!/bin/sh\necho 'bad build' >&2\nexit 3\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o755)).unwrap();
    let m = Master::start(
        "upgrade-bad",
        &[
            "--workers",
            "2",
            "--upgrade-binary",
            bad.to_str().unwrap(),
            "--builtin",
            "echo",
        ],
    )
    .await;
    let before = status(&m).await;
    // Through ctl: answered with the reason, exit 1.
    let answer = m.ctl("upgrade").await;
    assert!(
        answer.starts_with("error: upgrade failed: new master")
            && answer.contains("exited with status 3 before it was ready")
            && answer.contains("the old master keeps serving"),
        "{answer}"
    );
    // Through SIGUSR2: logged.
    brood::kill(m.child.id().unwrap() as i32, Signum::USR2).unwrap();
    m.wait_log("upgrade failed", 2).await;
    let after = status(&m).await;
    assert_eq!(after["master"]["pid"], before["master"]["pid"]);
    assert_eq!(after["master"]["generation"], 1);
    assert_eq!(after["master"]["upgrading_to"], serde_json::Value::Null);
    assert_eq!(worker_pids(&after), worker_pids(&before));
    for i in 0..10 {
        exchange(&m.addr, format!("still {i}").as_bytes())
            .await
            .unwrap();
    }
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_master_not_ready_in_time_is_killed_and_the_old_one_keeps_serving() {
    let dir = tempdir("upgrade-slow-bin");
    let slow = dir.0.join("slow-brood");
    // A new master that never gets ready: it holds what it was given and sleeps.
    std::fs::write(&slow, "#!/bin/sh\nexec sleep 600\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    let m = Master::start(
        "upgrade-slow",
        &[
            "--workers",
            "1",
            "--upgrade-binary",
            slow.to_str().unwrap(),
            "--upgrade-timeout",
            "1",
            "--builtin",
            "echo",
        ],
    )
    .await;
    let answer = m.ctl("upgrade").await;
    assert!(
        answer.contains("not ready within 1 s; killed it"),
        "{answer}"
    );
    let s = status(&m).await;
    assert_eq!(s["master"]["pid"], m.child.id().unwrap());
    exchange(&m.addr, b"still here").await.unwrap();
    m.stop().await;
}
