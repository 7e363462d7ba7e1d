//! `brood cgi --metrics ADDR`: requests by status class, durations, timeouts and 5xx by
//! cause move as the test drives requests; the exposition parses strictly.

#[path = "support/prom.rs"]
mod prom;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use brood::{Command, Signum, Stdio};
use prom::{Samples, get, scrape};
use tokio::io::{AsyncBufReadExt, BufReader};
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
