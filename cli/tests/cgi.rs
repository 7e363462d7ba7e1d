//! `brood cgi` from the outside: the binary on loopback, its access log on stderr, and
//! SIGTERM stopping it with every script killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

struct Server {
    child: Child,
    lines: Receiver<String>,
    addr: String,
    seen: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_brood"));
        cmd.arg("cgi").args(["--listen", "127.0.0.1:0"]).args(args);
        Server::spawn(cmd)
    }

    /// `brood cgi ARGS` with its fd limit (`ulimit -n`) set to `nofile`.
    fn start_with_nofile(nofile: u32, args: &[&str]) -> Server {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_brood"))
            .arg("cgi")
            .args(["--listen", "127.0.0.1:0"])
            .args(args);
        Server::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> Server {
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let (tx, lines) = channel();
        let err = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut s = Server {
            child,
            lines,
            addr: String::new(),
            seen: Vec::new(),
        };
        let first = s.wait_line("listening on");
        let addr = first
            .split_whitespace()
            .nth(4)
            .unwrap()
            .trim_start_matches("http://");
        s.addr = addr.to_string();
        s
    }

    /// The next stderr line containing `needle` (or one seen before).
    fn wait_line(&mut self, needle: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no stderr line with {needle:?}: {:?}", self.seen));
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Every stderr line that came so far.
    fn lines_so_far(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    fn stop(mut self) -> i32 {
        brood::kill(self.child.id() as i32, brood::Signum::TERM).unwrap();
        let deadline = Instant::now() + T;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "brood cgi did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn exchange(addr: &str, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(T)).unwrap();
    tcp.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).unwrap();
    out
}

fn temp_root(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("brood-cgi-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn serves_logs_and_stops_on_sigterm() {
    let root = temp_root("root");
    script(
        &root.join("hello"),
        "#!/bin/sh\necho note >&2\nprintf 'Content-Type: text/plain\\n\\nhello %s %s\\n' \"$QUERY_STRING\" \"$MODE\"\n",
    );
    script(
        &root.join("forever"),
        "#!/bin/sh\necho $$ > \"$0.pid\"\nprintf 'Content-Type: text/plain\\n\\nstarted\\n'\nexec sleep 1000\n",
    );
    let mut server = Server::start(&[
        "--root",
        root.to_str().unwrap(),
        "--env",
        "MODE=test",
        "--max-children",
        "4",
    ]);
    let answer = exchange(
        &server.addr,
        "GET /cgi-bin/hello?x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("hello x test\n"), "{answer}");
    server.wait_line("[/cgi-bin/hello] note");
    let access = server.wait_line("\"GET /cgi-bin/hello?x\"");
    assert!(
        access.contains(" 200 ") && access.ends_with("exit=0"),
        "{access}"
    );

    // A script still running when brood is stopped is killed.
    let mut tcp = TcpStream::connect(&server.addr).unwrap();
    tcp.set_read_timeout(Some(T)).unwrap();
    tcp.write_all(b"GET /cgi-bin/forever HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tcp.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
    let pid: i32 = std::fs::read_to_string(root.join("forever.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(server.stop(), 0);
    let deadline = Instant::now() + T;
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "script {pid} left running");
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn raw_mode_gives_the_connection_to_the_program() {
    let mut server = Server::start(&["--raw", "--", "sh", "-c", "echo hi $TCPREMOTEIP"]);
    let answer = exchange(&server.addr, "");
    assert_eq!(answer, "hi 127.0.0.1\n");
    // The access line counts the bytes the program wrote to the connection.
    server.wait_line("\"- sh\" 0 13B");
    assert_eq!(server.stop(), 0);
}

#[test]
fn bad_arguments_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_brood"))
        .args(["cgi", "--listen", "127.0.0.1:0", "--root", "/no/such/dir/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "a configuration error: 125");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ENOENT") && err.contains("/no/such/dir/x"),
        "{err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_brood"))
        .args(["cgi", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(125),
        "a mode is required (a usage error: 125)"
    );
}

#[test]
fn a_closed_stderr_does_not_stop_the_server() {
    let root = temp_root("closed-stderr");
    script(
        &root.join("noisy"),
        "#!/bin/sh\necho complaint >&2\nprintf 'Content-Type: text/plain\\n\\nfine'\n",
    );
    let mut server = Server::start(&["--root", root.to_str().unwrap()]);
    // Close the read end of brood's stderr: every log line now fails with EPIPE.
    let (tx, lines) = channel();
    drop(std::mem::replace(&mut server.lines, lines));
    drop(tx);
    // The reader thread ends at its next line; make lines until the pipe is surely closed.
    for i in 0..50 {
        let answer = exchange(
            &server.addr,
            &format!("GET /cgi-bin/noisy?{i} HTTP/1.0\r\n\r\n"),
        );
        assert!(answer.ends_with("fine"), "request {i}: {answer:?}");
    }
    assert!(server.child.try_wait().unwrap().is_none(), "brood cgi died");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn configuration_errors_exit_125_before_listening() {
    let root = temp_root("config-errors");
    let empty = root.join("htpasswd-empty");
    std::fs::write(&empty, "# nobody\n").unwrap();
    let (busy, busy_addr) = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap().to_string();
        (l, a)
    };
    let empty_s = empty.to_str().unwrap();
    for args in [
        &["--root", "/no/such/dir"][..],
        &["--script", "/no/such/script"],
        &["--root", "/tmp", "--htpasswd", "/no/such/htpasswd"],
        &["--root", "/tmp", "--htpasswd", empty_s],
        &["--raw", "--", "/no/such/program"],
        &["--raw", "--", "no-such-program-in-path"],
        &["--root", "/tmp", "--timeout", "-1"],
        &["--root", "/tmp", "--max-children", "0"],
        &["--root", "/tmp", "--max-connections", "0"],
        &["--root", "/tmp", "--prefix", "no-slash"],
        &["--root", "/tmp", "--fastcgi", "--listen", "systemd"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_brood"))
            .args(["cgi", "--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert!(!err.contains("listening"), "{args:?}: {err}");
    }
    for listen in ["not-an-address", busy_addr.as_str()] {
        let out = Command::new(env!("CARGO_BIN_EXE_brood"))
            .args(["cgi", "--root", "/tmp", "--listen", listen])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "--listen {listen}: {err}");
    }
    drop(busy);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn help_gives_every_default() {
    let out = Command::new(env!("CARGO_BIN_EXE_brood"))
        .args(["cgi", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for want in [
        "--timeout <SECS>",
        "[default: 300]",
        "Default: 16 per CPU",
        "[default: 1073741824]",
        "[default: 30]",
        "--htpasswd <FILE>",
        "--max-spool <BYTES>",
        "Default: a quarter of the free",
        "--max-connections <N>",
        "Default: half the fd limit",
        "exit 125",
    ] {
        assert!(help.contains(want), "{want} missing from:\n{help}");
    }
}

#[test]
fn access_log_file_in_common_format() {
    let root = temp_root("access-log");
    script(
        &root.join("ok"),
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nok'\n",
    );
    let log = root.join("access.log");
    let server = Server::start(&[
        "--root",
        root.to_str().unwrap(),
        "--access-log",
        log.to_str().unwrap(),
        "--log-format",
        "common",
    ]);
    let answer = exchange(&server.addr, "GET /cgi-bin/ok HTTP/1.0\r\n\r\n");
    assert!(answer.ends_with("ok"));
    let deadline = Instant::now() + T;
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("\n") {
            break text;
        }
        assert!(Instant::now() < deadline, "no access line in {log:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(text.starts_with("127.0.0.1 - - ["), "{text}");
    assert!(
        text.contains("+0000] \"GET /cgi-bin/ok HTTP/1.0\" 200 2\n"),
        "{text}"
    );
    assert_eq!(server.stop(), 0);
    let _ = std::fs::remove_dir_all(&root);
}

/// brood's peak resident memory in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn many_big_uploads_at_once_stay_out_of_memory() {
    let root = temp_root("uploads");
    script(
        &root.join("sink"),
        "#!/bin/sh\nn=$(wc -c)\nprintf 'Content-Type: text/plain\\n\\n%s' \"$n\"\n",
    );
    let server = Server::start(&["--root", root.to_str().unwrap()]);
    let before = peak_rss_kib(server.child.id());
    // 24 clients each send 8 MB chunked, all at once: 192 MB in flight.
    let clients: Vec<_> = (0..24)
        .map(|_| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                let mut tcp = TcpStream::connect(&addr).unwrap();
                tcp.set_read_timeout(Some(T)).unwrap();
                tcp.write_all(
                    b"POST /cgi-bin/sink HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n",
                )
                .unwrap();
                let piece = vec![b'u'; 64 * 1024];
                for _ in 0..128 {
                    tcp.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).unwrap();
                    tcp.write_all(&piece).unwrap();
                    tcp.write_all(b"\r\n").unwrap();
                }
                tcp.write_all(b"0\r\n\r\n").unwrap();
                let mut out = String::new();
                tcp.read_to_string(&mut out).unwrap();
                out
            })
        })
        .collect();
    for c in clients {
        let out = c.join().unwrap();
        assert!(out.contains("\r\n8388608\r\n"), "{out}");
    }
    let grown = peak_rss_kib(server.child.id()).saturating_sub(before);
    eprintln!("peak RSS grew by {grown} KiB for 192 MB of bodies");
    // Bodies go to temporary files past 256 KiB each: far below what came in.
    assert!(grown < 48 * 1024, "peak RSS grew by {grown} KiB");
    let _ = std::fs::remove_dir_all(&root);
}

/// The server's open sockets. Not all its fds: its orphan reaper opens `/proc/self/fd` and
/// `fdinfo` files for a moment now and then, and one of those counted in a baseline would
/// move the target of a count by one.
fn socket_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|t| t.as_os_str().as_encoded_bytes().starts_with(b"socket:"))
        })
        .count()
}

/// Connections that send nothing (idle keep-alive clients, or a slowloris).
fn idle_connections(addr: &str, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect()
}

#[test]
fn idle_connections_are_capped_below_the_fd_limit_by_default() {
    let root = temp_root("max-connections");
    script(
        &root.join("hi"),
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nhi'\n",
    );
    // A limit of 64 fds: the default cap is 32 connections.
    let mut server = Server::start_with_nofile(64, &["--root", root.to_str().unwrap()]);
    let pid = server.child.id();
    let base = socket_count(pid);
    let idle = idle_connections(&server.addr, 100);
    // A request behind them waits in the backlog until some leave.
    let mut late = TcpStream::connect(&server.addr).unwrap();
    late.set_read_timeout(Some(T)).unwrap();
    late.write_all(b"GET /cgi-bin/hi HTTP/1.0\r\n\r\n").unwrap();
    let deadline = Instant::now() + T;
    while socket_count(pid) < base + 32 {
        assert!(Instant::now() < deadline, "brood did not accept");
        std::thread::sleep(Duration::from_millis(20));
    }
    // brood took what it may (32) and no more, for as long as the clients stay: it never
    // runs out of fds (without the cap it accepts until EMFILE).
    let held = Instant::now();
    let mut most = 0;
    while held.elapsed() < Duration::from_millis(500) {
        most = most.max(socket_count(pid));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        most <= base + 32 + 4,
        "{most} sockets open, {base} before the clients"
    );
    drop(idle);
    let mut answer = String::new();
    late.read_to_string(&mut answer).unwrap();
    assert!(answer.ends_with("hi"), "{answer}");
    let errors: Vec<_> = server
        .lines_so_far()
        .iter()
        .filter(|l| l.contains("accept:"))
        .cloned()
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(server.stop(), 0);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn out_of_fds_the_server_backs_off_logs_little_and_serves_again() {
    let root = temp_root("emfile");
    script(
        &root.join("hi"),
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nhi'\n",
    );
    // A cap above the fd limit: accept fails with EMFILE while the clients stay.
    let mut server = Server::start_with_nofile(
        64,
        &[
            "--root",
            root.to_str().unwrap(),
            "--max-connections",
            "1000",
        ],
    );
    let pid = server.child.id();
    let idle = idle_connections(&server.addr, 100);
    server.wait_line("Too many open files");
    // The fault lasts two seconds: without a backoff, a line every few milliseconds.
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(2) {
        assert!(server.child.try_wait().unwrap().is_none(), "brood cgi died");
        std::thread::sleep(Duration::from_millis(50));
    }
    let cpu_ticks = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let before = cpu_ticks(pid);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let busy = (cpu_ticks(pid) - before) as f64 / 100.0 / t.elapsed().as_secs_f64();
    drop(idle);
    // Serves again once the clients have left (the pause is at most a second).
    let deadline = Instant::now() + T;
    loop {
        let answer = exchange(&server.addr, "GET /cgi-bin/hi HTTP/1.0\r\n\r\n");
        if answer.ends_with("hi") {
            break;
        }
        assert!(Instant::now() < deadline, "not served again: {answer:?}");
    }
    let errors = server
        .lines_so_far()
        .iter()
        .filter(|l| l.contains("accept:"))
        .count();
    eprintln!("{errors} accept lines in about 3 s out of fds; CPU while paused {busy:.2}");
    assert!(errors <= 6, "{errors} accept lines: {:?}", server.seen);
    assert!(busy < 0.5, "CPU {busy:.2} while out of fds");
    assert_eq!(server.stop(), 0);
    let _ = std::fs::remove_dir_all(&root);
}

/// `htpasswd -nb[B|m] USER PASSWORD`: one line as Apache's tool writes it.
fn htpasswd_line(flag: &str, user: &str, password: &str) -> String {
    let out = Command::new("htpasswd")
        .args([flag, user, password])
        .output()
        .expect("htpasswd (apache2-utils) is installed by .ci/run");
    assert!(out.status.success(), "htpasswd {flag}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn htpasswd_with_a_byte_order_mark_and_trailing_white_space_lets_its_users_in() {
    let root = temp_root("htpasswd-bom");
    script(
        &root.join("who"),
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nuser=%s' \"$REMOTE_USER\"\n",
    );
    // A BOM before the first user (as a Windows editor saves it) and spaces or a tab
    // after each hash: Apache ignores both.
    let file = root.join("htpasswd");
    std::fs::write(
        &file,
        format!(
            "\u{feff}{}  \n{}\t\r\n",
            htpasswd_line("-nbB", "alice", "wonderland"),
            htpasswd_line("-nbm", "bob", "builder")
        ),
    )
    .unwrap();
    let mut server = Server::start(&[
        "--root",
        root.to_str().unwrap(),
        "--htpasswd",
        file.to_str().unwrap(),
    ]);
    // base64 of alice:wonderland and bob:builder.
    for (b64, user) in [
        ("YWxpY2U6d29uZGVybGFuZA==", "alice"),
        ("Ym9iOmJ1aWxkZXI=", "bob"),
    ] {
        let answer = exchange(
            &server.addr,
            &format!("GET /cgi-bin/who HTTP/1.0\r\nAuthorization: Basic {b64}\r\n\r\n"),
        );
        assert!(answer.starts_with("HTTP/1.0 200"), "{user}: {answer}");
        assert!(answer.ends_with(&format!("user={user}")), "{answer}");
    }
    // A wrong password is still refused.
    let answer = exchange(
        &server.addr,
        "GET /cgi-bin/who HTTP/1.0\r\nAuthorization: Basic Ym9iOm5vcGU=\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.0 401"), "{answer}");
    let skipped: Vec<_> = server
        .lines_so_far()
        .iter()
        .filter(|l| l.contains("skipped"))
        .cloned()
        .collect();
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(server.stop(), 0);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn reaching_max_connections_is_logged_once_in_a_while() {
    let root = temp_root("max-connections-log");
    script(
        &root.join("hi"),
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nhi'\n",
    );
    let mut server = Server::start(&["--root", root.to_str().unwrap(), "--max-connections", "2"]);
    let idle = idle_connections(&server.addr, 2);
    let mut late = TcpStream::connect(&server.addr).unwrap();
    late.set_read_timeout(Some(T)).unwrap();
    late.write_all(b"GET /cgi-bin/hi HTTP/1.0\r\n\r\n").unwrap();
    let line = server.wait_line("connections open");
    assert!(line.contains("2 connections open"), "{line}");
    assert!(
        line.contains("--max-connections") && line.contains("wait"),
        "{line}"
    );
    let first = Instant::now();
    // The waiting one is served once a slot frees.
    drop(idle);
    let mut answer = String::new();
    late.read_to_string(&mut answer).unwrap();
    assert!(answer.ends_with("hi"), "{answer}");
    // Filling the slots again and again logs at most a line every 5 s.
    for _ in 0..5 {
        let held = idle_connections(&server.addr, 2);
        assert!(exchange_after(&server.addr, held).ends_with("hi"));
    }
    let lines = server
        .lines_so_far()
        .iter()
        .filter(|l| l.contains("connections open"))
        .count();
    let most = 1 + first.elapsed().as_secs() / 5;
    assert!(lines as u64 <= most, "{lines} lines: {:?}", server.seen);
    assert_eq!(server.stop(), 0);
    let _ = std::fs::remove_dir_all(&root);
}

/// A request sent behind `held` connections, answered once they close.
fn exchange_after(addr: &str, held: Vec<TcpStream>) -> String {
    let mut late = TcpStream::connect(addr).unwrap();
    late.set_read_timeout(Some(T)).unwrap();
    late.write_all(b"GET /cgi-bin/hi HTTP/1.0\r\n\r\n").unwrap();
    drop(held);
    let mut answer = String::new();
    late.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn a_body_larger_than_the_whole_max_spool_is_413_not_try_again_later() {
    let root = temp_root("over-spool");
    script(
        &root.join("hi"),
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nhi'\n",
    );
    let mut server = Server::start(&["--root", root.to_str().unwrap(), "--max-spool", "300000"]);
    // Refused from its Content-Length alone: no byte of it is sent.
    let answer = exchange(
        &server.addr,
        "POST /cgi-bin/hi HTTP/1.0\r\nContent-Length: 1000000\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.0 413 "), "{answer}");
    assert!(
        answer.contains("larger than all the server's space"),
        "{answer}"
    );
    server.wait_line("larger than the whole --max-spool");
    // One that fits is served.
    let body = "x".repeat(1000);
    let answer = exchange(
        &server.addr,
        &format!("POST /cgi-bin/hi HTTP/1.0\r\nContent-Length: 1000\r\n\r\n{body}"),
    );
    assert!(answer.ends_with("hi"), "{answer}");
    assert_eq!(server.stop(), 0);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn raw_mode_refuses_http_options_and_says_a_directory_is_one() {
    for args in [
        &["--max-spool", "1000"][..],
        &["--max-body", "1000"],
        &["--body-timeout", "5"],
        &["--max-header-bytes", "1000"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_brood"))
            .args(["cgi", "--listen", "127.0.0.1:0", "--raw"])
            .args(args)
            .args(["--", "cat"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert!(
            err.contains(args[0]) && err.contains("--raw"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("listening"), "{args:?}: {err}");
    }
    let dir = std::env::temp_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_brood"))
        .args(["cgi", "--listen", "127.0.0.1:0", "--raw", "--"])
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("is a directory") && !err.contains("ENOENT"),
        "{err}"
    );
}
