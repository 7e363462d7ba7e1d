//! `brood run --init` as PID 1 of a PID namespace (`unshare --pid --fork --mount-proc`, as a
//! container runs it) and as a subreaper elsewhere, side by side with Debian's `tini` where
//! tini has the same feature: the same scripts must give the same results.
//!
//! Nothing here sleeps to synchronize: the scripts print a line when they are ready, and
//! /proc is polled with a deadline. Needs root (`unshare --pid`) and `tini` (installed by
//! `.ci/run`).

mod run_support;

use std::time::{Duration, Instant};

use brood::{Child, Command, Signum, Stdio};
use run_support::*;
use tokio::io::AsyncReadExt;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Init {
    Brood,
    Tini,
}

const BOTH: [Init; 2] = [Init::Brood, Init::Tini];

impl Init {
    /// The command line up to the program: `brood run --init FLAGS --` or `tini FLAGS --`.
    fn argv(self, brood_flags: &[&str], tini_flags: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = match self {
            Init::Brood => [BROOD, "run", "--init"]
                .iter()
                .chain(brood_flags)
                .map(|s| s.to_string())
                .collect(),
            Init::Tini => {
                assert!(
                    std::path::Path::new("/usr/bin/tini").exists(),
                    "tini is missing: apt-get install tini (.ci/run does)"
                );
                ["/usr/bin/tini"]
                    .iter()
                    .chain(tini_flags)
                    .map(|s| s.to_string())
                    .collect()
            }
        };
        v.push("--".into());
        v
    }
}

/// A script run by an init that is PID 1 of a new PID namespace, stdin and stdout piped.
struct Namespace {
    unshare: Child,
    stdout: brood::ChildPipe,
    /// The init's pid as this test sees it (it is 1 inside).
    init: i32,
    /// Kills the init (and so the namespace) if the test fails half-way.
    kill: Option<KillOnDrop>,
    /// The init's command line (for a failure's message).
    argv: Vec<String>,
}

