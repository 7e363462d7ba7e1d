//! A detached child (`UV_PROCESS_DETACHED`) has its own session and outlives its parent;
//! a child with a parent-death signal does not.
//!
//! The parent that must die is a re-executed copy of this binary (helper mode `detach`): it
//! spawns `sleep` detached and exits at once without waiting. This test process makes itself
//! a child subreaper (its own binary, so no other test is affected), so the orphaned
//! grandchild becomes our child, not pid 1's: we can see it outlived its parent, and reap it
//! after killing it (this machine's pid 1 does not reap orphans).

mod common;
#[path = "examples_bin/mod.rs"]
mod examples_bin;

use brood::{Command, Stdio};
use common::*;

#[tokio::test]
async fn detached_child_has_its_own_session_and_outlives_its_parent() {
    assert_eq!(
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integers only; no memory is involved.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let out = run_helper("detach", &[]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // (The helper's test harness prints on the same stdout, maybe on the same line.)
    let line = stdout
        .lines()
        .find_map(|l| Some(&l[l.find("detached-pid=")? + "detached-pid=".len()..]))
        .expect("the helper prints the pid");
    let (pid, parent) = line.split_once(' ').expect(&stdout);
    let (pid, parent): (i32, i32) = (pid.parse().unwrap(), parent.parse().unwrap());
    let _k = KillGuard::new(pid);

    // The helper (its parent) has exited and been reaped by `run_helper`...
    assert!(stat(parent).is_none(), "the parent is still there");
    // ...and the grandchild lives on, reparented to us, in a session of its own.
    let s = stat(pid).expect("the detached child is gone");
    assert_ne!(s.state, 'Z', "{s:?}");
    assert_eq!(s.ppid, std::process::id() as i32, "{s:?}");
    assert_eq!(s.session, pid, "{s:?}");
    assert_eq!(s.pgrp, pid, "{s:?}");
    // SAFETY: getsid with our own pid 0.
    assert_ne!(s.session, unsafe { libc::getsid(0) });

    brood::kill(pid, libc::SIGKILL).unwrap();
    let mut status = 0;
    // SAFETY: waits for our (adopted) child, which was just sent SIGKILL.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
}

#[tokio::test]
async fn parent_death_signal_kills_the_child_when_its_parent_dies() {
    assert_eq!(
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integers only; no memory is involved.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let out = run_helper("pdeathsig", &[]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pid: i32 = stdout
        .lines()
        .find_map(|l| Some(&l[l.find("pdeathsig-pid=")? + "pdeathsig-pid=".len()..]))
        .and_then(|p| p.trim().parse().ok())
        .expect("the helper prints the pid");
    let _k = KillGuard::new(pid);
    // Adopted by us when the helper died, and killed by the signal it asked for.
    wait_zombie(pid);
    let mut status = 0;
    // SAFETY: reaps our (adopted) child, which has exited.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
        "status {status:#x}"
    );
}

/// The entry point of the helper process (see `common::run_helper`); a no-op as a test.
#[test]
fn helper() {
    let Some(mode) = std::env::var_os(HELPER_ENV) else {
        return;
    };
    if mode == "pdeathsig" {
        let child = Command::new("sleep")
            .arg("30")
            .parent_death_signal(brood::Signum::KILL)
            .stdin(Stdio::ignore())
            .stdout(Stdio::ignore())
            .stderr(Stdio::ignore())
            .spawn()
            .unwrap();
        println!("pdeathsig-pid={}", child.id().unwrap());
        // Forgotten, not dropped: brood's reaper in this process would otherwise reap the
        // child if it died before this process is gone, and the test could not see how it
        // died. Unreaped, it goes to the test process (a subreaper) with its exit status.
        std::mem::forget(child);
        println!("{HELPER_DONE}");
        return;
    }
    assert_eq!(mode, "detach");
    rt().block_on(async {
        let child = Command::new("sleep")
            .arg("60")
            .detached(true)
            .stdin(Stdio::ignore())
            .stdout(Stdio::ignore())
            .stderr(Stdio::ignore())
            .spawn()
            .unwrap();
        println!(
            "detached-pid={} {}",
            child.id().unwrap(),
            std::process::id()
        );
        // Dropped, not waited for: it must not keep this process or its runtime alive.
        drop(child);
    });
    println!("{HELPER_DONE}");
}

/// `out=$(cargo run --example detach)`: the captured stdout reaches EOF when the example
/// exits, not when its detached sleep ends 100 s later.
#[tokio::test]
async fn detach_example_does_not_hold_the_callers_stdout() {
    let exe = examples_bin::example("detach");
    let mut cmd = Command::new(exe);
    cmd.stdin(Stdio::ignore())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = bounded("detach example's stdout to EOF", cmd.output())
        .await
        .unwrap();
    assert!(out.exit.success());
    let text = String::from_utf8_lossy(&out.stderr);
    let pid: i32 = text
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text:?}"));
    // The sleep has /dev/null at 0-2; then it is stopped (it is no child of ours).
    for fd in 0..3 {
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(target, std::path::Path::new("/dev/null"), "fd {fd}");
    }
    brood::kill(pid, brood::Signum::KILL).unwrap();
}
