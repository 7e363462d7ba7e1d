//! IPC framing, differential against a model of the protocol: shared by the fuzz target
//! `fuzz/fuzz_targets/ipc_framing.rs` and the property test `tests/prop_ipc.rs`.
//!
//! The sender's writes (each with 0-3 fds) are cut into the chunks one `recvmsg` could return
//! on Linux: any cut, except that a chunk that holds the first byte of a write with fds ends
//! inside that write and carries its fds (the kernel joins earlier fd-less bytes to the read
//! that takes an `SCM_RIGHTS` message, then stops). Each chunk is then written as one
//! `sendmsg` and read by a real [`Channel`] before the next one is written, so the receiver
//! sees exactly those reads.
#![allow(
    dead_code,
    reason = "shared by a test binary and a fuzz target; each uses a part"
)]

use std::cell::Cell;
use std::collections::BTreeSet;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use brood::ipc::Channel;

/// One write of the sender.
#[derive(Debug, Clone)]
pub struct Write {
    /// The bytes (in line mode, a newline is added and newlines inside are dropped).
    pub body: Vec<u8>,
    /// Fds attached to the write's first byte (0-3).
    pub fds: u8,
}

/// A run of the protocol.
#[derive(Debug, Clone)]
pub struct Case {
    pub writes: Vec<Write>,
    /// Chunk lengths proposed for successive reads (cycled; 0 counts as 1).
    pub cuts: Vec<usize>,
    /// Line mode: every write is one whole line (what `send_msg` sends), and the received
    /// messages must match the model exactly. Otherwise any bytes: only fd accounting.
    pub lines: bool,
}

fn inode(fd: BorrowedFd<'_>) -> u64 {
    // SAFETY: fstat fills a zeroed stat for an fd we borrow.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
    st.st_ino
}

/// A pipe's read end (close-on-exec) and its inode, which every copy of it shares.
fn marked_fd() -> (OwnedFd, u64) {
    let mut p = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into `p`.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both are new fds owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    drop(w);
    let ino = inode(r.as_fd());
    (r, ino)
}

/// Inodes of every pipe open in this process.
fn open_pipes() -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(target) = std::fs::read_link(e.path()) {
            let t = target.to_string_lossy();
            if let Some(n) = t.strip_prefix("pipe:[").and_then(|r| r.strip_suffix(']')) {
                out.insert(n.parse().unwrap());
            }
        }
    }
    out
}

fn unread(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    assert_eq!(r, 0);
    n as usize
}

/// The stream's bytes and each write's `(start, end, fds)`.
pub fn layout(case: &Case) -> (Vec<u8>, Vec<(usize, usize, u8)>) {
    let mut stream = Vec::new();
    let mut spans = Vec::new();
    for w in &case.writes {
        let start = stream.len();
        if case.lines {
            stream.extend(w.body.iter().copied().filter(|&b| b != b'\n'));
            stream.push(b'\n');
        } else {
            stream.extend_from_slice(&w.body);
        }
        let fds = if stream.len() > start {
            w.fds.min(3)
        } else {
            0
        };
        spans.push((start, stream.len(), fds));
    }
    (stream, spans)
}

/// The reads `recvmsg` may return: `(start, end, index of the write whose fds come along)`.
pub fn chunks(
    case: &Case,
    total: usize,
    spans: &[(usize, usize, u8)],
) -> Vec<(usize, usize, Option<usize>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut k = 0;
    while pos < total {
        let want = case
            .cuts
            .get(k % case.cuts.len().max(1))
            .copied()
            .unwrap_or(total);
        k += 1;
        let mut end = pos.saturating_add(want.max(1)).min(total);
        let carrier = spans
            .iter()
            .position(|&(s, _, fds)| fds > 0 && s >= pos && s < end);
        if let Some(j) = carrier {
            end = end.min(spans[j].1);
        }
        out.push((pos, end, carrier));
        pos = end;
    }
    out
}

/// What the receiver got for one line: the parsed message (or the errno of the refusal)
/// and the inodes of the handles bound to it.
type Got = (Result<serde_json::Value, i32>, Vec<u64>);

