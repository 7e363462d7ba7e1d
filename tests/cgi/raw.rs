//! Raw mode, the libuv guide's CGI: the connection is the program's stdin and stdout.

use super::support::*;

#[tokio::test]
async fn raw_mode_with_a_tick_script() {
    let root = Root::new();
    let tick = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cgi-bin/tick.sh");
    let logs = Logs::default();
    let log2 = logs.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(
        Raw::new("sh")
            .args([tick.as_os_str().to_owned()])
            .env("PIDS", root.pids())
            .on_log(move |l| log2.push(l))
            .serve(listener),
    );
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let local = tcp.local_addr().unwrap();
            let mut text = String::new();
            timeout(T, tcp.read_to_string(&mut text))
                .await
                .unwrap()
                .unwrap();
            (local, text)
        }));
    }
    let mut sizes = Vec::new();
    for c in clients {
        let (local, text) = c.await.unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 11, "{text}");
        assert_eq!(lines[0], format!("from 127.0.0.1:{}", local.port()));
        assert!(lines[1..].iter().all(|l| *l == "tick"), "{text}");
        sizes.push(text.len());
    }
    // The access line counts what the program wrote to the connection.
    for &n in &sizes {
        let times = sizes.iter().filter(|&&m| m == n).count();
        logs.wait_count(&format!("\"- sh\" 0 {n}B"), times).await;
    }
    task.abort();
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn raw_mode_timeout_kills_the_group_and_closes_the_connection() {
    let root = Root::new();
    let logs = Logs::default();
    let log2 = logs.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(
        Raw::new("sh")
            .args([
                "-c",
                "trap '' TERM; sleep 1000 & echo $$ $! > \"$PIDS/raw\"; echo started; wait",
            ])
            .env("PIDS", root.pids())
            .timeout(Duration::from_millis(1500))
            .on_log(move |l| log2.push(l))
            .serve(listener),
    );
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut text = String::new();
    // EOF comes only when both the shell and its `sleep` (which holds the socket too) die.
    timeout(T, tcp.read_to_string(&mut text))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text, "started\n");
    logs.wait_for("timed out, ended").await;
    assert_eq!(root.recorded_pids().len(), 2);
    root.assert_no_process_left().await;
    task.abort();
}

#[tokio::test]
async fn raw_mode_program_writes_to_a_blocking_socket() {
    // A program that writes far more than the socket buffer holds must block, not fail
    // with EAGAIN: its stdout is the connection, in blocking mode as programs expect.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let logs = Logs::default();
    let log2 = logs.clone();
    let task = tokio::spawn(
        Raw::new("head")
            .args(["-c", "20000000", "/dev/zero"])
            .on_log(move |l| log2.push(l))
            .serve(listener),
    );
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut n = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    timeout(T, async {
        loop {
            let got = tcp.read(&mut buf).await.unwrap();
            if got == 0 {
                break;
            }
            n += got;
        }
    })
    .await
    .unwrap();
    assert_eq!(n, 20_000_000);
    logs.wait_for("\"- head\" 0 20000000B").await;
    assert!(logs.has("exit=0"), "head failed");
    task.abort();
}

#[tokio::test]
async fn raw_mode_ends_the_group_of_a_client_that_left() {
    let root = Root::new();
    let logs = Logs::default();
    let log2 = logs.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // A program that would wait far past the test (the timeout is 300 s), in a group with
    // a background job.
    let task = tokio::spawn(
        Raw::new("sh")
            .args([
                "-c",
                "sleep 1000 & echo $$ $! > \"$PIDS/raw-$$\"; echo started; wait",
            ])
            .env("PIDS", root.pids())
            .on_log(move |l| log2.push(l))
            .serve(listener),
    );
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut line = [0u8; 8];
    timeout(T, tcp.read_exact(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&line, b"started\n");
    drop(tcp);
    logs.wait_for("client gone, ended").await;
    root.assert_no_process_left().await;
    logs.wait_for("\"- sh\" 0 8B").await;
    task.abort();

    // Data first, then the close: the program sees the data; its group still ends, with
    // SIGKILL after the grace for a program that ignores SIGTERM.
    let root = Root::new();
    let logs = Logs::default();
    let log2 = logs.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(
        Raw::new("sh")
            .args([
                "-c",
                "trap '' TERM; echo $$ > \"$PIDS/raw-$$\"; read x; echo \"got $x\"; exec sleep 1000",
            ])
            .env("PIDS", root.pids())
            .on_log(move |l| log2.push(l))
            .serve(listener),
    );
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"hello\n").await.unwrap();
    let mut got = [0u8; 10];
    timeout(T, tcp.read_exact(&mut got)).await.unwrap().unwrap();
    assert_eq!(&got, b"got hello\n");
    drop(tcp);
    logs.wait_for("client gone, ended").await;
    root.assert_no_process_left().await;
    logs.wait_for("signal=9").await;
    task.abort();
}
