//! `brood cgi --fastcgi` spoken to directly, record by record: garbage, truncated records,
//! huge params, unknown record types, other roles, GET_VALUES, a second request on a busy
//! connection, ABORT_REQUEST, paths that try to leave the root. Each gets a FastCGI answer
//! or a closed connection, and the server keeps serving with nothing left behind.

mod fastcgi_support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use fastcgi_support::wire::{
    ABORT, BEGIN, END, GET_VALUES, GET_VALUES_RESULT, PARAMS, STDIN, STDOUT, UNKNOWN_TYPE, pair,
    rec,
};
use fastcgi_support::*;

fn begin(id: u16, role: u16, keep: bool) -> Vec<u8> {
    let r = role.to_be_bytes();
    rec(BEGIN, id, &[r[0], r[1], keep as u8, 0, 0, 0, 0, 0])
}

/// A whole request: BEGIN, params, stdin.
fn request(id: u16, keep: bool, params: &[(&str, &str)], stdin: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    for (n, v) in params {
        pair(&mut p, n.as_bytes(), v.as_bytes());
    }
    let mut out = begin(id, 1, keep);
    out.extend(rec(PARAMS, id, &p));
    out.extend(rec(PARAMS, id, b""));
    if !stdin.is_empty() {
        out.extend(rec(STDIN, id, stdin));
    }
    out.extend(rec(STDIN, id, b""));
    out
}

struct Rec {
    kind: u8,
    id: u16,
    content: Vec<u8>,
}

/// The next record, or `None` at EOF.
fn read_rec(s: &mut UnixStream) -> Option<Rec> {
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
    s.read_exact(&mut content).unwrap();
    content.truncate(u16::from_be_bytes([h[4], h[5]]) as usize);
    Some(Rec {
        kind: h[1],
        id: u16::from_be_bytes([h[2], h[3]]),
        content,
    })
}

/// Records up to `END_REQUEST` for `id`: (stdout, protocol status).
fn response(s: &mut UnixStream, id: u16) -> (String, u8) {
    let mut out = Vec::new();
    while let Some(r) = read_rec(s) {
        if r.id == id && r.kind == STDOUT {
            out.extend_from_slice(&r.content);
        }
        if r.id == id && r.kind == END {
            return (String::from_utf8_lossy(&out).into_owned(), r.content[4]);
        }
    }
    panic!(
        "no END_REQUEST for {id}; stdout so far: {:?}",
        String::from_utf8_lossy(&out)
    );
}

fn connect(dir: &Dir) -> UnixStream {
    let s = UnixStream::connect(dir.sock()).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s
}

/// The connection is closed by brood (EOF, or a reset for unread input).
fn assert_closed(s: &mut UnixStream) {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("not closed: {e}"),
        }
    }
}

fn hello_params(dir: &Dir) -> Vec<(String, String)> {
    vec![
        ("REQUEST_METHOD".into(), "GET".into()),
        ("QUERY_STRING".into(), "x=1".into()),
        ("REQUEST_URI".into(), "/cgi-bin/hello/more?x=1".into()),
        (
            "DOCUMENT_ROOT".into(),
            dir.path("www").display().to_string(),
        ),
        ("SCRIPT_NAME".into(), "/cgi-bin/hello/more".into()),
    ]
}

