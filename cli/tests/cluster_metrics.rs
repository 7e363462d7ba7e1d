//! `brood cluster --metrics ADDR`: the exposition scraped, parsed strictly, and its counters
//! checked against the traffic and the faults the test makes.

#[path = "support/prom.rs"]
mod prom;
#[path = "support/cluster.rs"]
mod support;

use std::time::{Duration, Instant};

use brood::Signum;
use prom::{Samples, get, scrape};
use support::*;

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
