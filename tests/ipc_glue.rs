//! Handles stay with the message they were sent with, even when the kernel glues earlier
//! writes in front of the one that carried them into a single read.

use std::os::fd::AsFd;
use std::time::Duration;

use brood::ipc::{Channel, Handle};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn handles_stay_with_their_message_when_reads_glue_writes() {
    let (a, mut b) = Channel::pair().unwrap();
    let file = std::fs::File::open("/dev/null").unwrap();
    // All three are in the socket before the first read, which then gets lines 1 and 2 (the
    // kernel stops after the write with fds) in one recvmsg.
    a.send_msg(&1u32, &[]).await.unwrap();
    a.send_msg(&2u32, &[file.as_fd()]).await.unwrap();
    a.send_msg(&3u32, &[]).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let (n, handles): (u32, Vec<Handle>) = timeout(LIMIT, b.recv_msg())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push((n, handles.len()));
    }
    assert_eq!(got, [(1, 0), (2, 1), (3, 0)]);
}

#[tokio::test]
async fn a_long_message_with_handles_after_short_ones_keeps_them() {
    let (a, mut b) = Channel::pair().unwrap();
    let file = std::fs::File::open("/dev/null").unwrap();
    let long = "x".repeat(300 * 1024); // split by the kernel into several pieces
    a.send_msg(&"short", &[]).await.unwrap();
    let sender = a.sender();
    let send = tokio::spawn(async move {
        sender.send_msg(&long, &[file.as_fd()]).await.unwrap();
        sender.send_msg(&"after", &[]).await.unwrap();
    });
    let mut got = Vec::new();
    for _ in 0..3 {
        let (s, handles): (String, Vec<Handle>) = timeout(LIMIT, b.recv_msg())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push((s.len(), handles.len()));
    }
    timeout(LIMIT, send).await.unwrap().unwrap();
    assert_eq!(got, [(5, 0), (300 * 1024, 1), (5, 0)]);
}
