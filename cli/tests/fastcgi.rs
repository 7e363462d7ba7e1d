//! `brood cgi --fastcgi` behind a real nginx (`fastcgi_pass` to its Unix socket): scripts
//! with queries, bodies and PATH_INFO, a 10 MB stream, git clone and push through
//! git-http-backend with nginx's auth_basic, 404, 504, a client gone mid-response, 100
//! requests at once; a script's background job reaped by brood (a subreaper); every test
//! checks that no script process is left.

mod fastcgi_support;

use std::process::Command;

use fastcgi_support::*;

const CGI_BIN: &str = "
location /cgi-bin/ {
    root {dir}/www;
    include {params};
    fastcgi_param SCRIPT_NAME $fastcgi_script_name;
    fastcgi_pass unix:{sock};
}";

const HELLO: &str = r#"#!/bin/sh
printf 'Content-Type: text/plain\nX-Script: hello\n\n'
printf 'method=%s query=%s path_info=%s script_name=%s length=%s user=%s\n' \
    "$REQUEST_METHOD" "$QUERY_STRING" "$PATH_INFO" "$SCRIPT_NAME" "$CONTENT_LENGTH" "$REMOTE_USER"
printf 'names=%s\n' "$(env | cut -d= -f1 | sort | tr '\n' ' ')"
if [ "$REQUEST_METHOD" = POST ]; then printf 'body='; cat; fi
"#;

#[test]
fn nginx_runs_a_script_with_query_body_and_path_info() {
    let dir = Dir::new("hello");
    dir.script("hello", HELLO);
    let mut brood = Brood::start(
        &dir,
        &[
            "--root",
            dir.path("www").to_str().unwrap(),
            "--env",
            "MODE=test",
        ],
    );
    let nginx = Nginx::start(&dir, CGI_BIN);

    let r = http(
        nginx.port,
        "GET",
        "/cgi-bin/hello/extra/more?a=1&b=two",
        b"",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("X-Script").as_deref(), Some("hello"));
    let text = r.text();
    assert!(
        text.starts_with(
            "method=GET query=a=1&b=two path_info=/extra/more script_name=/cgi-bin/hello length= user=\n"
        ),
        "{text}"
    );
    // Only the params, what brood works out (script, path info), PATH and --env.
    let names = text.lines().find_map(|l| l.strip_prefix("names=")).unwrap();
    let allowed = PARAMS
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .chain([
            "SCRIPT_NAME",
            "SCRIPT_FILENAME",
            "PATH_INFO",
            "PATH_TRANSLATED",
            "PATH",
            "MODE",
            "PWD",
        ])
        .collect::<Vec<_>>();
    for name in names.split_whitespace() {
        assert!(
            allowed.contains(&name),
            "{name} in the script's environment"
        );
    }
    assert!(names.contains("MODE") && names.contains("PATH "), "{names}");

    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let r = http(nginx.port, "POST", "/cgi-bin/hello", &body);
    assert_eq!(r.status, 200, "{r:?}");
    let at = r.body.windows(5).position(|w| w == b"body=").unwrap();
    assert_eq!(&r.body[at + 5..], &body[..], "the body came back whole");
    assert!(
        r.text()
            .contains("method=POST query= path_info= script_name=/cgi-bin/hello length=300000")
    );

    brood.wait_line("\"POST /cgi-bin/hello\" 200");
    wait_groups_gone(&dir);
}

#[test]
fn a_missing_script_is_404_and_a_script_past_the_timeout_is_504() {
    let dir = Dir::new("timeout");
    dir.script(
        "slow",
        "#!/bin/sh\nsleep 30 &\nwait\nprintf 'Content-Type: text/plain\\n\\nlate\\n'\n",
    );
    let mut brood = Brood::start(
        &dir,
        &[
            "--root",
            dir.path("www").to_str().unwrap(),
            "--timeout",
            "1",
        ],
    );
    let nginx = Nginx::start(&dir, CGI_BIN);

    let r = http(nginx.port, "GET", "/cgi-bin/missing", b"");
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.text().contains("No script at this path"), "{r:?}");

    let started = std::time::Instant::now();
    let r = http(nginx.port, "GET", "/cgi-bin/slow", b"");
    assert_eq!(r.status, 504, "{r:?}");
    assert!(r.text().contains("took too long"), "{r:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    brood.wait_line("\"GET /cgi-bin/slow\" 504");
    // The script and its `sleep` (same group) are gone; the `sleep`, orphaned when its
    // shell was killed, landed on brood (a subreaper) and was reaped there.
    wait_groups_gone(&dir);
    brood.wait_childless();
}

