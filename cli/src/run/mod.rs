//! `brood run`: spawn one program with every option of `brood::Command`, wait, and exit as a
//! shell would. A drop-in for what `timeout`, `env`, `setpriv`/`runuser` and `nohup` do.
//!
//! `parse.rs` reads the values (pure), `fds.rs` takes the caller's fds first thing,
//! `ids.rs` looks users and groups up, `out.rs` writes brood's own lines, `tty.rs` reads the
//! terminal's signals with their origin, and this file wires them: setup, spawn, wait with a
//! timeout, exit code.

mod fds;
mod ids;
mod init;
mod out;
mod parse;
mod tty;

use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use brood::signal::Signal;
use brood::{Command, Signum, Stdio};
use clap::Args;

use out::{JsonTo, Out, json_string};
use parse::{FileMode, Id, StdioSpec};

/// Exit code when brood itself fails (bad option, bad cwd, no permission), as env(1).
pub const EXIT_BROOD: i32 = 125;
/// Exit code when the program was found but could not be run, as a shell.
const EXIT_CANNOT_EXEC: i32 = 126;
/// Exit code when the program was not found, as a shell.
const EXIT_NOT_FOUND: i32 = 127;
/// Exit code when `--timeout` ended the program, as timeout(1).
const EXIT_TIMEOUT: i32 = 124;
/// `--kill-after` when not given.
const DEFAULT_KILL_AFTER: Duration = Duration::from_secs(5);

/// One example for every option (the CLI test checks that none is missing).
const EXAMPLES: &str = "\
Examples (one for every option):
  brood run -- ls -l
  brood run --cwd /tmp -- pwd
  brood run --clear-env --env PATH=/usr/bin:/bin --env LANG=C -- env      # env -i
  brood run --arg0 my-shell -- sh -c 'echo $0'
  brood run --user nobody -- id            # runuser -u nobody, setpriv --init-groups
  brood run --uid nobody --gid nogroup -- id   # --uid alone keeps brood's gid
  brood run --timeout 1.5 -- sleep 10      # timeout 1.5 sleep 10: exit 124
  brood run --timeout 2m --kill-signal INT --kill-after 10s -- make test
  brood run --timeout 1h --foreground -- vi notes.txt   # timeout --foreground
  brood run --json -- echo '{\"a\":1}' | jq .a   # the JSON line goes to stderr
  brood run --json-fd 3 -- make 3>status.json
  brood run --json-file status.json -- make
  brood run --stdio 1=append:out.log --stdio 2=append:out.log --stdio 0=null -- make
  brood run --stdio 0=file:/etc/hosts -- sort   # sort </etc/hosts (file: reads at 0 only)
  brood run --stdio 3=fd:1 -- sh -c 'echo to-brood-stdout >&3'   # fd:M is brood's fd M
  brood run --detach -- sleep 100          # nohup sleep 100 </dev/null >/dev/null 2>&1 &
  brood run --init -- nginx -g 'daemon off;'   # tini: PID 1 of a container
  brood run --init --group -- sh -c 'worker & worker & wait'   # tini -g
  brood run --init --kill-others --grace 10s -- ./start-all.sh
";

