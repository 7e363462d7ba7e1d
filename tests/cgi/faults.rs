//! Request bodies that break off or stall, responses that end early or late, answers of
//! the server's own, and the access log.

use super::support::*;

/// Parses a chunked body: `(data, whether the last chunk came)`.
fn dechunk(mut b: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return (out, true);
        }
        let start = nl + 2;
        if b.len() < start + size {
            out.extend_from_slice(&b[start..]);
            return (out, false);
        }
        out.extend_from_slice(&b[start..start + size]);
        b = &b[(start + size + 2).min(b.len())..];
    }
}

/// Sends `bytes` while reading the answer: a server that answers early (413) and closes
/// may reset the connection under a client still writing; what it sent first is kept.
async fn early_answer(addr: SocketAddr, bytes: &[u8]) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = tcp.into_split();
    let bytes = bytes.to_vec();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&bytes).await;
        w
    });
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok(n)) = timeout(T, r.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    writer.abort();
    String::from_utf8_lossy(&out).into_owned()
}

fn split(answer: &str) -> (&str, &str) {
    let i = answer.find("\r\n\r\n").expect("a head");
    (&answer[..i], &answer[i + 4..])
}

#[tokio::test]
async fn big_chunked_body_goes_through_a_file_with_content_length_and_max_body() {
    let root = Root::new();
    root.script("env.py", &env_py());
    let logs = Logs::default();
    let server = start(root.cgi(&logs).max_body(3_000_000)).await;
    let body: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut request = b"POST /cgi-bin/env.py HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in body.chunks(70_000) {
        request.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        request.extend_from_slice(piece);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(server.addr, &request).await;
    let (head, rest) = split(&answer);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (data, _) = dechunk(rest.as_bytes());
    let v = json(&data);
    assert_eq!(v["body_len"], body.len());
    assert_eq!(v["env"]["CONTENT_LENGTH"], body.len().to_string());

    // Over --max-body: 413, chunked or announced, and no script runs.
    let before = root.recorded_pids().len();
    let mut big = b"POST /cgi-bin/env.py HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        big.extend_from_slice(format!("{:x}\r\n", 1_000_000).as_bytes());
        big.extend(std::iter::repeat_n(b'q', 1_000_000));
        big.extend_from_slice(b"\r\n");
    }
    big.extend_from_slice(b"0\r\n\r\n");
    let answer = early_answer(server.addr, &big).await;
    assert!(
        answer.starts_with("HTTP/1.1 413 "),
        "{}",
        &answer[..80.min(answer.len())]
    );
    let answer = raw(
        server.addr,
        b"POST /cgi-bin/env.py HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("larger than this server takes"), "{answer}");
    assert_eq!(root.recorded_pids().len(), before);
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn a_broken_body_never_reaches_a_script() {
    let root = Root::new();
    root.script("env.py", &env_py());
    let logs = Logs::default();
    let server = start(root.cgi(&logs).body_timeout(Duration::from_secs(1))).await;
    // A bad chunk size: 400, and no script saw a short body as a whole one.
    let answer = raw(
        server.addr,
        b"POST /cgi-bin/env.py HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    // A client that leaves mid-body, or half-closes there (chunked or not): logged 400 as
    // nginx logs it (499 is for a whole request whose client left before the answer),
    // nothing ran.
    let cut = [
        &b"POST /cgi-bin/env.py HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly this"[..],
        b"POST /cgi-bin/env.py HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"POST /cgi-bin/env.py HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    ];
    let mut n = 0;
    for request in cut {
        for half in [false, true] {
            let mut tcp = TcpStream::connect(server.addr).await.unwrap();
            tcp.write_all(request).await.unwrap();
            if half {
                tcp.shutdown().await.unwrap();
                let mut answer = Vec::new();
                let _ = timeout(T, tcp.read_to_end(&mut answer)).await.unwrap();
            }
            drop(tcp);
            n += 1;
            logs.wait_count("\"POST /cgi-bin/env.py\" 400", n + 1).await;
        }
    }
    assert!(!logs.has("\"POST /cgi-bin/env.py\" 499"));
    // Trickling clients hold no script: each gets 408 after the idle time.
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(b"POST /cgi-bin/env.py HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
            .await
            .unwrap();
        clients.push(tcp);
    }
    for mut tcp in clients {
        let mut out = Vec::new();
        timeout(T, tcp.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert!(
            out.starts_with(b"HTTP/1.1 408 "),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
    assert!(
        root.recorded_pids().is_empty(),
        "a script ran on a broken body"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_complete_response_lets_the_script_finish_on_its_own() {
    let root = Root::new();
    let marks = root.dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    // Complete by Content-Length, then work on after closing stdout (fossil does).
    root.script(
        "sized",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\nContent-Length: 5\\n\\nhello'\nexec >&-\nread x < \"$GATE\"\necho after > \"$MARKS/sized\"\n",
    );
    root.script(
        "notmod",
        "#!/bin/sh\nprintf 'Status: 304 Not Modified\\n\\n'\nexec >&-\nread x < \"$GATE2\"\necho after > \"$MARKS/notmod\"\n",
    );
    root.script(
        "bulky",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nhead -c 200000 /dev/zero\n",
    );
    let gate = root.fifo("gate");
    let gate2 = root.fifo("gate2");
    let logs = Logs::default();
    let cgi = root
        .cgi(&logs)
        .env("GATE", &gate)
        .env("GATE2", &gate2)
        .env("MARKS", &marks);
    let server = start(cgi).await;
    let mut s = connect(server.addr).await;
    let (resp, body) = send(&mut s, req("GET", "/cgi-bin/sized", Bytes::new())).await;
    assert_eq!((resp.status(), &body[..]), (StatusCode::OK, &b"hello"[..]));
    let (resp, _) = send(&mut s, req("GET", "/cgi-bin/notmod", Bytes::new())).await;
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    // HEAD: the script writes its whole body (200 KB, more than a pipe holds) and exits 0.
    let (resp, body) = send(&mut s, req("HEAD", "/cgi-bin/bulky", Bytes::new())).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(body.is_empty());
    logs.wait_for("\"HEAD /cgi-bin/bulky\" 200 0B").await;
    assert!(logs.has("\"HEAD /cgi-bin/bulky\" 200 0B"));
    // Both responses are done; the scripts still run. Let them go on.
    for g in [gate, gate2] {
        tokio::task::spawn_blocking(move || std::fs::write(g, "go\n"))
            .await
            .unwrap()
            .unwrap();
    }
    logs.wait_for("\"GET /cgi-bin/sized\" 200 5B").await;
    logs.wait_for("\"GET /cgi-bin/notmod\" 304").await;
    assert_eq!(logs.count("exit=0"), 3, "a finished script was killed");
    assert_eq!(
        std::fs::read_to_string(marks.join("sized")).unwrap(),
        "after\n"
    );
    assert_eq!(
        std::fs::read_to_string(marks.join("notmod")).unwrap(),
        "after\n"
    );
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn a_client_that_leaves_early_sends_sigterm_first() {
    let root = Root::new();
    let marks = root.dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    root.script(
        "polite",
        "#!/bin/sh\ntrap 'echo term > \"$MARKS/term\"; exit 0' TERM\nprintf 'Content-Type: text/plain\\n\\nstart'\nwhile :; do sleep 0.05; done\n",
    );
    let logs = Logs::default();
    let server = start(root.cgi(&logs).env("MARKS", &marks)).await;
    {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(b"GET /cgi-bin/polite HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("start") {
            let n = timeout(T, tcp.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
    }
    logs.wait_for("\"GET /cgi-bin/polite\"").await;
    assert_eq!(
        std::fs::read_to_string(marks.join("term")).unwrap(),
        "term\n"
    );
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn a_script_that_dies_after_its_headers_gives_a_truncated_response() {
    let root = Root::new();
    root.script(
        "segv",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\npartial'\nkill -SEGV $$\n",
    );
    let logs = Logs::default();
    let server = start(root.cgi(&logs)).await;
    let answer = early_answer(
        server.addr,
        b"GET /cgi-bin/segv HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (head, rest) = split(&answer);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (data, complete) = dechunk(rest.as_bytes());
    assert_eq!(data, b"partial");
    assert!(
        !complete,
        "a script killed by a signal gave a complete response: {answer:?}"
    );
    logs.wait_for("signal=11").await;
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn a_setsid_grandchild_holding_stdout_does_not_outlast_the_timeout() {
    let root = Root::new();
    // The grandchild leaves the group and keeps stdout open; its pid is recorded.
    root.script(
        "escape",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nbegun'\nsetsid sh -c 'echo $$ > \"$PIDS/esc\"; exec sleep 1000' &\nwait\n",
    );
    let logs = Logs::default();
    let server = start(root.cgi(&logs).timeout(Duration::from_millis(1500))).await;
    let answer = early_answer(
        server.addr,
        b"GET /cgi-bin/escape HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (_, complete) = dechunk(split(&answer).1.as_bytes());
    assert!(!complete);
    server.stop().await;
    // The escaped grandchild is outside any group brood ends: clean it up here.
    for pid in root.recorded_pids() {
        // SAFETY: kill(2) takes plain integers; no memory is involved.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn server_answers_say_what_happened() {
    let root = Root::new();
    root.script(
        "ok",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nok'\n",
    );
    let logs = Logs::default();
    let server = start(root.cgi(&logs)).await;
    let answer = raw(
        server.addr,
        b"GET /cgi-bin/ok HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let answer = raw(server.addr, b"GET /cgi-bin/ok HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200 "), "{answer}");
    let mut big = b"GET /cgi-bin/ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 200 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let answer = early_answer(server.addr, &big).await;
    assert!(
        answer.starts_with("HTTP/1.1 431 "),
        "{}",
        &answer[..60.min(answer.len())]
    );
    // More than 100 headers: 431 with the short body every other error has.
    let mut many = b"GET /cgi-bin/ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_vec();
    for i in 0..150 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let answer = raw(server.addr, &many).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert!(
        answer.ends_with("431 Request Header Fields Too Large\nThe request headers are larger than this server takes.\n"),
        "{answer}"
    );
    let answer = raw(
        server.addr,
        b"GET /cgi-bin/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    assert!(
        answer.ends_with("404 Not Found\nNo script at this path.\n"),
        "{answer}"
    );
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn access_lines_have_a_time_and_common_format() {
    let root = Root::new();
    root.script(
        "ok",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nfine'\n",
    );
    let logs = Logs::default();
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let (l2, logs2) = (lines.clone(), logs.clone());
    let cgi = root.cgi(&logs).on_log(move |l| {
        l2.lock()
            .unwrap()
            .push(l.format(brood::cgi::LogFormat::Combined));
        logs2.push(l);
    });
    let server = start(cgi).await;
    let mut s = connect(server.addr).await;
    let r = Request::builder()
        .uri("/cgi-bin/ok?x=1")
        .header("host", "h")
        .header("user-agent", "tester/1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(&mut s, r).await;
    logs.wait_for("\"GET /cgi-bin/ok?x=1\" 200").await;
    let line = lines
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("/cgi-bin/ok"))
        .unwrap()
        .clone();
    // 127.0.0.1 - - [30/Nov/2026:17:04:05 +0000] "GET /cgi-bin/ok?x=1 HTTP/1.1" 200 4 "-" "tester/1"
    let (before, after) = line.split_once(" [").unwrap();
    assert_eq!(before, "127.0.0.1 - -");
    let (stamp, rest) = after.split_once("] ").unwrap();
    assert_eq!(stamp.len(), "30/Nov/2026:17:04:05 +0000".len(), "{stamp}");
    assert!(stamp.ends_with(" +0000"));
    assert_eq!(
        rest,
        "\"GET /cgi-bin/ok?x=1 HTTP/1.1\" 200 4 \"-\" \"tester/1\""
    );
    // brood's own format starts with an RFC 3339 time.
    let brood_line = LogLine::Error("x".into()).format(brood::cgi::LogFormat::Brood);
    assert_eq!(&brood_line[4..5], "-");
    assert!(brood_line[..24].ends_with('Z'), "{brood_line}");
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn output_already_in_the_pipe_goes_out_as_one_frame() {
    let root = Root::new();
    // One write of the header block and 40 KB: all of it is in the pipe before brood reads.
    root.script(
        "burst",
        &format!(
            "#!{}\nimport os\nwith open(os.path.join(os.environ['PIDS'], 'py-%d' % os.getpid()), 'w') as f: f.write(str(os.getpid()))\ndata = b'Content-Type: text/plain\\r\\n\\r\\n' + b'x' * 40000\nwhile data: data = data[os.write(1, data):]\n",
            python()
        ),
    );
    let logs = Logs::default();
    let server = start(root.cgi(&logs)).await;
    let answer = raw(
        server.addr,
        b"GET /cgi-bin/burst HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (head, mut rest) = split(&answer);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut sizes = Vec::new();
    loop {
        let nl = rest.find("\r\n").unwrap();
        let size = usize::from_str_radix(&rest[..nl], 16).unwrap();
        if size == 0 {
            break;
        }
        sizes.push(size);
        rest = &rest[nl + 2 + size + 2..];
    }
    assert_eq!(sizes.iter().sum::<usize>(), 40000);
    assert_eq!(sizes, [40000], "not coalesced");
    server.stop().await;
    root.assert_no_process_left().await;
}
