//! IPC checks that count this process's open fds. They run one after another in a single
//! test, alone in this binary, so no other test opens or closes fds meanwhile.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use brood::ipc::{Channel, HandleType};
use brood::open_fd_count;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(20);

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Msg {
    what: String,
}

#[tokio::test]
async fn received_fds_are_all_closed() {
    ten_thousand_handles_one_per_message_and_no_fd_leaks().await;
    too_many_fds_from_a_raw_peer_are_an_error_and_all_closed().await;
    a_line_that_never_ends_with_fds_on_every_byte_is_bounded().await;
}

async fn a_line_that_never_ends_with_fds_on_every_byte_is_bounded() {
    let (raw, ours) = std::os::unix::net::UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let before = open_fd_count().unwrap();
    let mut ch = Channel::new(UnixStream::from_std(ours).unwrap());
    ch.set_max_handles(8);
    let f = std::fs::File::open("/dev/null").unwrap();
    // One byte per write, each with an fd, and never a newline: each is its own read.
    for _ in 0..50 {
        raw_send_fds(&raw, b"x", &[f.as_raw_fd()]);
    }
    let err = timeout(LIMIT, ch.recv_msg::<Msg>())
        .await
        .expect("bounded, not waiting for a newline that never comes")
        .unwrap_err();
    assert_eq!(err.name(), "EMSGSIZE", "{err}");
    assert!(err.to_string().contains("handles"), "{err}");
    drop(ch);
    drop(raw);
    drop(f);
    assert_eq!(
        open_fd_count().unwrap(),
        before - 2,
        "all closed, the pair too"
    );
}

async fn ten_thousand_handles_one_per_message_and_no_fd_leaks() {
    let (a, mut b) = Channel::pair().unwrap();
    let (keep, _peer) = UnixStream::pair().unwrap();
    let before = open_fd_count().unwrap();
    let sender = tokio::spawn(async move {
        for i in 0..10_000u32 {
            a.send_msg(&i, &[keep.as_fd()]).await.unwrap();
        }
    });
    for want in 0..10_000u32 {
        let (got, handles): (u32, Vec<brood::ipc::Handle>) = timeout(LIMIT, b.recv_msg())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, want);
        assert_eq!(handles.len(), 1, "message {want}");
        assert_eq!(handles[0].kind(), HandleType::Unix);
    }
    sender.await.unwrap();
    assert!(b.recv_msg::<u32>().await.unwrap().is_none());
    drop(b);
    // Everything received was closed: the count is back where it was, less the channel ends.
    assert!(open_fd_count().unwrap() <= before, "fds leaked");
}

fn raw_send_fds(sock: &std::os::unix::net::UnixStream, data: &[u8], fds: &[i32]) {
    let payload = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is arithmetic.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    // SAFETY: zeroed msghdr, then pointers to live locals.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the header and fds are written inside `cbuf`, sized by CMSG_SPACE.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), payload);
        assert_eq!(
            libc::sendmsg(sock.as_raw_fd(), &msg, 0),
            data.len() as isize
        );
    }
}

async fn too_many_fds_from_a_raw_peer_are_an_error_and_all_closed() {
    let (raw, ours) = std::os::unix::net::UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let mut ch = Channel::new(UnixStream::from_std(ours).unwrap());
    ch.set_max_handles(8);
    let files: Vec<std::fs::File> = (0..20)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let raw_fds: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
    raw_send_fds(&raw, b"z", &raw_fds);
    drop(files);
    let before = open_fd_count().unwrap();
    let mut buf = [0u8; 4];
    let err = timeout(LIMIT, ch.recv(&mut buf))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.name(), "EMSGSIZE", "{err}");
    assert_eq!(
        open_fd_count().unwrap(),
        before,
        "the fds that arrived were closed"
    );

    // Garbage on the typed layer: an error, and the handle sent with it is closed.
    let (raw2, ours2) = std::os::unix::net::UnixStream::pair().unwrap();
    ours2.set_nonblocking(true).unwrap();
    let mut ch2 = Channel::new(UnixStream::from_std(ours2).unwrap());
    let f = std::fs::File::open("/dev/null").unwrap();
    raw_send_fds(&raw2, b"{not json\n", &[f.as_raw_fd()]);
    drop(f);
    let before = open_fd_count().unwrap();
    let err = ch2.recv_msg::<Msg>().await.unwrap_err();
    assert_eq!(err.name(), "EINVAL");
    assert_eq!(open_fd_count().unwrap(), before);
    // A peer that stops in the middle of a line.
    (&raw2).write_all(b"{\"what\":").unwrap();
    drop(raw2);
    assert_eq!(ch2.recv_msg::<Msg>().await.unwrap_err().name(), "EPIPE");
}