impl Namespace {
    /// Starts `init_argv sh -c script`; returns once the script printed its first line,
    /// which is `ready` (so the init has set up its signal handling and spawned it).
    async fn start(init_argv: Vec<String>, script: &str) -> Namespace {
        let mut unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .args(&init_argv)
            .args(["sh", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdout = unshare.stdout.take().unwrap();
        let line = read_line(&mut stdout, "the script's first line").await;
        assert_eq!(line, "ready", "{init_argv:?}");
        // unshare --fork has one child: the init, PID 1 inside.
        let inits = children(unshare.id().unwrap() as i32);
        assert_eq!(inits.len(), 1, "unshare's children: {inits:?}");
        Namespace {
            init: inits[0],
            kill: Some(KillOnDrop(inits[0])),
            unshare,
            stdout,
            argv: init_argv,
        }
    }

    async fn line(&mut self, what: &str) -> String {
        read_line(&mut self.stdout, what).await
    }

    /// Closes the script's stdin (its `read` returns), reads stdout to EOF, and gives the
    /// exit code of unshare, which is the init's, with the rest of stdout.
    async fn finish(mut self) -> (i64, String) {
        drop(self.unshare.stdin.take());
        let mut rest = Vec::new();
        let read = tokio::time::timeout(LIMIT, self.stdout.read_to_end(&mut rest)).await;
        if read.is_err() {
            // Which process still holds the pipe, and what it has pending, blocked, caught.
            panic!(
                "EOF from the namespace of {:?}: not done after {LIMIT:?}; read so far: {:?}\n{}",
                self.argv,
                text(&rest),
                tree(self.init)
            );
        }
        read.unwrap().unwrap();
        let exit = bounded("unshare's exit", self.unshare.wait())
            .await
            .unwrap();
        // unshare has reaped the init: its pid may be another process's from now on.
        std::mem::forget(self.kill.take());
        assert_eq!(exit.signal, 0, "unshare was killed: {exit}");
        (exit.status, text(&rest))
    }
}

/// `pid` and its descendants with their command, state and signal masks from /proc (for a
/// failure's message).
fn tree(pid: i32) -> String {
    let mut out = String::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let fields: Vec<&str> = status
            .lines()
            .filter(|l| {
                [
                    "Name:", "State:", "PPid:", "SigPnd:", "ShdPnd:", "SigBlk:", "SigIgn:",
                    "SigCgt:",
                ]
                .iter()
                .any(|k| l.starts_with(k))
            })
            .collect();
        let wchan = std::fs::read_to_string(format!("/proc/{p}/wchan")).unwrap_or_default();
        out.push_str(&format!("  {p}: {} wchan={wchan}\n", fields.join(" ")));
        todo.extend(children(p));
    }
    out
}

/// The children of `pid` (all its threads'), from /proc.
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|l| {
            l.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// `pid`'s state letter (R, S, T, Z...), `None` once it is gone.
fn state(pid: i32) -> Option<String> {
    stat(pid).map(|f| f[0].clone())
}

/// Polls `cond` until it holds; panics with `what` and the last `show()` after `LIMIT`.
fn until(what: &str, mut cond: impl FnMut() -> bool, show: impl Fn() -> String) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < LIMIT,
            "{what}: not so after {LIMIT:?}: {}",
            show()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The scenario of the issue, with a pause (the script waits on stdin) so that the
/// namespace can be inspected while PID 1 still runs.
const ORPHANS: &str =
    "echo ready; (sleep 0.2 &) ; (sleep 0.3 &); sleep 0.5; echo slept; read x; exit 7";

/// PID 1's children other than the shell: the orphans that landed on it, until reaped.
fn orphans(ns: &Namespace) -> Vec<i32> {
    let is_sh =
        |p: i32| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c == "sh\n");
    children(ns.init)
        .into_iter()
        .filter(|&p| !is_sh(p))
        .collect()
}

fn states(pids: &[i32]) -> String {
    format!(
        "{:?}",
        pids.iter().map(|&p| (p, state(p))).collect::<Vec<_>>()
    )
}

#[tokio::test]
async fn as_pid_1_init_reaps_every_orphan_and_passes_the_exit_code_through() {
    for init in BOTH {
        let mut ns = Namespace::start(init.argv(&[], &[]), ORPHANS).await;
        // By now both subshells have exited: the sleeps are PID 1's (running or ended).
        assert_eq!(ns.line("the shell's sleep").await, "slept");
        // A reaping init is left with the shell alone once the sleeps end (on a loaded
        // machine they may still run: waited for, up to LIMIT).
        until(
            &format!("{init:?} reaps the orphans"),
            || orphans(&ns).is_empty(),
            || states(&orphans(&ns)),
        );
        let (code, rest) = ns.finish().await;
        assert_eq!((code, rest.as_str()), (7, ""), "{init:?}");
    }
}

#[tokio::test]
async fn as_pid_1_without_init_the_orphans_stay_zombies() {
    // The control: what the test above sees under an init that does not reap (plain
    // `brood run`, which forwards signals but reaps only its own child).
    let argv = vec![BROOD.to_string(), "run".into(), "--".into()];
    let mut ns = Namespace::start(argv, ORPHANS).await;
    assert_eq!(ns.line("the shell's sleep").await, "slept");
    let zombies = || {
        let o = orphans(&ns);
        o.len() == 2 && o.iter().all(|&p| state(p).as_deref() == Some("Z"))
    };
    until("two zombie sleeps under PID 1", zombies, || {
        states(&orphans(&ns))
    });
    let (code, _) = ns.finish().await;
    assert_eq!(code, 7);
}

#[tokio::test]
async fn a_flood_of_orphans_never_steals_the_childs_exit_status() {
    // 200 orphans end around the time the child does: brood reaps them by pid and still
    // reports the child's own 7 (a waitpid(-1) would sometimes take it).
    let script = "echo ready; i=0; while [ $i -lt 200 ]; do (true &); i=$((i+1)); done; exit 7";
    let ns = Namespace::start(Init::Brood.argv(&["--json"], &[]), script).await;
    let (code, rest) = ns.finish().await;
    assert_eq!(code, 7, "{rest}");
}

#[tokio::test]
async fn exit_codes_pass_through_as_a_shell_gives_them() {
    for (script, want) in [
        // Each waits on stdin (closed by `finish`), so that the init is still there when
        // the test looks for it.
        ("echo ready; read x; exit 3", 3),
        ("echo ready; read x; kill -TERM $$", 143),
        ("echo ready; read x; kill -KILL $$", 137),
        ("echo ready; read x; exit 0", 0),
    ] {
        for init in BOTH {
            let ns = Namespace::start(init.argv(&[], &[]), script).await;
            let (code, _) = ns.finish().await;
            assert_eq!(code, want, "{init:?}: {script}");
        }
    }
}

#[tokio::test]
async fn as_pid_1_sigterm_and_sigint_still_reach_the_child() {
    // The kernel drops signals PID 1 leaves at their default action: an init that did not
    // catch them could not be stopped by `docker stop` (SIGTERM) or Ctrl-C.
    for (sig, want) in [(Signum::TERM, 143), (Signum::INT, 130)] {
        for init in BOTH {
            let ns = Namespace::start(init.argv(&[], &[]), "echo ready; exec sleep 60").await;
            brood::kill(ns.init, sig).unwrap();
            let (code, _) = ns.finish().await;
            assert_eq!(code, want, "{init:?} {sig}");
        }
    }
}

/// A python3 that says which of the signals given as arguments reach it, and exits after
/// one marked with `!`.
const REPORTER: &str = r#"
import signal, sys, time
last = set()
def got(n, _):
    # One write: a line another process writes to the same pipe cannot split it.
    sys.stdout.write("got %s\n" % (signal.Signals(n).name if n < 32 else n))
    sys.stdout.flush()
    if n in last:
        sys.exit(0)
for s in sys.argv[1:]:
    if s.endswith("!"):
        last.add(int(s[:-1]))
    signal.signal(int(s.rstrip("!")), got)
print("ready", flush=True)
# Short sleeps: a signal that lands after the last check for pending signals and before
# the sleep starts has its handler run only when the sleep ends.
while True:
    time.sleep(0.05)
"#;

#[tokio::test]
async fn every_catchable_signal_reaches_the_child() {
    let rt = libc::SIGRTMIN() + 3;
    let rt_name = rt.to_string();
    // SIGTERM last: the reporter exits on it.
    let sigs = [
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGWINCH, "SIGWINCH"),
        (libc::SIGURG, "SIGURG"),
        (libc::SIGPWR, "SIGPWR"),
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGCONT, "SIGCONT"),
        (rt, rt_name.as_str()),
        (libc::SIGTERM, "SIGTERM"),
    ];
    let mut nums: Vec<String> = sigs.iter().map(|(s, _)| s.to_string()).collect();
    nums.last_mut().unwrap().push('!');
    let script = format!("exec python3 -c '{REPORTER}' {}", nums.join(" "));
    for init in BOTH {
        let mut ns = Namespace::start(init.argv(&[], &[]), &script).await;
        for &(sig, name) in &sigs {
            brood::kill(ns.init, sig).unwrap();
            let want = format!("got {name}");
            assert_eq!(ns.line(&want).await, want, "{init:?}");
        }
        let (code, _) = ns.finish().await;
        assert_eq!(code, 0, "{init:?}");
    }
}