fn as_refs(p: &[(String, String)]) -> Vec<(&str, &str)> {
    p.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

/// A good request answered on a new connection: the server still serves.
fn still_serves(dir: &Dir) {
    let mut s = connect(dir);
    s.write_all(&request(1, false, &as_refs(&hello_params(dir)), b""))
        .unwrap();
    let (out, status) = response(&mut s, 1);
    assert_eq!(status, 0);
    assert!(out.contains("hello path_info=/more query=x=1"), "{out}");
}

fn setup(tag: &str, extra: &[&str]) -> (Dir, Brood) {
    let dir = Dir::new(tag);
    dir.script(
        "hello",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nhello path_info=%s query=%s\\n' \"$PATH_INFO\" \"$QUERY_STRING\"\n",
    );
    let root = dir.path("www").display().to_string();
    let mut args = vec!["--root", root.as_str()];
    args.extend_from_slice(extra);
    let brood = Brood::start(&dir, &args);
    still_serves(&dir);
    (dir, brood)
}

#[test]
fn garbage_and_truncated_records_close_the_connection_and_the_server_goes_on() {
    let (dir, mut brood) = setup("garbage", &[]);
    brood.wait_settled(usize::MAX);
    let fds = brood.fds();

    let mut s = connect(&dir);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_closed(&mut s);
    brood.wait_line("not a FastCGI 1 record (version byte 71)");

    // A record that promises 1000 bytes and brings 10.
    let mut s = connect(&dir);
    let mut bad = begin(1, 1, false);
    bad.extend_from_slice(&[1, PARAMS, 0, 1, 0x03, 0xe8, 0, 0]);
    bad.extend_from_slice(&[7u8; 10]);
    s.write_all(&bad).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_closed(&mut s);
    brood.wait_line("in the middle of a record");

    // Malformed name-value lengths.
    let mut s = connect(&dir);
    let mut bad = begin(1, 1, false);
    bad.extend(rec(PARAMS, 1, &[0x85, 0xff, 0xff, 0xff, 1, b'a']));
    bad.extend(rec(PARAMS, 1, b""));
    s.write_all(&bad).unwrap();
    let (out, _) = response(&mut s, 1);
    assert!(out.starts_with("Status: 400"), "{out}");

    // Random bytes after a valid start, from many connections at once.
    let conns: Vec<UnixStream> = (0..50)
        .map(|i| {
            let mut s = connect(&dir);
            let mut junk = begin(1, 1, false);
            junk.extend(
                (0..5000u32).map(|j| (j.wrapping_mul(2654435761).wrapping_add(i) >> 13) as u8),
            );
            let _ = s.write_all(&junk);
            s
        })
        .collect();
    for mut s in conns {
        assert_closed(&mut s);
    }
    still_serves(&dir);
    brood.wait_settled(fds);
}

#[test]
fn huge_params_get_431_and_held_params_stay_bounded() {
    let (dir, brood) = setup("huge", &[]);
    let mut s = connect(&dir);
    let mut p = Vec::new();
    pair(&mut p, b"HTTP_X_BIG", &vec![b'a'; 300 * 1024]);
    let mut req = begin(1, 1, false);
    req.extend(rec(PARAMS, 1, &p));
    req.extend(rec(PARAMS, 1, b""));
    s.write_all(&req).unwrap();
    let (out, status) = response(&mut s, 1);
    assert_eq!(status, 0);
    assert!(out.starts_with("Status: 431"), "{out}");
    assert_closed(&mut s);

    // 100 connections each holding just under the limit of params, never finished: brood
    // holds them (bounded), then lets go when they close.
    let rss = || {
        std::fs::read_to_string(format!("/proc/{}/status", brood.pid()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            .unwrap()
    };
    let before = rss();
    let mut held = Vec::new();
    for _ in 0..100 {
        let mut s = connect(&dir);
        let mut p = Vec::new();
        pair(&mut p, b"HTTP_X_BIG", &vec![b'b'; 120 * 1024]);
        let mut req = begin(1, 1, false);
        req.extend(rec(PARAMS, 1, &p));
        s.write_all(&req).unwrap();
        held.push(s);
    }
    still_serves(&dir);
    let grown = rss().saturating_sub(before);
    println!("RSS {before} kB, +{grown} kB with 100 connections holding 120 KiB of params");
    assert!(grown < 64 * 1024, "brood grew by {grown} kB");
    drop(held);
    still_serves(&dir);
}

#[test]
fn unknown_types_roles_and_get_values_get_their_fastcgi_answers() {
    let (dir, _brood) = setup("mgmt", &["--max-children", "7"]);
    let mut s = connect(&dir);
    // An unknown management record, then GET_VALUES, then a request on the same connection.
    s.write_all(&rec(42, 0, b"whatever")).unwrap();
    let r = read_rec(&mut s).unwrap();
    assert_eq!((r.kind, r.id, r.content[0]), (UNKNOWN_TYPE, 0, 42));

    let mut names = Vec::new();
    for n in [
        &b"FCGI_MPXS_CONNS"[..],
        b"FCGI_MAX_CONNS",
        b"FCGI_MAX_REQS",
        b"OTHER",
    ] {
        pair(&mut names, n, b"");
    }
    s.write_all(&rec(GET_VALUES, 0, &names)).unwrap();
    let r = read_rec(&mut s).unwrap();
    assert_eq!(r.kind, GET_VALUES_RESULT);
    let text = String::from_utf8_lossy(&r.content);
    assert!(
        r.content.windows(16).any(|w| w == b"FCGI_MPXS_CONNS0"),
        "{text:?}"
    );
    assert!(
        r.content.windows(15).any(|w| w == b"FCGI_MAX_CONNS7"),
        "{text:?}"
    );
    assert!(!text.contains("OTHER"));

    // An authorizer role: FCGI_UNKNOWN_ROLE, and the connection goes on.
    s.write_all(&begin(5, 2, true)).unwrap();
    let r = read_rec(&mut s).unwrap();
    assert_eq!((r.kind, r.id, r.content[4]), (END, 5, 3));

    s.write_all(&request(6, true, &as_refs(&hello_params(&dir)), b""))
        .unwrap();
    let (out, status) = response(&mut s, 6);
    assert_eq!(status, 0);
    assert!(out.contains("hello path_info=/more"), "{out}");
}

#[test]
fn a_second_request_on_a_busy_connection_gets_cant_mpx_conn() {
    let (dir, _brood) = setup("mpx", &[]);
    let fifo = dir.path("go");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    dir.script(
        "waits",
        &format!(
            "#!/bin/sh\nread x < {}\nprintf 'Content-Type: text/plain\\n\\ngot %s\\n' \"$x\"\n",
            fifo.display()
        ),
    );
    let mut s = connect(&dir);
    let mut p = hello_params(&dir);
    p[4].1 = "/cgi-bin/waits".into();
    let mut bytes = request(1, true, &as_refs(&p), b"");
    bytes.extend(request(2, true, &as_refs(&hello_params(&dir)), b""));
    s.write_all(&bytes).unwrap();
    // Request 2 is refused while 1 waits on the fifo.
    let r = read_rec(&mut s).unwrap();
    assert_eq!(
        (r.kind, r.id, r.content[4]),
        (END, 2, 1),
        "FCGI_CANT_MPX_CONN"
    );
    std::fs::write(&fifo, "go\n").unwrap();
    let (out, status) = response(&mut s, 1);
    assert_eq!(status, 0);
    assert!(out.contains("got go"), "{out}");
}

#[test]
fn abort_request_ends_the_script_and_its_group() {
    let (dir, mut brood) = setup("abort", &[]);
    dir.script(
        "endless",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nwhile :; do echo tick; sleep 0.1; done\n",
    );
    let mut s = connect(&dir);
    let mut p = hello_params(&dir);
    p[4].1 = "/cgi-bin/endless".into();
    p[2].1 = "/cgi-bin/endless".into();
    s.write_all(&request(1, true, &as_refs(&p), b"")).unwrap();
    loop {
        let r = read_rec(&mut s).unwrap();
        if r.kind == STDOUT && String::from_utf8_lossy(&r.content).contains("tick") {
            break;
        }
    }
    s.write_all(&rec(ABORT, 1, b"")).unwrap();
    let (_, status) = response(&mut s, 1);
    assert_eq!(status, 0);
    let line = brood.wait_line("\"GET /cgi-bin/endless\"");
    assert!(line.contains("signal=15"), "{line}");
    wait_groups_gone(&dir);
    // The connection serves the next request.
    s.write_all(&request(2, false, &as_refs(&hello_params(&dir)), b""))
        .unwrap();
    let (out, _) = response(&mut s, 2);
    assert!(out.contains("hello"), "{out}");
}

#[test]
fn paths_out_of_the_root_are_refused() {
    // `--prefix /`: brood's own mapping (used when no SCRIPT_FILENAME, SCRIPT_NAME or
    // DOCUMENT_ROOT comes) maps /cgi-bin/hello to www/cgi-bin/hello.
    let (dir, _brood) = setup("paths", &["--prefix", "/"]);
    let www = dir.path("www").display().to_string();
    let cases: Vec<(Vec<(String, String)>, &str)> = vec![
        (
            vec![(
                "SCRIPT_FILENAME".into(),
                format!("{www}/cgi-bin/../../../../bin/sh"),
            )],
            "Status: 400",
        ),
        (
            vec![("SCRIPT_FILENAME".into(), "/bin/sh".into())],
            "Status: 403",
        ),
        (
            vec![
                ("DOCUMENT_ROOT".into(), "/".into()),
                ("SCRIPT_NAME".into(), "/bin/sh".into()),
            ],
            "Status: 403",
        ),
        (
            vec![
                ("DOCUMENT_ROOT".into(), www.clone()),
                ("SCRIPT_NAME".into(), "/cgi-bin/%2e%2e/x".into()),
            ],
            "Status: 404",
        ),
        (
            vec![("REQUEST_URI".into(), "/cgi-bin/%2e%2e/%2e%2e/bin/sh".into())],
            "Status: 400",
        ),
        (
            vec![("REQUEST_URI".into(), "/cgi-bin/hello/via/uri?q".into())],
            "hello path_info=/via/uri",
        ),
    ];
    for (params, want) in cases {
        let mut s = connect(&dir);
        s.write_all(&request(1, false, &as_refs(&params), b""))
            .unwrap();
        let (out, _) = response(&mut s, 1);
        assert!(
            out.starts_with(want) || out.contains(want),
            "{params:?}: {out}"
        );
    }
}
