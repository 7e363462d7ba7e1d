//! `brood cgi` as a good citizen of a container and of systemd: a child subreaper that reaps
//! the background jobs its scripts leave behind, and READY=1 / STOPPING=1 on the
//! `NOTIFY_SOCKET` (a datagram socket the test binds).

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use brood::{Command, Signum, Stdio};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixDatagram};

const BROOD: &str = env!("CARGO_BIN_EXE_brood");
const LIMIT: Duration = Duration::from_secs(30);

/// A script that leaves two background jobs: `sleep 1` (the case) and `sleep 60`
/// (which the test ends itself once it has seen where it landed), and prints their pids.
const SCRIPT: &str = "#!/bin/sh
sleep 1 >/dev/null 2>&1 &
a=$!
sleep 60 >/dev/null 2>&1 &
printf 'Content-Type: text/plain\\r\\n\\r\\n%s %s\\n' \"$a\" \"$!\"
";

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills a pid when dropped, unless forgotten once the process is known gone.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = brood::kill(self.0, Signum::KILL);
    }
}

/// `pid`'s state letter and parent, `None` once it is gone.
fn state_and_parent(pid: i32) -> Option<(String, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    Some((f[0].to_string(), f[1].parse().ok()?))
}

async fn until(what: impl Fn() -> String, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < LIMIT,
            "{}: not so after {LIMIT:?}",
            what()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn datagram(sock: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(LIMIT, sock.recv(&mut buf))
        .await
        .expect("a datagram on NOTIFY_SOCKET")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn a_scripts_background_jobs_are_reaped_and_systemd_hears_ready_and_stopping() {
    let dir = TempDir(std::env::temp_dir().join(format!("brood-cgi-init-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let script = dir.0.join("orphans.cgi");
    std::fs::write(&script, SCRIPT).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let notify = dir.0.join("notify");
    let sd = UnixDatagram::bind(&notify).unwrap();

    let mut cgi = Command::new(BROOD)
        .args(["cgi", "--listen", "127.0.0.1:0", "--script"])
        .arg(&script)
        .env("NOTIFY_SOCKET", &notify)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let me = cgi.id().unwrap() as i32;
    let mut log = BufReader::new(cgi.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = tokio::time::timeout(LIMIT, log.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("brood cgi's log ended");
        if let Some(rest) = line.strip_prefix("brood cgi: listening on http://") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    assert!(datagram(&sd).await.lines().any(|l| l == "READY=1"));

    let mut c = TcpStream::connect(&addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).await.unwrap();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let pids: Vec<i32> = body
        .split_whitespace()
        .map(|p| p.parse().unwrap_or_else(|_| panic!("{answer:?}")))
        .collect();
    let (short, long) = (pids[0], pids[1]);
    let guards = [KillOnDrop(short), KillOnDrop(long)];

    // The long job lands on brood cgi once the script has exited (not on the machine's
    // init), and when it ends brood cgi reaps it.
    until(
        || format!("sleep 60 under brood cgi: {:?}", state_and_parent(long)),
        || state_and_parent(long).is_some_and(|(_, parent)| parent == me),
    )
    .await;
    brood::kill(long, Signum::TERM).unwrap();
    until(
        || format!("sleep 60 reaped: {:?}", state_and_parent(long)),
        || state_and_parent(long).is_none(),
    )
    .await;
    // `sleep 1` ends by itself a second later: gone, not a zombie.
    until(
        || format!("sleep 1 reaped: {:?}", state_and_parent(short)),
        || state_and_parent(short).is_none(),
    )
    .await;
    guards.into_iter().for_each(std::mem::forget);

    brood::kill(me, Signum::TERM).unwrap();
    assert!(datagram(&sd).await.lines().any(|l| l == "STOPPING=1"));
    let exit = tokio::time::timeout(LIMIT, cgi.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit}");
}