/// The shell starts the reporter (a grandchild of the init, in the shell's process group)
/// in the background and waits for it; on SIGTERM the shell says so, and waits again.
fn group_script() -> String {
    format!("trap 'echo shell got TERM; wait; exit 9' TERM; python3 -c '{REPORTER}' 15! 12! & wait")
}

/// The reporter's pid as seen from here: the python3 under the namespace's init.
fn reporter(ns: &Namespace) -> i32 {
    let is_python = |p: &i32| {
        std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c == "python3\n")
    };
    children(ns.init)
        .into_iter()
        .flat_map(children)
        .find(is_python)
        .expect("python3 runs under the shell")
}

#[tokio::test]
async fn group_forwards_to_the_whole_process_group_as_tini_g() {
    for init in BOTH {
        let ns = Namespace::start(init.argv(&["--group"], &["-g"]), &group_script()).await;
        brood::kill(ns.init, Signum::TERM).unwrap();
        // Both report, in either order; then the shell's wait returns and it exits 9.
        let (code, rest) = ns.finish().await;
        let mut lines: Vec<&str> = rest.lines().collect();
        lines.sort();
        assert_eq!(lines, ["got SIGTERM", "shell got TERM"], "{init:?}");
        assert_eq!(code, 9, "{init:?}");
    }
}

