//! A receiver at its fd limit: the kernel installs what fits and flags `MSG_CTRUNC`. The
//! channel reports that message's loss as an error (`EMFILE`), closes the fds that did
//! arrive, and keeps working for the next messages. The receiver is a child process whose
//! `RLIMIT_NOFILE` leaves exactly four free fds.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use brood::ipc::{Channel, Handle};
use brood::{Command, Stdio};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);
const MODE: &str = "BROOD_IPC_FD_LIMIT_CHILD";
const FREE: u64 = 4;

fn is_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only reads the flags of `fd`.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Open fds below `limit`, counted without opening anything (at the limit, reading
/// /proc/self/fd would itself need an fd).
fn open_below(limit: i32) -> usize {
    (0..limit).filter(|&fd| is_open(fd)).count()
}

/// Fills every hole in the fd table, then lowers `RLIMIT_NOFILE` so that exactly `FREE`
/// fds can still be opened. Returns the limit.
fn leave_free_fds() -> i32 {
    let highest = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .max()
        .unwrap();
    // Each open takes the lowest free fd: keep those that fill a hole (for the life of the
    // process), until one lands above everything.
    loop {
        let f = std::fs::File::open("/dev/null").unwrap();
        if std::os::fd::AsRawFd::as_raw_fd(&f) > highest {
            break;
        }
        std::mem::forget(f);
    }
    let limit = highest + 1 + FREE as i32;
    let rl = libc::rlimit {
        rlim_cur: limit as libc::rlim_t,
        rlim_max: limit as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the struct we pass.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) }, 0);
    limit
}

fn says(h: Handle) -> String {
    let mut f: std::fs::File = h.accept().unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    s
}

/// The receiving child.
#[test]
fn child_side() {
    if std::env::var_os(MODE).is_none() {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut ch = Channel::from_env().unwrap();
        let limit = leave_free_fds();
        let full = limit as usize;
        let base = open_below(limit);
        assert_eq!(base, full - FREE as usize);

        // 1: three handles fit; keep them (one fd left).
        let (id, first): (u32, Vec<Handle>) = ch.recv_msg().await.unwrap().unwrap();
        assert_eq!((id, first.len()), (1, 3));
        // 2: one of its three fits, two are lost.
        let err = ch.recv_msg::<u32>().await.unwrap_err();
        assert_eq!(err.name(), "EMFILE", "{err}");
        assert_eq!(
            open_below(limit),
            base + 3,
            "the one that arrived was closed"
        );
        drop(first);
        // 3: the channel goes on.
        let (id, third): (u32, Vec<Handle>) = ch.recv_msg().await.unwrap().unwrap();
        assert_eq!((id, third.len()), (3, 3));
        let said: Vec<String> = third.into_iter().map(says).collect();
        assert_eq!(said, ["3/0", "3/1", "3/2"]);

        // The byte layer: hold three fds again, then "c" with three handles loses two.
        let (id, held): (u32, Vec<Handle>) = ch.recv_msg().await.unwrap().unwrap();
        assert_eq!((id, held.len()), (4, 3));
        let mut byte = [0u8; 1];
        let err = ch.recv(&mut byte).await.unwrap_err();
        assert_eq!(err.name(), "EMFILE", "{err}");
        assert_eq!(ch.recv(&mut byte).await.unwrap(), 1);
        assert_eq!(&byte, b"c");
        assert_eq!(ch.pending_count(), 0, "the lost write's handles are gone");
        assert_eq!(open_below(limit), base + 3);
        drop(held);
        assert_eq!(ch.recv(&mut byte).await.unwrap(), 1);
        assert_eq!(&byte, b"d");
        assert_eq!(says(ch.accept_handle().unwrap()), "d/0");
        assert_eq!(open_below(limit), base);
        ch.send(b"k").await.unwrap();
    });
}

fn pipe_saying(text: &str) -> OwnedFd {
    let (r, mut w) = kernel_pipe();
    std::io::Write::write_all(&mut w, text.as_bytes()).unwrap();
    r.into()
}

#[tokio::test]
async fn a_receiver_at_its_fd_limit_gets_emfile_for_that_message_and_keeps_going() {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "child_side", "--nocapture", "--test-threads=1"])
        .env(MODE, "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .stdio(3, Stdio::ipc())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut ch = child.take_channel(3).unwrap();
    for id in 1..=4u32 {
        let fds: Vec<OwnedFd> = (0..3).map(|i| pipe_saying(&format!("{id}/{i}"))).collect();
        let b: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        ch.send_msg(&id, &b).await.unwrap();
    }
    let fds: Vec<OwnedFd> = (0..3).map(|i| pipe_saying(&format!("c/{i}"))).collect();
    let b: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    ch.send_with_handles(b"c", &b).await.unwrap();
    let d = pipe_saying("d/0");
    ch.send_with_handles(b"d", &[d.as_fd()]).await.unwrap();

    let mut k = [0u8; 1];
    let done = timeout(LIMIT, ch.recv(&mut k)).await;
    let mut err = String::new();
    let mut stderr = child.stderr.take().unwrap();
    timeout(
        LIMIT,
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut err),
    )
    .await
    .unwrap()
    .unwrap();
    let exit = timeout(LIMIT, child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "child {exit}: {err}");
    assert!(matches!(done, Ok(Ok(1))), "{done:?}");
    assert_eq!(&k, b"k");
}

/// A kernel pipe: (read end, write end) as files (std's `io::pipe` is newer than our MSRV).
fn kernel_pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new fds into `fds`.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds are new and ours alone.
    unsafe {
        (
            std::os::fd::FromRawFd::from_raw_fd(fds[0]),
            std::os::fd::FromRawFd::from_raw_fd(fds[1]),
        )
    }
}
