//! Pipes to and from children, with real processes: big payloads each way, `output()`,
//! full-duplex without deadlock, early close, EPIPE, and the seed's proc_streams and CGI
//! examples.

mod examples_bin;

use std::time::Duration;

use brood::{Command, Signum, Stdio};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(60);
const TEN_MB: usize = 10 << 20;

/// `n` bytes that do not repeat with any short period (an LCG's high bytes).
fn data(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 56) as u8
        })
        .collect()
}

/// What `seq 1 n` prints.
fn seq(n: u32) -> Vec<u8> {
    (1..=n)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect()
}

#[tokio::test]
async fn ten_mb_child_to_parent() {
    // seq 1 1300000 prints about 9.5 MB; 1500000 is over 10 MB.
    let mut child = Command::new("seq")
        .args(["1", "1500000"])
        .stdout(Stdio::pipe_writable())
        .spawn()
        .unwrap();
    let mut out = Vec::new();
    let mut stdout = child.stdout.take().unwrap();
    timeout(T, stdout.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.len() > TEN_MB);
    assert!(out == seq(1_500_000), "stdout differs");
    assert!(timeout(T, child.wait()).await.unwrap().unwrap().success());
}

#[tokio::test]
async fn ten_mb_parent_to_child() {
    let mut child = Command::new("wc")
        .arg("-c")
        .stdin(Stdio::pipe_readable())
        .stdout(Stdio::pipe_writable())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    timeout(T, stdin.write_all(&data(TEN_MB)))
        .await
        .unwrap()
        .unwrap();
    drop(stdin); // EOF for wc
    let out = timeout(T, child.wait_with_output()).await.unwrap().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        TEN_MB.to_string()
    );
    assert!(out.exit.success());
}

#[tokio::test]
async fn ten_mb_in_while_ten_mb_out_does_not_deadlock() {
    // cat writes back as it reads: a parent that wrote everything before reading would
    // block forever once both socket buffers are full.
    let mut child = Command::new("cat")
        .stdin(Stdio::pipe_readable())
        .stdout(Stdio::pipe_writable())
        .spawn()
        .unwrap();
    let input = data(TEN_MB);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let send = async {
        stdin.write_all(&input).await.unwrap();
        drop(stdin);
    };
    let mut out = Vec::with_capacity(TEN_MB);
    let recv = stdout.read_to_end(&mut out);
    timeout(T, async { tokio::join!(send, recv).1.unwrap() })
        .await
        .unwrap();
    assert!(out == input, "cat's output differs from its input");
    assert!(timeout(T, child.wait()).await.unwrap().unwrap().success());
}

#[tokio::test]
async fn duplex_pipe_at_slot_3_with_split_halves() {
    let mut child = Command::new("sh")
        .args(["-c", "exec cat <&3 >&3"])
        .stdio(3, Stdio::pipe_duplex())
        .spawn()
        .unwrap();
    let (mut rd, mut wr) = child.take_pipe(3).unwrap().into_split();
    let input = data(TEN_MB);
    let send = async {
        wr.write_all(&input).await.unwrap();
        // Half-close: cat sees EOF on its reads and can still write back.
        wr.shutdown().await.unwrap();
    };
    let mut out = Vec::with_capacity(TEN_MB);
    let recv = rd.read_to_end(&mut out);
    timeout(T, async { tokio::join!(send, recv).1.unwrap() })
        .await
        .unwrap();
    assert!(out == input, "duplex echo differs");
    assert!(timeout(T, child.wait()).await.unwrap().unwrap().success());
}

#[tokio::test]
async fn output_reads_ten_mb_of_stdout_and_stderr_concurrently() {
    let expected = seq(1_500_000);
    // Both at once, and one after the other in the order that deadlocks a parent that
    // reads stdout to its end before it reads stderr.
    for script in [
        "seq 1 1500000 >&2 & seq 1 1500000; wait",
        "seq 1 1500000 >&2; seq 1 1500000",
    ] {
        let out = timeout(T, Command::new("sh").args(["-c", script]).output())
            .await
            .unwrap()
            .unwrap();
        assert!(out.exit.success(), "{script}: {}", out.exit);
        assert!(out.stdout == expected, "{script}: stdout differs");
        assert!(out.stderr == expected, "{script}: stderr differs");
    }
}

