//! One running script: its supervisor feeds stdin, logs stderr, enforces the timeout and
//! ends the process group of a script that was abandoned, then reports the exit.
//!
//! Ending a group is SIGTERM, then SIGKILL to whatever is left of it once the script has
//! exited or after [`KILL_GRACE`] (as lighttpd does). A script whose response was used to
//! the end is never signalled: it may go on working after its reply (fossil does), bounded
//! only by the timeout.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, oneshot, watch};
use tokio::time::Instant;

use super::log::{Log, LogLine};
use super::tasks::LiveGuard;
use super::upload::Reservation;
use crate::{Child, Exit, Signum};

/// The script's stdout, stdin or stderr, whatever kind of fd the spawn engine gives.
pub(crate) type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// How long a group has between SIGTERM and SIGKILL.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(2);

/// What the request side and the supervisor both see.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The timeout fired: the group was ended, and the request side stops reading.
    pub timed_out: AtomicBool,
    /// `true` once the request side must stop reading stdout (a timeout): a grandchild
    /// that left the group may still hold its write end open.
    pub cut: watch::Sender<bool>,
    /// The script's exit, once reaped (`Some(None)` if it could not be read).
    pub exit: watch::Sender<Option<Option<Exit>>>,
    /// The status the client got (for the access log; 0: none yet).
    pub status: AtomicU16,
    /// Body bytes sent (for the access log).
    pub bytes: AtomicU64,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            timed_out: AtomicBool::new(false),
            cut: watch::channel(false).0,
            exit: watch::channel(None).0,
            status: AtomicU16::new(0),
            bytes: AtomicU64::new(0),
        }
    }
}

/// The request side of a running script. Dropping it before [`finish`](Run::finish) means
/// the response was abandoned (client gone, bad headers): the process group is ended.
pub(crate) struct Run {
    pub stdout: Reader,
    pub shared: Arc<Shared>,
    end: oneshot::Sender<()>,
    /// Closed when the supervisor is done (the script has ended, its slot is free).
    over: oneshot::Receiver<()>,
}

impl Run {
    /// The script's output was used to the end (or is not wanted, as for `HEAD`): let it
    /// finish on its own. Unread output is thrown away: a script still writing gets EPIPE.
    pub(crate) fn finish(self) {
        let _ = self.end.send(());
    }

    /// Reads and throws away the rest of stdout (a `HEAD` or 304 answer sends none of it),
    /// then [`finish`](Run::finish)es: the script writes its whole output and ends on its
    /// own rather than on `SIGPIPE`. Bounded by the timeout, which cuts stdout.
    pub(crate) async fn discard_rest(mut self) {
        let mut cut = self.shared.cut.subscribe();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                r = self.stdout.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                },
                _ = cut.wait_for(|c| *c) => break,
            }
        }
        self.finish();
    }

    /// [`finish`](Run::finish), then waits until the script has ended and released its
    /// `max_children` slot (bounded by the timeout): a local redirect runs the next script
    /// in the same slot, so it never gets 503 from its own first half.
    pub(crate) async fn finish_and_wait(self) {
        let Run {
            stdout, end, over, ..
        } = self;
        drop(stdout);
        let _ = end.send(());
        let _ = over.await;
    }
}

/// Ends a process group; SIGKILLs it when dropped armed, so a supervisor that is aborted
/// (server shut down) leaves nothing running.
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

    /// Asks the group to stop (SIGTERM); it stays armed for [`kill`](GroupKill::kill).
    pub(crate) fn term(&mut self) {
        if self.armed {
            let _ = crate::kill(-self.pgid, Signum::TERM);
        }
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
    /// Becomes `true` when the server stops gracefully.
    pub stopping: watch::Receiver<bool>,
    /// Held while the supervisor runs.
    pub live: LiveGuard,
    /// The whole request body, for a stdin pipe (a body in a file is the stdin itself),
    /// with its share of the memory budget.
    pub body: Option<(Bytes, Option<Reservation>)>,
    /// The body file's share of the disk budget: held until the script has ended.
    pub disk: Option<Reservation>,
    pub deadline: Option<Instant>,
    pub permit: Option<OwnedSemaphorePermit>,
    pub name: String,
    pub log: Log,
}

/// Splits a spawned child into the request side ([`Run`]) and its supervisor, a future the
/// caller spawns; `done` gets the exit (`None` if it could not be read).
pub(crate) fn start(
    mut child: Child,
    watch: Watch,
    done: impl FnOnce(&Shared, Option<Exit>) + Send + 'static,
) -> io::Result<(Run, impl Future<Output = ()> + Send + 'static)> {
    let stdout: Reader = Box::new(
        child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("script has no stdout pipe"))?,
    );
    let shared = Arc::new(Shared::default());
    let (end, end_rx) = oneshot::channel();
    let (over_tx, over) = oneshot::channel();
    let run = Run {
        stdout,
        shared: shared.clone(),
        end,
        over,
    };
    let stdin = child.stdin.take().map(|w| Box::new(w) as Writer);
    let stderr = child.stderr.take().map(|r| Box::new(r) as Reader);
    let fut = async move {
        supervise(child, end_rx, stdin, stderr, watch, shared, done).await;
        drop(over_tx);
    };
    Ok((run, fut))
}

