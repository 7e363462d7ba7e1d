//! `nohup brood run` and `trap '' HUP; brood run`: a signal brood was started with ignored
//! stays ignored for the child (brood does not watch it to forward it).

use std::process::Command;

#[test]
fn a_signal_ignored_when_brood_starts_stays_ignored_in_the_child() {
    let brood = env!("CARGO_BIN_EXE_brood");
    let script = format!("trap '' HUP; exec {brood} run -- sh -c 'kill -HUP $$; echo survived'");
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "survived",
        "status {:?}, stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
    // A signal that was not ignored is still forwarded (and kills a default child).
    let out = Command::new("sh")
        .args([
            "-c",
            &format!("exec {brood} run -- grep SigIgn /proc/self/status"),
        ])
        .output()
        .unwrap();
    let ign = String::from_utf8_lossy(&out.stdout);
    let mask = u64::from_str_radix(ign.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(
        mask & (1 << (libc::SIGHUP - 1)),
        0,
        "HUP not ignored: {ign}"
    );
}