#[tokio::test]
async fn eof_when_the_child_closes_stdout_while_it_runs() {
    // The child closes stdout, then waits for a line on stdin before exiting.
    let mut child = Command::new("sh")
        .args(["-c", "echo hi; exec >&-; read x; exit 7"])
        .stdin(Stdio::pipe_readable())
        .stdout(Stdio::pipe_writable())
        .spawn()
        .unwrap();
    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    timeout(T, stdout.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, "hi\n");
    assert_eq!(child.try_wait().unwrap(), None, "EOF came only at exit");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").await.unwrap();
    let exit = timeout(T, child.wait()).await.unwrap().unwrap();
    assert_eq!(exit.code(), Some(7));
}

#[tokio::test]
async fn writing_to_a_child_that_stopped_reading_is_epipe_not_death() {
    // Rust programs ignore SIGPIPE, but a program that embeds brood may not. Put the
    // default (death) back for this test: brood's pipes write with MSG_NOSIGNAL, so the
    // write must still fail with EPIPE and this process live on.
    // SAFETY: signal only swaps this process's disposition of SIGPIPE; the old one is put
    // back below. No other test in this binary writes to a pipe(2) or a closed socket.
    let old = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // head reads a little and exits; 10 MB cannot all fit in the socket buffers.
    let mut child = Command::new("head")
        .args(["-c", "10"])
        .stdin(Stdio::pipe_readable())
        .stdout(Stdio::ignore())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let result = timeout(T, stdin.write_all(&data(TEN_MB))).await;
    // SAFETY: as above; puts back the disposition saved before.
    unsafe { libc::signal(libc::SIGPIPE, old) };
    let err = result.unwrap().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPIPE), "{err}");
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
    assert!(timeout(T, child.wait()).await.unwrap().unwrap().success());
}

#[tokio::test]
async fn a_child_writing_to_a_closed_pipe_gets_the_default_sigpipe() {
    // The parent ignores SIGPIPE (Rust does), but the child starts with the default
    // disposition, as from a shell: `yes` dies of SIGPIPE when its reader is gone. We close
    // stdout before the child writes anything: closing a socketpair end with unread data
    // in it gives the writer ECONNRESET instead (as in libuv, whose pipes are socketpairs).
    let mut child = Command::new("sh")
        .args(["-c", "read x; exec yes"])
        .stdin(Stdio::pipe_readable())
        .stdout(Stdio::pipe_writable())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").await.unwrap();
    let exit = timeout(T, child.wait()).await.unwrap().unwrap();
    assert_eq!(
        exit.term_signal(),
        Some(Signum::new(libc::SIGPIPE)),
        "{exit}"
    );
}

#[tokio::test]
async fn proc_streams_shows_only_stderr() {
    let out = timeout(
        T,
        Command::new(examples_bin::example("proc_streams")).output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(out.exit.success(), "{}", out.exit);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "This is stderr\n");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");

    // Sharing stdout too, as the seed suggests trying.
    let out = timeout(
        T,
        Command::new(examples_bin::example("proc_streams"))
            .arg("--stdout")
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(out.exit.success(), "{}", out.exit);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "This is stderr\n");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "This is stdout\n");
}

/// A copy of example `name` alone in a directory of its own, as a fresh checkout's
/// `cargo run --example NAME` has it: no other example built beside it.
fn example_alone(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("brood-alone-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let exe = dir.join(name);
    std::fs::copy(examples_bin::example(name), &exe).unwrap();
    (dir, exe)
}

#[tokio::test]
async fn proc_streams_runs_without_any_other_example_built() {
    let (dir, exe) = example_alone("proc_streams");
    let out = timeout(T, Command::new(&exe).arg("--stdout").output())
        .await
        .unwrap()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.exit.success(),
        "{}: {}",
        out.exit,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "This is stderr\n");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "This is stdout\n");
}