/// Run PROGRAM with every libuv spawn option, wait for it, and exit as a shell would.
///
/// Exit code: the program's own status, or 128+N when signal N killed it; 127 when the
/// program is not found, 126 when it cannot be executed, 124 when --timeout ended it, 125
/// when brood itself fails (a usage error, a bad --cwd, no permission for --uid, an fd that
/// was not open). SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to brood are
/// passed on to the child (to its process group with --timeout), but not a Ctrl-C or
/// Ctrl-\ the child got from the terminal itself. With --init brood acts as an init (tini):
/// it reaps orphans and passes on every catchable signal.
#[derive(Args, Debug)]
#[command(verbatim_doc_comment, after_help = EXAMPLES)]
pub struct RunArgs {
    /// Working directory of the child.
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Set a variable in the child's environment, repeatable.
    #[arg(long = "env", value_name = "K=V", value_parser = parse::env)]
    env: Vec<(String, String)>,
    /// Start from an empty environment: only --env variables are set (env -i).
    #[arg(long)]
    clear_env: bool,
    /// Run as this user, by name or number: its uid, its primary gid and its supplementary
    /// groups from the group database, as runuser and setpriv --init-groups.
    #[arg(long, value_name = "NAME", value_parser = parse::id, conflicts_with = "uid")]
    user: Option<Id>,
    /// Run as this user id, by name or number; the group id stays brood's unless --gid is
    /// given, and supplementary groups are dropped.
    #[arg(long, value_name = "USER", value_parser = parse::id)]
    uid: Option<Id>,
    /// Run with this group id, by name or number; supplementary groups are dropped unless
    /// --user.
    #[arg(long, value_name = "GROUP", value_parser = parse::id)]
    gid: Option<Id>,
    /// argv[0] for the child; default: PROGRAM as given.
    #[arg(long, value_name = "NAME")]
    arg0: Option<String>,
    /// Start the child in a new session with /dev/null at 0-2 (unless --stdio), print its
    /// pid and return at once, as nohup ... &.
    #[arg(long)]
    detach: bool,
    /// Wire child fd N, repeatable: ignore (/dev/null at 0-2, closed above), null
    /// (/dev/null), inherit (brood's fd N), fd:M (brood's fd M), file:PATH (read at 0,
    /// else written without truncating), truncate:PATH (>), append:PATH (>>). Unset 0-2
    /// are inherited (one closed for brood is closed for the child).
    #[arg(long = "stdio", value_name = "N=SPEC", value_parser = parse::stdio)]
    stdio: Vec<(i32, StdioSpec)>,
    /// Send --kill-signal to the child's process group after DURATION: seconds (1.5) or
    /// 300ms, 2s, 1m, 1h, 1d; 0 means no timeout (below 1ns is 1ns). The child runs in a process group of
    /// its own, so it is not the terminal's foreground job (see --foreground).
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    timeout: Option<Duration>,
    /// The signal --timeout sends, by name or number; default TERM.
    #[arg(long, value_name = "SIG", value_parser = parse::signal, requires = "timeout")]
    kill_signal: Option<Signum>,
    /// SIGKILL the group this long after --timeout's signal if the child still runs;
    /// default 5s, 0 never.
    #[arg(long, value_name = "DURATION", value_parser = parse::duration, requires = "timeout")]
    kill_after: Option<Duration>,
    /// With --timeout, keep the child in brood's process group, so it may read the terminal
    /// and gets its signals; then only the child itself is signalled, not its children,
    /// as timeout --foreground.
    #[arg(long, requires = "timeout")]
    foreground: bool,
    /// Write one JSON line when the child ends, {"pid":..,"exit_status":..,"term_signal":..},
    /// to stderr.
    #[arg(long)]
    json: bool,
    /// Write the --json line to this fd of brood's instead.
    #[arg(long, value_name = "N", value_parser = parse::fd, conflicts_with = "json_file")]
    json_fd: Option<i32>,
    /// Write the --json line to this file instead, created or emptied first
    ///.
    #[arg(long, value_name = "PATH")]
    json_file: Option<PathBuf>,
    #[command(flatten)]
    init: init::InitArgs,
    /// The program (searched in PATH when it has no slash) and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        value_name = "PROGRAM [ARGS]"
    )]
    program: Vec<std::ffi::OsString>,
}

/// Signals passed on to the child while brood waits for it.
const FORWARDED: [Signum; 6] = [
    Signum::TERM,
    Signum::INT,
    Signum::HUP,
    Signum::QUIT,
    Signum::USR1,
    Signum::USR2,
];

/// The timeout settings, once checked.
#[derive(Clone, Copy)]
struct Timeout {
    after: Duration,
    signal: Signum,
    /// `None`: never escalate.
    kill_after: Option<Duration>,
    /// Signal the child's process group (not `--foreground`).
    group: bool,
}

/// Everything made before the spawn: the caller's fds, the JSON sink, files, credentials.
struct Setup {
    stdio: Vec<(i32, Stdio)>,
    creds: ids::Credentials,
    timeout: Option<Timeout>,
    /// The signals passed on to the child (the terminal's among them are blocked).
    signals: Vec<Signum>,
}

/// The signals brood passes on: none when detached; with `--init` every catchable one;
/// else [`FORWARDED`] but those brood was started with ignored (`nohup`, `trap '' HUP`):
/// watching one would make the child start with the default action instead.
fn forwarded(args: &RunArgs) -> Vec<Signum> {
    if args.detach {
        Vec::new()
    } else if args.init.init {
        init::forwarded()
    } else {
        FORWARDED
            .into_iter()
            .filter(|&s| !brood::signal::is_ignored(s))
            .collect()
    }
}

/// Watches `signals` to pass them on: the terminal's among them (blocked by `main`) on a
/// signalfd, with their origin; the others with brood's watchers. Set up before the spawn,
/// so a signal that comes right after it is not lost.
fn watch(
    signals: &[Signum],
) -> Result<
    (
        tokio::task::JoinSet<()>,
        tokio::sync::mpsc::UnboundedReceiver<tty::Received>,
    ),
    brood::Error,
> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    let (from_tty, others): (Vec<Signum>, Vec<Signum>) =
        signals.iter().partition(|&&s| tty::is_tty_signal(s));
    if !from_tty.is_empty() {
        tty::read_into(&from_tty, tx.clone())?;
    }
    for sig in others {
        let mut watcher = Signal::new(sig)?;
        let tx = tx.clone();
        tasks.spawn(async move {
            while let Some(signal) = watcher.recv().await {
                let r = tty::Received {
                    signal,
                    from_kernel: false,
                };
                if tx.send(r).is_err() {
                    return;
                }
            }
        });
    }
    Ok((tasks, rx))
}

pub fn main(args: RunArgs) -> i32 {
    // Usage that parses but makes no sense: before anything is opened.
    if let Some(flag) = detach_conflict(&args) {
        Out::new(None).error(format_args!(
            "--detach returns as soon as the child has started, so nobody would be left to \
             enforce {flag}; put the limit inside: \
             brood run --detach -- brood run --timeout 10s -- PROGRAM"
        ));
        return EXIT_BROOD;
    }
    // The terminal's signals are blocked while brood has a single thread (see `tty.rs`).
    let signals = forwarded(&args);
    let from_tty: Vec<Signum> = signals
        .iter()
        .copied()
        .filter(|&s| tty::is_tty_signal(s))
        .collect();
    if let Err(e) = tty::block(&from_tty) {
        Out::new(None).error(e);
        return EXIT_BROOD;
    }
    // The caller's fds are taken first, before brood opens any of its own.
    let inherited = take_inherited(&args);
    let mut out = match json_sink(&args, inherited.json) {
        Ok(json) => Out::new(json),
        Err(e) => {
            Out::new(None).error(e);
            return EXIT_BROOD;
        }
    };
    let setup = match setup(&args, inherited.stdio, signals) {
        Ok(s) => s,
        Err(e) => return fail(&mut out, &e),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            out.error(format_args!("cannot start the runtime: {e}"));
            return EXIT_BROOD;
        }
    };
    rt.block_on(run(&args, setup, &mut out))
}

/// The first timeout option given with `--detach`, which has no one left to enforce it.
fn detach_conflict(args: &RunArgs) -> Option<&'static str> {
    if !args.detach {
        return None;
    }
    [
        ("--timeout", args.timeout.is_some()),
        ("--kill-after", args.kill_after.is_some()),
        ("--kill-signal", args.kill_signal.is_some()),
        ("--foreground", args.foreground),
    ]
    .into_iter()
    .find_map(|(flag, given)| given.then_some(flag))
}

/// brood's own failure: the JSON line (if asked for), the message, exit code 125.
fn fail(out: &mut Out, e: &brood::Error) -> i32 {
    error_json(out, e);
    out.error(e);
    EXIT_BROOD
}

fn error_json(out: &mut Out, e: &brood::Error) {
    if out.wants_json() {
        out.json(&format!(
            "{{\"error\":{},\"message\":{}}}",
            json_string(e.name()),
            json_string(&e.to_string())
        ));
    }
}

/// A duplicate of one of the caller's fds, or the errno.
type Taken = Result<OwnedFd, i32>;

struct Inherited {
    /// One per `--stdio`, in order: for `inherit` and `fd:M`, the fd taken.
    stdio: Vec<Option<Taken>>,
    json: Option<Taken>,
}

/// Duplicates every fd the command line names.
fn take_inherited(args: &RunArgs) -> Inherited {
    let stdio = args
        .stdio
        .iter()
        .map(|(slot, spec)| match spec {
            StdioSpec::Inherit => Some(fds::dup_inherited(*slot)),
            StdioSpec::Fd(m) => Some(fds::dup_inherited(*m)),
            _ => None,
        })
        .collect();
    Inherited {
        stdio,
        json: args.json_fd.map(fds::dup_inherited),
    }
}

fn json_sink(args: &RunArgs, fd: Option<Taken>) -> Result<Option<JsonTo>, brood::Error> {
    if let (Some(n), Some(fd)) = (args.json_fd, fd) {
        let what = format!("--json-fd {n}");
        return match fd {
            Ok(fd) => Ok(Some(JsonTo::File(File::from(fd), format!("fd {n}")))),
            Err(errno) => Err(brood::Error::new(errno, what).with_detail(not_open(n, errno))),
        };
    }
    if let Some(path) = &args.json_file {
        return match File::create(path) {
            Ok(f) => Ok(Some(JsonTo::File(f, format!("{}", path.display())))),
            Err(e) => Err(brood::Error::new(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("--json-file {:?}", path.display().to_string()),
            )),
        };
    }
    Ok(args.json.then_some(JsonTo::Stderr))
}

