//! What the peer does to the channel and to the sockets it sends: closing with our data
//! unread is end of stream; a socket sent bound but not yet listening can be listened on by
//! the receiver (libuv's `ipc_listen_after_write`), and its kind follows the sender's copy.

use std::os::fd::AsFd;
use std::time::Duration;

use brood::ipc::{Channel, HandleType};
use brood::{Command, Stdio};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixListener, UnixStream};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);
const MODE: &str = "BROOD_IPC_PEER_CHILD";

#[tokio::test]
async fn a_peer_that_closes_with_our_data_unread_is_end_of_stream() {
    // The kernel reports this as ECONNRESET on the next read.
    let (a, mut b) = Channel::pair().unwrap();
    b.send(b"you will never read this").await.unwrap();
    a.send(b"last words\n").await.unwrap();
    drop(a);
    let mut buf = [0u8; 64];
    let n = b.recv(&mut buf).await.unwrap();
    assert_eq!(
        &buf[..n],
        b"last words\n",
        "what the peer sent is read first"
    );
    assert_eq!(b.recv(&mut buf).await.unwrap(), 0, "then end of stream");
    assert_eq!(b.recv(&mut buf).await.unwrap(), 0, "and it stays so");

    // The typed layer: None, not an error.
    let (a, mut b) = Channel::pair().unwrap();
    b.send_msg(&"unread", &[]).await.unwrap();
    a.send_msg(&"bye", &[]).await.unwrap();
    drop(a);
    let (bye, _) = b.recv_msg::<String>().await.unwrap().unwrap();
    assert_eq!(bye, "bye");
    assert!(b.recv_msg::<String>().await.unwrap().is_none());
}

#[tokio::test]
async fn a_child_that_exits_without_reading_is_end_of_stream() {
    // The child waits until our data has arrived, then exits without reading it.
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import select, socket; s = socket.socket(fileno=3); \
             s.sendall(b'ready'); select.select([s], [], [])",
        ])
        .stdio(3, Stdio::ipc())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut ch = child.take_channel(3).unwrap();
    let mut buf = [0u8; 5];
    let mut got = 0;
    while got < 5 {
        let n = timeout(LIMIT, ch.recv(&mut buf[got..]))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        got += n;
    }
    assert_eq!(&buf, b"ready");
    ch.send(b"unread by the child").await.unwrap();
    let exit = timeout(LIMIT, child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit}");
    assert_eq!(timeout(LIMIT, ch.recv(&mut buf)).await.unwrap().unwrap(), 0);
}

/// A TCP socket bound to a free loopback port, not listening.
fn bound_tcp() -> (TcpSocket, std::net::SocketAddr) {
    let s = TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = s.local_addr().unwrap();
    (s, addr)
}

#[tokio::test]
async fn a_bound_tcp_socket_received_before_listen_is_accepted_as_a_listener() {
    let (a, mut b) = Channel::pair().unwrap();
    let (sock, addr) = bound_tcp();
    a.send_with_handles(b"L", &[sock.as_fd()]).await.unwrap();
    drop(sock);
    let mut byte = [0u8; 1];
    b.recv(&mut byte).await.unwrap();
    assert_eq!(b.pending_type(), Some(HandleType::Tcp));
    let listener: TcpListener = b.accept().unwrap();
    assert_eq!(listener.local_addr().unwrap(), addr);
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (mut server, _) = accepted.unwrap();
    client.unwrap().write_all(b"hi").await.unwrap();
    let mut hi = [0u8; 2];
    server.read_exact(&mut hi).await.unwrap();
    assert_eq!(&hi, b"hi");
}

#[tokio::test]
async fn a_connected_tcp_stream_is_not_accepted_as_a_listener_and_stays_pending() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (a, mut b) = Channel::pair().unwrap();
    a.send_with_handles(b"c", &[client.as_fd()]).await.unwrap();
    let mut byte = [0u8; 1];
    b.recv(&mut byte).await.unwrap();
    let err = b.accept::<TcpListener>().unwrap_err();
    assert_eq!(err.name(), "EINVAL");
    assert_eq!(b.pending_count(), 1);
    let _s: TcpStream = b.accept().unwrap();
}

