//! Stdio slots: pipes, files, swaps, fds 3 and 9, ignore, streams, the exact fd table.

use super::*;

// ---------------------------------------------------------------------------------------
// Stdio slots

#[tokio::test]
async fn basic_stdout_and_stderr_to_pipes_and_stdin_from_one() {
    let _g = shared().await;
    let out = sh("echo out; echo err >&2; exit 3", |c| c).await;
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.exit.status, 3);

    let mut child = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // More than a socket buffer, written while read, so a deadlock would show.
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let writer = async {
        stdin.write_all(&data).await.unwrap();
        drop(stdin);
    };
    let mut got = Vec::new();
    let reader = stdout.read_to_end(&mut got);
    let ((), n) = bounded("cat", async { tokio::join!(writer, reader) }).await;
    assert_eq!(n.unwrap(), data.len());
    assert!(got == data, "cat gave back other bytes");
    assert!(bounded("wait", child.wait()).await.unwrap().success());
}

#[tokio::test]
async fn basic_stdout_and_stderr_to_one_file() {
    let _g = shared().await;
    let dir = TempDir::new("file");
    let path = dir.path().join("out.txt");
    let file = std::fs::File::create(&path).unwrap();
    let exit = bounded(
        "wait",
        Command::new("sh")
            .args(["-c", "echo one; echo two >&2; echo three"])
            .stdio(1, Stdio::inherit_fd(file.as_raw_fd()))
            .stdio(2, Stdio::from(file.try_clone().unwrap()))
            .status(),
    )
    .await
    .unwrap();
    assert!(exit.success());
    // One open file description: the writes follow each other.
    assert_eq!(std::fs::read(&path).unwrap(), b"one\ntwo\nthree\n");
    // The parent's own handle is still open and shares the offset.
    let mut file = file;
    assert_eq!(file.stream_position().unwrap(), 14);
}

#[tokio::test]
async fn basic_slots_that_name_each_other_are_swapped() {
    let _g = shared().await;
    let dir = TempDir::new("swap");
    let a = std::fs::File::create(dir.path().join("a")).unwrap();
    let b = std::fs::File::create(dir.path().join("b")).unwrap();
    let (fa, fb) = (a.as_raw_fd(), b.as_raw_fd());
    // Slot fa gets the parent's fd fb and slot fb gets fa: each source is the other's target.
    let exit = bounded(
        "wait",
        Command::new("bash")
            .args([
                "-c",
                &format!("echo to-slot-a >&{fa}; echo to-slot-b >&{fb}"),
            ])
            .stdio(fa, Stdio::inherit_fd(fb))
            .stdio(fb, Stdio::inherit_fd(fa))
            .status(),
    )
    .await
    .unwrap();
    assert!(exit.success(), "{exit}");
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"to-slot-b\n");
    assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), b"to-slot-a\n");
}

#[tokio::test]
async fn basic_stdout_and_stderr_swapped() {
    let _g = shared().await;
    // The helper's own stdout and stderr are our pipes; it spawns with 1→its 2, 2→its 1.
    let out = run_helper("swap", &[]).await;
    // (The test harness of the helper writes to its stdout too: look for the words.)
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("written-to-2"), "{stdout:?}");
    assert!(!stdout.contains("written-to-1"), "{stdout:?}");
    assert!(stderr.contains("written-to-1"), "{stderr:?}");
    assert!(!stderr.contains("written-to-2"), "{stderr:?}");
}

#[tokio::test]
async fn basic_slots_at_fd_3_and_fd_9() {
    let _g = shared().await;
    let mut child = Command::new("sh")
        .args([
            "-c",
            "echo three >&3; echo nine >&9; read x <&9; echo \"got $x\" >&3",
        ])
        .stdio(3, Stdio::pipe_writable())
        .stdio(9, Stdio::pipe_duplex())
        .spawn()
        .unwrap();
    let mut three = child.take_pipe(3).unwrap();
    let mut nine = child.take_pipe(9).unwrap();
    assert!(child.take_pipe(4).is_none());
    let mut buf = [0u8; 5];
    bounded("read 9", nine.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"nine\n");
    bounded("write 9", nine.write_all(b"hello\n"))
        .await
        .unwrap();
    let mut text = String::new();
    bounded("read 3", three.read_to_string(&mut text))
        .await
        .unwrap();
    assert_eq!(text, "three\ngot hello\n");
    assert!(bounded("wait", child.wait()).await.unwrap().success());
}

#[tokio::test]
async fn basic_inherit_stream_gives_the_socket() {
    let _g = shared().await;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let exit = bounded(
        "wait",
        Command::new("sh")
            .args(["-c", "echo via-stream"])
            .stdout(Stdio::inherit_stream(&theirs))
            .status(),
    )
    .await
    .unwrap();
    assert!(exit.success());
    drop(theirs); // brood's duplicate is closed already: EOF comes once ours goes.
    let mut text = String::new();
    let mut ours = ours;
    ours.read_to_string(&mut text).unwrap();
    assert_eq!(text, "via-stream\n");
}