/// Runs `case` through a real channel pair and checks it against the model: in line mode
/// every message is received once, in order, with exactly the handles of the write that
/// carried it; in every mode no handle arrives twice or from nowhere, and after the channel
/// is dropped none of the fds is still open (no leak) and nothing else was closed.
pub fn check(case: &Case) {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
    }
    let (stream, spans) = layout(case);
    let reads = chunks(case, stream.len(), &spans);
    RT.with(|rt| {
        let before = brood::open_fd_count().unwrap();
        let mut sent_inodes = Vec::new();
        let got: Vec<Got> = rt.block_on(async {
            let (a, mut b) = Channel::pair().unwrap();
            b.set_max_message(1 << 20);
            let done = Cell::new(false);
            // The receiver's fd, for the writer to see how much is still unread.
            let b_fd = b.as_stream().as_raw_fd();
            let writer = async {
                for &(s, e, carrier) in &reads {
                    let fds: Vec<(OwnedFd, u64)> = match carrier {
                        Some(j) => (0..spans[j].2).map(|_| marked_fd()).collect(),
                        None => Vec::new(),
                    };
                    sent_inodes.push(fds.iter().map(|(_, i)| *i).collect::<Vec<_>>());
                    let borrowed: Vec<BorrowedFd<'_>> =
                        fds.iter().map(|(f, _)| f.as_fd()).collect();
                    a.send_with_handles(&stream[s..e], &borrowed).await.unwrap();
                    drop(fds); // the receiver has its own copies
                    // The next write only once this one has been read, so the reads are
                    // exactly these chunks.
                    while !done.get() && unread(b_fd) > 0 {
                        tokio::task::yield_now().await;
                    }
                }
                a.shutdown().unwrap();
            };
            let reader = async {
                let mut got = Vec::new();
                loop {
                    match b.recv_msg::<serde_json::Value>().await {
                        Ok(Some((msg, handles))) => {
                            got.push((Ok(msg), handles.iter().map(|h| inode(h.as_fd())).collect()));
                        }
                        Ok(None) => break,
                        Err(e) if e.errno() == libc::EINVAL => {
                            got.push((Err(e.errno()), Vec::new()))
                        }
                        Err(e) => {
                            got.push((Err(e.errno()), Vec::new()));
                            break;
                        }
                    }
                }
                done.set(true);
                got
            };
            let ((), got) = tokio::join!(writer, reader);
            drop(b);
            drop(a);
            got
        });
        // Every handle received is one sent, and none twice.
        let sent: Vec<u64> = sent_inodes.iter().flatten().copied().collect();
        let mut seen = BTreeSet::new();
        for (_, handles) in &got {
            for h in handles {
                assert!(sent.contains(h), "a handle that was never sent");
                assert!(seen.insert(*h), "a handle received twice");
            }
        }
        // No fd left open: none of the sent pipes, and the count back where it was.
        let open = open_pipes();
        assert!(
            sent.iter().all(|i| !open.contains(i)),
            "a received fd was not closed"
        );
        assert_eq!(brood::open_fd_count().unwrap(), before, "fd count changed");
        if !case.lines {
            return;
        }
        // The model: write i is line i; its fds are the ones sent with the chunk holding
        // its first byte.
        let mut want: Vec<Got> = Vec::new();
        for (i, &(s, e, _)) in spans.iter().enumerate() {
            let msg = serde_json::from_slice::<serde_json::Value>(&stream[s..e - 1])
                .map_err(|_| libc::EINVAL);
            let handles = reads
                .iter()
                .position(|&(_, _, c)| c == Some(i))
                .map(|r| sent_inodes[r].clone())
                .unwrap_or_default();
            want.push((msg, handles));
        }
        // Handles of a refused line are closed, not returned: compare them only for
        // accepted lines.
        let strip = |v: &[Got]| -> Vec<Got> {
            v.iter()
                .map(|(m, h)| (m.clone(), if m.is_ok() { h.clone() } else { Vec::new() }))
                .collect()
        };
        assert_eq!(
            strip(&got),
            strip(&want),
            "messages or their handles differ from the model; reads {:?}",
            reads
                .iter()
                .map(|&(s, e, c)| (
                    String::from_utf8_lossy(&stream[s..e]).into_owned(),
                    c.map(|j| spans[j].2)
                ))
                .collect::<Vec<_>>()
        );
    })
}

/// A fuzz input as a case: a mode byte (low bit: line mode), a count byte N and N chunk
/// lengths, then writes, each a header byte (fds in the low two bits, body length in the
/// next four) and its body.
pub fn decode(data: &[u8]) -> Option<Case> {
    let (&mode, rest) = data.split_first()?;
    let (&n, rest) = rest.split_first()?;
    let n = (n as usize % 8 + 1).min(rest.len());
    let (cuts, mut rest) = rest.split_at(n);
    let mut writes = Vec::new();
    while let Some((&h, more)) = rest.split_first() {
        let len = ((h >> 2) & 15) as usize;
        let len = len.min(more.len());
        writes.push(Write {
            body: more[..len].to_vec(),
            fds: h & 3,
        });
        rest = &more[len..];
        if writes.len() == 32 {
            break;
        }
    }
    Some(Case {
        writes,
        cuts: cuts.iter().map(|&c| c as usize).collect(),
        lines: mode & 1 == 1,
    })
}
