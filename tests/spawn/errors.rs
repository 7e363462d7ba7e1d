//! Spawn errors (synchronous, with the path, no child left) and credentials.

use super::*;

// ---------------------------------------------------------------------------------------
// Errors: synchronous, with the path, and no child left behind

#[tokio::test]
async fn basic_spawn_errors_name_the_path_and_leave_no_child() {
    let _g = exclusive().await;
    let dir = TempDir::new("errors");
    let not_exec = dir.file("not-executable", b"#!/bin/sh\necho hi\n", 0o644);
    let garbage = dir.file("garbage", b"\x01\x02\x03 this is no program\n", 0o755);
    let in_file = "/etc/passwd/brood-x";
    let missing = dir.path().join("missing");
    let before = children();
    assert!(before.is_empty(), "children before: {before:?}");

    let cases: Vec<(Command, &str, String)> = vec![
        (
            // (A PATH of our own: an entry we may not search would make it EACCES, as execvp.)
            with(Command::new("brood-no-such-program"), |c| {
                c.env("PATH", "/usr/bin:/bin")
            }),
            "ENOENT",
            "brood-no-such-program".into(),
        ),
        (
            Command::new(&missing),
            "ENOENT",
            missing.display().to_string(),
        ),
        (
            Command::new(&not_exec),
            "EACCES",
            not_exec.display().to_string(),
        ),
        (
            Command::new(&garbage),
            "ENOEXEC",
            garbage.display().to_string(),
        ),
        (Command::new(in_file), "ENOTDIR", in_file.into()),
        (
            with(Command::new("true"), |c| c.current_dir(&missing)),
            "ENOENT",
            missing.display().to_string(),
        ),
        (
            with(Command::new("true"), |c| c.current_dir(&not_exec)),
            "ENOTDIR",
            not_exec.display().to_string(),
        ),
        (Command::new(""), "ENOENT", "spawn \"\"".into()),
    ];
    for (mut cmd, name, path) in cases {
        let program = cmd.get_program().to_owned();
        let err = cmd.spawn().expect_err("spawn must fail");
        assert_eq!(err.name(), name, "{program:?}: {err}");
        let text = err.to_string();
        assert!(text.contains(&path), "{text:?} does not name {path:?}");
        assert!(text.starts_with("spawn "), "{text}");
    }
    // The bad-cwd error says it was the chdir.
    let err = Command::new("true")
        .current_dir(&missing)
        .spawn()
        .unwrap_err();
    assert!(err.detail().unwrap().starts_with("chdir"), "{err}");

    // No child of ours was left, zombie or not.
    let after = children();
    assert!(after.is_empty(), "children left: {after:?}");
}

#[tokio::test]
async fn basic_path_search_uses_the_childs_path() {
    let _g = exclusive().await; // writes an executable: no concurrent spawn may hold it open
    let dir = TempDir::new("path");
    dir.file("brood-path-probe", b"#!/bin/sh\necho probe-ran\n", 0o755);
    let mut skipped = dir.path().join("first");
    std::fs::create_dir(&skipped).unwrap();
    // An entry without the execute bit earlier in PATH is passed over, as execvp does.
    skipped.push("brood-path-probe");
    std::fs::write(&skipped, b"#!/bin/sh\necho wrong\n").unwrap();

    // Not in this process's PATH:
    assert!(Command::new("brood-path-probe").spawn().is_err());
    let path = format!(
        "{}:{}:/usr/bin:/bin",
        skipped.parent().unwrap().display(),
        dir.path().display()
    );
    let out = bounded(
        "probe",
        Command::new("brood-path-probe").env("PATH", &path).output(),
    )
    .await
    .unwrap();
    assert!(out.exit.success(), "{}", out.exit);
    assert_eq!(out.stdout, b"probe-ran\n");

    // With a cleared env and no PATH, the default /bin:/usr/bin is searched.
    let out = bounded(
        "no PATH",
        Command::new("sh")
            .env_clear()
            .args(["-c", "echo ok"])
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(out.stdout, b"ok\n");

    // Only a non-executable match: EACCES, as execvp says.
    let err = Command::new("brood-path-probe")
        .env("PATH", skipped.parent().unwrap())
        .spawn()
        .unwrap_err();
    assert_eq!(err.name(), "EACCES", "{err}");
    assert!(children().is_empty());
}

// ---------------------------------------------------------------------------------------
// Credentials

#[tokio::test]
async fn basic_root_can_set_uid_and_gid_and_groups_are_dropped() {
    let _g = shared().await;
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("not root: the EPERM test covers this user");
        return;
    }
    for (args, want) in [
        (&["-u"][..], "65534"),
        (&["-g"][..], "65533"),
        (&["-G"][..], "65533"),
    ] {
        let out = bounded(
            "id",
            Command::new("id").args(args).uid(65534).gid(65533).output(),
        )
        .await
        .unwrap();
        assert!(out.exit.success(), "id {args:?}: {}", out.exit);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            want,
            "id {args:?}"
        );
    }
    // With supplementary groups in the parent, they are dropped (checked in a helper that
    // gives itself some).
    run_helper("groups", &[]).await;
}

#[tokio::test]
async fn basic_setuid_setgid_fail_with_eperm_when_unprivileged() {
    let _g = shared().await;
    // The helper drops to uid/gid 65534 itself first when we run as root, then spawns with
    // uid 0 and gid 0.
    run_helper("unprivileged", &[]).await;
}

/// `cmd` after `f` configured it.
fn with(mut cmd: Command, f: impl FnOnce(&mut Command) -> &mut Command) -> Command {
    f(&mut cmd);
    cmd
}