/// Why the caller's fd `fd` could not be taken.
fn not_open(fd: i32, errno: i32) -> String {
    match errno {
        libc::EBADF => format!("fd {fd} was not open when brood started"),
        _ => format!("duplicating fd {fd}"),
    }
}

/// The `spawn "name"` text brood's spawn errors start with.
fn spawn_op(args: &RunArgs) -> String {
    format!("spawn {:?}", args.program[0].to_string_lossy())
}

fn setup(
    args: &RunArgs,
    inherited: Vec<Option<Taken>>,
    signals: Vec<Signum>,
) -> Result<Setup, brood::Error> {
    let op = spawn_op(args);
    let mut stdio = Vec::with_capacity(args.stdio.len() + 3);
    for ((slot, spec), taken) in args.stdio.iter().zip(inherited) {
        let slot = *slot;
        let s = match (spec, taken) {
            (StdioSpec::Ignore, _) => Stdio::ignore(),
            (StdioSpec::Null, _) if slot <= 2 => Stdio::ignore(),
            (StdioSpec::Null, _) => {
                Stdio::from(open(slot, "/dev/null".as_ref(), FileMode::Open, &op)?)
            }
            (StdioSpec::File(path, mode), _) => Stdio::from(open(slot, path, *mode, &op)?),
            (StdioSpec::Inherit | StdioSpec::Fd(_), Some(Ok(fd))) => Stdio::from(fd),
            (StdioSpec::Inherit | StdioSpec::Fd(_), taken) => {
                let errno = taken.and_then(Result::err).unwrap_or(libc::EBADF);
                let from = if let StdioSpec::Fd(m) = spec {
                    *m
                } else {
                    slot
                };
                return Err(brood::Error::new(errno, op)
                    .with_detail(format!("stdio slot {slot}: {}", not_open(from, errno))));
            }
        };
        stdio.push((slot, s));
    }
    for fd in 0..3 {
        if args.stdio.iter().any(|(slot, _)| *slot == fd) {
            continue;
        }
        if args.detach {
            // A detached child gets /dev/null where it was given nothing: it must not hold
            // the caller's terminal or a `$(...)` pipe open while it runs on.
            stdio.push((fd, Stdio::ignore()));
        } else if fds::closed_at_start(fd) {
            // Closed for brood's caller, closed for the child (as env and timeout), not
            // the /dev/null Rust's runtime put there for brood.
            stdio.push((fd, Stdio::closed()));
        }
    }
    let creds = ids::resolve(args.user.as_ref(), args.uid.as_ref(), args.gid.as_ref())
        .map_err(|e| brood::Error::invalid(op.clone(), e))?;
    let timeout = args.timeout.filter(|t| !t.is_zero()).map(|after| Timeout {
        after,
        signal: args.kill_signal.unwrap_or(Signum::TERM),
        kill_after: Some(args.kill_after.unwrap_or(DEFAULT_KILL_AFTER)).filter(|k| !k.is_zero()),
        group: !args.foreground,
    });
    Ok(Setup {
        stdio,
        creds,
        timeout,
        signals,
    })
}

/// Opens a `--stdio` file: read-only at slot 0, written elsewhere.
fn open(slot: i32, path: &std::path::Path, mode: FileMode, op: &str) -> Result<File, brood::Error> {
    let mut o = OpenOptions::new();
    match (slot, mode) {
        (0, _) => o.read(true),
        (_, FileMode::Open) => o.write(true).create(true),
        (_, FileMode::Truncate) => o.write(true).create(true).truncate(true),
        (_, FileMode::Append) => o.append(true).create(true),
    };
    o.open(path).map_err(|e| {
        brood::Error::new(e.raw_os_error().unwrap_or(libc::EIO), op).with_detail(format!(
            "stdio slot {slot}: open {:?}",
            path.display().to_string()
        ))
    })
}

