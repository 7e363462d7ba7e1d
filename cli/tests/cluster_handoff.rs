//! What a handed-off connection costs, counted with strace (issue 15): the master only
//! accepts, sends and closes it (no reactor registration, no fcntl/ioctl on it), and a brood
//! worker does not ask the kernel what each fd is (no fstat/getsockopt per connection);
//! connections queued at once go to a brood worker several per `sendmsg`, and one at a
//! time to a worker that never said it takes batches.
//! (Timing is the benchmark's business: `cargo bench -p brood-cli --bench cluster`.)

#[path = "support/cluster.rs"]
mod support;

use std::collections::HashSet;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

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

/// Whether `pid` is stopped for good: `T` (or `t` under strace, which also shows a stop at
/// a traced system call) with no `SIGSTOP` left pending (taken: it is in its group stop).
fn stopped(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let pending = |name: &str| u64::from_str_radix(&field(name), 16).unwrap_or(u64::MAX);
    let sigstop = 1u64 << (libc::SIGSTOP - 1);
    let state = field("State:");
    (state.starts_with('T') || state.starts_with('t'))
        && pending("SigPnd:") & sigstop == 0
        && pending("ShdPnd:") & sigstop == 0
}

/// Stops `master`, opens `n` connections (the kernel queues them on the listener) and
/// writes to each, lets the master go on, and checks every answer with `expect(i)`.
async fn burst(master: u32, addr: &str, n: usize, expect: impl Fn(usize) -> String) {
    brood::kill(master as i32, brood::Signum::STOP).unwrap();
    until("the master stopped", || stopped(master)).await;
    let mut conns = Vec::new();
    for i in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("{i}").as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        conns.push(s);
    }
    brood::kill(master as i32, brood::Signum::CONT).unwrap();
    for (i, mut s) in conns.into_iter().enumerate() {
        let mut got = String::new();
        let r = timeout(LIMIT, s.read_to_string(&mut got)).await.unwrap();
        assert!(r.is_ok(), "connection {i} of the burst: {r:?}");
        assert_eq!(got, expect(i), "connection {i} of the burst");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_goes_to_a_brood_worker_several_connections_per_sendmsg() {
    let traces = tempdir("handoff-batch");
    let prefix = traces.0.join("t");
    let prefix_arg = prefix.to_str().unwrap().to_string();
    let m = Master::launch(
        "handoff-batch",
        &[
            "strace",
            "-ff",
            "-qq",
            "-s",
            "64",
            "-o",
            &prefix_arg,
            "-e",
            "trace=sendmsg",
        ],
        &["--workers", "2", "--builtin", "echo"],
    )
    .await;
    m.wait_for(
        |rows| rows.len() == 2 && rows.iter().all(|r| r.state == "ready"),
        "workers ready",
    )
    .await;
    let master = children(m.child.id().unwrap())[0];
    const N: usize = 16;
    burst(master, &m.addr, N, |i| format!("{i}")).await;
    brood::kill(master as i32, brood::Signum::TERM).unwrap();
    let mut m = m;
    let exit = timeout(LIMIT, m.child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "strace/master: {exit}");
    let trace = std::fs::read_to_string(format!("{}.{master}", prefix.display())).unwrap();
    // `sendmsg(7, {..., msg_iov=[{iov_base="cccc", iov_len=4}], ... SCM_RIGHTS, cmsg_data=[..]}`
    let batches: Vec<&str> = trace
        .lines()
        .filter(|l| l.starts_with("sendmsg(") && l.contains("iov_base=\"cc"))
        .collect();
    let sent: usize = trace
        .lines()
        .filter(|l| l.starts_with("sendmsg(") && l.contains("SCM_RIGHTS"))
        .count();
    assert!(
        !batches.is_empty() && sent < N,
        "{N} queued connections went in {sent} sendmsg calls, none with several:\n{trace}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_reads_one_fd_at_a_time_gets_a_burst_one_per_message() {
    // Had it been sent several fds in one message, a read of one byte and one fd would
    // cut the others off (MSG_CTRUNC closes them): those clients would get no answer.
    let m = Master::start(
        "handoff-py-burst",
        &[
            "--workers",
            "2",
            "--grace",
            "1",
            "--",
            "python3",
            "-c",
            PY_ROUND_ROBIN,
        ],
    )
    .await;
    let master = m.child.id().unwrap();
    burst(master, &m.addr, 16, |i| format!("py:{i}")).await;
    m.stop().await;
}
