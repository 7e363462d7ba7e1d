//! One running script: its supervisor feeds stdin, logs stderr, enforces the timeout and
//! kills the whole process group when the script is abandoned, then reports the exit.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use crate::ChildPipe;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;

use super::{Log, LogLine};
use crate::{Child, Exit, Signum};

/// What the request side and the supervisor both see.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// The timeout fired: the group was killed and stdout cut.
    pub timed_out: AtomicBool,
    /// The status the client got (for the access log).
    pub status: AtomicU16,
    /// Body bytes sent (for the access log).
    pub bytes: AtomicU64,
}

/// The request side of a running script. Dropping it before [`finish`](Run::finish) means
/// the response was abandoned (client gone, bad headers): the process group is killed.
pub(crate) struct Run {
    pub stdout: ChildPipe,
    pub shared: Arc<Shared>,
    end: oneshot::Sender<()>,
    /// Closed when the supervisor is done (the script has ended, its slot is free).
    over: oneshot::Receiver<()>,
}

impl Run {
    /// The script's output was used to the end (or is not wanted, as for `HEAD`): let it
    /// finish on its own.
    pub(crate) fn finish(self) {
        let _ = self.end.send(());
    }

    /// [`finish`](Run::finish), then waits until the script has ended and released its
    /// `max_children` slot (bounded by the timeout, which kills it): a local redirect runs
    /// the next script in the same slot, so it never gets 503 from its own first half.
    pub(crate) async fn finish_and_wait(self) {
        let Run {
            stdout, end, over, ..
        } = self;
        // Unread output is thrown away: a script still writing gets EPIPE, not a full pipe.
        drop(stdout);
        let _ = end.send(());
        let _ = over.await;
    }
}

/// Kills a process group when dropped armed: a supervisor that is aborted (server shut
/// down) leaves nothing running.
pub(crate) struct GroupKill {
    pgid: i32,
    armed: bool,
}

impl GroupKill {
    pub(crate) fn new(pgid: i32) -> GroupKill {
        GroupKill { pgid, armed: true }
    }

    /// The group ended normally: leave alone whatever it left running.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }

    pub(crate) fn kill(&mut self) {
        if self.armed {
            let _ = crate::kill(-self.pgid, Signum::KILL);
            self.armed = false;
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Everything the supervisor of one script needs besides the child.
pub(crate) struct Watch {
    pub body: Option<Incoming>,
    pub deadline: Option<Instant>,
    pub permit: Option<OwnedSemaphorePermit>,
    pub name: String,
    pub log: Log,
}

/// Splits a spawned child into the request side ([`Run`]) and its supervisor, a future the
/// caller spawns; `done` gets the exit (`None` if it could not be read) and whether the
/// timeout fired.
pub(crate) fn start(
    mut child: Child,
    watch: Watch,
    done: impl FnOnce(&Shared, Option<Exit>) + Send + 'static,
) -> io::Result<(Run, impl Future<Output = ()> + Send + 'static)> {
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("script has no stdout pipe"))?;
    // A second handle on our end of stdout, to cut it when the timeout fires even if a
    // grandchild outside the group still holds the write end.
    let cut = StdUnixStream::from(stdout.as_fd().try_clone_to_owned()?);
    let shared = Arc::new(Shared::default());
    let (end, end_rx) = oneshot::channel();
    let (over_tx, over) = oneshot::channel();
    let run = Run {
        stdout,
        shared: shared.clone(),
        end,
        over,
    };
    let stdin = child.stdin.take();
    let stderr = child.stderr.take();
    let fut = async move {
        supervise(child, end_rx, cut, stdin, stderr, watch, shared, done).await;
        drop(over_tx);
    };
    Ok((run, fut))
}

#[allow(clippy::too_many_arguments)]
async fn supervise(
    mut child: Child,
    mut end_rx: oneshot::Receiver<()>,
    cut: StdUnixStream,
    stdin: Option<ChildPipe>,
    stderr: Option<ChildPipe>,
    watch: Watch,
    shared: Arc<Shared>,
    done: impl FnOnce(&Shared, Option<Exit>),
) {
    let mut group = GroupKill::new(child.id().expect("a child not waited for has its pid") as i32);
    let permit = watch.permit;
    let feed = feed(stdin, watch.body);
    let errs = log_stderr(stderr, watch.name, watch.log);
    tokio::pin!(feed, errs);
    let sleep = tokio::time::sleep_until(
        watch
            .deadline
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86400 * 365)),
    );
    tokio::pin!(sleep);
    let (mut exit, mut ended, mut fed, mut errs_done) = (None, false, false, false);
    let (mut timed_out, mut grace_over) = (false, false);
    loop {
        tokio::select! {
            r = child.wait(), if exit.is_none() => exit = Some(r.ok()),
            r = &mut end_rx, if !ended => {
                ended = true;
                if r.is_err() {
                    group.kill();
                }
                // Nobody reads stdout any more: a script still writing gets EPIPE rather
                // than blocking on a full pipe held open by this handle.
                let _ = cut.shutdown(std::net::Shutdown::Both);
            }
            _ = &mut feed, if !fed => fed = true,
            _ = &mut errs, if !errs_done => errs_done = true,
            _ = &mut sleep, if watch.deadline.is_some() && !grace_over => {
                if timed_out {
                    grace_over = true;
                } else {
                    timed_out = true;
                    shared.timed_out.store(true, Ordering::SeqCst);
                    group.kill();
                    let _ = cut.shutdown(std::net::Shutdown::Both);
                    // The request side sees EOF now; give it a moment to answer (and say
                    // with what status) before the access line is written without it.
                    sleep.as_mut().reset(Instant::now() + GRACE);
                }
            }
        }
        if exit.is_some() && (ended || grace_over) {
            break;
        }
    }
    // Finished normally: whatever the script left running in its group is its own business.
    group.disarm();
    if !errs_done {
        let _ = tokio::time::timeout(Duration::from_millis(200), errs).await;
    }
    drop(permit);
    done(&shared, exit.flatten());
}

/// Copies the request body to the script's stdin, then closes it (EOF for the script). A
/// script that stops reading ends this with `EPIPE`.
async fn feed(stdin: Option<ChildPipe>, body: Option<Incoming>) {
    let (Some(mut w), Some(mut body)) = (stdin, body) else {
        return;
    };
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return };
        if let Ok(data) = frame.into_data() {
            if w.write_all(&data).await.is_err() {
                return;
            }
        }
    }
    let _ = w.shutdown().await;
}

/// How long after a timeout the response side has to finish before the log is written.
const GRACE: Duration = Duration::from_secs(1);

/// Longest stderr line logged as one; longer ones are split.
const MAX_LINE: usize = 8192;

/// Logs the script's stderr line by line, with its name.
pub(crate) async fn log_stderr(stderr: Option<ChildPipe>, name: String, log: Log) {
    let Some(mut r) = stderr else { return };
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = r.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            if !buf.is_empty() {
                emit(&log, &name, &buf);
            }
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            emit(&log, &name, &line[..i]);
        }
        if buf.len() > MAX_LINE {
            emit(&log, &name, &buf);
            buf.clear();
        }
    }
}

fn emit(log: &Log, name: &str, line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    log(&LogLine::Stderr {
        script: name.to_string(),
        line: String::from_utf8_lossy(line).into_owned(),
    });
}
