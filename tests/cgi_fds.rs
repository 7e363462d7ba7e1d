//! The CGI server loses no fd: every way a request can go (answered, refused, 502, timeout,
//! client gone, server stopped) leaves this process's fd count where it was. Alone in this
//! binary, so no other test opens or closes fds meanwhile.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use brood::cgi::Cgi;
use brood::open_fd_count;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(20);

async fn exchange(addr: std::net::SocketAddr, path: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    timeout(T, tcp.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn fd_list() -> String {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let target = std::fs::read_link(e.path()).map(|p| p.display().to_string());
        out.push(format!(
            "{}={}",
            e.file_name().to_string_lossy(),
            target.unwrap_or_default()
        ));
    }
    out.join(" ")
}

#[tokio::test]
async fn no_fd_is_lost_whatever_happens_to_a_request() {
    let root = std::env::temp_dir().join(format!("brood-cgi-fds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    for (name, text) in [
        (
            "ok",
            "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nok'\n",
        ),
        ("dies", "#!/bin/sh\necho bye >&2\nexit 1\n"),
        ("garbage", "#!/bin/sh\nprintf 'garbage\\n\\n'\n"),
        ("slow", "#!/bin/sh\nexec sleep 1000\n"),
        (
            "talks",
            "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nhi\\n'\nexec sleep 1000\n",
        ),
    ] {
        let p = root.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // brood's background reaper (one epoll fd for the life of the process) starts with the
    // first child dropped unfinished: start it before counting.
    drop(
        brood::Command::new("sleep")
            .arg("1000")
            .kill_on_drop(true)
            .spawn()
            .unwrap(),
    );
    // The reaper holds the killed sleep's pidfd until it has reaped it: count only after.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fd_list().contains("pidfd") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reaper kept a pidfd: {}",
            fd_list()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = open_fd_count().unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        Cgi::root(&root)
            .timeout(Duration::from_millis(1000))
            .on_log(|_| {})
            .serve(listener),
    );
    for _ in 0..3 {
        assert!(exchange(addr, "/cgi-bin/ok").await.contains(" 200 "));
        assert!(exchange(addr, "/cgi-bin/dies").await.contains(" 502 "));
        assert!(exchange(addr, "/cgi-bin/garbage").await.contains(" 502 "));
        assert!(exchange(addr, "/cgi-bin/missing").await.contains(" 404 "));
        assert!(exchange(addr, "/cgi-bin/%2e%2e/x").await.contains(" 400 "));
        assert!(exchange(addr, "/cgi-bin/slow").await.contains(" 504 "));
        // The client leaves while the body streams.
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /cgi-bin/talks HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = timeout(T, tcp.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0);
    }
    // One script left running when the server stops.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /cgi-bin/talks HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    timeout(T, tcp.read(&mut buf)).await.unwrap().unwrap();
    server.abort();
    let _ = timeout(T, server).await.unwrap();
    drop(tcp);

    // Kills and reaps finish asynchronously: wait (bounded) for the count to come back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = open_fd_count().unwrap();
        if now == before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fds before {before}, after {now}: {}",
            fd_list()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_dir_all(&root);
}
