//! `brood::pipe`: Unix domain socket servers and clients, with real sockets.

mod examples_bin;

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use brood::pipe::{self, Listener, Mode, Name};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(20);

/// A fresh directory for one test's sockets, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("brood-pipe-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn abstract_name(tag: &str) -> String {
    format!("@brood-test-{}-{tag}", std::process::id())
}

/// A socket file whose server is gone: std does not remove the file on drop.
fn stale_socket(path: &Path) {
    drop(std::os::unix::net::UnixListener::bind(path).unwrap());
    assert!(path.exists());
}

async fn echo_round_trip(name: &str) {
    let listener = Listener::bind(name).unwrap();
    let server = tokio::spawn(async move { pipe::echo_server(&listener).await });
    let client = timeout(T, pipe::connect(name)).await.unwrap().unwrap();
    // 4 MiB both ways at once, through split halves: no deadlock on full buffers.
    let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    let (mut rd, mut wr) = client.into_split();
    let send = async {
        wr.write_all(&data).await.unwrap();
        wr.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let recv = rd.read_to_end(&mut back);
    timeout(T, async { tokio::join!(send, recv).1.unwrap() })
        .await
        .unwrap();
    assert!(back == data, "echo differs");
    server.abort();
}

#[tokio::test]
async fn bind_connect_echo_on_a_path() {
    let dir = Dir::new();
    let path = dir.path("echo.sock");
    echo_round_trip(path.to_str().unwrap()).await;
}

#[tokio::test]
async fn bind_connect_echo_on_an_abstract_name() {
    echo_round_trip(&abstract_name("echo")).await;
}

#[tokio::test]
async fn nul_led_name_is_abstract_too() {
    let tag = abstract_name("nul");
    let listener = Listener::bind(tag.replacen('@', "\0", 1)).unwrap();
    assert_eq!(listener.name(), &Name::parse(&tag));
    let client = timeout(T, pipe::connect(&tag)).await.unwrap().unwrap();
    assert_eq!(pipe::peer_name(&client).unwrap(), Name::parse(&tag));
}

#[tokio::test]
async fn peer_credentials_are_this_process() {
    let dir = Dir::new();
    let path = dir.path("cred.sock");
    let listener = Listener::bind(&path).unwrap();
    let client = timeout(T, pipe::connect(&path)).await.unwrap().unwrap();
    let accepted = timeout(T, listener.accept()).await.unwrap().unwrap();
    // SAFETY: geteuid/getegid only read this process's credentials.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let me = Some(std::process::id() as i32);
    for s in [&client, &accepted] {
        let cred = pipe::peer_credentials(s).unwrap();
        assert_eq!((cred.pid, cred.uid, cred.gid), (me, uid, gid));
    }
}

#[tokio::test]
async fn peer_credentials_of_a_child_are_the_child() {
    let dir = Dir::new();
    let path = dir.path("child.sock");
    // The echo server example is the server; its pid is what this client must see.
    let mut server = start_echo_example(&path).await;
    let client = timeout(T, pipe::connect(&path)).await.unwrap().unwrap();
    let cred = pipe::peer_credentials(&client).unwrap();
    assert_eq!(cred.pid, Some(server.id().unwrap() as i32));
    server.kill(brood::Signum::INT).unwrap();
    let exit = timeout(T, server.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit}");
}

#[tokio::test]
async fn names_of_both_ends() {
    let dir = Dir::new();
    let path = dir.path("names.sock");
    let listener = Listener::bind(&path).unwrap();
    assert_eq!(listener.name(), &Name::Path(path.clone()));
    let client = timeout(T, pipe::connect(&path)).await.unwrap().unwrap();
    let accepted = timeout(T, listener.accept()).await.unwrap().unwrap();
    assert_eq!(pipe::peer_name(&client).unwrap(), Name::Path(path.clone()));
    assert_eq!(pipe::local_name(&client).unwrap(), Name::Unnamed);
    assert_eq!(
        pipe::local_name(&accepted).unwrap(),
        Name::Path(path.clone())
    );
    assert_eq!(pipe::peer_name(&accepted).unwrap(), Name::Unnamed);
}

#[tokio::test]
async fn socket_file_is_removed_when_the_listener_drops() {
    let dir = Dir::new();
    let path = dir.path("gone.sock");
    let listener = Listener::bind(&path).unwrap();
    assert!(path.exists());
    drop(listener);
    assert!(!path.exists());
}

#[tokio::test]
async fn a_replacement_file_is_not_removed_by_the_old_listener() {
    let dir = Dir::new();
    let path = dir.path("replaced.sock");
    let old = Listener::bind(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let new = Listener::bind(&path).unwrap();
    drop(old);
    assert!(
        path.exists(),
        "the old listener removed the new server's file"
    );
    drop(new);
    assert!(!path.exists());
}

#[tokio::test]
async fn live_socket_gives_eaddrinuse_and_survives() {
    let dir = Dir::new();
    let path = dir.path("live.sock");
    let first = Listener::bind(&path).unwrap();
    for replace in [false, true] {
        let err = Listener::builder(&path)
            .replace_stale(replace)
            .bind()
            .unwrap_err();
        assert_eq!(err.name(), "EADDRINUSE");
        let op = format!("bind {:?}", path.to_str().unwrap());
        assert!(err.to_string().starts_with(&op), "{err}");
        assert!(err.to_string().contains("a server is listening"), "{err}");
    }
    // The first server still works; the two probe connections are first in its queue.
    timeout(T, first.accept()).await.unwrap().unwrap();
    timeout(T, first.accept()).await.unwrap().unwrap();
    let _client = timeout(T, pipe::connect(&path)).await.unwrap().unwrap();
    let accepted = timeout(T, first.accept()).await.unwrap().unwrap();
    let me = Some(std::process::id() as i32);
    assert_eq!(pipe::peer_credentials(&accepted).unwrap().pid, me);
}

#[tokio::test]
async fn stale_socket_is_reported_and_replaced_only_when_asked() {
    let dir = Dir::new();
    let path = dir.path("stale.sock");
    stale_socket(&path);

    let err = Listener::bind(&path).unwrap_err();
    assert_eq!(err.name(), "EADDRINUSE");
    assert!(err.to_string().contains("stale socket file"), "{err}");
    assert!(
        path.exists(),
        "a stale file was removed without being asked"
    );

    let err = timeout(T, pipe::connect(&path)).await.unwrap().unwrap_err();
    assert_eq!(err.name(), "ECONNREFUSED");
    assert!(err.to_string().contains("stale"), "{err}");

    let listener = Listener::builder(&path).replace_stale(true).bind().unwrap();
    let _client = timeout(T, pipe::connect(&path)).await.unwrap().unwrap();
    timeout(T, listener.accept()).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_regular_file_is_never_replaced() {
    let dir = Dir::new();
    let path = dir.path("file.txt");
    std::fs::write(&path, b"keep me").unwrap();
    for replace in [false, true] {
        let err = Listener::builder(&path)
            .replace_stale(replace)
            .bind()
            .unwrap_err();
        assert_eq!(err.name(), "EADDRINUSE");
        assert!(err.to_string().contains("not a socket"), "{err}");
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");

    let err = timeout(T, pipe::connect(&path)).await.unwrap().unwrap_err();
    assert_eq!(err.name(), "ECONNREFUSED");
    assert!(err.to_string().contains("not a socket"), "{err}");
}

#[tokio::test]
async fn too_long_names_give_enametoolong() {
    let long = format!("/tmp/{}", "x".repeat(200));
    let err = Listener::bind(&long).unwrap_err();
    assert_eq!(err.name(), "ENAMETOOLONG");
    assert!(err.to_string().starts_with("bind \"/tmp/xxx"), "{err}");
    let err = timeout(T, pipe::connect(&long)).await.unwrap().unwrap_err();
    assert_eq!(err.name(), "ENAMETOOLONG");
    let err = Listener::bind(format!("@{}", "y".repeat(108))).unwrap_err();
    assert_eq!(err.name(), "ENAMETOOLONG");
    // 107 bytes is the most that fits, and works.
    let name = format!("@{}-{}", std::process::id(), "z".repeat(107));
    let name = &name[..108];
    Listener::bind(name).unwrap();
}

#[tokio::test]
async fn missing_paths_give_enoent() {
    let dir = Dir::new();
    let err = timeout(T, pipe::connect(dir.path("none.sock")))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.name(), "ENOENT");
    let err = Listener::bind(dir.path("no/such/dir.sock")).unwrap_err();
    assert_eq!(err.name(), "ENOENT");
    let err = timeout(T, pipe::connect(abstract_name("nobody")))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.name(), "ECONNREFUSED");
}

#[tokio::test]
async fn chmod_opens_the_file_to_all() {
    let dir = Dir::new();
    let path = dir.path("chmod.sock");
    let listener = Listener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
    listener.chmod(Mode::READABLE).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o744);
    listener.chmod(Mode::READABLE | Mode::WRITABLE).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o766);

    let abs = Listener::bind(abstract_name("chmod")).unwrap();
    assert_eq!(abs.chmod(Mode::WRITABLE).unwrap_err().name(), "EINVAL");
}

