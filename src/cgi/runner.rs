//! The script runner both fronts (HTTP in `server.rs`, FastCGI in `fastcgi/`) call: spawns
//! the file that was opened and checked, with the request's environment and body, hands it
//! to its supervisor (`script.rs`), then reads and parses its header block.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::HeaderMap;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::answer::text;
use super::body::{HeadError, read_head};
use super::log::{Log, LogLine};
use super::map::{Opened, SCRIPT_FD, Target};
use super::response::{Reply, parse_cgi, parse_nph};
use super::script::{self, Run, Shared, Watch};
use super::state::State;
use super::tasks::LiveGuard;
use super::upload::Upload;
use crate::{Command, Exit, Stdio};

/// One request ready to run: its script opened, its body whole, its slot taken.
pub(crate) struct Launch {
    pub target: Target,
    pub opened: Opened,
    pub args: Vec<OsString>,
    /// The script's whole environment.
    pub env: Vec<(OsString, OsString)>,
    pub upload: Option<Upload>,
    pub permit: Option<OwnedSemaphorePermit>,
    /// Where the script's stderr lines go.
    pub log: Log,
}

/// What came of running a script.
pub(crate) enum Outcome {
    /// It could not be started (logged): answer this; no supervisor writes an access line.
    NotRun(StatusCode),
    /// It gave no usable answer (logged; the status and body size are stored for the
    /// access line its supervisor writes): answer this with [`text`].
    Failed(StatusCode),
    /// `Location: /local` alone: the script has ended and released its slot.
    LocalRedirect(String),
    /// A response: send the status and headers, then `rest` and the rest of `run.stdout`.
    Document {
        status: StatusCode,
        reason: Option<String>,
        headers: HeaderMap,
        rest: Bytes,
        run: Run,
    },
}

/// The name a script has in log lines: its `SCRIPT_NAME`, else its file.
pub(crate) fn log_name(target: &Target) -> String {
    if target.script_name.is_empty() {
        target.file.display().to_string()
    } else {
        target.script_name.to_string_lossy().into_owned()
    }
}

/// Runs the script and reads its header block. `done` gets the exit once the supervisor is
/// over (it writes the access line).
pub(crate) async fn launch(
    state: &Arc<State>,
    job: Launch,
    done: impl FnOnce(&Shared, Option<Exit>) + Send + 'static,
) -> Outcome {
    let Launch {
        target,
        opened,
        args,
        env,
        upload,
        permit,
        log,
    } = job;
    let (stdin, fed) = match &upload {
        Some(Upload::File(f, ..)) => (Stdio::inherit_fd(f.as_raw_fd()), None),
        Some(Upload::Memory(b, _)) if !b.is_empty() => (Stdio::pipe_readable(), Some(b.clone())),
        _ => (state.no_body(), None),
    };
    let mut cmd = match command(state, &target, &opened, args, env) {
        Ok(c) => c,
        Err(status) => return Outcome::NotRun(status),
    };
    cmd.stdin(stdin)
        .stdout(Stdio::pipe_writable())
        .stderr(Stdio::pipe_writable());
    let name = log_name(&target);
    // The exec has happened when spawn returns: the open script and body file may go.
    let spawned = cmd.spawn();
    drop(opened);
    // A body in memory keeps its share of the budget until the script has read it; one
    // in a file, its share of the disk until the script has ended (it reads the file).
    let (budget, disk) = match upload {
        Some(Upload::Memory(_, r)) => (Some(r), None),
        Some(Upload::File(_, _, r)) => (None, Some(r)),
        None => (None, None),
    };
    let child = match spawned {
        Ok(c) => c,
        Err(e) => return Outcome::NotRun(spawn_failed(state, &name, &e)),
    };
    let watch = Watch {
        stopping: state.stopping.subscribe(),
        live: LiveGuard::new(&state.live, &state.load),
        body: fed.map(|b| (b, budget)),
        disk,
        deadline: state.timeout.map(|t| Instant::now() + t),
        permit,
        name: name.clone(),
        log,
    };
    let (mut run, supervisor) = match script::start(child, watch, done) {
        Ok(x) => x,
        Err(e) => {
            (state.log)(&LogLine::Error(format!("{name}: {e}")));
            return Outcome::NotRun(StatusCode::INTERNAL_SERVER_ERROR);
        }
    };
    state.tasks.spawn(supervisor);

    let fail = |run: Run, status: StatusCode, why: String| {
        (state.log)(&LogLine::Error(format!("{name}: {why}")));
        run.shared.status.store(status.as_u16(), Ordering::Relaxed);
        run.shared
            .bytes
            .store(text(status).len() as u64, Ordering::Relaxed);
        drop(run);
        Outcome::Failed(status)
    };
    let (block, rest) = match read_head(&mut run.stdout, &run.shared, state.max_header).await {
        Ok(x) => x,
        Err(e) => {
            let timed_out = run.shared.timed_out.load(Ordering::SeqCst);
            let (status, why) = no_head(&e, timed_out, state.max_header);
            return fail(run, status, why);
        }
    };
    match parse_head(target.nph, &block) {
        Err(why) => fail(run, StatusCode::BAD_GATEWAY, why),
        Ok(Reply::LocalRedirect(location)) => {
            run.shared
                .status
                .store(StatusCode::FOUND.as_u16(), Ordering::Relaxed);
            run.finish_and_wait().await;
            Outcome::LocalRedirect(location)
        }
        Ok(Reply::Document {
            status,
            reason,
            headers,
        }) => {
            run.shared.status.store(status.as_u16(), Ordering::Relaxed);
            Outcome::Document {
                status,
                reason,
                headers,
                rest,
                run,
            }
        }
    }
}

