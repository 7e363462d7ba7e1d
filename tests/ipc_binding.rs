//! A handle belongs to the message that carried it. Linux merges the bytes of earlier
//! fd-less writes into the read that brings a later write's fds; these tests make that
//! happen (a sender running ahead of a slow reader) and check every handle's identity: each
//! is a pipe whose writer wrote "message id/handle index" into it before sending it.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use brood::ipc::{Channel, Handle};
use brood::{Command, Stdio};
use serde::{Deserialize, Serialize};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);
const MODE: &str = "BROOD_IPC_BINDING_CHILD";
const MESSAGES: u64 = 10_000;

#[derive(Serialize, Deserialize, Debug)]
struct Msg {
    id: u64,
    handles: usize,
    pad: String,
}

/// xorshift64: the plan of messages needs no crate.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A pipe's read end whose write end has written `text` and is closed.
fn pipe_saying(text: &str) -> OwnedFd {
    let (r, mut w) = kernel_pipe();
    std::io::Write::write_all(&mut w, text.as_bytes()).unwrap();
    r.into()
}

/// The brood sender, run as a child of the test: random messages with 0-3 handles each,
/// some large (several reads and partial writes), as fast as the channel takes them.
#[test]
fn sender_side() {
    let Ok(seed) = std::env::var(MODE) else {
        return;
    };
    let seed: u64 = seed.parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let ch = Channel::from_env().unwrap();
        let mut rng = Rng::new(seed);
        for id in 0..MESSAGES {
            let handles = rng.below(4) as usize;
            let pad = if rng.below(200) == 0 {
                rng.below(200_000)
            } else {
                rng.below(64)
            };
            let fds: Vec<OwnedFd> = (0..handles)
                .map(|i| pipe_saying(&format!("{id}/{i}")))
                .collect();
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            let msg = Msg {
                id,
                handles,
                pad: "x".repeat(pad as usize),
            };
            ch.send_msg(&msg, &borrowed).await.unwrap();
        }
    });
}

/// The same plan from Python, with plain `socket.send_fds` (one `sendmsg` per message).
const PYTHON_SENDER: &str = r#"
import json, os, random, socket, sys
s = socket.socket(fileno=3)
s.setblocking(True)
rng = random.Random(int(sys.argv[1]))
for i in range(int(sys.argv[2])):
    k = rng.randrange(4)
    pad = "x" * (rng.randrange(200000) if rng.randrange(200) == 0 else rng.randrange(64))
    line = (json.dumps({"id": i, "handles": k, "pad": pad}) + "\n").encode()
    fds = []
    for j in range(k):
        r, w = os.pipe()
        os.write(w, f"{i}/{j}".encode())
        os.close(w)
        fds.append(r)
    if fds:
        n = socket.send_fds(s, [line], fds)
        if n < len(line):
            s.sendall(line[n:])
        for r in fds:
            os.close(r)
    else:
        s.sendall(line)
s.close()
"#;

/// Receives `MESSAGES` messages and checks that each has exactly its own handles.
async fn receive_and_check(mut ch: Channel, who: &str) {
    let mut with_handles = 0;
    for want in 0..MESSAGES {
        let (msg, handles): (Msg, Vec<Handle>) = timeout(LIMIT, ch.recv_msg())
            .await
            .unwrap_or_else(|_| panic!("{who}: message {want} did not come"))
            .unwrap_or_else(|e| panic!("{who}: message {want}: {e}"))
            .unwrap_or_else(|| panic!("{who}: channel closed before message {want}"));
        assert_eq!(msg.id, want, "{who}: messages in order");
        assert_eq!(
            handles.len(),
            msg.handles,
            "{who}: message {want} got {} handles, was sent {}",
            handles.len(),
            msg.handles
        );
        for (i, h) in handles.into_iter().enumerate() {
            let mut f: std::fs::File = h.accept().unwrap();
            let mut said = String::new();
            f.read_to_string(&mut said).unwrap();
            assert_eq!(said, format!("{want}/{i}"), "{who}: handle {i} of {want}");
        }
        with_handles += (msg.handles > 0) as u32;
    }
    assert!(with_handles > 1000, "{who}: the plan had handles");
    let end = timeout(LIMIT, ch.recv_msg::<Msg>()).await.unwrap().unwrap();
    assert!(end.is_none(), "{who}: nothing after the last message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_random_messages_from_brood_each_get_their_own_handles() {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "sender_side", "--nocapture", "--test-threads=1"])
        .env(MODE, "7")
        .stdio(1, Stdio::ignore())
        .stdio(3, Stdio::ipc())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ch = child.take_channel(3).unwrap();
    receive_and_check(ch, "brood sender").await;
    let exit = timeout(LIMIT, child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "sender {exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_random_messages_from_python_send_fds_each_get_their_own_handles() {
    let mut child = Command::new("python3")
        .args(["-c", PYTHON_SENDER, "11", &MESSAGES.to_string()])
        .stdio(3, Stdio::ipc())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ch = child.take_channel(3).unwrap();
    receive_and_check(ch, "python sender").await;
    let exit = timeout(LIMIT, child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "python sender {exit}");
}

#[tokio::test]
async fn an_earlier_message_without_handles_does_not_take_the_next_ones() {
    // Both writes are queued before the first read, so the kernel gives them in one read.
    let (a, mut b) = Channel::pair().unwrap();
    a.send_msg(&"first", &[]).await.unwrap();
    let fd = pipe_saying("second's");
    a.send_msg(&"second", &[fd.as_fd()]).await.unwrap();
    let (first, hs): (String, Vec<Handle>) = b.recv_msg().await.unwrap().unwrap();
    assert_eq!((first.as_str(), hs.len()), ("first", 0));
    let (second, hs): (String, Vec<Handle>) = b.recv_msg().await.unwrap().unwrap();
    assert_eq!((second.as_str(), hs.len()), ("second", 1));
}

#[tokio::test]
async fn byte_layer_makes_a_handle_pending_only_with_the_byte_it_came_with() {
    let (a, mut b) = Channel::pair().unwrap();
    a.send(b"p").await.unwrap();
    let fd = pipe_saying("c's");
    a.send_with_handles(b"c", &[fd.as_fd()]).await.unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(b.recv(&mut byte).await.unwrap(), 1);
    assert_eq!(&byte, b"p");
    assert_eq!(b.pending_count(), 0, "'p' came with no handle");
    assert_eq!(b.recv(&mut byte).await.unwrap(), 1);
    assert_eq!(&byte, b"c");
    assert_eq!(b.pending_count(), 1);
    let mut f: std::fs::File = b.accept().unwrap();
    let mut said = String::new();
    f.read_to_string(&mut said).unwrap();
    assert_eq!(said, "c's");
}

/// A kernel pipe: (read end, write end) as files (std's `io::pipe` is newer than our MSRV).
fn kernel_pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new fds into `fds`.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds are new and ours alone.
    unsafe {
        (
            std::os::fd::FromRawFd::from_raw_fd(fds[0]),
            std::os::fd::FromRawFd::from_raw_fd(fds[1]),
        )
    }
}