#[tokio::test]
async fn an_abstract_name_in_use_gives_eaddrinuse() {
    let name = abstract_name("taken");
    let _first = Listener::bind(&name).unwrap();
    let err = Listener::builder(&name)
        .replace_stale(true)
        .bind()
        .unwrap_err();
    assert_eq!(err.name(), "EADDRINUSE");
    assert!(err.to_string().contains("abstract name"), "{err}");
}

#[tokio::test]
async fn backlog_bounds_the_accept_queue() {
    for backlog in [1u32, 3] {
        let name = abstract_name(&format!("backlog{backlog}"));
        let _listener = Listener::builder(&name).backlog(backlog).bind().unwrap();
        let mut queued = Vec::new();
        let err = loop {
            match timeout(T, pipe::connect(&name)).await.unwrap() {
                Ok(s) => queued.push(s),
                Err(e) => break e,
            }
            assert!(queued.len() <= 64, "the backlog is not applied");
        };
        // Linux queues backlog + 1 connections before refusing more.
        assert_eq!(queued.len(), backlog as usize + 1);
        assert_eq!(err.name(), "EAGAIN");
    }
}

#[tokio::test]
async fn open_an_existing_fd() {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut a = pipe::open(OwnedFd::from(a)).unwrap();
    let mut b = pipe::open(OwnedFd::from(b)).unwrap();
    a.write_all(b"over").await.unwrap();
    let mut buf = [0; 4];
    timeout(T, b.read_exact(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf, b"over");

    let file = std::fs::File::open("/dev/null").unwrap();
    assert_eq!(pipe::open(file.into()).unwrap_err().name(), "ENOTSOCK");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(pipe::open(udp.into()).unwrap_err().name(), "EINVAL");

    // A listening socket: open refuses it, Listener::open takes it (and leaves its file).
    let dir = Dir::new();
    let path = dir.path("opened.sock");
    let std_listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let dup = std_listener.try_clone().unwrap();
    assert_eq!(pipe::open(dup.into()).unwrap_err().name(), "EINVAL");
    let listener = Listener::open(std_listener.into()).unwrap();
    assert_eq!(listener.name(), &Name::Path(path.clone()));
    let _client = timeout(T, pipe::connect(&path)).await.unwrap().unwrap();
    timeout(T, listener.accept()).await.unwrap().unwrap();
    drop(listener);
    assert!(
        path.exists(),
        "Listener::open removed a file it did not make"
    );
    let (c, _d) = std::os::unix::net::UnixStream::pair().unwrap();
    assert_eq!(Listener::open(c.into()).unwrap_err().name(), "EINVAL");
}

/// Set in the copy of this test binary that runs `errors_leak_no_fd` alone.
const ALONE: &str = "BROOD_PIPE_TEST_ALONE";

#[tokio::test]
async fn errors_leak_no_fd() {
    if std::env::var_os(ALONE).is_none() {
        // The fd count is per process and the other tests open fds in parallel: count in a
        // process of our own that runs only this test.
        let mut cmd = brood::Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "errors_leak_no_fd", "--test-threads=1"])
            .env(ALONE, "1");
        let out = timeout(T, cmd.output()).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.exit.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("1 passed"), "{text}");
        return;
    }
    let dir = Dir::new();
    let stale = dir.path("stale.sock");
    stale_socket(&stale);
    let live = dir.path("live.sock");
    let live_listener = Listener::bind(&live).unwrap();
    let before = brood::open_fd_count().unwrap();
    for _ in 0..20 {
        assert!(Listener::bind(&stale).is_err());
        assert!(Listener::bind(&live).is_err());
        assert!(pipe::connect(&stale).await.is_err());
        assert!(pipe::connect(dir.path("none")).await.is_err());
        assert!(Listener::bind(dir.path("x").join("y")).is_err());
        // The live server's probe connection, accepted and closed.
        drop(timeout(T, live_listener.accept()).await.unwrap().unwrap());
    }
    assert_eq!(brood::open_fd_count().unwrap(), before);
}

