//! `brood cgi --metrics ADDR`: requests by status class, durations, timeouts and 5xx by
//! cause move as the test drives requests; the gauges of scripts running and requests
//! queued follow scripts held running (HTTP and FastCGI); the exposition parses strictly.

#[path = "support/prom.rs"]
mod prom;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use brood::{Command, Signum, Stdio};
use prom::{Samples, get, scrape};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);

fn get0(s: &Samples, k: &str) -> f64 {
    s.get(k).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgi_metrics_count_requests_by_class_timeouts_and_5xx_causes() {
    let dir = std::env::temp_dir().join(format!("brood-cgi-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, body) in [
        (
            "ok.sh",
            "printf 'Content-Type: text/plain\\r\\n\\r\\nhello\\n'",
        ),
        ("bad.sh", "echo 'this is no CGI header block'"),
        ("slow.sh", "exec sleep 30"),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut server = Command::new(env!("CARGO_BIN_EXE_brood"))
        .arg("cgi")
        .args(["--listen", "127.0.0.1:0", "--root"])
        .arg(&dir)
        .args(["--timeout", "1", "--metrics", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    let (mut web, mut metrics) = (None, None);
    timeout(LIMIT, async {
        while web.is_none() || metrics.is_none() {
            let line = lines.next_line().await.unwrap().expect("server exited");
            if let Some(rest) = line.strip_prefix("brood cgi: listening on http://") {
                web = Some(rest.split_whitespace().next().unwrap().to_string());
            }
            if let Some(rest) = line.strip_prefix("brood cgi: metrics on http://") {
                metrics = Some(rest.trim_end_matches("/metrics").to_string());
            }
        }
    })
    .await
    .unwrap();
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let (web, metrics) = (web.unwrap(), metrics.unwrap());

    let before = scrape(&metrics).await;
    for class in ["2xx", "4xx", "5xx"] {
        assert_eq!(
            before.get(&format!(r#"brood_cgi_requests_total{{class="{class}"}}"#)),
            Some(&0.0),
            "{before:#?}"
        );
    }
    assert_eq!(get0(&before, "brood_cgi_request_seconds_count"), 0.0);

    for _ in 0..3 {
        assert!(
            get(&web, "/cgi-bin/ok.sh")
                .await
                .0
                .starts_with("HTTP/1.1 200")
        );
    }
    assert!(
        get(&web, "/cgi-bin/missing.sh")
            .await
            .0
            .starts_with("HTTP/1.1 404")
    );
    assert!(
        get(&web, "/cgi-bin/bad.sh")
            .await
            .0
            .starts_with("HTTP/1.1 502")
    );
    assert!(
        get(&web, "/cgi-bin/slow.sh")
            .await
            .0
            .starts_with("HTTP/1.1 504")
    );

    // An access line is written when its script has ended, which may be just after the
    // client got its answer: wait (bounded) for all six.
    let start = std::time::Instant::now();
    let after = loop {
        let s = scrape(&metrics).await;
        if get0(&s, "brood_cgi_request_seconds_count") >= 6.0 {
            break s;
        }
        assert!(start.elapsed() < LIMIT, "not all requests counted: {s:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        get0(&after, r#"brood_cgi_requests_total{class="2xx"}"#),
        3.0
    );
    assert_eq!(
        get0(&after, r#"brood_cgi_requests_total{class="4xx"}"#),
        1.0
    );
    assert_eq!(
        get0(&after, r#"brood_cgi_requests_total{class="5xx"}"#),
        2.0
    );
    assert_eq!(get0(&after, "brood_cgi_request_seconds_count"), 6.0);
    assert!(
        get0(&after, "brood_cgi_request_seconds_sum") >= 1.0,
        "the slow one took 1 s"
    );
    assert_eq!(get0(&after, "brood_cgi_timeouts_total"), 1.0);
    assert_eq!(
        get0(&after, r#"brood_cgi_errors_total{cause="bad_answer"}"#),
        1.0
    );
    assert_eq!(
        get0(&after, r#"brood_cgi_errors_total{cause="timeout"}"#),
        1.0
    );

    server.kill(Signum::TERM).unwrap();
    let exit = timeout(LIMIT, server.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit}");
    drain.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// One FastCGI record (FastCGI 1, no padding).
fn record(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
    let mut out = vec![1, kind];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(content.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(content);
    out
}

/// A whole FastCGI request for `file` (BEGIN_REQUEST, PARAMS, empty STDIN), the connection
/// not kept.
fn fastcgi_request(file: &str) -> Vec<u8> {
    let mut params = Vec::new();
    for (n, v) in [("SCRIPT_FILENAME", file), ("REQUEST_METHOD", "GET")] {
        params.extend_from_slice(&[n.len() as u8, v.len() as u8]);
        params.extend_from_slice(n.as_bytes());
        params.extend_from_slice(v.as_bytes());
    }
    let mut out = record(1, 1, &[0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend(record(4, 1, &params));
    out.extend(record(4, 1, b""));
    out.extend(record(5, 1, b""));
    out
}

/// Polls the metrics until `running` scripts run and `queued` requests wait.
async fn wait_gauges(metrics: &str, running: f64, queued: f64) {
    let start = std::time::Instant::now();
    loop {
        let s = scrape(metrics).await;
        let now = (
            get0(&s, "brood_cgi_scripts_running"),
            get0(&s, "brood_cgi_queue_depth"),
        );
        if now == (running, queued) {
            return;
        }
        assert!(
            start.elapsed() < LIMIT,
            "gauges at {now:?}, not ({running}, {queued})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn gauges_follow_scripts_running_and_queued(fastcgi: bool) {
    let tag = if fastcgi { "fcgi" } else { "http" };
    let dir = std::env::temp_dir().join(format!("brood-cgi-gauges-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let go = dir.join("go");
    // Runs until the test says go.
    let hold = dir.join("hold.sh");
    std::fs::write(
        &hold,
        "#!/bin/sh\nwhile [ ! -e \"$GO\" ]; do sleep 0.02; done\nprintf 'Content-Type: text/plain\\r\\n\\r\\nok'\n",
    )
    .unwrap();
    std::fs::set_permissions(&hold, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.join("sock");
    let listen = if fastcgi {
        format!("unix:{}", sock.display())
    } else {
        "127.0.0.1:0".to_string()
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_brood"));
    cmd.arg("cgi")
        .args(["--listen", &listen, "--root"])
        .arg(&dir);
    if fastcgi {
        cmd.arg("--fastcgi");
    }
    let mut server = cmd
        .args([
            "--max-children",
            "2",
            "--queue",
            "30",
            "--metrics",
            "127.0.0.1:0",
        ])
        .arg("--env")
        .arg(format!("GO={}", go.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    let (mut web, mut metrics) = (None, None);
    timeout(LIMIT, async {
        while web.is_none() || metrics.is_none() {
            let line = lines.next_line().await.unwrap().expect("server exited");
            if let Some(rest) = line.strip_prefix("brood cgi: listening on ") {
                // `http://ADDR (...)`, or `fastcgi unix:PATH (...)` (the socket is known).
                let first = rest.split_whitespace().next().unwrap();
                web = Some(first.trim_start_matches("http://").to_string());
            }
            if let Some(rest) = line.strip_prefix("brood cgi: metrics on http://") {
                metrics = Some(rest.trim_end_matches("/metrics").to_string());
            }
        }
    })
    .await
    .unwrap();
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let (web, metrics) = (web.unwrap(), metrics.unwrap());
    wait_gauges(&metrics, 0.0, 0.0).await;

    // Three requests, two slots: two scripts run, one request waits.
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (web, sock, hold) = (web.clone(), sock.clone(), hold.clone());
            tokio::spawn(async move {
                if !fastcgi {
                    return get(&web, "/cgi-bin/hold.sh").await.0;
                }
                let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
                s.write_all(&fastcgi_request(hold.to_str().unwrap()))
                    .await
                    .unwrap();
                let mut all = Vec::new();
                timeout(LIMIT, s.read_to_end(&mut all))
                    .await
                    .unwrap()
                    .unwrap();
                String::from_utf8_lossy(&all).into_owned()
            })
        })
        .collect();
    wait_gauges(&metrics, 2.0, 1.0).await;
    std::fs::write(&go, "").unwrap();
    for c in clients {
        let answer = timeout(LIMIT, c).await.unwrap().unwrap();
        assert!(
            answer.contains("Status: 200") || answer.starts_with("HTTP/1.1 200"),
            "{answer}"
        );
    }
    wait_gauges(&metrics, 0.0, 0.0).await;

    server.kill(Signum::TERM).unwrap();
    let exit = timeout(LIMIT, server.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit}");
    drain.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_gauges_follow_scripts_running_and_queued() {
    gauges_follow_scripts_running_and_queued(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastcgi_gauges_follow_scripts_running_and_queued() {
    gauges_follow_scripts_running_and_queued(true).await;
}