fn build(args: &RunArgs, setup: Setup) -> Command {
    let mut cmd = Command::new(&args.program[0]);
    cmd.args(&args.program[1..]);
    if args.clear_env {
        cmd.env_clear();
    }
    for (k, v) in &args.env {
        cmd.env(k, v);
    }
    if let Some(dir) = &args.cwd {
        cmd.current_dir(dir);
    }
    if let Some(groups) = setup.creds.groups {
        cmd.groups(groups);
    }
    if let Some(gid) = setup.creds.gid {
        cmd.gid(gid);
    }
    if let Some(uid) = setup.creds.uid {
        cmd.uid(uid);
    }
    if let Some(arg0) = &args.arg0 {
        cmd.arg0(arg0);
    }
    for (n, stdio) in setup.stdio {
        cmd.stdio(n, stdio);
    }
    if setup.timeout.is_some_and(|t| t.group) {
        cmd.process_group(0);
    }
    cmd.detached(args.detach);
    cmd
}

/// A spawn that failed: the message, and 127 (not found), 126 (cannot execute) or 125.
fn spawn_failed(out: &mut Out, e: &brood::Error) -> i32 {
    error_json(out, e);
    out.error(e);
    let not_exec = e.detail().is_none() || e.detail() == Some("");
    match e.errno() {
        libc::ENOENT | libc::ENOTDIR if not_exec => EXIT_NOT_FOUND,
        libc::EACCES | libc::ENOEXEC | libc::EISDIR | libc::ELOOP | libc::E2BIG if not_exec => {
            EXIT_CANNOT_EXEC
        }
        _ => EXIT_BROOD,
    }
}

/// Who brood signals: the child, or (with `--timeout`) its whole process group.
struct Target {
    pid: i32,
    group: bool,
}

impl Target {
    /// Only called while the child is not reaped, so its pid (and group id) is still its
    /// own.
    fn send(&self, child: &mut brood::Child, sig: Signum) {
        let _ = match self.group {
            true => brood::kill(-self.pid, sig),
            false => child.kill(sig),
        };
    }
}

/// Waits for the child (at most `limit`), passing forwarded signals on (but not one the
/// child got from the terminal itself); `None` on timeout.
async fn wait_for(
    child: &mut brood::Child,
    target: &Target,
    fwd: &mut tokio::sync::mpsc::UnboundedReceiver<tty::Received>,
    limit: Option<Duration>,
) -> Option<brood::Result<brood::Exit>> {
    let deadline = async {
        match limit {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = child.wait() => return Some(r),
            Some(r) = fwd.recv() => {
                if !tty::child_got_it(r, target.pid) {
                    target.send(child, r.signal);
                }
            }
            _ = &mut deadline => return None,
        }
    }
}

async fn run(args: &RunArgs, setup: Setup, out: &mut Out) -> i32 {
    if args.init.init {
        return init::run(args, setup, out).await;
    }
    let timeout = setup.timeout;
    // Signals sent to brood (by a supervisor, or kill) go on to the child, as timeout(1)
    // and init shims do; the watchers end with the wait, putting the defaults back.
    let (mut forwarders, mut fwd) = match watch(&setup.signals) {
        Ok(w) => w,
        Err(e) => return fail(out, &e),
    };
    let mut child = match build(args, setup).spawn() {
        Ok(child) => child,
        Err(e) => return spawn_failed(out, &e),
    };
    let pid = child.id().expect("a child not waited for has its pid");
    if args.detach {
        out.stdout(&pid.to_string());
        out.json(&format!("{{\"pid\":{pid},\"detached\":true}}"));
        return 0;
    }

    let target = Target {
        pid: pid as i32,
        group: timeout.is_some_and(|t| t.group),
    };
    let mut timed_out = false;
    let exit = match (
        wait_for(&mut child, &target, &mut fwd, timeout.map(|t| t.after)).await,
        timeout,
    ) {
        (Some(r), _) => r,
        // (Without a timeout there is no deadline to pass.)
        (None, None) => child.wait().await,
        (None, Some(t)) => {
            timed_out = true;
            target.send(&mut child, t.signal);
            // A stopped process would not act on the signal until continued (timeout(1)
            // does the same).
            if t.signal != Signum::KILL && t.signal != Signum::CONT {
                target.send(&mut child, Signum::CONT);
            }
            match wait_for(&mut child, &target, &mut fwd, t.kill_after).await {
                Some(r) => r,
                None => {
                    target.send(&mut child, Signum::KILL);
                    child.wait().await
                }
            }
        }
    };
    forwarders.abort_all();
    let exit = match exit {
        Ok(exit) => exit,
        Err(e) => return fail(out, &e),
    };
    let extra = if timed_out { ",\"timed_out\":true" } else { "" };
    out.json(&format!(
        "{{\"pid\":{pid},\"exit_status\":{},\"term_signal\":{}{extra}}}",
        exit.status, exit.signal
    ));
    if timed_out {
        EXIT_TIMEOUT
    } else {
        exit.shell_code()
    }
}
