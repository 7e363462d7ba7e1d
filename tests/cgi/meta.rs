//! Meta-variables: every one RFC 3875 names, and nothing of the server's environment.

use super::support::*;

#[tokio::test]
async fn every_meta_variable_and_nothing_else() {
    let root = Root::new();
    root.script("sub/env.py", &env_py());
    let logs = Logs::default();
    let cgi = root
        .cgi(&logs)
        .env("EXTRA", "1")
        .pass_env("HOME")
        .pass_env("BROOD_CGI_TEST_UNSET");
    let server = start(cgi).await;

    let mut s = connect(server.addr).await;
    let r = Request::builder()
        .method("POST")
        .uri("/cgi-bin/sub/env.py/extra/p%20ath?a=1&b=%20x")
        .header("host", "cgi.test:8080")
        .header("content-type", "text/plain")
        .header("x-custom", "one")
        .header("x-custom", "two")
        .header("proxy", "http://evil.example/")
        .header("authorization", "Basic YWxpY2U6c2VjcmV0")
        .header("x_underscore", "spoof")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let (resp, body) = send(&mut s, r).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v = json(&body);
    let env: HashMap<String, String> = serde_json::from_value(v["env"].clone()).unwrap();
    let www = std::fs::canonicalize(root.www()).unwrap();
    let www = www.to_str().unwrap();
    let want = [
        ("GATEWAY_INTERFACE", "CGI/1.1".to_string()),
        ("SERVER_PROTOCOL", "HTTP/1.1".into()),
        ("SERVER_NAME", "cgi.test".into()),
        ("SERVER_PORT", server.addr.port().to_string()),
        ("REQUEST_METHOD", "POST".into()),
        (
            "REQUEST_URI",
            "/cgi-bin/sub/env.py/extra/p%20ath?a=1&b=%20x".into(),
        ),
        ("QUERY_STRING", "a=1&b=%20x".into()),
        ("SCRIPT_NAME", "/cgi-bin/sub/env.py".into()),
        ("SCRIPT_FILENAME", format!("{www}/sub/env.py")),
        ("PATH_INFO", "/extra/p ath".into()),
        ("PATH_TRANSLATED", format!("{www}/extra/p ath")),
        ("DOCUMENT_ROOT", www.to_string()),
        ("CONTENT_LENGTH", "5".into()),
        ("CONTENT_TYPE", "text/plain".into()),
        ("REMOTE_ADDR", "127.0.0.1".into()),
        ("REMOTE_HOST", "127.0.0.1".into()),
        ("HTTP_HOST", "cgi.test:8080".into()),
        ("HTTP_X_CUSTOM", "one, two".into()),
        ("EXTRA", "1".into()),
        ("PATH", std::env::var("PATH").unwrap()),
    ];
    for (k, v) in &want {
        assert_eq!(env.get(*k), Some(v), "{k}");
    }
    assert!(env["SERVER_SOFTWARE"].starts_with("brood/"));
    // Credentials nobody checked never become a user (no --htpasswd here).
    assert!(!env.contains_key("REMOTE_USER"), "{env:?}");
    assert!(!env.contains_key("AUTH_TYPE"), "{env:?}");
    assert!(env["REMOTE_PORT"].parse::<u16>().is_ok());
    assert_eq!(v["cwd"].as_str().unwrap(), format!("{www}/sub"));
    assert_eq!(v["body_len"], 5);
    // httpoxy, credentials and spoofable names never reach the script.
    for k in [
        "HTTP_PROXY",
        "HTTP_AUTHORIZATION",
        "HTTP_X_UNDERSCORE",
        "HTTP_CONTENT_LENGTH",
    ] {
        assert!(!env.contains_key(k), "{k} must not be set");
    }
    // Nothing of the server's environment but PATH and what was passed.
    let allowed: Vec<&str> = want.iter().map(|(k, _)| *k).collect();
    for k in env.keys() {
        let ok = allowed.contains(&k.as_str())
            || [
                "SERVER_SOFTWARE", "REMOTE_PORT", "SERVER_ADDR", "REQUEST_SCHEME",
                "REDIRECT_STATUS", "PIDS", "HOME", "HTTP_X_CUSTOM",
            ]
            .contains(&k.as_str())
            // python3 itself may add these at startup.
            || k == "LC_CTYPE";
        assert!(ok, "unexpected variable {k}");
    }
    assert_eq!(env.get("HOME"), std::env::var("HOME").ok().as_ref());

    // GET with a query: no CONTENT_LENGTH, and a search query becomes arguments.
    let (resp, body) = send(&mut s, req("GET", "/cgi-bin/sub/env.py?x=1", Bytes::new())).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["env"]["QUERY_STRING"], "x=1");
    // No path info in the URL: PATH_INFO unset, not empty (Werkzeug tells them apart).
    assert!(v["env"].get("PATH_INFO").is_none());
    assert!(v["env"].get("CONTENT_LENGTH").is_none());
    assert!(v["env"].get("PATH_TRANSLATED").is_none());
    let (_, body) = send(
        &mut s,
        req("GET", "/cgi-bin/sub/env.py?two+w%20ords", Bytes::new()),
    )
    .await;
    assert_eq!(json(&body)["argv"], serde_json::json!(["two", "w ords"]));

    drop(s);
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn one_script_for_every_path() {
    let root = Root::new();
    let file = root.script("app.py", &env_py());
    let logs = Logs::default();
    let log2 = logs.clone();
    let server = start(
        Cgi::script(&file)
            .env("PIDS", root.pids())
            .on_log(move |l| log2.push(l)),
    )
    .await;
    let (resp, body) = get(server.addr, "/any/where?k=v").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["env"]["SCRIPT_NAME"], "");
    assert_eq!(v["env"]["PATH_INFO"], "/any/where");
    assert_eq!(v["env"]["QUERY_STRING"], "k=v");
    let (resp, _) = get(server.addr, "/a/%2e%2e/b").await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    server.stop().await;
    root.assert_no_process_left().await;
}
