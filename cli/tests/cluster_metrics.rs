//! `brood cluster --metrics ADDR`: the exposition scraped, parsed strictly, and its counters
//! checked against the traffic and the faults the test makes.

#[path = "support/cluster.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use brood::Signum;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One scrape: `name{labels}` → value, after a strict parse of the OpenMetrics text.
type Samples = BTreeMap<String, f64>;

/// Parses the exposition strictly: `# HELP`/`# TYPE`/`# UNIT` lines, samples of a family whose
/// `# TYPE` came first, `name{k="v",..} value` with a valid name, quoted label values and a
/// number, no duplicate series, and `# EOF` last.
fn parse(text: &str) -> Samples {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Samples::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "ends with # EOF");
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut f = rest.splitn(3, ' ');
            let (kind, name, what) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            assert!(valid_name(name), "{line}");
            match kind {
                "TYPE" => {
                    assert!(["counter", "gauge", "histogram"].contains(&what), "{line}");
                    assert!(types.insert(name.into(), what.into()).is_none(), "{line}");
                }
                "HELP" | "UNIT" => {}
                _ => panic!("unknown comment {line}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "{line}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("labels in {line}"));
            for pair in inner.split(',') {
                let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line}"));
                assert!(valid_name(k), "{line}");
                assert!(
                    v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                    "{line}"
                );
            }
        }
        let family = types
            .keys()
            .filter(|t| name.starts_with(t.as_str()))
            .max_by_key(|t| t.len())
            .unwrap_or_else(|| panic!("no # TYPE before {line}"));
        let suffix = &name[family.len()..];
        let ok = match types[family].as_str() {
            "counter" => suffix == "_total",
            "gauge" => suffix.is_empty(),
            "histogram" => ["_bucket", "_sum", "_count"].contains(&suffix),
            _ => false,
        };
        assert!(ok, "{line} does not fit its family's type");
        assert!(
            out.insert(series.to_string(), value).is_none(),
            "duplicate {line}"
        );
    }
    out
}

async fn get(addr: &str, path: &str) -> (String, String) {
    let mut s = tokio::time::timeout(LIMIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut resp = String::new();
    tokio::time::timeout(LIMIT, s.read_to_string(&mut resp))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

async fn scrape(addr: &str) -> Samples {
    let (head, body) = get(addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    parse(&body)
}

/// Scrapes until `ok`, bounded.
async fn scrape_until(addr: &str, what: &str, ok: impl Fn(&Samples) -> bool) -> Samples {
    let start = Instant::now();
    loop {
        let s = scrape(addr).await;
        if ok(&s) {
            return s;
        }
        assert!(
            start.elapsed() < LIMIT,
            "timed out waiting for {what}: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn get0(s: &Samples, k: &str) -> f64 {
    s.get(k).copied().unwrap_or(0.0)
}

fn connections(s: &Samples) -> f64 {
    s.iter()
        .filter(|(k, _)| k.starts_with("brood_cluster_connections_total{"))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_parse_strictly_and_move_with_traffic_and_faults() {
    let m = Master::start(
        "metrics",
        &[
            "--workers",
            "2",
            "--heartbeat-timeout",
            "1",
            "--metrics",
            "127.0.0.1:0",
            "--builtin",
            "echo",
        ],
    )
    .await;
    m.wait_log_at_least("metrics on http://", 1).await;
    let line = m
        .log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("metrics on http://"))
        .unwrap()
        .clone();
    let addr = line
        .split("http://")
        .nth(1)
        .unwrap()
        .trim_end_matches("/metrics")
        .to_string();
    let ready = r#"brood_cluster_workers{state="ready"}"#;
    let before = scrape_until(&addr, "2 ready", |s| get0(s, ready) == 2.0).await;
    assert_eq!(connections(&before), 0.0);
    assert_eq!(get0(&before, "brood_cluster_handoff_seconds_count"), 0.0);
    assert_eq!(get0(&before, "brood_cluster_handoff_queue"), 0.0);
    assert_eq!(get0(&before, "brood_cluster_heartbeat_misses_total"), 0.0);
    assert_eq!(
        get0(&before, r#"brood_cluster_workers{state="starting"}"#),
        0.0
    );
    // Anything but /metrics is 404.
    assert!(get(&addr, "/").await.0.starts_with("HTTP/1.1 404"));

    // Traffic: 20 connections.
    for i in 0..20 {
        exchange(&m.addr, format!("m{i}").as_bytes()).await.unwrap();
    }
    let after = scrape_until(&addr, "20 connections", |s| connections(s) == 20.0).await;
    assert_eq!(get0(&after, "brood_cluster_handoff_seconds_count"), 20.0);
    assert!(get0(&after, "brood_cluster_handoff_seconds_sum") > 0.0);
    assert_eq!(
        get0(&after, r#"brood_cluster_handoff_seconds_bucket{le="+Inf"}"#),
        20.0
    );

    // A worker killed from outside: a restart by signal, its series gone.
    let rows = m.status().await;
    brood::kill(rows[0].pid as i32, Signum::KILL).unwrap();
    let s = scrape_until(&addr, "a restart by signal", |s| {
        get0(s, r#"brood_cluster_restarts_total{cause="signal"}"#) == 1.0 && get0(s, ready) == 2.0
    })
    .await;
    assert!(
        !s.contains_key(&format!(
            r#"brood_cluster_connections_total{{worker="{}"}}"#,
            rows[0].id
        )),
        "the dead worker's series is dropped: {s:#?}"
    );

    // A stopped worker misses its heartbeats (1 s): killed, counted, replaced.
    let rows = m
        .wait_for(
            |r| r.len() == 2 && r.iter().all(|r| r.state == "ready"),
            "ready",
        )
        .await;
    brood::kill(rows[1].pid as i32, Signum::STOP).unwrap();
    let s = scrape_until(&addr, "a heartbeat miss", |s| {
        get0(s, "brood_cluster_heartbeat_misses_total") == 1.0
            && get0(s, r#"brood_cluster_restarts_total{cause="heartbeat"}"#) == 1.0
            && get0(s, ready) == 2.0
    })
    .await;
    assert_eq!(
        get0(&s, r#"brood_cluster_restarts_total{cause="signal"}"#),
        1.0
    );
    until("the stopped worker to be gone", || !alive(rows[1].pid)).await;
    m.stop().await;
}
