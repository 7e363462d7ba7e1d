//! The script's header block: Status, Location (local and client), Content-Type, NPH,
//! and the 5xx answers for scripts that fail to give one.

use super::support::*;

#[tokio::test]
async fn status_location_content_type_and_nph() {
    let root = Root::new();
    root.script(
        "status",
        "#!/bin/sh\nprintf 'Status: 418 Short And Stout\\r\\nContent-Type: text/x-tea\\r\\nX-Extra: yes\\r\\n\\r\\nbody:%s' \"$QUERY_STRING\"\n",
    );
    root.script(
        "local",
        "#!/bin/sh\nprintf 'Location: /cgi-bin/status?from=local\\n\\n'\n",
    );
    root.script(
        "away",
        "#!/bin/sh\nprintf 'Location: http://example.com/x\\n\\n'\n",
    );
    root.script(
        "loop",
        "#!/bin/sh\nprintf 'Location: /cgi-bin/loop\\n\\n'\n",
    );
    root.script("created", "#!/bin/sh\nprintf 'Status: 201\\nLocation: http://example.com/new\\nContent-Type: text/plain\\n\\nmade'\n");
    root.script(
        "typeonly",
        "#!/bin/sh\nprintf 'Content-Type: text/html; charset=utf-8\\n\\n<p>hi</p>'\n",
    );
    root.script(
        "nph-raw",
        "#!/bin/sh\nprintf 'HTTP/1.1 299 Own Words\\r\\nContent-Type: text/plain\\r\\nX-Nph: 1\\r\\n\\r\\nraw body'\n",
    );
    let logs = Logs::default();
    let server = start(root.cgi(&logs)).await;
    let mut s = connect(server.addr).await;

    let (resp, body) = send(&mut s, req("GET", "/cgi-bin/status?q", Bytes::new())).await;
    assert_eq!(resp.status().as_u16(), 418);
    assert_eq!(resp.headers()["content-type"], "text/x-tea");
    assert_eq!(resp.headers()["x-extra"], "yes");
    assert!(resp.headers().get("status").is_none());
    assert_eq!(body, b"body:q");

    let (resp, body) = send(&mut s, req("HEAD", "/cgi-bin/status", Bytes::new())).await;
    assert_eq!(resp.status().as_u16(), 418);
    assert_eq!(resp.headers()["content-type"], "text/x-tea");
    assert!(body.is_empty());

    let (resp, body) = send(&mut s, req("GET", "/cgi-bin/local", Bytes::new())).await;
    assert_eq!(
        resp.status().as_u16(),
        418,
        "local redirect re-entered the server"
    );
    assert_eq!(body, b"body:from=local");

    let (resp, _) = send(&mut s, req("GET", "/cgi-bin/away", Bytes::new())).await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(resp.headers()["location"], "http://example.com/x");

    let (resp, body) = send(&mut s, req("GET", "/cgi-bin/created", Bytes::new())).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["location"], "http://example.com/new");
    assert_eq!(body, b"made");

    let (resp, body) = send(&mut s, req("GET", "/cgi-bin/typeonly", Bytes::new())).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(body, b"<p>hi</p>");

    let (resp, _) = send(&mut s, req("GET", "/cgi-bin/loop", Bytes::new())).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);

    let answer = raw(
        server.addr,
        b"GET /cgi-bin/nph-raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 299 Own Words\r\n"), "{answer}");
    assert!(answer.contains("x-nph: 1\r\n"), "{answer}");
    assert!(answer.contains("raw body"), "{answer}");

    let answer = raw(
        server.addr,
        b"GET /cgi-bin/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 418 Short And Stout\r\n"),
        "{answer}"
    );
    drop(s);
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn faults_give_502_and_stderr_is_logged() {
    let root = Root::new();
    root.script("dies", "#!/bin/sh\necho about to fail >&2\nexit 3\n");
    root.script(
        "garbage",
        "#!/bin/sh\nprintf 'this is not a header\\n\\nbody'\n",
    );
    root.script(
        "noblank",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n'\n",
    );
    root.script(
        "huge",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n'\ni=0; while [ $i -lt 3000 ]; do printf 'X-Pad-%d: %s\\n' $i aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa; i=$((i+1)); done\nprintf '\\nbody'\n",
    );
    root.script("badinterp", "#!/no/such/interpreter\n");
    std::fs::write(root.www().join("plain.txt"), "not a program").unwrap();
    let logs = Logs::default();
    let server = start(root.cgi(&logs).max_header_bytes(16 * 1024)).await;
    for (path, status) in [
        ("/cgi-bin/dies", 502),
        ("/cgi-bin/garbage", 502),
        ("/cgi-bin/noblank", 502),
        ("/cgi-bin/huge", 502),
        ("/cgi-bin/plain.txt", 403),
        ("/cgi-bin/badinterp", 500),
        ("/cgi-bin/missing", 404),
        ("/cgi-bin/", 403),
        ("/elsewhere", 404),
    ] {
        let (resp, _) = get(server.addr, path).await;
        assert_eq!(resp.status().as_u16(), status, "{path}");
    }
    logs.wait_for("[/cgi-bin/dies] about to fail").await;
    logs.wait_for("\"GET /cgi-bin/dies\" 502 ").await;
    logs.wait_for("exit=3").await;
    server.stop().await;
    root.assert_no_process_left().await;
}
