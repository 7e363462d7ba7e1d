//! `brood cgi --fastcgi` under faults, spoken to directly on its Unix socket: SIGTERM while
//! scripts run, a web server that stops reading (a script's output, or answers to its own
//! management records), the `--max-children`/`--queue` line (waiting, 503 past the queue
//! time, a waiter that leaves, scripts that cannot start), the `--max-connections` cap,
//! request bodies through a pipe or a file (read or not), the fds scripts get and the fds
//! brood keeps, no pidfds (`BROOD_NO_PIDFD=1`), a script that closes stdout and works on,
//! scripts killed from outside, and brood out of fds. Every wait has a deadline; the tests
//! that run scripts check that nothing is left behind.

mod fastcgi_support;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use fastcgi_support::wire::{ABORT, BEGIN, END, GET_VALUES, PARAMS, STDIN, STDOUT, pair, rec};
use fastcgi_support::*;

/// A whole request: BEGIN (responder), params, stdin.
fn request(id: u16, keep: bool, params: &[(String, String)], stdin: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    for (n, v) in params {
        pair(&mut p, n.as_bytes(), v.as_bytes());
    }
    let mut out = rec(BEGIN, id, &[0, 1, keep as u8, 0, 0, 0, 0, 0]);
    out.extend(rec(PARAMS, id, &p));
    out.extend(rec(PARAMS, id, b""));
    if !stdin.is_empty() {
        out.extend(rec(STDIN, id, stdin));
    }
    out.extend(rec(STDIN, id, b""));
    out
}

/// The params nginx would send for `/cgi-bin/NAME?query` (with a body of `length` bytes).
fn params(
    dir: &Dir,
    name: &str,
    method: &str,
    query: &str,
    length: Option<usize>,
) -> Vec<(String, String)> {
    let uri = if query.is_empty() {
        format!("/cgi-bin/{name}")
    } else {
        format!("/cgi-bin/{name}?{query}")
    };
    let mut p = vec![
        ("REQUEST_METHOD".to_string(), method.to_string()),
        ("QUERY_STRING".to_string(), query.to_string()),
        ("REQUEST_URI".to_string(), uri),
        (
            "DOCUMENT_ROOT".to_string(),
            dir.path("www").display().to_string(),
        ),
        ("SCRIPT_NAME".to_string(), format!("/cgi-bin/{name}")),
        ("SERVER_PROTOCOL".to_string(), "HTTP/1.1".to_string()),
    ];
    if let Some(n) = length {
        p.push(("CONTENT_LENGTH".to_string(), n.to_string()));
    }
    p
}

struct Rec {
    kind: u8,
    id: u16,
    content: Vec<u8>,
}

/// The next record, or `None` at EOF (or a reset). A read timeout fails the test.
fn read_rec(s: &mut impl Read) -> Option<Rec> {
    let mut h = [0u8; 8];
    match s.read_exact(&mut h) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("reading a record: {e}"),
    }
    assert_eq!(h[0], 1, "version");
    let len = u16::from_be_bytes([h[4], h[5]]) as usize + h[6] as usize;
    let mut content = vec![0u8; len];
    match s.read_exact(&mut content) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("reading a record's content: {e}"),
    }
    content.truncate(u16::from_be_bytes([h[4], h[5]]) as usize);
    Some(Rec {
        kind: h[1],
        id: u16::from_be_bytes([h[2], h[3]]),
        content,
    })
}

/// What came back for one request: its stdout and, unless the connection closed first,
/// its END_REQUEST (application status, protocol status).
#[derive(Debug)]
struct Answer {
    out: Vec<u8>,
    end: Option<(u32, u8)>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }

    /// The `Status:` of the header block (200 when there is none).
    fn status(&self) -> u16 {
        let text = self.text();
        let head = text.split("\r\n\r\n").next().unwrap_or("");
        head.lines()
            .find_map(|l| l.strip_prefix("Status: "))
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(200)
    }

    /// The body after the header block.
    fn body(&self) -> &[u8] {
        let at = self
            .out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(self.out.len(), |i| i + 4);
        &self.out[at..]
    }

    fn complete(&self) -> bool {
        self.end.is_some_and(|(_, proto)| proto == 0)
    }
}

/// Records up to END_REQUEST for `id`, or to the connection's close.
fn answer(s: &mut impl Read, id: u16) -> Answer {
    let mut out = Vec::new();
    while let Some(r) = read_rec(s) {
        if r.id == id && r.kind == STDOUT {
            out.extend_from_slice(&r.content);
        }
        if r.id == id && r.kind == END {
            let app = u32::from_be_bytes([r.content[0], r.content[1], r.content[2], r.content[3]]);
            return Answer {
                out,
                end: Some((app, r.content[4])),
            };
        }
    }
    Answer { out, end: None }
}

/// Reads records until stdout for `id` holds `needle` (the answer so far).
fn read_until(s: &mut impl Read, id: u16, needle: &str) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let r = read_rec(s).unwrap_or_else(|| {
            panic!(
                "closed before {needle:?}: {:?}",
                String::from_utf8_lossy(&out)
            )
        });
        if r.id == id && r.kind == STDOUT {
            out.extend_from_slice(&r.content);
            if String::from_utf8_lossy(&out).contains(needle) {
                return out;
            }
        }
        assert!(
            r.kind != END,
            "ended before {needle:?}: {:?}",
            String::from_utf8_lossy(&out)
        );
    }
}

fn connect(dir: &Dir) -> UnixStream {
    let s = UnixStream::connect(dir.sock()).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s
}

/// One request on a new connection, answered.
fn ask(dir: &Dir, name: &str, method: &str, query: &str, body: &[u8]) -> Answer {
    let mut s = connect(dir);
    let len = (!body.is_empty()).then_some(body.len());
    s.write_all(&request(
        1,
        false,
        &params(dir, name, method, query, len),
        body,
    ))
    .unwrap();
    answer(&mut s, 1)
}

const HELLO: &str =
    "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nhello %s\\n' \"$QUERY_STRING\"\n";

/// The server still answers a good request.
fn still_serves(dir: &Dir) {
    let a = ask(dir, "hello", "GET", "still", b"");
    assert!(a.complete(), "{a:?}");
    assert_eq!(a.body(), b"hello still\n", "{a:?}");
}

/// brood with `hello` in its root, `extra` arguments, and one request served.
fn setup(tag: &str, extra: &[&str]) -> (Dir, Brood) {
    let dir = Dir::new(tag);
    dir.script("hello", HELLO);
    let root = dir.path("www").display().to_string();
    let mut args = vec!["--root", root.as_str()];
    args.extend_from_slice(extra);
    let brood = Brood::start(&dir, &args);
    still_serves(&dir);
    (dir, brood)
}

/// Resident memory of `pid` in kB.
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        .unwrap()
}

