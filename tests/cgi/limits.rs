//! Timeouts, the child limit, clients that leave, servers that stop: no script outlives
//! its request.

use super::support::*;

#[tokio::test]
async fn timeout_kills_the_group_that_ignores_sigterm() {
    let root = Root::new();
    root.script(
        "stuck",
        "#!/bin/sh\ntrap '' TERM\nsleep 1000 &\necho $$ $! > \"$PIDS/stuck-$$\"\nwait\n",
    );
    root.script(
        "late",
        "#!/bin/sh\ntrap '' TERM\necho $$ > \"$PIDS/late-$$\"\nprintf 'Content-Type: text/plain\\n\\npartial'\nexec sleep 1000\n",
    );
    let logs = Logs::default();
    // Long enough for `late` to print its headers first even on a loaded machine.
    let server = start(root.cgi(&logs).timeout(Duration::from_millis(1500))).await;
    let (resp, _) = get(server.addr, "/cgi-bin/stuck").await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(root.recorded_pids().len(), 2);
    root.assert_no_process_left().await;
    logs.wait_for("\"GET /cgi-bin/stuck\" 504 ").await;
    assert!(logs.has("signal=9"));

    // Headers already sent: the response is cut, not completed.
    let answer = raw(
        server.addr,
        b"GET /cgi-bin/late HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        !answer.ends_with("0\r\n\r\n"),
        "a cut response has no last chunk: {answer}"
    );
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn limit_answers_503_or_queues() {
    let root = Root::new();
    let fifo = root.fifo("hold");
    root.script(
        "hold",
        "#!/bin/sh\necho $$ > \"$PIDS/hold-$$\"\nprintf 'Content-Type: text/plain\\n\\nheld '\nread x < \"$HOLD\"\necho done\n",
    );
    root.script(
        "quick",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nquick'\n",
    );
    let logs = Logs::default();
    let server = start(root.cgi(&logs).max_children(1).env("HOLD", &fifo)).await;
    let mut first = connect(server.addr).await;
    let held = timeout(
        T,
        first.send_request(req("GET", "/cgi-bin/hold", Bytes::new())),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(held.status(), StatusCode::OK);
    // The first script is running (its headers came): the second request is refused.
    let (resp, _) = get(server.addr, "/cgi-bin/quick").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    tokio::task::spawn_blocking(move || std::fs::write(fifo, "go\n"))
        .await
        .unwrap()
        .unwrap();
    let body = timeout(T, resp_body(held)).await.unwrap();
    assert_eq!(body, b"held done\n");
    // The slot is free again once the first script has ended.
    logs.wait_for("\"GET /cgi-bin/hold\" 200").await;
    let (resp, body) = get(server.addr, "/cgi-bin/quick").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body, b"quick");
    drop(first);
    server.stop().await;
    root.assert_no_process_left().await;

    // A local redirect runs its second script in the first one's slot.
    let root2 = Root::new();
    root2.script(
        "first",
        "#!/bin/sh\nprintf 'Location: /cgi-bin/second\\n\\n'\nhead -c 200000 /dev/zero\n",
    );
    root2.script(
        "second",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nsecond'\n",
    );
    let server = start(root2.cgi(&logs).max_children(1)).await;
    for i in 1..=3 {
        let (resp, body) = get(server.addr, "/cgi-bin/first").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body, b"second");
        // The slot is free once the second script has ended (its access line).
        logs.wait_count("\"GET /cgi-bin/second\" 200", i).await;
    }
    server.stop().await;
    root2.assert_no_process_left().await;

    // With a queue, the second request waits for the slot instead.
    let root = Root::new();
    let fifo = root.fifo("hold");
    root.script(
        "hold",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nheld '\nread x < \"$HOLD\"\necho done\n",
    );
    root.script(
        "quick",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nquick'\n",
    );
    let server = start(
        root.cgi(&logs)
            .max_children(1)
            .queue(Duration::from_secs(15))
            .env("HOLD", &fifo),
    )
    .await;
    let mut first = connect(server.addr).await;
    let resp = timeout(
        T,
        first.send_request(req("GET", "/cgi-bin/hold", Bytes::new())),
    )
    .await
    .unwrap()
    .unwrap();
    let addr = server.addr;
    let second = tokio::spawn(async move { get(addr, "/cgi-bin/quick").await });
    tokio::task::spawn_blocking(move || std::fs::write(fifo, "go\n"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(timeout(T, resp_body(resp)).await.unwrap(), b"held done\n");
    let (resp, body) = timeout(T, second).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body, b"quick");
    drop(first);
    server.stop().await;
}

#[tokio::test]
async fn client_disconnect_kills_the_script() {
    let root = Root::new();
    let before = root.fifo("before");
    root.script(
        "silent",
        "#!/bin/sh\nsleep 1000 &\necho $$ $! > \"$PIDS/silent-$$\"\necho ready > \"$BEFORE\"\nwait\n",
    );
    root.script(
        "talker",
        "#!/bin/sh\nsleep 1000 &\necho $$ $! > \"$PIDS/talker-$$\"\nprintf 'Content-Type: text/plain\\n\\nhello\\n'\nwait\n",
    );
    let logs = Logs::default();
    let server = start(root.cgi(&logs).env("BEFORE", &before)).await;

    // Before headers: the script has said nothing yet when the client leaves.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /cgi-bin/silent HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let ready = tokio::task::spawn_blocking(move || std::fs::read_to_string(before));
    assert_eq!(
        timeout(T, ready).await.unwrap().unwrap().unwrap(),
        "ready\n"
    );
    drop(tcp);
    logs.wait_for("\"GET /cgi-bin/silent\"").await;
    root.assert_no_process_left().await;

    // After headers: the body is being streamed when the client leaves.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /cgi-bin/talker HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = String::new();
    while !got.contains("hello") {
        let n = timeout(T, tcp.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0);
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(tcp);
    logs.wait_for("\"GET /cgi-bin/talker\"").await;
    assert_eq!(root.recorded_pids().len(), 4);
    root.assert_no_process_left().await;
    server.stop().await;
}

#[tokio::test]
async fn stopping_the_server_kills_running_scripts() {
    let root = Root::new();
    root.script(
        "forever",
        "#!/bin/sh\nsleep 1000 &\necho $$ $! > \"$PIDS/f-$$\"\nprintf 'Content-Type: text/plain\\n\\nstarted\\n'\nwait\n",
    );
    let logs = Logs::default();
    let server = start(root.cgi(&logs)).await;
    let mut s = connect(server.addr).await;
    let resp = timeout(
        T,
        s.send_request(req("GET", "/cgi-bin/forever", Bytes::new())),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn a_client_gone_is_noticed_while_the_script_ignores_its_stdin() {
    let root = Root::new();
    let fifo = root.fifo("never");
    // Reads nothing of its (300 KB, so file-backed) body; blocks on a fifo nobody opens.
    root.script(
        "deaf",
        "#!/bin/sh\nread x < \"$NEVER\"\nprintf 'Content-Type: text/plain\\n\\nlate'\n",
    );
    let logs = Logs::default();
    let server = start(root.cgi(&logs).env("NEVER", &fifo)).await;
    {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let mut req =
            b"POST /cgi-bin/deaf HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n".to_vec();
        req.extend(std::iter::repeat_n(b'b', 300_000));
        tcp.write_all(&req).await.unwrap();
        // The script is running once its pid is recorded.
        timeout(T, async {
            while root.recorded_pids().is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the script starts");
    }
    logs.wait_for("\"POST /cgi-bin/deaf\" 499").await;
    root.assert_no_process_left().await;
    server.stop().await;
}

#[test]
fn defaults_bound_one_client() {
    let cgi = format!("{:?}", Cgi::root("/tmp"));
    assert!(cgi.contains("timeout: Some(300s)"), "{cgi}");
    let n = brood::cgi::default_max_children();
    assert!(n >= 16);
    assert!(cgi.contains(&format!("max_children: Some({n})")), "{cgi}");
    assert_eq!(brood::cgi::DEFAULT_BODY_TIMEOUT, Duration::from_secs(30));
    assert_eq!(brood::cgi::DEFAULT_MAX_BODY, 1 << 30);
}

#[tokio::test]
async fn a_graceful_stop_sends_sigterm_then_sigkill() {
    let root = Root::new();
    let marks = root.dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    root.script(
        "polite",
        "#!/bin/sh\ntrap 'echo term > \"$MARKS/polite\"; exit 0' TERM\nprintf 'Content-Type: text/plain\\n\\nrunning'\nwhile :; do sleep 0.05; done\n",
    );
    root.script(
        "stubborn",
        "#!/bin/sh\ntrap '' TERM\nprintf 'Content-Type: text/plain\\n\\nrunning'\nwhile :; do sleep 0.05; done\n",
    );
    let logs = Logs::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        root.cgi(&logs)
            .env("MARKS", &marks)
            .serve_until(listener, async {
                let _ = stopped.await;
            }),
    );
    let mut held = Vec::new();
    for name in ["polite", "stubborn"] {
        let mut s = connect(addr).await;
        let resp = timeout(
            T,
            s.send_request(req("GET", &format!("/cgi-bin/{name}"), Bytes::new())),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        held.push((s, resp));
    }
    stop.send(()).unwrap();
    timeout(T, server).await.unwrap().unwrap().unwrap();
    assert_eq!(
        std::fs::read_to_string(marks.join("polite")).unwrap(),
        "term\n"
    );
    assert!(logs.has("\"GET /cgi-bin/polite\" 200"));
    logs.wait_for("signal=9").await;
    root.assert_no_process_left().await;
}

/// A chunked POST of `size` bytes, the connection closed after the answer.
fn chunked_post(path: &str, size: usize) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for piece in 0..size.div_ceil(65536) {
        let n = (size - piece * 65536).min(65536);
        request.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        request.extend(std::iter::repeat_n(b'b', n));
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request
}

#[tokio::test]
async fn bodies_in_temporary_files_share_a_disk_budget_beyond_which_503_says_why() {
    let root = Root::new();
    let go = root.dir.join("go");
    // Reads its body (a temporary file: over the 256 KiB kept in memory), then holds it
    // (stdin stays open) until the test says go.
    root.script(
        "hold",
        &format!(
            "#!/bin/sh\nn=$(wc -c)\nwhile [ ! -e '{}' ]; do sleep 0.02; done\nprintf 'Content-Type: text/plain\\n\\n%s' \"$n\"\n",
            go.display()
        ),
    );
    let logs = Logs::default();
    let mib = 1024 * 1024;
    let server = start(root.cgi(&logs).max_spool(5 * mib as u64 / 2)).await;
    let addr = server.addr;
    // Two 1 MiB bodies at once fit in 2.5 MiB of disk; their scripts hold them.
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { raw(addr, &chunked_post("/cgi-bin/hold", mib)).await }))
        .collect();
    let deadline = tokio::time::Instant::now() + T;
    while root.recorded_pids().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the two scripts did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A third does not: 503, saying why, and no script runs for it.
    let answer = raw(addr, &chunked_post("/cgi-bin/hold", mib)).await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(
        answer.contains("space for request bodies is full"),
        "{answer}"
    );
    assert_eq!(root.recorded_pids().len(), 2);
    // A small body stays in memory and still goes through.
    std::fs::write(&go, "").unwrap();
    let small = raw(addr, &chunked_post("/cgi-bin/hold", 1000)).await;
    assert!(small.starts_with("HTTP/1.1 200 "), "{small}");
    for h in held {
        let answer = timeout(T, h).await.unwrap().unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(answer.contains(&mib.to_string()), "{answer}");
    }
    // Their scripts have ended: the disk is theirs again, for a body as big.
    logs.wait_count("\"POST /cgi-bin/hold\" 200", 3).await;
    let again = raw(addr, &chunked_post("/cgi-bin/hold", 2 * mib)).await;
    assert!(again.starts_with("HTTP/1.1 200 "), "{again}");
    server.stop().await;
    root.assert_no_process_left().await;
}
