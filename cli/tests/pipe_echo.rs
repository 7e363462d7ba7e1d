//! `brood pipe-echo`: echoes over a Unix socket, removes the socket on SIGINT and SIGTERM,
//! and fails clearly on a busy path.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::Command;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(20);

fn socket_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("brood-cli-{}-{tag}.sock", std::process::id()))
}

#[tokio::test]
async fn echoes_and_removes_the_socket_on_sigint_and_sigterm() {
    let path = socket_path("echo");
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let mut server = Command::new(env!("CARGO_BIN_EXE_brood"))
            .arg("pipe-echo")
            .arg(&path)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut log = BufReader::new(server.stderr.take().unwrap());
        let mut line = String::new();
        timeout(T, log.read_line(&mut line)).await.unwrap().unwrap();
        assert_eq!(
            line,
            format!("brood pipe-echo: listening on {}\n", path.display())
        );

        let mut c = timeout(T, UnixStream::connect(&path))
            .await
            .unwrap()
            .unwrap();
        c.write_all(b"ping\n").await.unwrap();
        let mut back = [0; 5];
        timeout(T, c.read_exact(&mut back)).await.unwrap().unwrap();
        assert_eq!(&back, b"ping\n");

        let pid = server.id().unwrap() as i32;
        // SAFETY: kill only sends a signal to our own child.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let status = timeout(T, server.wait()).await.unwrap().unwrap();
        assert_eq!(status.code(), Some(0), "signal {signal}");
        assert!(!path.exists(), "signal {signal} left the socket file");
    }
}

#[tokio::test]
async fn a_busy_path_exits_1_with_the_reason() {
    let path = socket_path("busy");
    let _live = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let out = timeout(
        T,
        Command::new(env!("CARGO_BIN_EXE_brood"))
            .arg("pipe-echo")
            .arg(&path)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err,
        format!(
            "brood pipe-echo: bind {:?}: EADDRINUSE: address already in use \
             (a server is listening on it)\n",
            path.display().to_string()
        )
    );
}
