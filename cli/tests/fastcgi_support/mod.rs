//! What the FastCGI tests share: a temporary directory of scripts, `brood cgi --fastcgi`
//! on a Unix socket with its stderr captured, a real nginx (not a daemon, its own config
//! and temp dirs, on a free loopback port) passing to it, an HTTP/1.0 client, and /proc
//! readings (children, process groups, fds).
#![allow(
    dead_code,
    reason = "each test file uses a different part of the shared support"
)]

pub mod wire;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

pub const T: Duration = Duration::from_secs(30);

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A temporary directory: `www/cgi-bin` for scripts, `pids` where they record themselves.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!(
            "brood-fcgi-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        for sub in ["www/cgi-bin", "pids", "nginx"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        Dir(d)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    /// An executable `www/cgi-bin/NAME`; a `#!/bin/sh` script records its pid first.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let body = match body.strip_prefix("#!/bin/sh\n") {
            Some(rest) => format!(
                "#!/bin/sh\necho $$ > {}/sh-$$\n{rest}",
                self.path("pids").display()
            ),
            None => body.to_string(),
        };
        let p = self.path("www/cgi-bin").join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    pub fn recorded_pids(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.path("pids")).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap_or_default();
            out.extend(
                text.split_whitespace()
                    .filter_map(|w| w.parse::<u32>().ok()),
            );
        }
        out
    }

    pub fn sock(&self) -> PathBuf {
        self.path("brood.sock")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `brood cgi --fastcgi` with its stderr lines.
pub struct Brood {
    pub child: Child,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Drop for Brood {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Brood {
    /// Started with `--fastcgi --listen unix:DIR/brood.sock` and `args`.
    pub fn start(dir: &Dir, args: &[&str]) -> Brood {
        let listen = format!("unix:{}", dir.sock().display());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_brood"));
        cmd.args(["cgi", "--fastcgi", "--listen", &listen])
            .args(args);
        Brood::spawn(cmd)
    }

    pub fn spawn(mut cmd: Command) -> Brood {
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
        let mut b = Brood {
            child,
            lines,
            seen: Vec::new(),
        };
        b.wait_line("listening on fastcgi");
        b
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first stderr line containing `needle` (seen before, or waited for).
    pub fn wait_line(&mut self, needle: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no stderr line with {needle:?}: {:#?}", self.seen));
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Lines that arrived so far.
    pub fn drain(&mut self) -> &[String] {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        &self.seen
    }

    /// brood's live children (zombies not yet reaped count too).
    pub fn children(&self) -> Vec<u32> {
        children(self.pid())
    }

    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// Waits until brood has no child, zombies included (an orphan that landed on it, the
    /// subreaper, is reaped within the reaper's pause).
    pub fn wait_childless(&self) {
        let deadline = Instant::now() + T;
        loop {
            let kids = self.children();
            if kids.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "brood kept children {kids:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until brood has no child and `fds` open fds at most.
    pub fn wait_settled(&self, fds: usize) {
        let deadline = Instant::now() + T;
        loop {
            let (kids, now) = (self.children(), self.fds());
            if kids.is_empty() && now <= fds {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "brood kept children {kids:?} or fds ({now}, was {fds}): {}",
                fd_list(self.pid())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(
                text.split_whitespace()
                    .filter_map(|w| w.parse::<u32>().ok()),
            );
        }
    }
    out
}

pub fn fd_list(pid: u32) -> String {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(e.path()).map(|p| p.display().to_string());
        out.push(format!(
            "{}={}",
            e.file_name().to_string_lossy(),
            target.unwrap_or_default()
        ));
    }
    out.join(" ")
}

/// Processes whose process group is `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split(' ').collect();
        if f[0] != "Z" && f[2].parse::<u32>() == Ok(pgid) {
            out.push(pid);
        }
    }
    out
}

/// Waits until no process is in any of the groups the recorded script pids led.
pub fn wait_groups_gone(dir: &Dir) {
    let pids = dir.recorded_pids();
    assert!(!pids.is_empty(), "no script recorded its pid");
    let deadline = Instant::now() + T;
    loop {
        let left: Vec<u32> = pids.iter().flat_map(|p| group_members(*p)).collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The params every location sends (nginx's own `fastcgi_params`, written out here so the
/// test does not depend on the system's copy).
pub const PARAMS: &str = "
fastcgi_param QUERY_STRING $query_string;
fastcgi_param REQUEST_METHOD $request_method;
fastcgi_param CONTENT_TYPE $content_type;
fastcgi_param CONTENT_LENGTH $content_length;
fastcgi_param REQUEST_URI $request_uri;
fastcgi_param DOCUMENT_URI $document_uri;
fastcgi_param DOCUMENT_ROOT $document_root;
fastcgi_param SERVER_PROTOCOL $server_protocol;
fastcgi_param REQUEST_SCHEME $scheme;
fastcgi_param GATEWAY_INTERFACE CGI/1.1;
fastcgi_param SERVER_SOFTWARE nginx/$nginx_version;
fastcgi_param REMOTE_ADDR $remote_addr;
fastcgi_param REMOTE_PORT $remote_port;
fastcgi_param REMOTE_USER $remote_user;
fastcgi_param SERVER_ADDR $server_addr;
fastcgi_param SERVER_PORT $server_port;
fastcgi_param SERVER_NAME $server_name;
fastcgi_param HTTP_HOST $host;
";

/// nginx in the foreground, one process, on a free loopback port.
pub struct Nginx {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
}

impl Nginx {
    /// nginx whose one server holds `locations` (`{sock}` is brood's socket, `{params}`
    /// the params file, `{dir}` the test directory).
    pub fn start(dir: &Dir, locations: &str) -> Nginx {
        let nd = dir.path("nginx");
        std::fs::write(nd.join("params"), PARAMS).unwrap();
        let locations = locations
            .replace("{sock}", &dir.sock().display().to_string())
            .replace("{params}", &nd.join("params").display().to_string())
            .replace("{dir}", &dir.0.display().to_string());
        for _attempt in 0..10 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let conf = format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\n{user}\
                 pid {nd}/nginx.pid;\nerror_log {nd}/error.log info;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n access_log {nd}/access.log;\n\
                 client_body_temp_path {nd}/body; fastcgi_temp_path {nd}/fastcgi;\n\
                 proxy_temp_path {nd}/proxy; uwsgi_temp_path {nd}/uwsgi; scgi_temp_path {nd}/scgi;\n\
                 client_max_body_size 0;\n\
                 server {{\n listen 127.0.0.1:{port};\n{locations}\n }}\n}}\n",
                user = if running_as_root() {
                    "user root root;\n"
                } else {
                    ""
                },
                nd = nd.display(),
            );
            std::fs::write(nd.join("nginx.conf"), conf).unwrap();
            let mut child = Command::new("nginx")
                .arg("-c")
                .arg(nd.join("nginx.conf"))
                .arg("-p")
                .arg(&nd)
                .arg("-e")
                .arg(nd.join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nginx is installed (.ci/run installs nginx-light)");
            let deadline = Instant::now() + T;
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Nginx {
                        child,
                        port,
                        dir: nd,
                    };
                }
                if let Some(status) = child.try_wait().unwrap() {
                    let log = std::fs::read_to_string(nd.join("error.log")).unwrap_or_default();
                    assert!(
                        log.contains("Address already in use"),
                        "nginx exited {status}: {log}"
                    );
                    break; // the port was taken meanwhile: another one
                }
                assert!(Instant::now() < deadline, "nginx did not start listening");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("no free port for nginx");
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

/// One HTTP/1.0 response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Sends an HTTP/1.0 request to nginx and reads the whole response.
pub fn http(port: u16, method: &str, target: &str, body: &[u8]) -> Response {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(T * 2)).unwrap();
    let mut req = format!("{method} {target} HTTP/1.0\r\nHost: localhost\r\n");
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).unwrap();
    tcp.write_all(body).unwrap();
    let mut all = Vec::new();
    tcp.read_to_end(&mut all).unwrap();
    parse(&all)
}

pub fn parse(all: &[u8]) -> Response {
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(all)));
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Response {
        status,
        head,
        body: all[end + 4..].to_vec(),
    }
}
