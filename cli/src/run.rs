//! `brood run`: spawn one program with every option of `brood::Command`, wait, and exit as a
//! shell would.

use std::time::Duration;

use brood::signal::Signal;
use brood::{Command, Signum, Stdio};
use clap::Args;

/// Exit code when brood itself fails (bad option, bad cwd, no permission), as env(1).
const EXIT_BROOD: i32 = 125;
/// Exit code when the program was found but could not be run, as a shell.
const EXIT_CANNOT_EXEC: i32 = 126;
/// Exit code when the program was not found, as a shell.
const EXIT_NOT_FOUND: i32 = 127;
/// Exit code when `--timeout` ended the program, as timeout(1).
const EXIT_TIMEOUT: i32 = 124;

/// Run PROGRAM with every libuv spawn option, wait for it, and exit as a shell would.
///
/// The exit code is the program's own status, or 128+N when signal N killed it; 127 when
/// the program is not found, 126 when it cannot be executed, 124 when --timeout ended it,
/// 125 when brood itself fails (a bad --cwd, no permission for --uid, a bad value), and 2
/// for a usage error. SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to brood are
/// passed on to the child.
///
/// Examples:
///   brood run -- ls -l
///   brood run --cwd /tmp --clear-env --env PATH=/bin -- sh -c 'pwd; env'
///   brood run --stdio 1=ignore --stdio 3=fd:2 -- sh -c 'echo to-stderr >&3'
///   brood run --timeout 2 --json -- sleep 10
///   brood run --detach -- sleep 100
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct RunArgs {
    /// Working directory of the child.
    #[arg(long, value_name = "DIR")]
    cwd: Option<std::path::PathBuf>,
    /// Set a variable in the child's environment (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Start from an empty environment (then only --env variables are set).
    #[arg(long)]
    clear_env: bool,
    /// Run the child as this user id (needs privilege).
    #[arg(long, value_name = "N")]
    uid: Option<u32>,
    /// Run the child with this group id; supplementary groups are dropped.
    #[arg(long, value_name = "N")]
    gid: Option<u32>,
    /// argv[0] for the child (default: PROGRAM as given).
    #[arg(long, value_name = "NAME")]
    arg0: Option<String>,
    /// Start the child in a new session, print its pid and return at once.
    #[arg(long)]
    detach: bool,
    /// Wire child fd N: `ignore` (/dev/null for 0-2, closed above), `inherit` (brood's fd N),
    /// or `fd:M` (brood's fd M). Repeatable; 0-2 are inherited unless set.
    #[arg(long = "stdio", value_name = "N=SPEC", value_parser = parse_stdio)]
    stdio: Vec<(i32, StdioSpec)>,
    /// Send SIGTERM after SECS seconds, then SIGKILL after --kill-after more.
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Grace period between the --timeout SIGTERM and SIGKILL.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    kill_after: f64,
    /// Print one JSON line when the child ends: {"pid":..,"exit_status":..,"term_signal":..}.
    #[arg(long)]
    json: bool,
    /// The program (searched in PATH when it has no slash) and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        value_name = "PROGRAM [ARGS]"
    )]
    program: Vec<std::ffi::OsString>,
}

#[derive(Clone, Copy, Debug)]
enum StdioSpec {
    Ignore,
    Inherit,
    Fd(i32),
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected K=V, got {s:?}")),
    }
}

fn parse_stdio(s: &str) -> Result<(i32, StdioSpec), String> {
    let (n, spec) = s
        .split_once('=')
        .ok_or_else(|| format!("expected N=SPEC, got {s:?}"))?;
    let n: i32 = n
        .parse()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| format!("fd number {n:?} is not a number 0 or above"))?;
    let spec = match spec {
        "ignore" => StdioSpec::Ignore,
        "inherit" => StdioSpec::Inherit,
        _ => match spec.strip_prefix("fd:").and_then(|m| m.parse::<i32>().ok()) {
            Some(m) if m >= 0 => StdioSpec::Fd(m),
            _ => {
                return Err(format!(
                    "stdio spec {spec:?} is not `ignore`, `inherit` or `fd:M`"
                ));
            }
        },
    };
    Ok((n, spec))
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
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

/// Waits for the child (at most `limit`), passing forwarded signals on; `None` on timeout.
async fn wait_for(
    child: &mut brood::Child,
    fwd: &mut tokio::sync::mpsc::UnboundedReceiver<Signum>,
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
            Some(sig) = fwd.recv() => {
                let _ = child.kill(sig);
            }
            _ = &mut deadline => return None,
        }
    }
}