#[tokio::test]
async fn an_unbound_tcp_socket_is_not_made_a_listener_on_a_random_port() {
    let (a, mut b) = Channel::pair().unwrap();
    let sock = TcpSocket::new_v4().unwrap();
    a.send_with_handles(b"u", &[sock.as_fd()]).await.unwrap();
    let mut byte = [0u8; 1];
    b.recv(&mut byte).await.unwrap();
    let err = b.accept::<TcpListener>().unwrap_err();
    assert_eq!(err.name(), "EINVAL", "{err}");
    assert_eq!(b.pending_count(), 1, "still pending");
}

#[tokio::test]
async fn pending_type_follows_the_senders_listen_after_write() {
    // libuv's ipc_listen_after_write: write the bound handle, then listen on our copy.
    let (a, mut b) = Channel::pair().unwrap();
    let (sock, addr) = bound_tcp();
    a.send_with_handles(b"L", &[sock.as_fd()]).await.unwrap();
    let mut byte = [0u8; 1];
    b.recv(&mut byte).await.unwrap();
    assert_eq!(b.pending_type(), Some(HandleType::Tcp));
    let ours = sock.listen(16).unwrap();
    assert_eq!(
        b.pending_type(),
        Some(HandleType::TcpListener),
        "the kind is looked up when asked, not frozen at arrival"
    );
    let h = b.accept_handle().unwrap();
    assert_eq!(h.kind(), HandleType::TcpListener);
    let theirs: TcpListener = h.accept().unwrap();
    drop(ours);
    let (c, s) = tokio::join!(TcpStream::connect(addr), theirs.accept());
    c.unwrap();
    s.unwrap();
}

#[tokio::test]
async fn a_bound_unix_socket_received_before_listen_is_accepted_as_a_listener() {
    let name = format!("@brood-ipc-peer-{}", std::process::id());
    let sock = tokio::net::UnixSocket::new_stream().unwrap();
    sock.bind(format!("\0{}", &name[1..])).unwrap();
    let (a, mut b) = Channel::pair().unwrap();
    a.send_with_handles(b"U", &[sock.as_fd()]).await.unwrap();
    drop(sock);
    let mut byte = [0u8; 1];
    b.recv(&mut byte).await.unwrap();
    assert_eq!(b.pending_type(), Some(HandleType::Unix));
    let listener: UnixListener = b.accept().unwrap();
    let (c, s) = tokio::join!(brood::pipe::connect(&name), listener.accept());
    let mut c: UnixStream = c.unwrap();
    let (mut s, _) = s.unwrap();
    c.write_all(b"u").await.unwrap();
    s.read_exact(&mut byte).await.unwrap();
    assert_eq!(&byte, b"u");
}

/// The child side: takes a bound socket as a listener and serves one connection.
#[test]
fn child_side() {
    if std::env::var_os(MODE).is_none() {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut ch = Channel::from_env().unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(ch.recv(&mut byte).await.unwrap(), 1);
        let l: TcpListener = ch.accept().unwrap();
        ch.send(b"listening").await.unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"served by the child").await.unwrap();
    });
}

#[tokio::test]
async fn a_child_listens_on_a_bound_socket_its_parent_sent() {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "child_side", "--nocapture", "--test-threads=1"])
        .env(MODE, "1")
        .stdio(1, Stdio::ignore())
        .stdio(3, Stdio::ipc())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut ch = child.take_channel(3).unwrap();
    let (sock, addr) = bound_tcp();
    ch.send_with_handles(b"L", &[sock.as_fd()]).await.unwrap();
    drop(sock);
    let mut buf = [0u8; 9];
    let mut got = 0;
    while got < buf.len() {
        let n = timeout(LIMIT, ch.recv(&mut buf[got..]))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "child gave up");
        got += n;
    }
    assert_eq!(&buf, b"listening");
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut said = String::new();
    timeout(LIMIT, c.read_to_string(&mut said))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(said, "served by the child");
    let exit = timeout(LIMIT, child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit}");
}
