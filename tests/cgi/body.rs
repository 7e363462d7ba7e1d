//! Bodies both ways: 5 MB echoed byte-exact, chunked uploads, 10 MB streamed out while
//! the script still runs.

use super::support::*;

#[tokio::test]
async fn post_5mb_binary_echoed_byte_exact() {
    let root = Root::new();
    root.script(
        "echo",
        "#!/bin/sh\necho $$ > \"$PIDS/echo-$$\"\nprintf 'Content-Type: application/octet-stream\\n\\n'\nexec cat\n",
    );
    let logs = Logs::default();
    let server = start(root.cgi(&logs)).await;
    let data: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut s = connect(server.addr).await;
    let (resp, body) = send(&mut s, req("POST", "/cgi-bin/echo", data.clone())).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body.len(), data.len());
    assert!(body == data, "echoed body differs");
    // Keep-alive: the same connection serves a second request.
    let (resp, body) = send(&mut s, req("POST", "/cgi-bin/echo", &b"again"[..])).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body, b"again");
    logs.wait_for("\"POST /cgi-bin/echo\" 200 5B").await;
    assert!(logs.has("200 5242880B"));
    drop(s);
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn chunked_upload_is_dechunked() {
    let root = Root::new();
    root.script("env.py", &env_py());
    let logs = Logs::default();
    let server = start(root.cgi(&logs)).await;
    let mut request = b"POST /cgi-bin/env.py HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut total = 0;
    for size in [1usize, 10, 4096, 100_000, 3] {
        request.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        request.extend(std::iter::repeat_n(b'z', size));
        request.extend_from_slice(b"\r\n");
        total += size;
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(server.addr, &request).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    // The response is chunked too: find the JSON object inside.
    let json_text = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    let v: serde_json::Value = serde_json::from_str(json_text).unwrap();
    assert_eq!(v["body_len"], total);
    // De-chunked, buffered and announced (RFC 3875 4.1.2), not passed on as chunked.
    assert_eq!(v["env"]["CONTENT_LENGTH"], total.to_string());
    assert!(v["env"].get("HTTP_TRANSFER_ENCODING").is_none());
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn ten_mb_streams_before_the_script_ends() {
    let root = Root::new();
    let fifo = root.fifo("release");
    root.script(
        "big.py",
        &format!(
            "#!{}\n{}",
            python(),
            r#"
import os, sys
with open(os.path.join(os.environ["PIDS"], "big"), "w") as f:
    f.write(str(os.getpid()))
out = sys.stdout.buffer
out.write(b"Content-Type: application/octet-stream\n\n")
block = bytes(range(256)) * 4096
for _ in range(10):
    out.write(block)
out.flush()
with open(os.environ["RELEASE"]) as f:
    f.read()
out.write(b"END")
"#
        ),
    );
    let logs = Logs::default();
    let server = start(root.cgi(&logs).env("RELEASE", &fifo)).await;
    let mut s = connect(server.addr).await;
    let resp = timeout(
        T,
        s.send_request(req("GET", "/cgi-bin/big.py", Bytes::new())),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body: Incoming = resp.into_body();
    let mut got = 0usize;
    while got < 10 * 1024 * 1024 {
        let frame = timeout(T, body.frame()).await.unwrap().unwrap().unwrap();
        got += frame.data_ref().map_or(0, |d| d.len());
    }
    assert_eq!(got, 10 * 1024 * 1024);
    // The script is still running, blocked on the fifo.
    let pid = root.recorded_pids()[0];
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert!(!logs.has("/cgi-bin/big.py\" 200"));
    let fifo2 = fifo.clone();
    tokio::task::spawn_blocking(move || std::fs::write(fifo2, "go"))
        .await
        .unwrap()
        .unwrap();
    let rest = timeout(T, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(&rest[..], b"END");
    logs.wait_for("\"GET /cgi-bin/big.py\" 200 10485763B").await;
    drop(s);
    server.stop().await;
    root.assert_no_process_left().await;
}