#[tokio::test]
async fn cgi_serves_ticks_without_any_other_example_built() {
    let (dir, exe) = example_alone("cgi");
    let mut cgi = Command::new(&exe)
        .args(["0", "10"])
        .stderr(Stdio::pipe_writable())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = BufReader::new(cgi.stderr.take().unwrap()).lines();
    let first = timeout(T, log.next_line()).await.unwrap().unwrap().unwrap();
    let addr = first
        .strip_prefix("cgi: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut got = String::new();
    timeout(T, conn.read_to_string(&mut got))
        .await
        .unwrap()
        .unwrap();
    let line = timeout(T, log.next_line()).await.unwrap().unwrap().unwrap();
    cgi.kill(Signum::INT).unwrap();
    let exit = timeout(T, cgi.wait()).await.unwrap().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(got, "tick\n".repeat(10), "server log: {line}");
    assert!(line.ends_with("exited with status 0"), "{line}");
    assert!(exit.success(), "{exit}");
}

/// Every child of process `pid` (all its threads), reaped or not.
fn children_of(pid: u32) -> Vec<String> {
    let mut kids = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let list = std::fs::read_to_string(task.unwrap().path().join("children")).unwrap();
        kids.extend(list.split_whitespace().map(String::from));
    }
    kids
}

#[tokio::test]
async fn cgi_serves_twenty_concurrent_clients_ten_ticks_each() {
    const CLIENTS: usize = 20;
    let mut cgi = Command::new(examples_bin::example("cgi"))
        .args(["0", "50"]) // any free port, a tick every 50 ms
        .stderr(Stdio::pipe_writable())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = BufReader::new(cgi.stderr.take().unwrap()).lines();
    let first = timeout(T, log.next_line()).await.unwrap().unwrap().unwrap();
    let addr = first
        .strip_prefix("cgi: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();

    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let addr = addr.clone();
        clients.spawn(async move {
            let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let mut got = String::new();
            // read_to_string returns at EOF: the connection closed when tick exited.
            conn.read_to_string(&mut got).await.unwrap();
            got
        });
    }
    let all = timeout(T, clients.join_all()).await.unwrap();
    for got in &all {
        assert_eq!(got, &"tick\n".repeat(10));
    }

    // The server reports each tick's exit after reaping it.
    for _ in 0..CLIENTS {
        let line = timeout(T, log.next_line()).await.unwrap().unwrap().unwrap();
        assert!(line.ends_with("exited with status 0"), "{line}");
    }
    assert_eq!(
        children_of(cgi.id().unwrap()),
        Vec::<String>::new(),
        "a tick is left"
    );

    cgi.kill(Signum::INT).unwrap();
    let exit = timeout(T, cgi.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit}");
}

#[tokio::test]
async fn cgi_kills_running_ticks_when_it_stops() {
    let mut cgi = Command::new(examples_bin::example("cgi"))
        .args(["0", "10000"]) // ticks that would run for 100 s
        .stderr(Stdio::pipe_writable())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = BufReader::new(cgi.stderr.take().unwrap()).lines();
    let first = timeout(T, log.next_line()).await.unwrap().unwrap().unwrap();
    let addr = first
        .strip_prefix("cgi: listening on ")
        .unwrap()
        .to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut line = [0; 5];
    timeout(T, conn.read_exact(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&line, b"tick\n");
    assert_eq!(children_of(cgi.id().unwrap()).len(), 1);

    cgi.kill(Signum::TERM).unwrap();
    assert!(timeout(T, cgi.wait()).await.unwrap().unwrap().success());
    // The tick was killed, so its copy of the connection closed: EOF, not ten seconds.
    let mut rest = Vec::new();
    timeout(T, conn.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest, b"");
}

#[tokio::test]
async fn communicate_feeds_10_mb_while_reading_10_mb_back() {
    let input = data(TEN_MB);
    let child = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = timeout(T, child.communicate(&input))
        .await
        .unwrap()
        .unwrap();
    assert!(out.exit.success(), "{}", out.exit);
    assert!(out.stdout == input, "stdout differs from stdin");
    assert!(out.stderr.is_empty());
}

#[tokio::test]
async fn communicate_with_a_child_that_reads_nothing_is_not_an_error() {
    let child = Command::new("sh")
        .args(["-c", "exit 4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = timeout(T, child.communicate(&data(TEN_MB)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.exit.status, 4);
}
