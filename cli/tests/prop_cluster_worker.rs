//! The cluster's worker protocol, model-checked through the real master: a worker (Python,
//! any language) writes an arbitrary byte sequence on its channel, and the master's state as
//! `brood ctl status` shows it matches a model of the protocol (`a`: one connection accepted,
//! `d`: one finished, never below zero; `r`, `P` and every other byte change no count), with
//! the master still answering and the worker never restarted. Few cases: each runs a master.
//! (The fuzz targets cover the parsers; this covers the master's reading of the bytes.)

use std::time::{Duration, Instant};

use brood::{Command, Stdio};
use proptest::prelude::*;
use tokio::io::{AsyncBufReadExt, BufReader};

const LIMIT: Duration = Duration::from_secs(30);

/// Writes the hex bytes of WORKER_BYTES on its channel, then waits for the master to close it.
const WORKER: &str = r#"
import os, socket
ch = socket.socket(fileno=int(os.environ["BROOD_CHANNEL_FD"]))
ch.sendall(bytes.fromhex(os.environ["WORKER_BYTES"]))
while True:
    b = ch.recv(4096)
    if not b:
        break
    if b"p" in b:
        ch.sendall(b"P")
"#;

/// `(handled, open)` after `bytes`, as the protocol says.
fn model(bytes: &[u8]) -> (u64, u64) {
    let (mut handled, mut open) = (0u64, 0u64);
    for &b in bytes {
        match b {
            b'a' => {
                handled += 1;
                open += 1;
            }
            b'd' => open = open.saturating_sub(1),
            _ => {}
        }
    }
    (handled, open)
}

/// One row of `status`: `(state, handled, open, restarts)`.
async fn rows(control: &std::path::Path) -> Vec<(String, u64, u64, u32)> {
    let text = tokio::time::timeout(LIMIT, brood::cluster::ctl(control, "status"))
        .await
        .expect("ctl status answered in time")
        .expect("ctl status");
    text.lines()
        .skip(2)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[2].to_string(),
                f[4].parse().unwrap(),
                f[5].parse().unwrap(),
                f[6].parse().unwrap(),
            )
        })
        .collect()
}

async fn check(bytes: Vec<u8>, tag: usize) {
    let dir = std::env::temp_dir().join(format!("brood-prop-cluster-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let control = dir.join("ctl.sock");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut master = Command::new(env!("CARGO_BIN_EXE_brood"))
        .args(["cluster", "--listen", "127.0.0.1:0", "--workers", "1"])
        .args(["--strategy", "shared", "--grace", "1", "--control"])
        .arg(&control)
        .args(["--", "python3", "-c", WORKER])
        .env("WORKER_BYTES", &hex)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The control socket exists once the master logs its address.
    let mut lines = BufReader::new(master.stderr.take().unwrap()).lines();
    tokio::time::timeout(LIMIT, async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.starts_with("brood cluster: listening on ") {
                return;
            }
        }
        panic!("master exited early");
    })
    .await
    .expect("master started");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let want = model(&bytes);
    let start = Instant::now();
    loop {
        let r = rows(&control).await;
        assert_eq!(r.len(), 1, "one worker: {r:?}");
        let (state, handled, open, restarts) = r[0].clone();
        assert_eq!(state, "ready");
        assert_eq!(restarts, 0, "the worker was restarted");
        assert!(
            handled <= want.0,
            "handled {handled} > {} for {bytes:?}",
            want.0
        );
        if (handled, open) == want {
            break;
        }
        assert!(
            start.elapsed() < LIMIT,
            "master shows handled {handled} open {open}, model {want:?}, bytes {bytes:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    master.kill(brood::Signum::TERM).unwrap();
    let exit = tokio::time::timeout(LIMIT, master.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "master: {exit}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn protocol_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            4 => Just(b'a'),
            4 => Just(b'd'),
            1 => Just(b'r'),
            1 => Just(b'P'),
            1 => Just(b'c'),
            1 => Just(b'p'),
            1 => any::<u8>(),
        ],
        0..300,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    #[test]
    fn the_master_counts_worker_bytes_as_the_protocol_says(bytes in protocol_bytes()) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let tag = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(check(bytes, tag));
    }
}