#[tokio::test]
async fn without_group_only_the_child_gets_the_signal() {
    for init in BOTH {
        let mut ns = Namespace::start(init.argv(&[], &[]), &group_script()).await;
        let python = reporter(&ns);
        let _guard = KillOnDrop(python);
        brood::kill(ns.init, Signum::TERM).unwrap();
        assert_eq!(
            ns.line("the shell's trap").await,
            "shell got TERM",
            "{init:?}"
        );
        // Only now is the grandchild signalled (USR2, which ends it): had TERM reached it,
        // it would have said so first.
        brood::kill(python, Signum::USR2).unwrap();
        let (code, rest) = ns.finish().await;
        assert_eq!((code, rest.as_str()), (9, "got SIGUSR2\n"), "{init:?}");
        std::mem::forget(_guard); // it has ended: its pid may be another process's now
    }
}

/// A job that leaves four descendants behind: a background sleep, a double-forked one
/// (an orphan by the time the shell exits), one that ignores SIGTERM, and one that stops
/// itself (after its redirections: a process stopped before them would hold the pipe).
/// It prints their pids, then exits 3.
const LEFT_BEHIND: &str = "\
sleep 60 >/dev/null 2>&1 & echo $!
(sleep 60 >/dev/null 2>&1 & echo $!)
sh -c \"trap '' TERM; exec sleep 60\" >/dev/null 2>&1 & echo $!
sh -c 'kill -STOP $$; exec sleep 60' >/dev/null 2>&1 & echo $!
exit 3";

