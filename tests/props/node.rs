//! Node.js's IPC protocol on a channel, against a model written from Node's
//! `lib/internal/child_process.js`: shared by the fuzz target `node_ipc` and
//! `tests/prop_node.rs`.
//!
//! - Any line: it parses as JSON or is an `EINVAL` "bad message" error, never a panic; a
//!   message whose `cmd` is a string longer than `NODE_` starting with it (Node's
//!   `isInternal`) is Node's, every other one the user's; a `NODE_HANDLE` gives its inner
//!   `msg`, or is Node's own when that inner message is internal.
//! - `wrap` then classify gives back the user's message (as JSON text carries it).
//! - A real channel pair, one side in Node's protocol: the lines the other side writes (some
//!   with an fd) reach the user exactly as the model says, never an internal message, each
//!   `NODE_HANDLE` with the fd that came with it; the peer gets `NODE_HANDLE_ACK` for each
//!   `NODE_HANDLE` that brought an fd and `NODE_HANDLE_NACK` for each that did not, in order;
//!   no fd is left open (counted).
#![allow(
    dead_code,
    reason = "shared by a test binary and a fuzz target; each uses a part"
)]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use brood::fuzzing::{NODE_ACK, NODE_NACK, NodeLine, node_classify, node_wrap};
use brood::ipc::{Channel, HandleType, Protocol};
use serde_json::Value;

/// Node's `isInternal(message)`.
pub fn is_internal(v: &Value) -> bool {
    matches!(v.get("cmd"), Some(Value::String(c)) if c.len() > 5 && c.starts_with("NODE_"))
}

/// The model: what Node does with a line (`None`: not JSON).
pub fn model(bytes: &[u8]) -> Option<NodeLine> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    if !is_internal(&v) {
        return Some(NodeLine::User(v));
    }
    Some(match v["cmd"].as_str() {
        Some("NODE_HANDLE") => {
            let msg = v.get("msg").cloned().unwrap_or(Value::Null);
            if is_internal(&msg) {
                NodeLine::InternalHandle
            } else {
                NodeLine::Handle(msg)
            }
        }
        Some("NODE_HANDLE_ACK") => NodeLine::Ack,
        Some("NODE_HANDLE_NACK") => NodeLine::Nack,
        _ => NodeLine::Internal,
    })
}

/// One line: classified as the model says, or a clear error.
pub fn check_line(bytes: &[u8]) {
    match (node_classify(bytes), model(bytes)) {
        (Ok(got), Some(want)) => {
            if let NodeLine::User(v) | NodeLine::Handle(v) = &got {
                assert!(!is_internal(v), "an internal message for the user: {v}");
            }
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(bytes));
        }
        (Err(e), None) => {
            assert_eq!(e.name(), "EINVAL");
            assert!(e.to_string().contains("bad message"), "{e}");
        }
        (got, want) => panic!("{got:?}, the model says {want:?}"),
    }
}

/// A message wrapped with a handle of each kind Node takes unwraps to itself.
pub fn check_wrap(msg: &Value) {
    // What JSON text carries of it (serde_json's own float formatting both ways).
    let text = serde_json::to_vec(msg).expect("a value serializes");
    let carried: Value = serde_json::from_slice(&text).expect("and parses back");
    for (kind, ty) in [
        (HandleType::Tcp, "net.Socket"),
        (HandleType::Unix, "net.Socket"),
        (HandleType::TcpListener, "net.Server"),
        (HandleType::UnixListener, "net.Server"),
        (HandleType::Udp, "dgram.Socket"),
    ] {
        let line = node_wrap(msg, kind, false).expect("a message wraps");
        assert_eq!(line.last(), Some(&b'\n'));
        let body = &line[..line.len() - 1];
        assert!(!body.contains(&b'\n'), "a newline inside the line");
        let v: Value = serde_json::from_slice(body).expect("the line is JSON");
        assert_eq!(
            (v["cmd"].as_str(), v["type"].as_str()),
            (Some("NODE_HANDLE"), Some(ty))
        );
        let want = if is_internal(&carried) {
            NodeLine::InternalHandle
        } else {
            NodeLine::Handle(carried.clone())
        };
        assert_eq!(node_classify(body).expect("own line"), want);
    }
    for kind in [HandleType::File, HandleType::Fifo, HandleType::UnixDatagram] {
        assert_eq!(node_wrap(msg, kind, false).unwrap_err().name(), "EINVAL");
    }
}

/// A line the peer writes, maybe with an fd.
#[derive(Debug, Clone)]
pub struct Sent {
    pub line: Vec<u8>,
    pub fd: bool,
}