#[tokio::test]
async fn basic_inherit_stream_tcp_connection_as_stdin_and_stdout() {
    let _g = shared().await;
    // The CGI case: an accepted TCP connection is the child's stdin and stdout.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = bounded("connect", async {
        tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept())
    })
    .await;
    let (mut client, (conn, _)) = (client.unwrap(), accepted.unwrap());
    let mut child = Command::new("sh")
        .args(["-c", "read line; echo \"got $line\""])
        .stdin(Stdio::inherit_stream(&conn))
        .stdout(Stdio::inherit_stream(&conn))
        .spawn()
        .unwrap();
    drop(conn); // the child has its own copies; ours may go at once
    bounded("write", client.write_all(b"hello\n"))
        .await
        .unwrap();
    let mut reply = String::new();
    bounded("read", client.read_to_string(&mut reply))
        .await
        .unwrap();
    assert_eq!(reply, "got hello\n");
    assert!(bounded("wait", child.wait()).await.unwrap().success());
}

#[tokio::test]
async fn basic_ignored_stdio_is_dev_null_below_3_and_closed_above() {
    let _g = shared().await;
    let mut child = Command::new("sh")
        .args([
            "-c",
            // Builtins only: a redirection or a $(...) would change the shell's own fds
            // while it looks at them.
            "r=; for n in 0 1 2 3; do \
               if [ /proc/$$/fd/$n -ef /dev/null ]; then r=\"$r null\"; \
               elif [ -e /proc/$$/fd/$n ]; then r=\"$r open\"; \
               else r=\"$r closed\"; fi; done; echo $r >&4",
        ])
        .stdio(0, Stdio::ignore())
        .stdio(1, Stdio::ignore())
        .stdio(2, Stdio::ignore())
        .stdio(3, Stdio::ignore())
        .stdio(4, Stdio::pipe_writable())
        .spawn()
        .unwrap();
    let mut report = child.take_pipe(4).unwrap();
    let mut text = String::new();
    bounded("read", report.read_to_string(&mut text))
        .await
        .unwrap();
    assert_eq!(text, "null null null closed\n");
    assert!(bounded("wait", child.wait()).await.unwrap().success());

    // stdin from /dev/null reads EOF at once; output to it is swallowed.
    let out = bounded(
        "cat",
        Command::new("cat")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .output(),
    )
    .await
    .unwrap();
    assert!(out.exit.success());
    assert_eq!(out.stdout, b"");
}

#[tokio::test]
async fn basic_child_has_exactly_the_fds_given() {
    let _g = shared().await;
    // A non-close-on-exec fd in the parent must not leak into the child.
    let dir = TempDir::new("fds");
    let file = std::fs::File::create(dir.path().join("nine")).unwrap();
    // SAFETY: dup of an open fd; the result is owned right away.
    let leaky = unsafe { OwnedFd::from_raw_fd(libc::dup(file.as_raw_fd())) };
    // SAFETY: F_GETFD on an fd we own.
    let flags = unsafe { libc::fcntl(leaky.as_raw_fd(), libc::F_GETFD) };
    assert_eq!(flags & libc::FD_CLOEXEC, 0, "the leaky fd is inheritable");

    // `cat` with stdin and stdout as pipes; once it has echoed a line it sits in read(),
    // its fd table settled (the dynamic loader's own opens are over). We list it from
    // outside, so the lister's fd is not in the list.
    let mut child = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::ignore())
        .stdio(9, Stdio::inherit_fd(file.as_raw_fd()))
        .spawn()
        .unwrap();
    let pid = pid_of(&child);
    let _k = KillGuard::new(pid);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    bounded("write", stdin.write_all(b"ping\n")).await.unwrap();
    let mut buf = [0u8; 5];
    bounded("read", stdout.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"ping\n");

    assert_eq!(fds_of(pid), BTreeSet::from([0, 1, 2, 9]));
    assert_eq!(fd_target(pid, 2), std::path::Path::new("/dev/null"));
    assert_eq!(fd_target(pid, 9), dir.path().join("nine"));
    assert!(fd_target(pid, 0).to_string_lossy().starts_with("pipe:"));
    drop(stdin);
    assert!(bounded("wait", child.wait()).await.unwrap().success());
    drop(leaky);
}

#[tokio::test]
async fn basic_closed_stdin_in_the_parent() {
    let _g = shared().await;
    // The helper closes its fd 0 first: new fds (pipes) then land at 0.
    run_helper("closed-stdin", &[]).await;
}

#[tokio::test]
async fn basic_disable_stdio_inheritance_marks_fds_cloexec() {
    let _g = exclusive().await; // changes every fd of this process
    // SAFETY: dup of fd 1, owned right away; fcntl reads its flags.
    let fd = unsafe { OwnedFd::from_raw_fd(libc::dup(1)) };
    // SAFETY: F_GETFD on an fd this closure's owner keeps open.
    let cloexec = || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) } & libc::FD_CLOEXEC;
    assert_eq!(cloexec(), 0);
    brood::disable_stdio_inheritance();
    assert_eq!(cloexec(), libc::FD_CLOEXEC);
    // 0-2 are left alone.
    assert_eq!(
        // SAFETY: F_GETFD on fd 1.
        unsafe { libc::fcntl(1, libc::F_GETFD) } & libc::FD_CLOEXEC,
        0
    );
}
