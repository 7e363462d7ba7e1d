//! Environment, PATH, argv[0], cwd, process groups, spawning outside a runtime.

use super::*;

// ---------------------------------------------------------------------------------------
// Environment, argv[0], cwd

fn env_set(bytes: &[u8]) -> BTreeSet<Vec<u8>> {
    bytes
        .split(|&b| b == 0)
        .filter(|e| !e.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

#[tokio::test]
async fn basic_env_cleared_gives_exactly_the_given_vars() {
    let _g = shared().await;
    let out = bounded("env", Command::new("/usr/bin/env").env_clear().output())
        .await
        .unwrap();
    assert!(out.exit.success());
    assert_eq!(out.stdout, b"", "empty env");

    let out = bounded(
        "env",
        Command::new("/usr/bin/env")
            .arg("-0")
            .env("BROOD_OUTER", "dropped by env_clear")
            .env_clear()
            .env("A", "1")
            .env("EMPTY", "")
            .env("SPACES", "x y  z")
            .env_remove("NOT_THERE")
            .output(),
    )
    .await
    .unwrap();
    let want: BTreeSet<Vec<u8>> = [&b"A=1"[..], b"EMPTY=", b"SPACES=x y  z"]
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    assert_eq!(env_set(&out.stdout), want);
}

#[tokio::test]
async fn basic_env_is_preserved_by_default() {
    use std::os::unix::ffi::OsStrExt;
    let _g = shared().await;
    let ours: BTreeSet<Vec<u8>> = std::env::vars_os()
        .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat())
        .collect();
    let out = bounded("env", Command::new("env").arg("-0").output())
        .await
        .unwrap();
    assert_eq!(env_set(&out.stdout), ours);

    // Changes go on top; a removed variable is gone.
    let (k, _) = std::env::vars_os().next().expect("some variable");
    let out = bounded(
        "env",
        Command::new("env")
            .arg("-0")
            .env("BROOD_ADDED", "yes")
            .env_remove(&k)
            .output(),
    )
    .await
    .unwrap();
    let got = env_set(&out.stdout);
    assert!(got.contains(&b"BROOD_ADDED=yes"[..]));
    assert!(
        !got.iter()
            .any(|e| e.starts_with(&[k.as_bytes(), b"="].concat()))
    );
    assert_eq!(got.len(), ours.len());
}

#[tokio::test]
async fn basic_env_pid_is_the_childs_own_pid() {
    let _g = shared().await;
    let child = Command::new("sh")
        .args(["-c", "echo \"$LISTEN_PID $$\""])
        .env("LISTEN_PID", "overwritten")
        .env_pid("LISTEN_PID")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let out = bounded("output", child.wait_with_output()).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{pid} {pid}\n")
    );
}

#[tokio::test]
async fn basic_arg0() {
    let _g = shared().await;
    let mut child = Command::new("sleep")
        .arg0("brood-custom-argv0")
        .arg("30")
        .spawn()
        .unwrap();
    let _k = KillGuard::new(pid_of(&child));
    // spawn returns once the child has released our memory inside execve, which is just
    // before the kernel switches it to the new program's memory (until then /proc shows our
    // own command line) and puts the new argv there (until then it is empty): wait for both.
    let path = format!("/proc/{}/cmdline", child.id().unwrap());
    let exe = format!("/proc/{}/exe", child.id().unwrap());
    poll_until("new program's cmdline in place", || {
        std::fs::read_link(&exe).unwrap().ends_with("sleep")
            && !std::fs::read(&path).unwrap().is_empty()
    });
    let cmdline = std::fs::read(&path).unwrap();
    assert_eq!(cmdline, b"brood-custom-argv0\x0030\x00");
    // The program itself was still found by its name.
    let exe = std::fs::read_link(format!("/proc/{}/exe", child.id().unwrap())).unwrap();
    assert!(exe.ends_with("sleep"), "{exe:?}");
    child.kill(Signum::KILL).unwrap();
    bounded("wait", child.wait()).await.unwrap();

    // Without arg0, argv[0] is the program as given.
    let out = sh("echo $0", |c| c).await;
    assert_eq!(out.stdout, b"sh\n");
    let out = sh("echo $0", |c| c.arg0("-custom")).await;
    assert_eq!(out.stdout, b"-custom\n");
}

#[tokio::test]
async fn basic_cwd() {
    let _g = shared().await;
    let dir = TempDir::new("cwd");
    let out = bounded(
        "readlink",
        Command::new("readlink")
            .arg("/proc/self/cwd")
            .current_dir(dir.path())
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        dir.path().to_str().unwrap()
    );
    // A relative program path is found from the child's cwd, as execvp after chdir.
    let out = bounded(
        "relative",
        Command::new("./bin/true").current_dir("/usr").output(),
    )
    .await
    .unwrap();
    assert!(out.exit.success(), "{}", out.exit);
}

#[tokio::test]
async fn basic_process_group() {
    let _g = shared().await;
    // A group of its own (pgid 0 = its pid): the whole group can be signalled.
    let mut leader = Command::new("sleep")
        .arg("30")
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = pid_of(&leader);
    let _k = KillGuard::new(pgid);
    let mut member = Command::new("sleep")
        .arg("30")
        .process_group(pgid)
        .spawn()
        .unwrap();
    let _k2 = KillGuard::new(pid_of(&member));
    for pid in [pgid, pid_of(&member)] {
        let s = stat(pid).unwrap();
        assert_eq!(s.pgrp, pgid, "{s:?}");
        assert_ne!(s.session, pid, "not a new session: {s:?}");
    }
    brood::kill(-pgid, Signum::TERM).unwrap();
    for child in [&mut leader, &mut member] {
        let exit = bounded("wait", child.wait()).await.unwrap();
        assert_eq!(exit.signal, libc::SIGTERM);
    }
}

#[test]
fn basic_spawn_outside_a_runtime() {
    let _g = shared_blocking();
    // No runtime: spawning works (pipes excepted), try_wait works, wait says why not.
    let mut child = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
    let err = Command::new("true")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_err();
    assert_eq!(err.name(), "EINVAL", "{err}");
    wait_zombie(pid_of(&child));
    assert_eq!(child.try_wait().unwrap().unwrap().status, 3);
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let _k = KillGuard::new(pid_of(&child));
    let err = futures_lite_block_on(child.wait()).unwrap_err();
    assert_eq!(err.name(), "EINVAL", "{err}");
    // ...and a runtime later finishes the job.
    child.kill(Signum::KILL).unwrap();
    let exit = rt().block_on(async { bounded("wait", child.wait()).await.unwrap() });
    assert_eq!(exit.signal, libc::SIGKILL);
}

/// Polls a future to completion on this thread with no runtime (the first poll must finish).
fn futures_lite_block_on<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("pending without a runtime"),
    }
}

#[tokio::test]
async fn basic_windows_flags_are_accepted_and_ignored() {
    let _g = shared().await;
    let out = sh("echo \"$0 $1\"", |c| {
        c.arg("a b")
            .windows_verbatim_arguments(true)
            .windows_hide(true)
            .windows_hide_console(true)
            .windows_hide_gui(true)
            .windows_file_path_exact_name(true)
    })
    .await;
    assert!(out.exit.success());
    assert_eq!(out.stdout, b"a b \n");
}