/// `pid`'s parent, `None` once it is gone (a zombie still has one).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].split(' ').nth(1)?.parse().ok()
}

#[test]
fn a_scripts_background_job_lands_on_brood_and_is_reaped() {
    let dir = Dir::new("orphan");
    // The job's output goes elsewhere, so the response ends with the script.
    dir.script(
        "orphan",
        "#!/bin/sh
sleep 60 >/dev/null 2>&1 </dev/null &
printf 'Content-Type: text/plain\n\n%s\n' $!
",
    );
    let brood = Brood::start(&dir, &["--root", dir.path("www").to_str().unwrap()]);
    let nginx = Nginx::start(&dir, CGI_BIN);
    let r = http(nginx.port, "GET", "/cgi-bin/orphan", b"");
    assert_eq!(r.status, 200, "{r:?}");
    let job: u32 = r.text().trim().parse().unwrap();
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
    let guard = KillOnDrop(job);
    // Its shell has exited: the job is brood's now (a subreaper), not the machine's init.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while parent_of(job) != Some(brood.pid()) {
        assert!(
            std::time::Instant::now() < deadline,
            "job {job}'s parent: {:?}",
            parent_of(job)
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Ended, it is reaped by brood: gone, not a zombie.
    assert!(
        Command::new("kill")
            .args(["-TERM", &job.to_string()])
            .status()
            .unwrap()
            .success()
    );
    while parent_of(job).is_some() {
        assert!(std::time::Instant::now() < deadline, "job {job} not reaped");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Gone: its pid may be someone else's from now on.
    std::mem::forget(guard);
    brood.wait_childless();
}

#[test]
fn ten_megabytes_stream_through_whole() {
    let dir = Dir::new("stream");
    dir.script(
        "big",
        "#!/bin/sh\nprintf 'Content-Type: application/octet-stream\\n\\n'\nseq 1 1500000\n",
    );
    let _brood = Brood::start(&dir, &["--root", dir.path("www").to_str().unwrap()]);
    let nginx = Nginx::start(&dir, CGI_BIN);
    let want: String = (1..=1_500_000).map(|n| format!("{n}\n")).collect();
    assert!(want.len() > 10_000_000);
    let r = http(nginx.port, "GET", "/cgi-bin/big", b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), want.len());
    assert!(r.body == want.as_bytes(), "the stream arrived altered");
    wait_groups_gone(&dir);
}

#[test]
fn a_client_gone_mid_response_ends_the_script() {
    let dir = Dir::new("gone");
    dir.script(
        "endless",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nhead -c 200000 /dev/zero | tr '\\0' x\nwhile :; do echo tick; sleep 0.1; done\n",
    );
    let mut brood = Brood::start(&dir, &["--root", dir.path("www").to_str().unwrap()]);
    let nginx = Nginx::start(&dir, CGI_BIN);
    let fds = brood.fds();
    {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
        tcp.set_read_timeout(Some(T)).unwrap();
        tcp.write_all(b"GET /cgi-bin/endless HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut got = 0;
        let mut buf = [0u8; 16384];
        while got < 50_000 {
            let n = tcp.read(&mut buf).unwrap();
            assert!(n > 0, "the response ended early");
            got += n;
        }
        assert!(!dir.recorded_pids().is_empty());
        // Gone mid-response.
    }
    let line = brood.wait_line("\"GET /cgi-bin/endless\"");
    assert!(line.contains(" 200 ") && line.contains("signal="), "{line}");
    wait_groups_gone(&dir);
    brood.wait_settled(fds);
}

#[test]
fn a_hundred_requests_at_once_are_all_answered_and_leave_nothing() {
    let dir = Dir::new("hundred");
    dir.script(
        "n",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nanswer %s\\n' \"$QUERY_STRING\"\n",
    );
    let brood = Brood::start(
        &dir,
        &[
            "--root",
            dir.path("www").to_str().unwrap(),
            "--max-children",
            "16",
            "--queue",
            "60",
        ],
    );
    let nginx = Nginx::start(&dir, CGI_BIN);
    assert_eq!(http(nginx.port, "GET", "/cgi-bin/n?warm", b"").status, 200);
    brood.wait_settled(usize::MAX);
    let fds = brood.fds();
    let port = nginx.port;
    let threads: Vec<_> = (0..100)
        .map(|i| {
            std::thread::spawn(move || (i, http(port, "GET", &format!("/cgi-bin/n?{i}"), b"")))
        })
        .collect();
    for t in threads {
        let (i, r) = t.join().unwrap();
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.text(), format!("answer {i}\n"));
    }
    assert_eq!(dir.recorded_pids().len(), 101);
    brood.wait_settled(fds);
    wait_groups_gone(&dir);
}

fn git(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap()
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "git failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn random_file(path: &std::path::Path, len: usize) {
    let mut data = vec![0u8; len];
    let mut f = std::fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut f, &mut data).unwrap();
    std::fs::write(path, data).unwrap();
}

