//! What a handed-off connection costs, counted with strace (issue 15): the master only
//! accepts, sends and closes it (no reactor registration, no fcntl/ioctl on it), and a brood
//! worker does not ask the kernel what each fd is (no fstat/getsockopt per connection).
//! (Timing is the benchmark's business: `cargo bench -p brood-cli --bench cluster`.)

#[path = "support/cluster.rs"]
mod support;

use std::collections::HashSet;

use support::*;

/// The `i`th argument of a traced call as an fd (`close(12) = 0` → 12 for i = 0;
/// `epoll_ctl(5, EPOLL_CTL_ADD, 12, ...)` → 12 for i = 2).
fn fd_arg(line: &str, i: usize) -> i64 {
    let Some(open) = line.find('(') else {
        return -1;
    };
    let arg = line[open + 1..].split([',', ')']).nth(i).unwrap_or("");
    arg.trim().parse().unwrap_or(-1)
}

/// The result of a traced call, when it is a number.
fn result(line: &str) -> Option<i64> {
    line.rsplit_once(" = ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
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
        // TCP connections only (`ctl` connections come through accept4 too).
        if line.starts_with("accept4(") && line.contains("AF_INET") {
            if let Some(fd) = result(line).filter(|fd| *fd >= 0) {
                accepted += 1;
                open.insert(fd);
            }
        } else if line.starts_with("close(") {
            open.remove(&fd_arg(line, 0));
        } else if (line.starts_with("epoll_ctl(") && open.contains(&fd_arg(line, 2)))
            // (F_GETFD reads are std's debug-build check that an fd it closes is open.)
            || ((line.starts_with("ioctl(") || line.starts_with("fcntl(") && line.contains("F_SET"))
                && open.contains(&fd_arg(line, 0)))
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
                // Questions about an open fd (not the loader's look-ups of paths).
                l.starts_with("fstat(")
                    || l.starts_with("getsockopt(")
                    || ((l.starts_with("newfstatat(") || l.starts_with("statx("))
                        && l.contains("AT_EMPTY_PATH"))
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