fn inode(fd: BorrowedFd<'_>) -> u64 {
    // SAFETY: fstat fills a zeroed stat for an fd we borrow.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
    st.st_ino
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn pipe() -> (OwnedFd, u64) {
    let mut p = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into `p`.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both are new fds owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    drop(w);
    let ino = inode(r.as_fd());
    (r, ino)
}

/// What the user gets from one `recv_msg`: the message and its handles' inodes, or an error.
type Got = Result<(Value, Vec<u64>), String>;

/// Writes the lines (with their fds) from a plain channel to one in Node's protocol: what
/// its user got, and what it wrote back.
fn run(sent: &[Sent], fds: &[Option<(OwnedFd, u64)>]) -> (Vec<Got>, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (got, back) = rt.block_on(async {
        let (mut node, mut peer) = Channel::pair().expect("a channel pair");
        node.set_protocol(Protocol::Node).unwrap();
        let writer = async {
            for (s, fd) in sent.iter().zip(fds) {
                let mut line = s.line.clone();
                line.push(b'\n');
                match fd {
                    Some((fd, _)) => peer.send_with_handles(&line, &[fd.as_fd()]).await,
                    None => peer.send(&line).await,
                }
                .expect("the peer sends");
            }
            peer.shutdown().expect("shutdown");
        };
        let reader = async {
            let mut got: Vec<Got> = Vec::new();
            loop {
                match node.recv_msg::<Value>().await {
                    Ok(Some((v, handles))) => {
                        let inodes = handles.iter().map(|h| inode(h.as_fd())).collect();
                        got.push(Ok((v, inodes)));
                    }
                    Ok(None) => break,
                    Err(e) => got.push(Err(e.name().to_string())),
                }
            }
            got
        };
        let ((), got) = tokio::join!(writer, reader);
        drop(node);
        // What the Node side wrote back, to the end.
        let mut back = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = peer.recv(&mut buf).await.expect("the peer reads");
            if n == 0 {
                break;
            }
            back.extend_from_slice(&buf[..n]);
        }
        (got, back)
    });
    drop(rt);
    (got, back)
}

/// The real channel pair against the model.
pub fn check_channel(sent: &[Sent]) {
    // The fd count is the process's: one case at a time.
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    static WARM: std::sync::Once = std::sync::Once::new();
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    // What the first use opens for good (the runtime's and the channel's globals).
    WARM.call_once(|| drop(run(&[], &[])));
    let before = fd_count();
    let sent: Vec<Sent> = sent
        .iter()
        .map(|s| Sent {
            line: s.line.iter().copied().filter(|&b| b != b'\n').collect(),
            fd: s.fd,
        })
        .collect();
    let fds: Vec<Option<(OwnedFd, u64)>> = sent.iter().map(|s| s.fd.then(pipe)).collect();
    // The model.
    let mut want: Vec<Got> = Vec::new();
    let mut answers = Vec::new();
    for (s, fd) in sent.iter().zip(&fds) {
        let inodes: Vec<u64> = fd.iter().map(|(_, i)| *i).collect();
        match model(&s.line) {
            None => want.push(Err("EINVAL".into())),
            Some(NodeLine::User(v)) => want.push(Ok((v, inodes))),
            Some(NodeLine::Handle(v)) if s.fd => {
                answers.extend_from_slice(NODE_ACK);
                want.push(Ok((v, inodes)));
            }
            Some(NodeLine::InternalHandle) if s.fd => answers.extend_from_slice(NODE_ACK),
            Some(NodeLine::Handle(_) | NodeLine::InternalHandle) => {
                answers.extend_from_slice(NODE_NACK)
            }
            Some(NodeLine::Ack | NodeLine::Nack | NodeLine::Internal) => {}
        }
    }
    let (got, back) = run(&sent, &fds);
    assert_eq!(got, want, "what the user got");
    assert_eq!(
        String::from_utf8_lossy(&back),
        String::from_utf8_lossy(&answers),
        "the answers"
    );
    drop(fds);
    assert_eq!(fd_count(), before, "an fd left open");
}

/// A case from fuzzer bytes: lines separated by `\n`; a line whose first byte is `\x01` comes
/// with an fd (the byte dropped). The first line is also checked alone and as a message to
/// wrap when it is JSON.
pub fn check_bytes(data: &[u8]) {
    let sent: Vec<Sent> = data
        .split(|&b| b == b'\n')
        .take(64)
        .map(|l| match l.split_first() {
            Some((1, rest)) => Sent {
                line: rest.to_vec(),
                fd: true,
            },
            _ => Sent {
                line: l.to_vec(),
                fd: false,
            },
        })
        .collect();
    for s in &sent {
        check_line(&s.line);
        if let Ok(v) = serde_json::from_slice::<Value>(&s.line) {
            check_wrap(&v);
        }
    }
    check_channel(&sent);
}
