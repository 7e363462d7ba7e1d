//! `brood run` on a terminal: a Ctrl-C (or Ctrl-\) reaches the child once.
//!
//! The tty driver signals every process of the terminal's foreground group. A child in
//! brood's own group (no `--timeout`, `--foreground`, `--init`) gets its own copy, so brood
//! must not pass its copy on; a child in a group of its own (`--timeout`, `--init --group`)
//! gets only the one brood passes on. A `kill -INT` to brood is always passed on.
//!
//! A Python driver runs brood on a pseudo-terminal (`pty.fork`: brood leads the session and
//! its group is the foreground one), waits for the child to say it is ready, types the key
//! (or sends the signal), waits for the child to count it, then sends SIGUSR1 to brood:
//! brood passes that on after anything it read before, and the child prints how many
//! SIGINT/SIGQUIT it got in all and exits.

mod run_support;

use brood::{Command, Stdio};
use run_support::*;

/// The program brood runs: counts SIGINT and SIGQUIT, reports on SIGUSR1 and exits.
const CHILD: &str = r#"
import os, signal, sys, time
signal.alarm(60)  # a bound for a failed test only
counts = {"INT": 0, "QUIT": 0}
def on(name):
    def handler(s, f):
        counts[name] += 1
        print(f"GOT {name} {counts[name]}", flush=True)
    return handler
signal.signal(signal.SIGINT, on("INT"))
signal.signal(signal.SIGQUIT, on("QUIT"))
def done(s, f):
    print(f"DONE INT={counts['INT']} QUIT={counts['QUIT']}", flush=True)
    sys.exit(0)
signal.signal(signal.SIGUSR1, done)
print(f"READY pgrp={os.getpgrp()}", flush=True)
# Not signal.pause(): a signal that lands after Python's last check for pending signals and
# before pause() starts would wait for the next signal (the driver sends its next one only
# after this one's line). A short sleep bounds that wait.
while True:
    time.sleep(0.05)
"#;

/// Runs brood on a pty and drives it: `argv[1]` brood, `argv[2]` `key:BYTE` (typed on the
/// terminal) or `kill:SIG` (sent to brood), the rest brood's arguments. Prints the child's
/// lines, then `EXIT <brood's wait status>`.
const DRIVER: &str = r#"
import os, pty, select, signal, sys, termios, time
brood, how, args = sys.argv[1], sys.argv[2], sys.argv[3:]
pid, master = pty.fork()
if pid == 0:
    # NOFLSH: a typed Ctrl-C must not flush output the child is writing at that moment.
    attrs = termios.tcgetattr(0)
    attrs[3] |= termios.NOFLSH
    termios.tcsetattr(0, termios.TCSANOW, attrs)
    os.execv(brood, [brood, "run"] + args)
deadline = time.monotonic() + 20  # under the test's own 30 s bound, so this says which word never came
buf = b""
def wait_for(word):
    global buf
    while word.encode() not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            try:
                with open(f"/proc/{pid}/status") as f:
                    keep = ("State:", "SigPnd:", "ShdPnd:", "SigBlk:", "SigIgn:", "SigCgt:")
                    brood_state = " ".join(l.strip() for l in f if l.startswith(keep))
            except OSError:
                brood_state = "gone"
            os.kill(pid, signal.SIGKILL)
            sys.exit(f"no {word!r} in time; brood: {brood_state}; output: {buf!r}")
        r, _, _ = select.select([master], [], [], left)
        if r:
            try:
                data = os.read(master, 4096)
            except OSError:
                data = b""
            if not data:
                os.kill(pid, signal.SIGKILL)
                sys.exit(f"EOF before {word!r}; output: {buf!r}")
            buf += data
wait_for("READY")
kind, what = how.split(":")
if kind == "key":
    os.write(master, bytes([int(what)]))
else:
    os.kill(pid, getattr(signal, "SIG" + what))
name = {"3": "INT", "28": "QUIT"}.get(what, what)
wait_for(f"GOT {name} 1")
os.kill(pid, signal.SIGUSR1)
wait_for("DONE")
_, status = os.waitpid(pid, 0)
for line in buf.decode(errors="replace").splitlines():
    print(line.replace("^C", "").replace("^\\", "").strip())
print("EXIT", status)
"#;

/// What the child counted, from the driver's output: (INT, QUIT).
async fn counts(how: &str, args: &[&str]) -> (u32, u32) {
    let out = bounded(
        &format!("pty driver {how} {args:?}"),
        Command::new("python3")
            .args(["-c", DRIVER, BROOD, how])
            .args(args)
            .stdin(Stdio::ignore())
            .output(),
    )
    .await
    .unwrap();
    let stdout = text(&out.stdout);
    assert!(
        out.exit.success(),
        "driver failed: {}\n{stdout}\n{}",
        out.exit,
        text(&out.stderr)
    );
    assert!(stdout.contains("EXIT 0"), "brood did not exit 0:\n{stdout}");
    let done = stdout
        .lines()
        .find_map(|l| l.split_once("DONE ").map(|(_, d)| d))
        .unwrap_or_else(|| panic!("no DONE line:\n{stdout}"));
    let field = |k: &str| -> u32 {
        done.split_whitespace()
            .find_map(|f| f.strip_prefix(k))
            .unwrap()
            .parse()
            .unwrap()
    };
    (field("INT="), field("QUIT="))
}

const PROGRAM: [&str; 3] = ["python3", "-c", CHILD];

fn with(flags: &[&'static str]) -> Vec<&'static str> {
    [flags, &["--"], &PROGRAM[..]].concat()
}

#[tokio::test]
async fn ctrl_c_reaches_a_child_in_the_foreground_group_once() {
    assert_eq!(counts("key:3", &with(&[])).await, (1, 0));
}

#[tokio::test]
async fn ctrl_backslash_reaches_a_child_in_the_foreground_group_once() {
    assert_eq!(counts("key:28", &with(&[])).await, (0, 1));
}

#[tokio::test]
async fn ctrl_c_reaches_a_timeout_foreground_child_once() {
    let args = with(&["--timeout", "1h", "--foreground"]);
    assert_eq!(counts("key:3", &args).await, (1, 0));
}

#[tokio::test]
async fn ctrl_c_reaches_an_init_child_once() {
    assert_eq!(counts("key:3", &with(&["--init"])).await, (1, 0));
}

/// Under `--timeout` the child has a group of its own, which the terminal does not signal:
/// brood's copy is the only one, and it is passed on.
#[tokio::test]
async fn ctrl_c_is_passed_on_to_a_child_in_its_own_group() {
    let args = with(&["--timeout", "1h"]);
    assert_eq!(counts("key:3", &args).await, (1, 0));
    let args = with(&["--init", "--group"]);
    assert_eq!(counts("key:3", &args).await, (1, 0));
}

/// A SIGINT a process sends to brood (not the terminal) is passed on, even to a child in the
/// foreground group.
#[tokio::test]
async fn a_sigint_sent_to_brood_is_passed_on() {
    assert_eq!(counts("kill:INT", &with(&[])).await, (1, 0));
    assert_eq!(counts("kill:INT", &with(&["--init"])).await, (1, 0));
}
