//! `brood run --init`: an init for containers and supervisors, as `tini` and `dumb-init`.
//!
//! brood becomes a child subreaper, spawns the child, and then, until the child ends:
//! reaps every orphan that lands on it by pid ([`brood::init::reap_orphans`], skipping the
//! child, whose pidfd `Child::wait` watches), and forwards every catchable signal to the
//! child (or its process group with `--group`). Then, with `--kill-others`, it ends every
//! descendant still alive (TERM, then KILL after `--grace`), and exits with the child's
//! shell-style code.

use std::time::Duration;

use brood::signal::Signal;
use brood::{Signum, init};
use clap::Args;
use tokio::time::Instant;

use super::out::Out;
use super::{RunArgs, Setup, parse, tty};

/// `--grace` when not given.
const DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// How long the SIGKILL phase of `--kill-others` waits for descendants to go (processes
/// in uninterruptible sleep can outlast SIGKILL) before brood gives up on them and exits.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// The `--init` options (flattened into `brood run`'s).
#[derive(Args, Debug)]
pub struct InitArgs {
    /// Act as an init (tini, docker run --init), e.g. as PID 1 of a container: become a
    /// child subreaper and reap every orphan, forward every catchable signal to the child,
    /// exit with the child's code.
    #[arg(long, conflicts_with_all = ["detach", "timeout"])]
    pub init: bool,
    /// With --init, run the child in a process group of its own and forward signals to
    /// the whole group, as tini -g.
    #[arg(long, requires = "init")]
    group: bool,
    /// With --init, when the child ends, send SIGTERM to every descendant still alive,
    /// then SIGKILL after --grace.
    #[arg(long, requires = "init")]
    kill_others: bool,
    /// The time --kill-others leaves between SIGTERM and SIGKILL: seconds (1.5) or 300ms,
    /// 2s, 1m; default 5s.
    #[arg(long, value_name = "DURATION", value_parser = parse::duration, requires = "kill_others")]
    grace: Option<Duration>,
}

/// The signals passed on: every catchable one but those that are about brood itself: the
/// fault signals (SEGV, BUS, ILL, FPE, and ABRT, TRAP, SYS, as tini), SIGCHLD (brood's own
/// children), SIGPIPE (brood's own writes), SIGTTIN/SIGTTOU (ignored, as tini), and the two
/// real-time signals glibc keeps for itself (32, 33).
pub(super) fn forwarded() -> Vec<Signum> {
    const NOT: [i32; 11] = [
        libc::SIGKILL,
        libc::SIGSTOP,
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGABRT,
        libc::SIGTRAP,
        libc::SIGSYS,
        libc::SIGCHLD,
        libc::SIGPIPE,
    ];
    let tty = [libc::SIGTTIN, libc::SIGTTOU];
    (1..32)
        .filter(|s| !NOT.contains(s) && !tty.contains(s))
        .chain(libc::SIGRTMIN()..=libc::SIGRTMAX())
        .map(Signum::new)
        .collect()
}

/// Who gets the forwarded signals.
struct Target {
    pid: i32,
    group: bool,
}

impl Target {
    fn send(&self, child: &mut brood::Child, sig: Signum) {
        // Errors: the child has just ended (its exit is next in the loop).
        let _ = match self.group {
            // The group id is the child's pid, and stays taken while the child is not reaped.
            true => brood::kill(-self.pid, sig),
            false => child.kill(sig),
        };
    }
}

/// What the run ended with, for the JSON line.
struct Counts {
    reaped: usize,
    killed: usize,
}