#[test]
fn git_clone_and_push_through_git_http_backend_with_nginx_auth() {
    let dir = Dir::new("git");
    let exec = ok(git(&dir.0, &["--exec-path"]));
    let backend = std::path::Path::new(exec.trim()).join("git-http-backend");
    assert!(backend.exists(), "{}", backend.display());
    let status = Command::new("htpasswd")
        .args(["-bcm"])
        .arg(dir.path("htpasswd"))
        .args(["alice", "s3cret"])
        .output()
        .unwrap();
    assert!(status.status.success());

    // A repository with 3 MB that does not compress.
    let work = dir.path("work");
    std::fs::create_dir_all(&work).unwrap();
    ok(git(&work, &["init", "-q", "-b", "main"]));
    random_file(&work.join("one.bin"), 3 << 20);
    ok(git(&work, &["add", "."]));
    ok(git(&work, &["commit", "-qm", "one"]));
    std::fs::create_dir_all(dir.path("repos")).unwrap();
    ok(git(
        &dir.0,
        &["clone", "-q", "--bare", "work", "repos/repo.git"],
    ));

    let mut brood = Brood::start(
        &dir,
        &[
            "--script",
            backend.to_str().unwrap(),
            "--log-format",
            "combined",
        ],
    );
    let nginx = Nginx::start(
        &dir,
        &format!(
            "
location /git/ {{
    auth_basic \"git\";
    auth_basic_user_file {{dir}}/htpasswd;
    include {{params}};
    fastcgi_split_path_info ^(/git)(/.*)$;
    fastcgi_param SCRIPT_FILENAME {};
    fastcgi_param SCRIPT_NAME $fastcgi_script_name;
    fastcgi_param PATH_INFO $fastcgi_path_info;
    fastcgi_param GIT_PROJECT_ROOT {{dir}}/repos;
    fastcgi_param GIT_HTTP_EXPORT_ALL \"\";
    fastcgi_pass unix:{{sock}};
}}",
            backend.display()
        ),
    );
    let port = nginx.port;

    // No credentials: nginx refuses; nothing reaches brood.
    let out = git(
        &dir.0,
        &[
            "clone",
            "-q",
            &format!("http://127.0.0.1:{port}/git/repo.git"),
            "anon",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401") || !dir.path("anon/one.bin").exists()
    );

    let url = format!("http://alice:s3cret@127.0.0.1:{port}/git/repo.git");
    ok(git(&dir.0, &["clone", "-q", &url, "copy"]));
    assert!(
        std::fs::read(dir.path("copy/one.bin")).unwrap()
            == std::fs::read(work.join("one.bin")).unwrap()
    );
    let line =
        brood.wait_line("\"GET /git/repo.git/info/refs?service=git-upload-pack HTTP/1.1\" 200");
    assert!(
        line.contains(" - alice ["),
        "nginx's user is REMOTE_USER: {line}"
    );

    let copy = dir.path("copy");
    random_file(&copy.join("two.bin"), 3 << 20);
    ok(git(&copy, &["add", "."]));
    ok(git(&copy, &["commit", "-qm", "two"]));
    ok(git(&copy, &["push", "-q", "origin", "main"]));
    let pushed = ok(git(&copy, &["rev-parse", "HEAD"]));
    let landed = ok(git(&dir.path("repos/repo.git"), &["rev-parse", "main"]));
    assert_eq!(pushed, landed, "the push landed");
    let line = brood.wait_line("\"POST /git/repo.git/git-receive-pack HTTP/1.1\" 200");
    assert!(line.contains(" - alice ["), "{line}");
    brood.wait_settled(usize::MAX);
}

#[test]
fn the_socket_systemd_passes_is_used() {
    let dir = Dir::new("systemd");
    dir.script("hello", HELLO);
    // Python binds the socket, puts it at fd 3 and execs brood with LISTEN_PID = its pid.
    let py = format!(
        "import os, socket\n\
         s = socket.socket(socket.AF_UNIX)\n\
         s.bind({sock:?})\n\
         s.listen(16)\n\
         os.dup2(s.fileno(), 3)\n\
         os.set_inheritable(3, True)\n\
         os.environ['LISTEN_FDS'] = '1'\n\
         os.environ['LISTEN_PID'] = str(os.getpid())\n\
         os.execv({brood:?}, ['brood', 'cgi', '--fastcgi', '--listen', 'systemd', '--root', {root:?}])\n",
        sock = dir.sock().display().to_string(),
        brood = env!("CARGO_BIN_EXE_brood"),
        root = dir.path("www").display().to_string(),
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &py]);
    let brood = Brood::spawn(cmd);
    assert!(
        brood
            .seen
            .iter()
            .any(|l| l.contains(&dir.sock().display().to_string())),
        "{:?}",
        brood.seen
    );
    let nginx = Nginx::start(&dir, CGI_BIN);
    let r = http(nginx.port, "GET", "/cgi-bin/hello?via=systemd", b"");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.text().contains("query=via=systemd"));
    // Stopped, brood leaves the socket file to its owner (systemd's socket unit).
    // SAFETY: kill(2) with plain integers.
    assert_eq!(unsafe { libc::kill(brood.pid() as i32, libc::SIGTERM) }, 0);
    let mut brood = brood;
    let status = brood.child.wait().unwrap();
    assert!(status.success(), "brood exited {status}");
    assert!(dir.sock().exists(), "brood removed systemd's socket file");
}