async fn supervise(
    mut child: Child,
    mut end_rx: oneshot::Receiver<()>,
    stdin: Option<Writer>,
    stderr: Option<Reader>,
    watch: Watch,
    shared: Arc<Shared>,
    done: impl FnOnce(&Shared, Option<Exit>),
) {
    let mut group = GroupKill::new(child.id().expect("a child not waited for has its pid") as i32);
    let permit = watch.permit;
    let disk = watch.disk;
    let _live = watch.live;
    let mut stopping = watch.stopping;
    let mut stop_seen = false;
    let feed = feed(stdin, watch.body);
    let errs = log_stderr(stderr, watch.name, watch.log);
    tokio::pin!(feed, errs);
    let far = || Instant::now() + Duration::from_secs(86400 * 365);
    let timeout = tokio::time::sleep_until(watch.deadline.unwrap_or_else(far));
    let kill = tokio::time::sleep_until(far());
    // After a timeout, how long the request side has to answer before the log is written
    // without it (a client that stops reading can hold it in hyper's write).
    let answer = tokio::time::sleep_until(far());
    tokio::pin!(timeout, kill, answer);
    let (mut exit, mut ended, mut fed, mut errs_done) = (None, false, false, false);
    // Set when the group was sent SIGTERM: it gets SIGKILL at `kill`, or when the script
    // has exited, whichever comes first.
    let mut ending = false;
    let (mut timed_out, mut gave_up) = (false, false);
    loop {
        tokio::select! {
            r = child.wait(), if exit.is_none() => {
                let r = r.ok();
                exit = Some(r);
                shared.exit.send_replace(Some(r));
                if ending {
                    group.kill();
                }
            }
            r = &mut end_rx, if !ended => {
                ended = true;
                if r.is_err() && exit.is_none() {
                    // Abandoned: the client went away, or the answer was made of an error.
                    group.term();
                    ending = true;
                    kill.as_mut().reset(Instant::now() + KILL_GRACE);
                } else if r.is_err() {
                    group.kill();
                }
            }
            _ = &mut feed, if !fed => fed = true,
            _ = &mut errs, if !errs_done => errs_done = true,
            _ = &mut timeout, if watch.deadline.is_some() && !timed_out => {
                timed_out = true;
                shared.timed_out.store(true, Ordering::SeqCst);
                shared.cut.send_replace(true);
                if exit.is_none() {
                    group.term();
                    ending = true;
                    kill.as_mut().reset(Instant::now() + KILL_GRACE);
                } else {
                    group.kill();
                }
                answer.as_mut().reset(Instant::now() + KILL_GRACE * 2);
            }
            _ = &mut answer, if timed_out && !ended => gave_up = true,
            r = stopping.wait_for(|s| *s), if !stop_seen => {
                stop_seen = true;
                if r.is_ok() && exit.is_none() && !ending {
                    group.term();
                    ending = true;
                    kill.as_mut().reset(Instant::now() + KILL_GRACE);
                }
            }
            _ = &mut kill, if ending => {
                group.kill();
                ending = false;
            }
        }
        if exit.is_some() && (ended || gave_up) {
            break;
        }
    }
    // Finished normally: whatever the script left running in its group is its own business.
    group.disarm();
    if !errs_done {
        let _ = tokio::time::timeout(Duration::from_millis(200), errs).await;
    }
    drop(permit);
    drop(disk);
    done(&shared, exit.flatten());
}

/// Writes the request body to the script's stdin, then closes it (EOF for the script). A
/// script that stops reading ends this with `EPIPE`.
async fn feed(stdin: Option<Writer>, body: Option<(Bytes, Option<Reservation>)>) {
    let Some(mut w) = stdin else { return };
    if let Some((body, _budget)) = body {
        if w.write_all(&body).await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// Longest stderr line logged as one; longer ones are split.
const MAX_LINE: usize = 8192;

/// Logs the script's stderr line by line, with its name.
pub(crate) async fn log_stderr(stderr: Option<impl AsyncRead + Unpin>, name: String, log: Log) {
    let Some(mut r) = stderr else { return };
    let mut buf = Vec::with_capacity(1024);
    // On the heap: an array here would be 4 KiB of the supervisor's future.
    let mut chunk = vec![0u8; 4096];
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