/// The script's command, all but its stdio: the file that was opened and checked (by its
/// fd where it can be), its arguments and whole environment, its directory, its own
/// process group, killed if dropped. `Err`: answer this (logged).
pub(crate) fn command(
    state: &State,
    target: &Target,
    opened: &Opened,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
) -> Result<Command, StatusCode> {
    let by_fd = state.scripts_by_fd;
    if opened.interpreted && !by_fd {
        if let Err(r) = opened.recheck() {
            (state.log)(&LogLine::Error(format!("{}: {}", log_name(target), r.why)));
            return Err(r.status);
        }
    }
    let mut cmd = Command::new(opened.program(by_fd));
    if opened.interpreted && by_fd {
        cmd.stdio(SCRIPT_FD, Stdio::inherit_fd(opened.file.as_raw_fd()));
    }
    if !opened.interpreted {
        // The open file itself, so `ps` and `pkill` see the script's name.
        cmd.exec_fd(opened.file.as_raw_fd());
    }
    cmd.arg0(&opened.real)
        .args(args)
        .env_clear()
        .envs_owned(env)
        .current_dir(&target.dir)
        .process_group(0)
        .kill_on_drop(true);
    Ok(cmd)
}

/// A spawn that failed: logged; the status to answer.
pub(crate) fn spawn_failed(state: &State, name: &str, e: &crate::Error) -> StatusCode {
    (state.log)(&LogLine::Error(format!("{name}: {e}")));
    match e.errno() {
        libc::EACCES | libc::EPERM => StatusCode::FORBIDDEN,
        // The file was found: ENOENT here is a missing `#!` interpreter.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Why a script gave no header block, as the status to answer and the line to log.
pub(crate) fn no_head(e: &HeadError, timed_out: bool, max_header: usize) -> (StatusCode, String) {
    match e {
        HeadError::Eof if timed_out => (
            StatusCode::GATEWAY_TIMEOUT,
            "timed out before its headers".into(),
        ),
        HeadError::Eof => (StatusCode::BAD_GATEWAY, "ended before its headers".into()),
        HeadError::TooLarge => (
            StatusCode::BAD_GATEWAY,
            format!("header block over {max_header} bytes"),
        ),
        HeadError::Io(e) => (StatusCode::BAD_GATEWAY, format!("reading stdout: {e}")),
    }
}

/// A header block, parsed as CGI or, for an `nph-` script, NPH.
pub(crate) fn parse_head(nph: bool, block: &[u8]) -> Result<Reply, String> {
    if nph {
        parse_nph(block)
    } else {
        parse_cgi(block)
    }
    .map_err(|why| format!("bad header block: {why}"))
}