pub fn main(args: RunArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("brood run: cannot start the runtime: {e}");
            return EXIT_BROOD;
        }
    };
    rt.block_on(run(args))
}

fn build(args: &RunArgs) -> Command {
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
    if let Some(uid) = args.uid {
        cmd.uid(uid);
    }
    if let Some(gid) = args.gid {
        cmd.gid(gid);
    }
    if let Some(arg0) = &args.arg0 {
        cmd.arg0(arg0);
    }
    for (n, spec) in &args.stdio {
        let stdio = match spec {
            StdioSpec::Ignore => Stdio::ignore(),
            StdioSpec::Inherit => Stdio::inherit(),
            StdioSpec::Fd(m) => Stdio::inherit_fd(*m),
        };
        cmd.stdio(*n, stdio);
    }
    cmd.detached(args.detach);
    cmd
}

async fn run(args: RunArgs) -> i32 {
    // Checked before the spawn; try_from_secs_f64 refuses negative, NaN and values too big
    // for a Duration (from_secs_f64 would panic on them).
    let limits = match args.timeout {
        None => None,
        Some(t) => match (
            Duration::try_from_secs_f64(t),
            Duration::try_from_secs_f64(args.kill_after),
        ) {
            (Ok(t), Ok(grace)) => Some((t, grace)),
            _ => {
                eprintln!(
                    "brood run: --timeout and --kill-after take seconds, 0 or more (and not absurdly many)"
                );
                return EXIT_BROOD;
            }
        },
    };
    // Signals sent to brood (by a supervisor, or kill) go on to the child, as timeout(1)
    // and init shims do; the watchers end with the wait, putting the defaults back. They are
    // set up before the spawn, so a signal that comes right after it is not lost.
    let (fwd_tx, mut fwd) = tokio::sync::mpsc::unbounded_channel();
    let mut forwarders = tokio::task::JoinSet::new();
    for sig in FORWARDED {
        if let Ok(mut watcher) = Signal::new(sig) {
            let tx = fwd_tx.clone();
            forwarders.spawn(async move {
                while let Some(s) = watcher.recv().await {
                    if tx.send(s).is_err() {
                        return;
                    }
                }
            });
        }
    }
    let mut child = match build(&args).spawn() {
        Ok(child) => child,
        Err(e) => {
            if args.json {
                println!(
                    "{{\"error\":{},\"message\":{}}}",
                    json_string(e.name()),
                    json_string(&e.to_string())
                );
            }
            eprintln!("brood run: {e}");
            let not_exec = e.detail().is_none() || e.detail() == Some("");
            return match e.errno() {
                libc::ENOENT | libc::ENOTDIR if not_exec => EXIT_NOT_FOUND,
                libc::EACCES | libc::ENOEXEC | libc::EISDIR | libc::ELOOP | libc::E2BIG
                    if not_exec =>
                {
                    EXIT_CANNOT_EXEC
                }
                _ => EXIT_BROOD,
            };
        }
    };
    let pid = child.id().expect("a child not waited for has its pid");
    if args.detach {
        if args.json {
            println!("{{\"pid\":{pid}}}");
        } else {
            println!("{pid}");
        }
        return 0;
    }

    let mut timed_out = false;
    let exit = match wait_for(&mut child, &mut fwd, limits.map(|(t, _)| t)).await {
        Some(r) => r,
        None => {
            timed_out = true;
            let _ = child.kill(Signum::TERM);
            let grace = limits.map(|(_, g)| g);
            match wait_for(&mut child, &mut fwd, grace).await {
                Some(r) => r,
                None => {
                    let _ = child.kill(Signum::KILL);
                    child.wait().await
                }
            }
        }
    };
    forwarders.abort_all();
    let exit = match exit {
        Ok(exit) => exit,
        Err(e) => {
            eprintln!("brood run: {e}");
            return EXIT_BROOD;
        }
    };
    if args.json {
        let extra = if timed_out { ",\"timed_out\":true" } else { "" };
        println!(
            "{{\"pid\":{pid},\"exit_status\":{},\"term_signal\":{}{extra}}}",
            exit.status, exit.signal
        );
    }
    if timed_out {
        EXIT_TIMEOUT
    } else {
        exit.shell_code()
    }
}
