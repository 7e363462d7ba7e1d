//! What a handed-off connection costs, counted with strace (issue 15): the master only
//! accepts, sends and closes it (no reactor registration, no fcntl/ioctl on it), and a brood
//! worker does not ask the kernel what each fd is (no fstat/getsockopt per connection).
//! (Timing is the benchmark's business: `cargo bench -p brood-cli --bench cluster`.)

#[path = "support/cluster.rs"]
mod support;

use std::collections::HashSet;

use support::*;

/// The first argument of a traced call (`epoll_ctl(5, EPOLL_CTL_ADD, 12, ...)` → the fd
/// operated on is the third for epoll_ctl, the first for the others).
fn args(line: &str) -> Vec<&str> {
    let open = line.find('(').unwrap_or(0);
    line[open + 1..].split(", ").collect()
}

/// The result of a traced call, when it is a number.
fn result(line: &str) -> Option<i64> {
    line.rsplit_once(" = ")?.1.split_whitespace().next()?.parse().ok()
}

#[tokio::test]
async fn a_handed_off_connection_costs_the_master_accept_send_close_and_the_worker_no_probes() {
    let traces = tempdir("handoff-strace");
    let prefix = traces.0.join("t");
    let prefix_arg = prefix.to_str().unwrap().to_string();
    let m = Master::launch(
        "handoff",
        &[
            "strace",
            "-ff",
            "-qq",
            "-o",
            &prefix_arg,
            "-e",
            "trace=accept4,epoll_ctl,ioctl,fcntl,sendmsg,close,fstat,newfstatat,statx,getsockopt",
        ],
        &["--workers", "2", "--builtin", "echo"],
    )
    .await;
    let rows = m
        .wait_for(
            |rows| rows.len() == 2 && rows.iter().all(|r| r.state == "ready"),
            "workers ready",
        )
        .await;
    const N: usize = 60;
    for i in 0..N {
        exchange(&m.addr, format!("hello {i}").as_bytes())
            .await
            .unwrap();
    }
    // The traced master is strace's child; stop it gracefully, strace follows.
    let master = children(m.child.id().unwrap())[0];
    brood::kill(master as i32, brood::Signum::TERM).unwrap();
    let mut m = m;
    let exit = tokio::time::timeout(LIMIT, m.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "strace/master: {exit}");

    // The master's main thread runs its event loop: its trace file is t.<pid>.
    let trace = std::fs::read_to_string(format!("{}.{master}", prefix.display())).unwrap();
    let mut accepted = 0;
    let mut open: HashSet<i64> = HashSet::new();
    let mut touched = Vec::new();
    for line in trace.lines() {
        let a = args(line);
        if line.starts_with("accept4(") {
            if let Some(fd) = result(line).filter(|fd| *fd >= 0) {
                accepted += 1;
                open.insert(fd);
            }
        } else if line.starts_with("close(") {
            open.remove(&a[0].trim_end_matches(')').parse::<i64>().unwrap_or(-1));
        } else if line.starts_with("epoll_ctl(") {
            if open.contains(&a.get(2).and_then(|f| f.parse().ok()).unwrap_or(-1)) {
                touched.push(line.to_string());
            }
        } else if (line.starts_with("ioctl(") || line.starts_with("fcntl("))
            && open.contains(&a[0].parse().unwrap_or(-1))
        {
            touched.push(line.to_string());
        }
    }
    assert!(
        accepted >= N,
        "the master accepted {accepted} connections:\n{trace}"
    );
    assert!(
        touched.is_empty(),
        "the master registered or changed accepted sockets:\n{}",
        touched.join("\n")
    );

    // Each worker: a few probes at start-up (its channel), none per connection.
    for r in rows {
        let trace = std::fs::read_to_string(format!("{}.{}", prefix.display(), r.pid)).unwrap();
        let probes = trace
            .lines()
            .filter(|l| {
                ["fstat(", "newfstatat(", "statx(", "getsockopt("]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .count();
        let handled = trace
            .lines()
            .filter(|l| l.starts_with("epoll_ctl(") && l.contains("EPOLL_CTL_ADD"))
            .count();
        assert!(
            handled >= N / 4,
            "worker {} registered only {handled} sockets:\n{trace}",
            r.pid
        );
        assert!(
            probes < N / 4,
            "worker {} probed fds {probes} times for about {} connections:\n{trace}",
            r.pid,
            N / 2
        );
    }
}