/// `pid`'s state letter (`None` once it is gone).
fn state_of(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// Running (or sleeping, or stopped): there and not a zombie.
fn alive(pid: u32) -> bool {
    state_of(pid).is_some_and(|s| s != 'Z')
}

/// Polls `cond` every 20 ms until it holds, failing with `what` after `limit`.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pids the scripts recorded that were not in `before`, once there are `n` of them.
fn new_pids(dir: &Dir, before: &[u32], n: usize) -> Vec<u32> {
    let mut found = Vec::new();
    wait_for(&format!("{n} new script pids"), T, || {
        found = dir
            .recorded_pids()
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        found.len() >= n
    });
    found
}

/// `brood`'s children that are zombies.
fn zombies(pid: u32) -> Vec<u32> {
    children(pid)
        .into_iter()
        .filter(|&c| state_of(c) == Some('Z'))
        .collect()
}

/// The `metrics on http://ADDR/metrics` address of a brood started with `--metrics`.
fn metrics_addr(brood: &mut Brood) -> String {
    let line = brood.wait_line("metrics on http://");
    let rest = &line[line.find("http://").unwrap() + 7..];
    rest.trim_end_matches("/metrics").to_string()
}

/// The value of gauge `name` (0 when absent).
fn gauge(addr: &str, name: &str) -> f64 {
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(T)).unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut all = String::new();
    tcp.read_to_string(&mut all).unwrap();
    all.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `running` scripts run and `queued` requests wait.
fn wait_gauges(addr: &str, running: f64, queued: f64) {
    let deadline = Instant::now() + T;
    loop {
        let now = (
            gauge(addr, "brood_cgi_scripts_running"),
            gauge(addr, "brood_cgi_queue_depth"),
        );
        if now == (running, queued) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "gauges at {now:?}, not ({running}, {queued})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mkfifo(path: &std::path::Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

fn signal(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) with plain integers.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Waits for `brood` to exit, at most `limit`: its status and how long it took.
fn wait_exit(brood: &mut Brood, limit: Duration) -> (std::process::ExitStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(st) = brood.child.try_wait().unwrap() {
            return (st, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "brood still running {limit:?} after SIGTERM: {:#?}",
            brood.drain()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// --- 1. Graceful stop ----------------------------------------------------------------

#[test]
fn sigterm_ends_every_running_group_and_brood_exits_0_within_the_grace() {
    let dir = Dir::new("term");
    let pids = dir.path("pids").display().to_string();
    // A script with a child of its own in its group, and one that ignores SIGTERM (as its
    // child then does): that one needs the SIGKILL after the grace.
    dir.script(
        "nap",
        &format!(
            "#!/bin/sh\nsleep 60 &\necho $! > {pids}/child-$$\nprintf 'Content-Type: text/plain\\n\\nnapping\\n'\nwait\n"
        ),
    );
    dir.script(
        "stubborn",
        &format!(
            "#!/bin/sh\ntrap '' TERM\nsleep 60 &\necho $! > {pids}/child-$$\nprintf 'Content-Type: text/plain\\n\\nnapping\\n'\nwait\necho survived\n"
        ),
    );
    let mut brood = Brood::start(&dir, &["--root", dir.path("www").to_str().unwrap()]);
    let mut conns = Vec::new();
    for name in ["nap", "stubborn", "nap", "stubborn"] {
        let mut s = connect(&dir);
        s.write_all(&request(
            1,
            false,
            &params(&dir, name, "GET", "", None),
            b"",
        ))
        .unwrap();
        read_until(&mut s, 1, "napping");
        conns.push(s);
    }
    // 4 scripts and their 4 sleeps.
    let all = new_pids(&dir, &[], 8);
    assert!(all.iter().all(|&p| alive(p)), "{all:?}");

    assert!(signal(brood.pid() as i32, libc::SIGTERM));
    let (status, took) = wait_exit(&mut brood, Duration::from_secs(15));
    println!("brood exited {status} {took:?} after SIGTERM");
    assert!(
        status.success(),
        "brood exited {status}: {:#?}",
        brood.drain()
    );
    // SIGTERM, 2 s of grace, SIGKILL; the loops give up after twice the grace.
    assert!(took < Duration::from_secs(7), "brood took {took:?} to stop");
    brood.wait_line("SIGTERM, stopping");
    // Every script and every child of theirs is gone.
    wait_for("every script process to be gone", T, || {
        all.iter().all(|&p| !alive(p))
    });
    wait_groups_gone(&dir);
    // Every connection was closed (no hang), whatever it got.
    for mut s in conns {
        let a = answer(&mut s, 1);
        assert!(!a.text().contains("survived"), "{a:?}");
    }
    // The socket file brood made is gone with it, as nginx's are.
    assert!(!dir.sock().exists(), "the socket file was left behind");
}

#[test]
fn a_socket_file_another_server_took_over_is_left_to_it() {
    let dir = Dir::new("taken-over");
    dir.script("hello", HELLO);
    let mut brood = Brood::start(&dir, &["--root", dir.path("www").to_str().unwrap()]);
    still_serves(&dir);
    // Another server binds the same path (as a second `brood cgi` started over a first one
    // that still runs would not: that is EADDRINUSE; a server that unlinks first does).
    std::fs::remove_file(dir.sock()).unwrap();
    let other = std::os::unix::net::UnixListener::bind(dir.sock()).unwrap();
    assert!(signal(brood.pid() as i32, libc::SIGTERM));
    let (status, _) = wait_exit(&mut brood, Duration::from_secs(15));
    assert!(status.success(), "brood exited {status}");
    assert!(
        dir.sock().exists(),
        "brood removed the other server's socket file"
    );
    // And it is still the other server's: a connection reaches it.
    let _c = UnixStream::connect(dir.sock()).unwrap();
    let (_s, _) = other.accept().unwrap();
}

#[test]
fn a_stopping_server_refuses_new_connections_at_once_on_unix_and_tcp() {
    for tcp in [false, true] {
        let dir = Dir::new(if tcp { "refuse-tcp" } else { "refuse-unix" });
        let termed = dir.path("termed");
        // Ignores SIGTERM (its sleep does not) and says it got it: brood is then in its
        // grace, 2 s before the SIGKILL, and must already refuse.
        dir.script(
            "stubborn",
            &format!(
                "#!/bin/sh\ntrap 'echo > {}' TERM\nprintf 'Content-Type: text/plain\\n\\nnapping\\n'\nwhile :; do sleep 1; done\n",
                termed.display()
            ),
        );
        let root = dir.path("www").display().to_string();
        let mut brood = if tcp {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_brood"));
            cmd.args([
                "cgi",
                "--fastcgi",
                "--listen",
                "127.0.0.1:0",
                "--root",
                &root,
                "--max-connections",
                "1",
            ]);
            Brood::spawn(cmd)
        } else {
            Brood::start(&dir, &["--root", &root, "--max-connections", "1"])
        };
        let line = brood.wait_line("listening on fastcgi");
        let addr = line
            .split("listening on fastcgi ")
            .nth(1)
            .and_then(|a| a.split_whitespace().next())
            .unwrap()
            .to_string();
        let connect_any = || -> std::io::Result<Box<dyn ReadWrite>> {
            if tcp {
                let s = std::net::TcpStream::connect(&addr)?;
                s.set_read_timeout(Some(T))?;
                Ok(Box::new(s))
            } else {
                let s = UnixStream::connect(dir.sock())?;
                s.set_read_timeout(Some(T))?;
                Ok(Box::new(s))
            }
        };
        let mut held = connect_any().unwrap();
        held.write_all(&request(
            1,
            false,
            &params(&dir, "stubborn", "GET", "", None),
            b"",
        ))
        .unwrap();
        read_until(&mut held, 1, "napping");
        // At the connection cap: this one waits in the listen backlog, its request sent.
        let mut waiting = connect_any().unwrap();
        waiting
            .write_all(&request(
                1,
                false,
                &params(&dir, "stubborn", "GET", "", None),
                b"",
            ))
            .unwrap();
        brood.wait_line("the most allowed (--max-connections)");

        assert!(signal(brood.pid() as i32, libc::SIGTERM));
        wait_for("the script to get SIGTERM", T, || termed.exists());
        // What waited in the backlog was closed before any script was told to stop (TCP:
        // reset by the kernel; Unix: taken and closed by brood), not at the end of the
        // grace: its end is already there to read, without waiting.
        let mut buf = [0u8; 64];
        // SAFETY: recv into a live buffer of its length, on an fd this test owns.
        let got = unsafe {
            libc::recv(
                waiting.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        let err = std::io::Error::last_os_error();
        assert!(
            got == 0 || got < 0 && err.raw_os_error() == Some(libc::ECONNRESET),
            "the connection waiting in the backlog is still open: {got} {err}"
        );
        // brood is still in its grace, and a new connection is refused at once: over TCP
        // ECONNREFUSED (the socket is shut down), over Unix ENOENT (the file is gone).
        let refused = connect_any().map(|_| ()).unwrap_err();
        let alive = brood.child.try_wait().unwrap().is_none();
        let want = if tcp {
            libc::ECONNREFUSED
        } else {
            libc::ENOENT
        };
        assert_eq!(refused.raw_os_error(), Some(want), "{refused}");
        assert!(
            alive,
            "brood had exited: the test did not look during the grace"
        );
        let (status, took) = wait_exit(&mut brood, Duration::from_secs(15));
        assert!(
            status.success(),
            "brood exited {status}: {:#?}",
            brood.drain()
        );
        println!("tcp={tcp}: refused with {refused}; brood exited {took:?} after SIGTERM");
        // No accept error was logged for the socket the stop shut down.
        assert!(
            !brood.drain().iter().any(|l| l.contains("accept:")),
            "{:#?}",
            brood.seen
        );
        // The held request got an end, whatever it was (the script was killed).
        let _ = answer(&mut held, 1);
        wait_groups_gone(&dir);
    }
}

trait ReadWrite: Read + Write + std::os::fd::AsRawFd {}
impl<T: Read + Write + std::os::fd::AsRawFd> ReadWrite for T {}

#[test]
fn a_web_server_that_half_closes_after_its_request_gets_the_answer_then_a_close() {
    let (dir, mut brood) = setup("half-close", &[]);
    // A whole request (the connection asked to be kept), then shutdown(SHUT_WR): the whole
    // answer and its END_REQUEST, then brood closes (no request can follow). The half-close
    // comes at once (brood sees it while the script runs), or once the request is over
    // (its script done and logged, the connection kept and idle) while brood still holds
    // part of the answer.
    for (name, size, after_the_request) in [("big", 1_000_000, false), ("big2", 400_000, true)] {
        dir.script(
            name,
            &format!(
                "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nhead -c {size} /dev/zero | tr '\\0' x\n"
            ),
        );
        let mut s = connect(&dir);
        s.write_all(&request(1, true, &params(&dir, name, "GET", "", None), b""))
            .unwrap();
        if after_the_request {
            brood.wait_line(&format!("/cgi-bin/{name}\""));
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        if after_the_request {
            // Not a synchronization (the answer must come whole whenever brood sees the
            // EOF): time for brood to see it while it still holds part of the answer.
            std::thread::sleep(Duration::from_millis(300));
        }
        let a = answer(&mut s, 1);
        assert!(a.complete(), "{name}: {:?}", a.end);
        assert_eq!(a.body().len(), size, "{name}");
        assert!(a.body().iter().all(|&b| b == b'x'), "{name}");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(
            rest.is_empty(),
            "{name}: {} bytes after END_REQUEST",
            rest.len()
        );
    }

    // Half-closed while a silent script runs: brood waits for it without spinning...
    dir.script(
        "silent",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nexec sleep 60\n",
    );
    let before = dir.recorded_pids();
    let mut s = connect(&dir);
    s.write_all(&request(
        1,
        false,
        &params(&dir, "silent", "GET", "", None),
        b"",
    ))
    .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let script = new_pids(&dir, &before, 1)[0];
    let spent = ticks_over(brood.pid(), Duration::from_secs(1));
    // 100 ticks a second: a loop woken by the closed read side on every turn takes ~100.
    assert!(
        spent < 20,
        "brood used {spent} ticks in 1 s while nothing moved"
    );
    assert!(
        alive(script),
        "the script of a half-closed connection was ended"
    );
    // ...and when the web server then closes the connection, the script is ended.
    drop(s);
    wait_for("the script to be ended", T, || !alive(script));
    wait_groups_gone(&dir);
    still_serves(&dir);
}

// --- 2. A web server that stops reading ----------------------------------------------

/// Bytes `pid` has written so far (`wchar` of /proc/PID/io).
fn written(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_web_server_that_stops_reading_a_200_mb_answer_holds_brood_to_bounded_memory() {
    let (dir, mut brood) = setup("stall", &[]);
    dir.script(
        "flood",
        "#!/bin/sh\nprintf 'Content-Type: application/octet-stream\\n\\n'\nexec head -c 200000000 /dev/zero\n",
    );
    brood.wait_settled(usize::MAX);
    let fds = brood.fds();
    let before_pids = dir.recorded_pids();
    let before = rss_kb(brood.pid());

    let mut s = connect(&dir);
    s.write_all(&request(
        1,
        false,
        &params(&dir, "flood", "GET", "", None),
        b"",
    ))
    .unwrap();
    // Read nothing. The script (`head` by now) writes until brood stops taking its output.
    let head = new_pids(&dir, &before_pids, 1)[0];
    let mut last = (0u64, Instant::now());
    let deadline = Instant::now() + T;
    loop {
        let now = written(head).unwrap_or(last.0);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the script never stopped writing ({now} bytes)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let grown = rss_kb(brood.pid()).saturating_sub(before);
    println!(
        "the script wrote {} bytes before it stalled; brood RSS {before} kB +{grown} kB",
        last.0
    );
    assert!(
        last.0 < 32 << 20,
        "brood took {} bytes the web server did not read",
        last.0
    );
    assert!(grown < 64 * 1024, "brood grew by {grown} kB");
    assert!(
        alive(head),
        "the script was ended while its answer was only stalled"
    );

    // Meanwhile brood serves others.
    for _ in 0..5 {
        still_serves(&dir);
    }
    // The web server goes away: the script's group is ended.
    drop(s);
    let line = brood.wait_line("\"GET /cgi-bin/flood\"");
    assert!(line.contains("signal="), "{line}");
    wait_groups_gone(&dir);
    brood.wait_settled(fds);
}

/// CPU ticks `pid` uses in the next `span` (a measurement, not a synchronization).
fn ticks_over(pid: u32, span: Duration) -> u64 {
    let ticks = cpu_ticks(pid);
    std::thread::sleep(span);
    cpu_ticks(pid) - ticks
}

/// CPU ticks (user + system) brood has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Waits until `pid`, writing without end, stalls behind an unread answer (nothing written
/// for half a second), and says what it wrote.
fn stalled(pid: u32) -> u64 {
    let mut last = (0u64, Instant::now());
    let deadline = Instant::now() + T;
    loop {
        let now = written(pid).unwrap_or(last.0);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_millis(500) {
            return now;
        }
        assert!(Instant::now() < deadline, "the script never stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_script_that_ends_while_its_unread_answer_waits_costs_brood_no_cpu() {
    let (dir, brood) = setup("stall-exit", &[]);
    // Writes without end. Before the body it writes `BEFORE` bytes: the header lines, and
    // its pid to the harness's file (`Dir::script`: `echo $$`, a pid of up to 7 digits).
    const HEADER: u64 = "Content-Type: application/octet-stream\n\n".len() as u64;
    const BEFORE: std::ops::RangeInclusive<u64> = HEADER + 2..=HEADER + 8;
    dir.script(
        "burst",
        "#!/bin/sh\nprintf 'Content-Type: application/octet-stream\\n\\n'\nexec head -c 999999999999 /dev/zero\n",
    );
    brood.wait_settled(usize::MAX);
    let before_pids = dir.recorded_pids();
    let mut s = connect(&dir);
    s.write_all(&request(
        1,
        false,
        &params(&dir, "burst", "GET", "", None),
        b"",
    ))
    .unwrap();
    let script = new_pids(&dir, &before_pids, 1)[0];
    // Nobody reads the answer: brood holds what it may and stops reading the pipe, and
    // the script stalls with the pipe full. Then it ends (killed: an exit it chose could
    // not be timed to come after brood stopped reading), and the pipe hangs up.
    let wrote = stalled(script);
    // SAFETY: kill sends a signal to one process of this test's.
    assert_eq!(unsafe { libc::kill(script as i32, libc::SIGKILL) }, 0);
    wait_for("the script's exit", T, || !alive(script));
    let spent = ticks_over(brood.pid(), Duration::from_secs(2));
    // 100 ticks a second: a loop woken by the hang-up on every turn would take about 200.
    assert!(
        spent < 30,
        "brood used {spent} ticks in 2 s while nothing moved"
    );
    // Then the web server reads: all the script got out (its last write, cut by the kill,
    // may have put part of one write, at most 128 KiB, in the pipe beyond `wrote`), and
    // no END_REQUEST: a
    // script killed by a signal gives a truncated response.
    let a = answer(&mut s, 1);
    assert!(!a.complete(), "END_REQUEST after a killed script");
    let body = a.body().len() as u64;
    assert!(
        (wrote - BEFORE.end()..=wrote - BEFORE.start() + (128 << 10)).contains(&body),
        "{body} bytes of the {wrote} the script wrote"
    );
}

#[test]
fn a_web_server_that_sends_management_records_and_never_reads_the_answers_stays_bounded() {
    let (dir, brood) = setup("mgmt-flood", &[]);
    let before = rss_kb(brood.pid());
    let mut names = Vec::new();
    for n in [&b"FCGI_MAX_CONNS"[..], b"FCGI_MAX_REQS", b"FCGI_MPXS_CONNS"] {
        pair(&mut names, n, b"");
    }
    let one = rec(GET_VALUES, 0, &names);
    let chunk = one.repeat(64 * 1024 / one.len());
    let s = connect(&dir);
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    // Up to 160 MB of GET_VALUES, each answered with a GET_VALUES_RESULT nobody reads. A
    // server that bounds what it holds for the peer stops reading it (the write blocks).
    let limit: usize = 160 << 20;
    let mut sent = 0usize;
    let mut checked = 0usize;
    let start = Instant::now();
    while sent < limit && start.elapsed() < T {
        // Past the bound already: no need to go on.
        if sent - checked > 4 << 20 {
            checked = sent;
            if rss_kb(brood.pid()).saturating_sub(before) > 96 * 1024 {
                break;
            }
        }
        match (&s).write(&chunk) {
            Ok(n) => sent += n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break;
            }
            Err(e) => panic!("writing: {e}"),
        }
    }
    // What brood read is answered (queued) by now or soon: let it settle.
    let mut grown = 0;
    let mut prev = u64::MAX;
    wait_for("brood's memory to settle", T, || {
        grown = rss_kb(brood.pid()).saturating_sub(before);
        let settled = grown == prev;
        prev = grown;
        settled
    });
    println!(
        "sent {} MB of GET_VALUES in {:?}; brood RSS {before} kB +{grown} kB",
        sent >> 20,
        start.elapsed()
    );
    assert!(
        grown < 64 * 1024,
        "brood grew by {grown} kB holding answers to {} MB of GET_VALUES nobody read",
        sent >> 20
    );
    drop(s);
    still_serves(&dir);
}

// --- 3. --max-children 1 --queue -----------------------------------------------------

#[test]
fn a_queued_request_runs_when_the_slot_frees_a_late_one_gets_503_and_a_gone_one_is_dropped() {
    let dir = Dir::new("queue");
    dir.script("hello", HELLO);
    let fifo = dir.path("go");
    mkfifo(&fifo);
    dir.script(
        "waits",
        &format!(
            "#!/bin/sh\nread x < {}\nprintf 'Content-Type: text/plain\\n\\ngot %s\\n' \"$x\"\n",
            fifo.display()
        ),
    );
    let mut brood = Brood::start(
        &dir,
        &[
            "--root",
            dir.path("www").to_str().unwrap(),
            "--max-children",
            "1",
            "--queue",
            "3",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let m = metrics_addr(&mut brood);
    still_serves(&dir);
    wait_gauges(&m, 0.0, 0.0);
    brood.wait_settled(usize::MAX);
    let fds = brood.fds();

    // A holds the one slot.
    let mut a = connect(&dir);
    a.write_all(&request(
        1,
        false,
        &params(&dir, "waits", "GET", "", None),
        b"",
    ))
    .unwrap();
    wait_gauges(&m, 1.0, 0.0);
    // C waits past the queue time; D leaves while it waits.
    let mut c = connect(&dir);
    let c_sent = Instant::now();
    c.write_all(&request(
        1,
        false,
        &params(&dir, "hello", "GET", "c", None),
        b"",
    ))
    .unwrap();
    let mut d = connect(&dir);
    d.write_all(&request(
        1,
        false,
        &params(&dir, "hello", "GET", "d", None),
        b"",
    ))
    .unwrap();
    wait_gauges(&m, 1.0, 2.0);
    drop(d);
    wait_gauges(&m, 1.0, 1.0);
    let line = brood.wait_line("\"GET /cgi-bin/hello?d\"");
    assert!(line.contains(" 499 "), "{line}");
    let got = answer(&mut c, 1);
    let waited = c_sent.elapsed();
    assert!(got.complete(), "{got:?}");
    assert_eq!(got.status(), 503, "{got:?}");
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(10),
        "503 after {waited:?} with --queue 3"
    );
    wait_gauges(&m, 1.0, 0.0);

    // B waits, then runs when A's slot comes free: not 503.
    let mut b = connect(&dir);
    b.write_all(&request(
        1,
        false,
        &params(&dir, "hello", "GET", "b", None),
        b"",
    ))
    .unwrap();
    wait_gauges(&m, 1.0, 1.0);
    std::fs::write(&fifo, "go\n").unwrap();
    let got = answer(&mut a, 1);
    assert_eq!(got.body(), b"got go\n", "{got:?}");
    let got = answer(&mut b, 1);
    assert!(got.complete(), "{got:?}");
    assert_eq!(got.body(), b"hello b\n", "{got:?}");
    wait_gauges(&m, 0.0, 0.0);
    // The line is not wedged: the next request runs at once.
    for _ in 0..3 {
        still_serves(&dir);
    }
    wait_groups_gone(&dir);
    brood.wait_settled(fds);
}

#[test]
fn queued_requests_whose_script_cannot_start_do_not_wedge_the_queue() {
    // Found and executable, but its interpreter is missing: the spawn fails after the
    // request took its slot.
    queue_with_bad_scripts("queue-broken", "#!/nonexistent/interpreter\n", 500);
}

/// The control for the test above: the bad script starts, and ends at once with no answer.
#[test]
fn queued_requests_whose_script_fails_at_once_do_not_wedge_the_queue() {
    queue_with_bad_scripts("queue-fails", "#!/bin/sh\nexit 1\n", 502);
}

/// One slot, a queue of 10 s: 12 requests wait, bad and good in turn; once the slot
/// comes free, all are answered at once (`bad_status` for the bad ones), four rounds.
fn queue_with_bad_scripts(tag: &str, bad: &str, bad_status: u16) {
    let dir = Dir::new(tag);
    dir.script("hello", HELLO);
    dir.script("broken", bad);
    let fifo = dir.path("go");
    mkfifo(&fifo);
    dir.script(
        "waits",
        &format!(
            "#!/bin/sh\nread x < {}\nprintf 'Content-Type: text/plain\\n\\ngot %s\\n' \"$x\"\n",
            fifo.display()
        ),
    );
    let mut brood = Brood::start(
        &dir,
        &[
            "--root",
            dir.path("www").to_str().unwrap(),
            "--max-children",
            "1",
            "--queue",
            "10",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let m = metrics_addr(&mut brood);
    still_serves(&dir);
    let a = ask(&dir, "broken", "GET", "", b"");
    assert_eq!(a.status(), bad_status, "{a:?}");
    const N: usize = 12;
    for round in 0..8 {
        let mut holder = connect(&dir);
        holder
            .write_all(&request(
                1,
                false,
                &params(&dir, "waits", "GET", "", None),
                b"",
            ))
            .unwrap();
        wait_gauges(&m, 1.0, 0.0);
        // Waiting requests, broken and good in turn, from a thread each (so that they come
        // in while a loop is busy with the one before, and spread over the loops).
        let queued: Vec<_> = (0..N)
            .map(|i| {
                let sock = dir.sock();
                let name = if i % 2 == 0 { "broken" } else { "hello" };
                let p = params(&dir, name, "GET", &format!("r{round}-{i}"), None);
                std::thread::spawn(move || {
                    let mut s = UnixStream::connect(sock).unwrap();
                    s.set_read_timeout(Some(T)).unwrap();
                    s.write_all(&request(1, false, &p, b"")).unwrap();
                    let a = answer(&mut s, 1);
                    (name, a, Instant::now())
                })
            })
            .collect();
        wait_gauges(&m, 1.0, N as f64);
        std::fs::write(&fifo, "go\n").unwrap();
        let freed = Instant::now();
        let got = answer(&mut holder, 1);
        assert_eq!(got.body(), b"got go\n", "{got:?}");
        let outcomes: Vec<(&str, u16, Duration)> = queued
            .into_iter()
            .map(|t| {
                let (name, a, at) = t.join().unwrap();
                (name, a.status(), at - freed)
            })
            .collect();
        println!("round {round}: {outcomes:?}");
        for &(name, status, after) in &outcomes {
            let want = if name == "broken" { bad_status } else { 200 };
            assert!(
                status == want && after < Duration::from_secs(5),
                "round {round}: {name} answered {status} {after:?} after the slot came free \
                 (want {want} at once): {outcomes:?}"
            );
        }
        wait_gauges(&m, 0.0, 0.0);
    }
    still_serves(&dir);
    wait_groups_gone(&dir);
}

// --- 4. --max-connections ------------------------------------------------------------

#[test]
fn past_max_connections_new_ones_wait_and_are_served_once_one_closes() {
    let (dir, mut brood) = setup("cap", &["--max-connections", "4"]);
    brood.wait_settled(usize::MAX);
    let fds = brood.fds();
    // Four kept connections fill the cap.
    let mut held: Vec<UnixStream> = (0..4)
        .map(|i| {
            let mut s = connect(&dir);
            let p = params(&dir, "hello", "GET", &format!("held{i}"), None);
            s.write_all(&request(1, true, &p, b"")).unwrap();
            let a = answer(&mut s, 1);
            assert_eq!(a.body(), format!("hello held{i}\n").as_bytes(), "{a:?}");
            s
        })
        .collect();
    // Five more: connected (in the listen backlog) and sent, but not served.
    let mut extra: Vec<UnixStream> = (0..5)
        .map(|i| {
            let mut s = connect(&dir);
            let p = params(&dir, "hello", "GET", &format!("extra{i}"), None);
            s.write_all(&request(1, false, &p, b"")).unwrap();
            s
        })
        .collect();
    brood.wait_line("the most allowed (--max-connections)");
    for s in &mut extra {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            other => panic!("a connection past the cap was served: {other:?}"),
        }
        s.set_read_timeout(Some(T)).unwrap();
    }
    // One kept connection closes: the five get in one after another (each closes after
    // its answer).
    drop(held.pop());
    for (i, s) in extra.iter_mut().enumerate() {
        let a = answer(s, 1);
        assert!(a.complete(), "{a:?}");
        assert_eq!(a.body(), format!("hello extra{i}\n").as_bytes(), "{a:?}");
    }
    // The kept ones still serve.
    for (i, s) in held.iter_mut().enumerate() {
        let p = params(&dir, "hello", "GET", &format!("again{i}"), None);
        s.write_all(&request(2, true, &p, b"")).unwrap();
        let a = answer(s, 2);
        assert_eq!(a.body(), format!("hello again{i}\n").as_bytes(), "{a:?}");
    }
    drop(held);
    still_serves(&dir);
    wait_groups_gone(&dir);
    brood.wait_settled(fds);
}

// --- 5. Bodies -----------------------------------------------------------------------

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn bodies_in_a_pipe_or_a_file_read_or_not_are_answered_and_leave_nothing() {
    let (dir, brood) = setup("bodies", &[]);
    dir.script(
        "echo",
        "#!/bin/sh\nprintf 'Content-Type: application/octet-stream\\n\\n'\nexec cat\n",
    );
    dir.script(
        "ignore",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nignored %s\\n' \"$CONTENT_LENGTH\"\n",
    );
    dir.script(
        "ignore-slowly",
        "#!/bin/sh\nsleep 1\nprintf 'Content-Type: text/plain\\n\\nlate %s\\n' \"$CONTENT_LENGTH\"\n",
    );
    dir.script(
        "count",
        "#!/bin/sh\nn=$(wc -c)\nprintf 'Content-Type: text/plain\\n\\ncounted %s\\n' $n\n",
    );
    brood.wait_settled(usize::MAX);
    let fds = brood.fds();
    // In memory (through a pipe) up to 256 KiB; above, a file.
    let (small, mid, big) = (pattern(1000), pattern(200_000), pattern(5_000_000));
    for (what, body) in [("small", &small), ("mid", &mid), ("big", &big)] {
        let start = Instant::now();
        let a = ask(&dir, "echo", "POST", "", body);
        assert!(a.complete(), "{what}: {:?}", a.end);
        assert!(
            a.body() == &body[..],
            "{what}: the body came back altered ({} bytes)",
            a.body().len()
        );
        println!("echo {what}: {:?}", start.elapsed());
    }
    for (name, body, want) in [
        ("ignore", &mid, "ignored 200000\n"),
        ("ignore", &big, "ignored 5000000\n"),
        ("ignore-slowly", &mid, "late 200000\n"),
        ("ignore-slowly", &big, "late 5000000\n"),
        ("count", &big, "counted 5000000\n"),
        ("count", &mid, "counted 200000\n"),
    ] {
        let start = Instant::now();
        let a = ask(&dir, name, "POST", "", body);
        assert!(a.complete(), "{name} {}: {a:?}", body.len());
        assert_eq!(a.text().split("\r\n\r\n").nth(1), Some(want), "{a:?}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{name}: {:?}",
            start.elapsed()
        );
    }
    // The same at once, from threads.
    let threads: Vec<_> = (0..12)
        .map(|i| {
            let sock = dir.sock();
            let (name, n) = [
                ("echo", 1000),
                ("ignore", 200_000),
                ("ignore", 3_000_000),
                ("echo", 200_000),
            ][i % 4];
            let p = params(&dir, name, "POST", "", Some(n));
            std::thread::spawn(move || {
                let body = pattern(n);
                let mut s = UnixStream::connect(sock).unwrap();
                s.set_read_timeout(Some(T)).unwrap();
                s.write_all(&request(1, false, &p, &body)).unwrap();
                let a = answer(&mut s, 1);
                assert!(a.complete(), "{name} {n}: {:?}", a.end);
                if name == "echo" {
                    assert!(a.body() == &body[..], "{name} {n}: altered");
                } else {
                    assert_eq!(a.body(), format!("ignored {n}\n").as_bytes());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    wait_groups_gone(&dir);
    brood.wait_settled(fds);
}

// --- 6. fds --------------------------------------------------------------------------

/// `pid`'s open fds and what they are.
fn fds_of(pid: u32) -> Vec<(u32, String)> {
    let mut out: Vec<(u32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().parse().ok()?;
            let t = std::fs::read_link(e.path()).ok()?;
            Some((n, t.display().to_string()))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn scripts_get_only_fds_0_1_and_2_whatever_their_body() {
    let (dir, brood) = setup("script-fds", &[]);
    // The script becomes `sleep` with what it was given, for the test to look at.
    let d = dir.0.display().to_string();
    dir.script(
        "look",
        &format!(
            "#!/bin/sh\necho $$ > {d}/look-$QUERY_STRING\nprintf 'Content-Type: text/plain\\n\\nready\\n'\nexec sleep 30\n"
        ),
    );
    brood.wait_settled(usize::MAX);
    let fds = brood.fds();
    // While other requests come and go (spawns in the other loop at the same time).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let (stop, sock) = (stop.clone(), dir.sock());
            let p = params(&dir, "hello", "POST", "", Some(1000));
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut s = UnixStream::connect(&sock).unwrap();
                    s.set_read_timeout(Some(T)).unwrap();
                    s.write_all(&request(1, false, &p, &pattern(1000))).unwrap();
                    assert!(answer(&mut s, 1).complete());
                }
            })
        })
        .collect();
    for (what, n) in [
        ("no body", 0),
        ("a body in a pipe", 1000),
        ("a body in a file", 300_000),
    ] {
        for i in 0..5 {
            let q = format!("{}-{i}", n);
            let mut s = connect(&dir);
            let len = (n > 0).then_some(n);
            s.write_all(&request(
                1,
                true,
                &params(&dir, "look", "POST", &q, len),
                &pattern(n),
            ))
            .unwrap();
            read_until(&mut s, 1, "ready");
            let me: u32 = std::fs::read_to_string(dir.path(&format!("look-{q}")))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            // `sleep` itself, asleep: past the dynamic loader (which opens files of its own).
            wait_for("the script to be sleep, asleep", T, || {
                let read = |f: &str| std::fs::read_to_string(format!("/proc/{me}/{f}"));
                read("comm").is_ok_and(|c| c.trim() == "sleep")
                    && (read("wchan").is_ok_and(|w| w.contains("nanosleep"))
                        || read("syscall")
                            .is_ok_and(|s| s.starts_with("230 ") || s.starts_with("35 ")))
            });
            let open = fds_of(me);
            let numbers: Vec<u32> = open.iter().map(|(n, _)| *n).collect();
            assert_eq!(numbers, [0, 1, 2], "with {what}, the script has {open:?}");
            s.write_all(&rec(ABORT, 1, b"")).unwrap();
            let a = answer(&mut s, 1);
            assert!(a.end.is_some(), "{a:?}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in busy {
        t.join().unwrap();
    }
    wait_groups_gone(&dir);
    brood.wait_settled(fds);
}

#[test]
fn after_hundreds_of_mixed_requests_brood_has_the_fds_it_started_with() {
    let (dir, mut brood) = setup("mixed", &["--timeout", "2", "--max-children", "64"]);
    dir.script(
        "endless",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nwhile :; do echo tick; sleep 0.05; done\n",
    );
    dir.script("slow", "#!/bin/sh\nsleep 10 &\nwait\n");
    dir.script(
        "big",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nhead -c 300000 /dev/zero\n",
    );
    dir.script(
        "redirect",
        "#!/bin/sh\nprintf 'Location: /cgi-bin/hello?redirected\\n\\n'\n",
    );
    dir.script(
        "nothing",
        "#!/bin/sh\nprintf 'Status: 204 No Content\\n\\n'\n",
    );
    dir.script("badhead", "#!/bin/sh\necho 'not a header'\n");
    brood.wait_settled(usize::MAX);
    let fds = brood.fds();
    println!("brood has {fds} fds: {}", fd_list(brood.pid()));

    let threads: Vec<_> = (0..4)
        .map(|t| {
            let sock = dir.sock();
            let www = dir.path("www").display().to_string();
            std::thread::spawn(move || {
                let p = |name: &str, method: &str, q: &str, len: Option<usize>| {
                    let mut v = vec![
                        ("REQUEST_METHOD".to_string(), method.to_string()),
                        ("QUERY_STRING".to_string(), q.to_string()),
                        ("REQUEST_URI".to_string(), format!("/cgi-bin/{name}?{q}")),
                        ("DOCUMENT_ROOT".to_string(), www.clone()),
                        ("SCRIPT_NAME".to_string(), format!("/cgi-bin/{name}")),
                    ];
                    if let Some(n) = len {
                        v.push(("CONTENT_LENGTH".to_string(), n.to_string()));
                    }
                    v
                };
                let conn = || {
                    let s = UnixStream::connect(&sock).unwrap();
                    s.set_read_timeout(Some(T)).unwrap();
                    s
                };
                // One kept connection for the quick ones.
                let mut kept = conn();
                let mut id = 0u16;
                for i in 0..75 {
                    let q = format!("t{t}-{i}");
                    id = id.wrapping_add(1).max(1);
                    match i % 15 {
                        0..=5 => {
                            kept.write_all(&request(id, true, &p("hello", "GET", &q, None), b""))
                                .unwrap();
                            let a = answer(&mut kept, id);
                            assert_eq!(a.body(), format!("hello {q}\n").as_bytes(), "{a:?}");
                        }
                        6 => {
                            kept.write_all(&request(id, true, &p("missing", "GET", &q, None), b""))
                                .unwrap();
                            assert_eq!(answer(&mut kept, id).status(), 404);
                        }
                        7 => {
                            // Aborted mid-response.
                            let mut s = conn();
                            s.write_all(&request(1, true, &p("endless", "GET", &q, None), b""))
                                .unwrap();
                            read_until(&mut s, 1, "tick");
                            s.write_all(&rec(ABORT, 1, b"")).unwrap();
                            assert!(answer(&mut s, 1).end.is_some());
                        }
                        8 => {
                            // Gone mid-response.
                            let mut s = conn();
                            s.write_all(&request(1, false, &p("endless", "GET", &q, None), b""))
                                .unwrap();
                            read_until(&mut s, 1, "tick");
                        }
                        9 => {
                            // Gone before the body was whole.
                            let mut s = conn();
                            let mut r = request(
                                1,
                                false,
                                &p("hello", "POST", &q, Some(100_000)),
                                &pattern(100_000),
                            );
                            r.truncate(50_000);
                            s.write_all(&r).unwrap();
                        }
                        10 => {
                            kept.write_all(&request(id, true, &p("big", "HEAD", &q, None), b""))
                                .unwrap();
                            let a = answer(&mut kept, id);
                            assert!(a.complete() && a.body().is_empty(), "{a:?}");
                        }
                        11 => {
                            kept.write_all(&request(
                                id,
                                true,
                                &p("redirect", "GET", &q, None),
                                b"",
                            ))
                            .unwrap();
                            let a = answer(&mut kept, id);
                            assert_eq!(a.body(), b"hello redirected\n", "{a:?}");
                        }
                        12 => {
                            kept.write_all(&request(id, true, &p("nothing", "GET", &q, None), b""))
                                .unwrap();
                            assert_eq!(answer(&mut kept, id).status(), 204);
                        }
                        13 => {
                            let mut s = conn();
                            s.write_all(&request(
                                1,
                                false,
                                &p("badhead", "POST", &q, Some(300_000)),
                                &pattern(300_000),
                            ))
                            .unwrap();
                            assert_eq!(answer(&mut s, 1).status(), 502);
                        }
                        _ if i == 14 => {
                            // Timed out (once per thread: 2 s each).
                            let mut s = conn();
                            s.write_all(&request(1, false, &p("slow", "GET", &q, None), b""))
                                .unwrap();
                            assert_eq!(answer(&mut s, 1).status(), 504);
                        }
                        _ => {
                            let mut s = conn();
                            s.write_all(&request(1, false, &p("big", "GET", &q, None), b""))
                                .unwrap();
                            let a = answer(&mut s, 1);
                            assert!(a.complete() && a.body().len() == 300_000, "{:?}", a.end);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    still_serves(&dir);
    wait_groups_gone(&dir);
    brood.wait_settled(fds);
    assert!(zombies(brood.pid()).is_empty());
    let _ = brood.drain();
}

// --- 7. No pidfds --------------------------------------------------------------------

#[test]
fn without_pidfds_exits_signals_and_timeouts_are_still_seen() {
    let dir = Dir::new("nopidfd");
    dir.script("hello", HELLO);
    dir.script(
        "exit3",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nbefore exit\\n'\nexit 3\n",
    );
    dir.script(
        "killed",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nhead -c 100000 /dev/zero | tr '\\0' y\nkill -9 $$\n",
    );
    dir.script(
        "killed-early",
        "#!/bin/sh\nprintf 'Content-Type: text/pl'\nkill -9 $$\n",
    );
    dir.script("slow", "#!/bin/sh\nsleep 10\n");
    let listen = format!("unix:{}", dir.sock().display());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_brood"));
    cmd.args(["cgi", "--fastcgi", "--listen", &listen, "--root"])
        .arg(dir.path("www"))
        .args(["--timeout", "2"])
        .env("BROOD_NO_PIDFD", "1");
    let mut brood = Brood::spawn(cmd);
    still_serves(&dir);
    brood.wait_settled(usize::MAX);
    let fds = brood.fds();

    let a = ask(&dir, "exit3", "GET", "", b"");
    assert_eq!(a.body(), b"before exit\n", "{a:?}");
    assert_eq!(a.end, Some((3, 0)), "exit 3 after a whole answer: {a:?}");
    let line = brood.wait_line("\"GET /cgi-bin/exit3\"");
    assert!(line.contains("exit=3"), "{line}");

    let start = Instant::now();
    let a = ask(&dir, "killed", "GET", "", b"");
    assert_eq!(
        a.end,
        None,
        "killed mid-body: cut, no END_REQUEST ({} body bytes)",
        a.body().len()
    );
    assert!(
        a.body().iter().all(|&b| b == b'y'),
        "{:?}",
        &a.body()[..64.min(a.body().len())]
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let line = brood.wait_line("\"GET /cgi-bin/killed\"");
    assert!(line.contains("signal=9"), "{line}");

    let a = ask(&dir, "killed-early", "GET", "", b"");
    assert_eq!(a.status(), 502, "{a:?}");

    let start = Instant::now();
    let a = ask(&dir, "slow", "GET", "", b"");
    assert_eq!(a.status(), 504, "{a:?}");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );

    for i in 0..30 {
        let a = ask(&dir, "hello", "GET", &i.to_string(), b"");
        assert_eq!(a.body(), format!("hello {i}\n").as_bytes());
    }
    wait_groups_gone(&dir);
    brood.wait_settled(fds);
}

// --- 8. A script that closes stdout and works on --------------------------------------

#[test]
fn a_script_that_closes_stdout_and_works_on_is_answered_after_exit_wait_and_left_alone() {
    let dir = Dir::new("daemon");
    let d = dir.0.display().to_string();
    dir.script(
        "daemon",
        &format!(
            "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nbye\\n'\nexec >&-\nsleep 4\ntouch {d}/daemon-done\n"
        ),
    );
    dir.script(
        "overstay",
        &format!(
            "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nbye\\n'\nexec >&-\nsleep 30\ntouch {d}/overstay-done\n"
        ),
    );
    let mut brood = Brood::start(
        &dir,
        &[
            "--root",
            dir.path("www").to_str().unwrap(),
            "--timeout",
            "7",
        ],
    );
    for name in ["daemon", "overstay"] {
        let start = Instant::now();
        let a = ask(&dir, name, "GET", "", b"");
        let took = start.elapsed();
        println!("{name} answered in {took:?}");
        assert!(a.complete(), "{a:?}");
        assert_eq!(a.body(), b"bye\n");
        assert!(
            took < Duration::from_millis(3500),
            "{name}: the answer took {took:?} (EXIT_WAIT is 2 s)"
        );
    }
    // The first finishes its work, untouched.
    wait_for("the daemon to finish", T, || {
        dir.path("daemon-done").exists()
    });
    let line = brood.wait_line("\"GET /cgi-bin/daemon\"");
    assert!(line.contains(" 200 ") && line.contains("exit=0"), "{line}");
    // The second is ended by the timeout.
    let line = brood.wait_line("\"GET /cgi-bin/overstay\"");
    assert!(line.contains(" 200 ") && line.contains("signal="), "{line}");
    wait_groups_gone(&dir);
    assert!(!dir.path("overstay-done").exists());
    brood.wait_childless();
}

// --- 9. Kill storm -------------------------------------------------------------------

#[test]
fn a_kill_storm_leaves_every_request_answered_or_closed_brood_serving_and_no_zombie() {
    let (dir, brood) = setup("storm", &["--max-children", "64"]);
    let map = dir.path("map");
    std::fs::create_dir_all(&map).unwrap();
    let m = map.display().to_string();
    dir.script(
        "first",
        &format!(
            "#!/bin/sh\necho $$ > {m}/$QUERY_STRING\nprintf 'Content-Type: text/plain\\n\\nstarted\\n'\nsleep 3\necho done\n"
        ),
    );
    dir.script(
        "late",
        &format!(
            "#!/bin/sh\necho $$ > {m}/$QUERY_STRING\nsleep 3\nprintf 'Content-Type: text/plain\\n\\ndone\\n'\n"
        ),
    );
    brood.wait_settled(usize::MAX);
    let fds = brood.fds();
    const N: usize = 50;
    let clients: Vec<_> = (0..N)
        .map(|i| {
            let sock = dir.sock();
            let name = if i % 2 == 0 { "first" } else { "late" };
            let p = params(&dir, name, "GET", &i.to_string(), None);
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(sock).unwrap();
                s.set_read_timeout(Some(T)).unwrap();
                s.write_all(&request(1, false, &p, b"")).unwrap();
                answer(&mut s, 1)
            })
        })
        .collect();
    let mut pids: HashMap<usize, u32> = HashMap::new();
    wait_for("every script to start", T, || {
        for i in 0..N {
            if let Some(p) = std::fs::read_to_string(map.join(i.to_string()))
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                pids.insert(i, p);
            }
        }
        pids.len() == N
    });
    // Kill -9 about half: some the script alone (its `sleep` holds stdout on), some the
    // whole group.
    let mut killed = BTreeSet::new();
    let mut x: u32 = 12345;
    for i in 0..N {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let pid = pids[&i] as i32;
        match (x >> 16) % 4 {
            0 => assert!(signal(pid, libc::SIGKILL)),
            1 => assert!(signal(-pid, libc::SIGKILL)),
            _ => continue,
        }
        killed.insert(i);
    }
    println!("killed {} of {N}: {killed:?}", killed.len());
    for (i, c) in clients.into_iter().enumerate() {
        let a = c.join().unwrap();
        if killed.contains(&i) {
            // Cut (no END_REQUEST) or, before the header, 502.
            assert!(
                a.end.is_none() || a.status() == 502,
                "request {i} (killed): {a:?}"
            );
            assert!(!a.text().contains("done"), "request {i} (killed): {a:?}");
        } else {
            assert!(a.complete(), "request {i}: {a:?}");
            assert!(a.body().ends_with(b"done\n"), "request {i}: {a:?}");
        }
    }
    for _ in 0..5 {
        still_serves(&dir);
    }
    wait_groups_gone(&dir);
    brood.wait_settled(fds);
    let z = zombies(brood.pid());
    assert!(z.is_empty(), "zombies: {z:?}");
}

// --- 10. Out of fds ------------------------------------------------------------------

#[test]
fn out_of_fds_every_request_is_answered_or_closed_and_brood_recovers() {
    let dir = Dir::new("nofile");
    dir.script("hello", HELLO);
    dir.script(
        "nap",
        "#!/bin/sh\nsleep 1\nprintf 'Content-Type: text/plain\\n\\nrested\\n'\n",
    );
    let listen = format!("unix:{}", dir.sock().display());
    // 64 fds for brood: some 20 of its own, the rest too few for 40 requests at once (a
    // connection, and three pipes' ends and a pidfd per script).
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_brood"))
        .args(["cgi", "--fastcgi", "--listen", &listen, "--root"])
        .arg(dir.path("www"))
        .args(["--max-children", "100", "--max-connections", "100"]);
    let mut brood = Brood::spawn(cmd);
    still_serves(&dir);
    brood.wait_settled(usize::MAX);
    let fds = brood.fds();
    let clients: Vec<_> = (0..40)
        .map(|i| {
            let sock = dir.sock();
            let p = params(&dir, "nap", "GET", &i.to_string(), None);
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(sock).unwrap();
                s.set_read_timeout(Some(T)).unwrap();
                s.write_all(&request(1, false, &p, b"")).unwrap();
                let start = Instant::now();
                (answer(&mut s, 1), start.elapsed())
            })
        })
        .collect();
    let mut by_status: HashMap<Option<u16>, usize> = HashMap::new();
    let mut wrong = Vec::new();
    for c in clients {
        let (a, took) = c.join().unwrap();
        assert!(
            took < Duration::from_secs(15),
            "an answer took {took:?}: {a:?}"
        );
        let key = a.end.map(|_| a.status());
        *by_status.entry(key).or_default() += 1;
        // The script is there: out of fds is the server's trouble (500 or 503), never 404.
        let ok = match a.end.map(|_| a.status()) {
            None => true,
            Some(200) => a.body() == b"rested\n",
            Some(s) => s == 500 || s == 503,
        };
        if !ok {
            wrong.push(a.text());
        }
    }
    println!("40 naps with 64 fds: {by_status:?} (None: closed without an answer)");
    for l in brood.drain().iter().filter(|l| !l.contains("\" 200 ")) {
        println!("brood: {l}");
    }
    assert!(
        by_status.contains_key(&Some(200)),
        "none served: {by_status:?}"
    );
    assert!(
        wrong.is_empty(),
        "{} wrong answers ({by_status:?}), first: {:?}",
        wrong.len(),
        wrong[0]
    );
    let _ = brood.drain();
    // Back to normal once the fds are free again.
    for _ in 0..5 {
        still_serves(&dir);
    }
    wait_groups_gone(&dir);
    brood.wait_settled(fds);
}