#[test]
fn outside_a_runtime_is_an_error_not_a_panic() {
    let err = Listener::bind(abstract_name("nort")).unwrap_err();
    assert_eq!(err.name(), "EINVAL");
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}

#[tokio::test]
async fn pipe_echo_server_example_removes_its_socket_on_sigint_and_sigterm() {
    let dir = Dir::new();
    let path = dir.path("echo.sock");
    for signal in [brood::Signum::INT, brood::Signum::TERM] {
        let mut server = start_echo_example(&path).await;
        let mut c = timeout(T, pipe::connect(&path)).await.unwrap().unwrap();
        c.write_all(b"hello\n").await.unwrap();
        let mut back = [0; 6];
        timeout(T, c.read_exact(&mut back)).await.unwrap().unwrap();
        assert_eq!(&back, b"hello\n");
        server.kill(signal).unwrap();
        let exit = timeout(T, server.wait()).await.unwrap().unwrap();
        assert!(exit.success(), "{signal}: {exit}");
        assert!(!path.exists(), "{signal} left the socket file");
    }
}

/// Starts the echo server example on `path` and waits until it listens.
async fn start_echo_example(path: &Path) -> brood::Child {
    let mut server = brood::Command::new(examples_bin::example("pipe_echo_server"))
        .arg(path)
        .stderr(brood::Stdio::pipe_writable())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut err = BufReader::new(server.stderr.take().unwrap());
    let mut line = String::new();
    timeout(T, err.read_line(&mut line)).await.unwrap().unwrap();
    assert!(line.contains("listening"), "{line}");
    server
}