/// Runs `brood run --init FLAGS -- sh -c LEFT_BEHIND` (not in a namespace: there, the
/// end of PID 1 kills everything anyway); gives brood's code, the four pids, and stderr.
async fn left_behind(flags: &[&str]) -> (i64, Vec<i32>, String, Vec<KillOnDrop>) {
    let mut argv = Init::Brood.argv(flags, &[]);
    argv.extend(["sh", "-c", LEFT_BEHIND].map(String::from));
    let mut brood = Command::new(&argv[0])
        .args(&argv[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = brood.stdout.take().unwrap();
    let mut pids = Vec::new();
    let mut guards = Vec::new();
    for i in 0..4 {
        let pid: i32 = read_line(&mut stdout, &format!("pid {i}"))
            .await
            .parse()
            .unwrap();
        pids.push(pid);
        guards.push(KillOnDrop(pid));
    }
    let out = bounded("brood's exit", brood.wait_with_output())
        .await
        .unwrap();
    (code(&out), pids, text(&out.stderr), guards)
}

#[tokio::test]
async fn as_pid_1_kill_others_ends_the_descendants_itself() {
    // In a PID namespace the kernel kills whatever is left when PID 1 exits, so "no process
    // left" holds anyway; the JSON line (on stdout here, after the pids) shows that brood
    // ended all four itself, the TERM-ignoring one with SIGKILL after --grace.
    let script = format!("echo ready; read x; {LEFT_BEHIND}");
    let argv = Init::Brood.argv(
        &["--kill-others", "--grace", "300ms", "--json-fd", "1"],
        &[],
    );
    let ns = Namespace::start(argv, &script).await;
    let (code, rest) = ns.finish().await;
    assert_eq!(code, 3, "{rest}");
    assert!(rest.contains("\"others_killed\":4"), "{rest}");
}

#[tokio::test]
async fn kill_others_ends_every_descendant_before_brood_exits() {
    let (code, pids, err, guards) =
        left_behind(&["--kill-others", "--grace", "300ms", "--json"]).await;
    assert_eq!(code, 3, "{err}");
    // Checked at once: brood returns only when none is left (the TERM-ignoring one needed
    // the SIGKILL after --grace, the stopped one the SIGCONT after SIGTERM).
    for pid in &pids {
        assert!(!alive(*pid), "pid {pid} survived brood: {:?}", state(*pid));
    }
    // All ended: their pids may be other processes' from now on.
    guards.into_iter().for_each(std::mem::forget);
    assert!(err.contains("\"others_killed\":4"), "{err}");
}

#[tokio::test]
async fn without_kill_others_the_descendants_outlive_brood() {
    // The control: the same job without --kill-others leaves all four running.
    let (code, pids, err, _guards) = left_behind(&[]).await;
    assert_eq!(code, 3, "{err}");
    for pid in &pids {
        assert!(alive(*pid), "pid {pid} is gone: {err}");
    }
}

#[tokio::test]
async fn tstp_stops_child_and_brood_cont_resumes_both_ttou_is_ignored() {
    // brood gets a process group of its own, whose parent (this test) is outside it: the
    // kernel discards SIGTSTP sent to a process of an orphaned process group, and whether
    // the test's own group is orphaned depends on how CI was started.
    let mut brood = Command::new(BROOD)
        .process_group(0)
        .args(["run", "--init", "--", "sleep", "60"])
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let me = brood.id().unwrap() as i32;
    let mut child = None;
    until(
        "brood's child sleep runs",
        || {
            child = children(me).first().copied();
            child.is_some()
        },
        String::new,
    );
    let child = child.unwrap();
    let _guard = KillOnDrop(child);
    let both = |s: &'static str| {
        move || state(child).as_deref() == Some(s) && state(me).as_deref() == Some(s)
    };
    let show = || format!("child {:?}, brood {:?}", state(child), state(me));
    // Ctrl-Z: the child stops, and brood too, so a shell sees its job stopped.
    brood::kill(me, Signum::TSTP).unwrap();
    until("both stopped", both("T"), show);
    brood::kill(me, Signum::CONT).unwrap();
    until("both running again", both("S"), show);
    // SIGTTOU is ignored: brood keeps running and handles the next signal (a stopped
    // brood would not, and the test would time out).
    brood::kill(me, Signum::TTOU).unwrap();
    brood::kill(me, Signum::USR1).unwrap();
    let mut err = String::new();
    brood
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    let exit = bounded("brood's exit", brood.wait()).await.unwrap();
    std::mem::forget(_guard); // brood reaped it: its pid may be another process's now
    assert_eq!(exit.status, 128 + libc::SIGUSR1 as i64, "{err}");
}

#[tokio::test]
async fn init_refuses_detach_and_timeout_and_the_group_flags_need_init() {
    for args in [
        &["--init", "--detach", "--", "true"][..],
        &["--init", "--timeout", "1", "--", "true"],
        &["--group", "--", "true"],
        &["--kill-others", "--", "true"],
        &["--init", "--grace", "1s", "--", "true"],
    ] {
        let out = run(args).await;
        assert_eq!(code(&out), 125, "{args:?}: {}", text(&out.stderr));
    }
}