pub(super) async fn run(args: &RunArgs, setup: Setup, out: &mut Out) -> i32 {
    let opts = &args.init;
    let pid1 = std::process::id() == 1;
    // As PID 1 of a namespace orphans come here anyway; elsewhere this is what makes them.
    match init::set_child_subreaper() {
        Err(e) if !pid1 => return super::fail(out, &e),
        _ => {}
    }
    if let Err(e) = init::ignore_terminal_stops() {
        return super::fail(out, &e);
    }
    // Watchers before the spawn, so nothing that comes right after it is lost. With a
    // handler installed, SIGTERM and SIGINT reach brood even as PID 1 of a PID namespace
    // (the kernel drops the signals PID 1 leaves at their default action).
    let mut sigchld = match Signal::new(Signum::CHLD) {
        Ok(s) => s,
        Err(e) => return super::fail(out, &e),
    };
    // The terminal's signals come from a signalfd with their origin (`tty.rs`).
    let (mut forwarders, mut fwd) = match super::watch(&setup.signals) {
        Ok(w) => w,
        Err(e) => return super::fail(out, &e),
    };

    let mut cmd = super::build(args, setup);
    if opts.group {
        cmd.process_group(0);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return super::spawn_failed(out, &e),
    };
    let pid = child.id().expect("a child not waited for has its pid") as i32;
    let target = Target {
        pid,
        group: opts.group,
    };
    let mut counts = Counts {
        reaped: 0,
        killed: 0,
    };
    // Orphans brood had before (it was exec'd by a process that had children).
    counts.reaped += reap(|p| p == pid);

    let exit = loop {
        tokio::select! {
            r = child.wait() => break r,
            _ = sigchld.recv() => counts.reaped += reap(|p| p == pid),
            Some(r) = fwd.recv() => {
                // Not one the child got from the terminal itself (Ctrl-C, Ctrl-Z...).
                if !tty::child_got_it(r, pid) {
                    target.send(&mut child, r.signal);
                }
                if r.signal == Signum::TSTP && !pid1 {
                    // Stop brood too, so the shell that started it sees the job stopped and
                    // gives the terminal back (as dumb-init); SIGCONT continues both.
                    let _ = brood::kill(std::process::id() as i32, Signum::STOP);
                }
            }
        }
    };
    counts.reaped += reap(|_| false);
    if opts.kill_others {
        counts.killed = kill_others(&mut sigchld, opts.grace.unwrap_or(DEFAULT_GRACE), out).await;
    }
    forwarders.abort_all();
    let exit = match exit {
        Ok(exit) => exit,
        Err(e) => return super::fail(out, &e),
    };
    out.json(&format!(
        "{{\"pid\":{pid},\"exit_status\":{},\"term_signal\":{},\"orphans_reaped\":{},\
         \"others_killed\":{}}}",
        exit.status, exit.signal, counts.reaped, counts.killed
    ));
    exit.shell_code()
}

/// Reaps the ended children `keep` does not claim; how many.
fn reap(keep: impl Fn(i32) -> bool) -> usize {
    init::reap_orphans(keep).map_or(0, |r| r.len())
}

/// The descendants that still run (zombies are ended already: their parent reaps them, or
/// brood does once they land here).
fn living() -> Vec<i32> {
    init::descendants()
        .unwrap_or_default()
        .into_iter()
        .filter(|&p| !is_zombie(p))
        .collect()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X")
    })
}

/// `--kill-others`: SIGTERM (and SIGCONT, so a stopped one acts on it) to every living
/// descendant, SIGKILL to those left after `grace`, reaping all that land here; how many
/// were signalled.
async fn kill_others(sigchld: &mut Signal, grace: Duration, out: &mut Out) -> usize {
    let mut signalled = std::collections::HashSet::new();
    let mut round = |sig: Signum| {
        // Round after round: a process may fork while we walk the tree; its child is found
        // in the next round. SIGTERM goes once to each (a second one means "hurry" to
        // some programs), SIGKILL to all that are left.
        let left = living();
        for &p in &left {
            let first = signalled.insert(p);
            if sig == Signum::TERM && first {
                let _ = brood::kill(p, sig);
                let _ = brood::kill(p, Signum::CONT);
            } else if sig == Signum::KILL {
                let _ = brood::kill(p, sig);
            }
        }
        !left.is_empty()
    };
    for (sig, limit) in [(Signum::TERM, grace), (Signum::KILL, KILL_WAIT)] {
        let deadline = Instant::now() + limit;
        loop {
            reap(|_| false);
            if !round(sig) {
                return signalled.len();
            }
            // Woken by the next exit; the bound only re-walks the tree for a process that
            // forked meanwhile, and ends the phase.
            let next = (Instant::now() + Duration::from_millis(100)).min(deadline);
            if Instant::now() >= deadline {
                break;
            }
            let _ = tokio::time::timeout_at(next, sigchld.recv()).await;
        }
    }
    reap(|_| false);
    let left = living();
    if !left.is_empty() {
        out.error(format_args!(
            "--kill-others: {} process(es) still there after SIGKILL: {left:?}",
            left.len()
        ));
    }
    signalled.len()
}