#[tokio::test]
async fn the_socket_of_a_killed_server_is_stale_and_replaced_by_the_example() {
    let dir = Dir::new();
    let path = dir.path("killed.sock");
    let mut server = start_echo_example(&path).await;
    // SIGKILL: no chance to remove the file.
    server.kill(brood::Signum::KILL).unwrap();
    timeout(T, server.wait()).await.unwrap().unwrap();
    assert!(path.exists());

    let err = Listener::bind(&path).unwrap_err();
    assert_eq!(err.name(), "EADDRINUSE");
    assert!(err.to_string().contains("stale"), "{err}");

    // The example binds with replace_stale(true): it takes the path over and serves.
    let mut again = start_echo_example(&path).await;
    let mut c = timeout(T, pipe::connect(&path)).await.unwrap().unwrap();
    c.write_all(b"again").await.unwrap();
    let mut back = [0; 5];
    timeout(T, c.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(&back, b"again");
    // But a second one next to a live server refuses, and leaves the file to its owner.
    let mut third = brood::Command::new(examples_bin::example("pipe_echo_server"))
        .arg(&path)
        .stderr(brood::Stdio::pipe_writable())
        .spawn()
        .unwrap();
    let mut msg = String::new();
    let mut err = third.stderr.take().unwrap();
    timeout(T, err.read_to_string(&mut msg))
        .await
        .unwrap()
        .unwrap();
    assert!(
        msg.contains("EADDRINUSE") && msg.contains("listening"),
        "{msg}"
    );
    assert_eq!(
        timeout(T, third.wait()).await.unwrap().unwrap().code(),
        Some(1)
    );
    assert!(path.exists());

    again.kill(brood::Signum::TERM).unwrap();
    assert!(timeout(T, again.wait()).await.unwrap().unwrap().success());
    assert!(!path.exists());
}
