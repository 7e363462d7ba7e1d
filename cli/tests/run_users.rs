//! `brood run --user/--uid/--gid` by name, checked in /proc/PID/status of the child.
//! These tests run as root (as CI does): changing ids needs it.
//!
//! For supplementary groups a user with some is needed; the test makes one in a private
//! mount namespace (`unshare -m` with its own /etc/passwd and /etc/group bind-mounted),
//! so the machine's databases are untouched.

mod run_support;

use brood::Command;
use run_support::*;

fn assert_root() {
    assert_eq!(
        // SAFETY: getuid has no preconditions.
        unsafe { libc::getuid() },
        0,
        "these tests need root, as CI runs them"
    );
}

/// The child's (Uid, Gid, Groups) when `brood run FLAGS -- cat /proc/self/status`.
async fn child_creds(flags: &[&str]) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let out = run(&[flags, &["--", "cat", "/proc/self/status"]].concat()).await;
    assert_eq!(code(&out), 0, "{flags:?}: {}", text(&out.stderr));
    creds(&text(&out.stdout))
}

/// `id OPTION USER`, as numbers.
async fn id(option: &str, user: &str) -> Vec<u32> {
    let out = bounded("id", Command::new("id").args([option, user]).output())
        .await
        .unwrap();
    assert!(out.exit.success(), "id {option} {user}");
    let mut ids: Vec<u32> = text(&out.stdout)
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn uid_and_gid_take_names() {
    assert_root();
    // --uid alone: the gid stays brood's (0), supplementary groups are dropped.
    let (uid, gid, groups) = child_creds(&["--uid", "nobody"]).await;
    assert_eq!((uid, gid, groups), (vec![65534; 4], vec![0; 4], vec![]));
    let nogroup = id("-g", "nobody").await;
    let (uid, gid, _) = child_creds(&["--gid", "nogroup"]).await;
    assert_eq!((uid, gid), (vec![0; 4], vec![nogroup[0]; 4]));
    let (uid, gid, _) = child_creds(&["--uid", "65534", "--gid", "65533"]).await;
    assert_eq!((uid, gid), (vec![65534; 4], vec![65533; 4]));
}

#[tokio::test]
async fn user_sets_uid_primary_gid_and_groups_as_id_reports_them() {
    assert_root();
    let (uid, gid, groups) = child_creds(&["--user", "nobody"]).await;
    assert_eq!(uid, vec![id("-u", "nobody").await[0]; 4]);
    assert_eq!(gid, vec![id("-g", "nobody").await[0]; 4]);
    assert_eq!(groups, id("-G", "nobody").await);
}

#[tokio::test]
async fn user_gets_its_supplementary_groups_from_the_group_database() {
    assert_root();
    let dir = std::env::temp_dir().join(format!("brood-run-users-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\nbroodu:x:4242:4243::/:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("group"),
        "root:x:0:\nbroodg:x:4243:\nbroods1:x:4244:broodu\nbroods2:x:4245:other,broodu\nbroodn:x:4246:other\n",
    )
    .unwrap();
    let dir_s = dir.to_str().unwrap().to_owned();
    // brood FLAGS -- cat /proc/self/status, in a mount namespace with those databases.
    let in_ns = async |flags: &[&str]| {
        let script = format!(
            "mount --bind {dir_s}/passwd /etc/passwd && mount --bind {dir_s}/group /etc/group \
             && exec \"$@\""
        );
        let args = [
            &["-m", "sh", "-c", &script, "sh", BROOD, "run"][..],
            flags,
            &["--", "cat", "/proc/self/status"],
        ]
        .concat();
        let out = bounded("unshare", Command::new("unshare").args(&args).output())
            .await
            .unwrap();
        (out.exit.status, text(&out.stdout), text(&out.stderr))
    };
    let (status, out, err) = in_ns(&["--user", "broodu"]).await;
    assert_eq!(status, 0, "{err}");
    assert_eq!(
        creds(&out),
        (vec![4242; 4], vec![4243; 4], vec![4243, 4244, 4245])
    );
    // By number, the same.
    let (_, out, err) = in_ns(&["--user", "4242"]).await;
    assert_eq!(
        creds(&out),
        (vec![4242; 4], vec![4243; 4], vec![4243, 4244, 4245]),
        "{err}"
    );
    // --gid picks another primary group (runuser -g); the member groups stay.
    let (_, out, err) = in_ns(&["--user", "broodu", "--gid", "broods2"]).await;
    assert_eq!(
        creds(&out),
        (vec![4242; 4], vec![4245; 4], vec![4244, 4245]),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn unknown_users_and_groups_are_brood_failures_that_name_them() {
    for (flags, says) in [
        (
            &["--user", "brood-no-such-user"][..],
            "no user \"brood-no-such-user\"",
        ),
        (
            &["--uid", "brood-no-such-user"],
            "no user \"brood-no-such-user\"",
        ),
        (
            &["--gid", "brood-no-such-group"],
            "no group \"brood-no-such-group\"",
        ),
        (&["--user", "4000000000"], "no user 4000000000"),
    ] {
        let out = run(&[flags, &["--", "echo", "ran"]].concat()).await;
        assert_eq!(code(&out), 125, "{flags:?}");
        let err = text(&out.stderr);
        assert!(err.contains(says), "{flags:?}: {err}");
        assert_eq!(out.stdout, b"");
    }
}

#[tokio::test]
async fn an_unprivileged_brood_cannot_set_groups_and_says_so() {
    assert_root();
    // brood itself as nobody: the supplementary groups of --user are refused (EPERM),
    // brood's own failure, naming the step; the program never runs.
    let out = bounded(
        "unprivileged",
        run_cmd(&["--user", "root", "--", "echo", "ran"])
            .uid(65534)
            .gid(65534)
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(code(&out), 125, "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("EPERM") && err.contains("setgroups [0]"),
        "{err}"
    );
    assert_eq!(out.stdout, b"");
}