#[test]
fn status_location_local_redirects_and_stderr_to_nginx() {
    let dir = Dir::new("headers");
    dir.script("hello", HELLO);
    dir.script(
        "gone",
        "#!/bin/sh\necho 'the gone script says why' >&2\nprintf 'Status: 410 Gone For Good\\nContent-Type: text/plain\\n\\nbye\\n'\n",
    );
    dir.script(
        "away",
        "#!/bin/sh\nprintf 'Location: http://example.com/elsewhere\\n\\n'\n",
    );
    dir.script(
        "inside",
        "#!/bin/sh\nprintf 'Location: /cgi-bin/hello/redirected?from=inside\\n\\n'\n",
    );
    let mut brood = Brood::start(
        &dir,
        &[
            "--root",
            dir.path("www").to_str().unwrap(),
            "--stderr-to-client",
        ],
    );
    let nginx = Nginx::start(&dir, CGI_BIN);

    let r = http(nginx.port, "GET", "/cgi-bin/gone", b"");
    assert_eq!(r.status, 410, "{r:?}");
    assert_eq!(r.text(), "bye\n");
    let r = http(nginx.port, "GET", "/cgi-bin/away", b"");
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(
        r.header("Location").as_deref(),
        Some("http://example.com/elsewhere")
    );
    // A local redirect is answered inside brood: the client gets hello's page.
    let r = http(nginx.port, "POST", "/cgi-bin/inside", b"dropped");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.text().starts_with(
            "method=GET query=from=inside path_info=/redirected script_name=/cgi-bin/hello length= "
        ),
        "{}",
        r.text()
    );
    // stderr: in brood's log, and in nginx's error log through FCGI_STDERR.
    brood.wait_line("[/cgi-bin/gone] the gone script says why");
    let deadline = std::time::Instant::now() + T;
    while !nginx
        .error_log()
        .contains("FastCGI sent in stderr: \"the gone script says why")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            nginx.error_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    wait_groups_gone(&dir);
}

#[test]
fn max_body_and_max_children_answer_413_and_503() {
    let dir = Dir::new("limits");
    dir.script("hello", HELLO);
    let fifo = dir.path("go");
    assert!(
        Command::new("mkfifo")
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
    let _brood = Brood::start(
        &dir,
        &[
            "--root",
            dir.path("www").to_str().unwrap(),
            "--max-body",
            "1000",
            "--max-children",
            "1",
        ],
    );
    let nginx = Nginx::start(&dir, CGI_BIN);
    let r = http(nginx.port, "POST", "/cgi-bin/hello", &[b'x'; 1001]);
    assert_eq!(r.status, 413, "{r:?}");
    let r = http(nginx.port, "POST", "/cgi-bin/hello", &[b'x'; 1000]);
    assert_eq!(r.status, 200, "{r:?}");

    let port = nginx.port;
    // The slot frees when the last script has exited, which may come just after its
    // answer: a 503 here means the slot was not free yet, so ask again (bounded).
    let first = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + T;
        loop {
            let r = http(port, "GET", "/cgi-bin/waits", b"");
            if r.status != 503 || std::time::Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    });
    // The one slot is taken once the script has recorded its pid.
    let deadline = std::time::Instant::now() + T;
    while dir.recorded_pids().len() < 2 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let r = http(nginx.port, "GET", "/cgi-bin/hello", b"");
    assert_eq!(r.status, 503, "{r:?}");
    std::fs::write(&fifo, "go\n").unwrap();
    let r = first.join().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "got go\n"));
    wait_groups_gone(&dir);
}
