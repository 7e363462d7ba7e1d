//! `Channel::from_env`: `BROOD_CHANNEL_FD` is taken once per process, checked before it is
//! owned, and removed from the environment; a stale or repeated call is an error that never
//! closes someone else's fd. Each case runs in a child process (the take is per process).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use brood::ipc::{CHANNEL_FD_ENV, Channel};
use brood::{Command, Stdio};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);
const MODE: &str = "BROOD_IPC_ENV_CHILD";

fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the flags of `fd`.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// The child side of every case.
#[test]
fn child_side() {
    let Ok(mode) = std::env::var(MODE) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        match mode.as_str() {
            "twice" => {
                let mut ch = Channel::from_env().unwrap();
                assert!(
                    std::env::var_os(CHANNEL_FD_ENV).is_none(),
                    "removed from the environment"
                );
                let again = Channel::from_env().unwrap_err();
                assert_eq!(again.name(), "EALREADY", "{again}");
                // A grandchild started any way does not inherit the variable.
                let out = std::process::Command::new("sh")
                    .args(["-c", "echo ${BROOD_CHANNEL_FD-unset}"])
                    .output()
                    .unwrap();
                assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "unset");
                // The first channel still works after the refused second call.
                ch.send(b"ok").await.unwrap();
                let mut buf = [0u8; 3];
                let mut got = 0;
                while got < 3 {
                    let n = ch.recv(&mut buf[got..]).await.unwrap();
                    assert!(n > 0);
                    got += n;
                }
                assert_eq!(&buf, b"ack");
            }
            "own-socket" => {
                // A stale variable naming a socket this process made itself.
                let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
                // SAFETY: only this test's thread runs in this child; the harness's main
                // thread waits for it and no runtime thread reads the environment.
                unsafe { std::env::set_var(CHANNEL_FD_ENV, a.as_raw_fd().to_string()) };
                let err = Channel::from_env().unwrap_err();
                assert_eq!(err.name(), "EBADF", "{err}");
                assert!(err.to_string().contains("stale"), "{err}");
                a.write_all(b"still mine").unwrap();
                let mut buf = [0u8; 10];
                b.read_exact(&mut buf).unwrap();
                assert_eq!(&buf, b"still mine");
                assert_eq!(
                    Channel::from_env().unwrap_err().name(),
                    "EALREADY",
                    "the variable was consumed"
                );
            }
            "file" => {
                // An inherited fd that is not a socket.
                let err = Channel::from_env().unwrap_err();
                assert_eq!(err.name(), "ENOTSOCK", "{err}");
                assert!(is_open(5), "fd 5 left alone");
                // SAFETY: fd 5 is the file our parent gave us; nothing else owns it.
                let mut f = unsafe { std::fs::File::from_raw_fd(5) };
                f.write_all(b"fd 5 still works").unwrap();
            }
            "closed" => {
                let err = Channel::from_env().unwrap_err();
                assert_eq!(err.name(), "EBADF", "{err}");
            }
            "stale-inherited" => {
                // This process was given a stale BROOD_CHANNEL_FD=77 and never took it; its
                // own child with a channel at slot 5 must be told 5, not 77.
                let mut grandchild = Command::new("sh");
                grandchild
                    .args(["-c", "echo $BROOD_CHANNEL_FD"])
                    .stdio(5, Stdio::ipc())
                    .stdout(Stdio::piped());
                let out = grandchild.output().await.unwrap();
                assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5");
            }
            "unset" => {
                let err = Channel::from_env().unwrap_err();
                assert_eq!(err.name(), "ENOENT", "{err}");
            }
            other => panic!("unknown mode {other}"),
        }
    });
}

fn child(mode: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_side", "--nocapture", "--test-threads=1"])
        .env(MODE, mode)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn succeeds(mut c: brood::Child) {
    let mut stderr = c.stderr.take().unwrap();
    let mut err = String::new();
    timeout(
        LIMIT,
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut err),
    )
    .await
    .unwrap()
    .unwrap();
    let exit = timeout(LIMIT, c.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "child {exit}: {err}");
}

#[tokio::test]
async fn the_channel_fd_is_taken_once_and_removed_from_the_environment() {
    let mut c = child("twice").stdio(3, Stdio::ipc()).spawn().unwrap();
    let mut ch = c.take_channel(3).unwrap();
    let mut buf = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        let n = timeout(LIMIT, ch.recv(&mut buf[got..]))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the child's channel closed");
        got += n;
    }
    assert_eq!(&buf, b"ok");
    ch.send(b"ack").await.unwrap();
    succeeds(c).await;
}

#[tokio::test]
async fn a_stale_variable_naming_the_processs_own_socket_leaves_it_alone() {
    succeeds(child("own-socket").spawn().unwrap()).await;
}

#[tokio::test]
async fn a_variable_naming_an_inherited_file_is_enotsock_and_the_file_stays_open() {
    let path = std::env::temp_dir().join(format!("brood-ipc-env-{}", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    let fd: OwnedFd = file.into();
    let c = child("file")
        .env(CHANNEL_FD_ENV, "5")
        .stdio(5, Stdio::from(fd))
        .spawn()
        .unwrap();
    succeeds(c).await;
    let written = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(written, "fd 5 still works");
}

#[tokio::test]
async fn a_variable_naming_a_closed_fd_is_ebadf() {
    succeeds(child("closed").env(CHANNEL_FD_ENV, "77").spawn().unwrap()).await;
}

#[tokio::test]
async fn a_stale_inherited_variable_never_reaches_a_child_given_a_channel() {
    succeeds(
        child("stale-inherited")
            .env(CHANNEL_FD_ENV, "77")
            .spawn()
            .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn no_variable_is_enoent() {
    succeeds(child("unset").env_remove(CHANNEL_FD_ENV).spawn().unwrap()).await;
}
