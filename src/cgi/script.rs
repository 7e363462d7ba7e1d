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
#[derive(Debug)]
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
    let pgid = child.id().expect("a child not waited for has its pid") as i32;
    let mut sup = Supervision::new(pgid, watch.deadline.map(Instant::into_std));
    let permit = watch.permit;
    let disk = watch.disk;
    let _live = watch.live;
    let mut stopping = watch.stopping;
    let mut stop_seen = false;
    let feed = feed(stdin, watch.body);
    let errs = log_stderr(stderr, watch.name, watch.log);
    tokio::pin!(feed, errs);
    let far = Instant::now() + Duration::from_secs(86400 * 365);
    let at = |sup: &Supervision| sup.next_deadline().map_or(far, Instant::from_std);
    let mut armed = at(&sup);
    let timer = tokio::time::sleep_until(armed);
    tokio::pin!(timer);
    let (mut ended, mut fed, mut errs_done) = (false, false, false);
    loop {
        tokio::select! {
            r = child.wait(), if sup.exit().is_none() => {
                let r = r.ok();
                shared.exit.send_replace(Some(r));
                sup.on_exit(r);
            }
            r = &mut end_rx, if !ended => {
                ended = true;
                sup.on_end(r.is_err());
            }
            _ = &mut feed, if !fed => fed = true,
            _ = &mut errs, if !errs_done => errs_done = true,
            () = &mut timer => {
                if sup.on_time(std::time::Instant::now()) {
                    shared.timed_out.store(true, Ordering::SeqCst);
                    shared.cut.send_replace(true);
                }
            }
            r = stopping.wait_for(|s| *s), if !stop_seen => {
                stop_seen = true;
                if r.is_ok() {
                    sup.on_stop();
                }
            }
        }
        if sup.is_done() {
            break;
        }
        if at(&sup) != armed {
            armed = at(&sup);
            timer.as_mut().reset(armed);
        }
    }
    // Finished normally: whatever the script left running in its group is its own business.
    let exit = sup.finish();
    if !errs_done {
        let _ = tokio::time::timeout(STDERR_AFTER_EXIT, errs).await;
    }
    drop(permit);
    drop(disk);
    done(&shared, exit);
}

/// How long stderr is still read once a script is over, for a grandchild that holds it.
pub(crate) const STDERR_AFTER_EXIT: Duration = Duration::from_millis(200);

/// The supervisor's rules, with no I/O of its own but the signals to the group: both the
/// tokio supervisor above and the FastCGI event loop feed it events and the clock, and it
/// says when the timeout cuts the script's stdout and when it is done.
///
/// An abandoned response, a timeout or a graceful stop ends the group: SIGTERM, then
/// SIGKILL once the script has exited or after [`KILL_GRACE`]. After a timeout the request
/// side has twice the grace to answer before the script is over without it.
#[derive(Debug)]
pub(crate) struct Supervision {
    group: GroupKill,
    exit: Option<Option<Exit>>,
    /// The request side is done with the script (finished or abandoned).
    ended: bool,
    /// The group got SIGTERM and gets SIGKILL at `kill_at` or at the exit.
    ending: bool,
    timed_out: bool,
    gave_up: bool,
    stopped: bool,
    deadline: Option<std::time::Instant>,
    kill_at: Option<std::time::Instant>,
    answer_at: Option<std::time::Instant>,
}

impl Supervision {
    pub(crate) fn new(pgid: i32, deadline: Option<std::time::Instant>) -> Supervision {
        Supervision {
            group: GroupKill::new(pgid),
            exit: None,
            ended: false,
            ending: false,
            timed_out: false,
            gave_up: false,
            stopped: false,
            deadline,
            kill_at: None,
            answer_at: None,
        }
    }

    /// The exit, once seen (`Some(None)`: it could not be read).
    pub(crate) fn exit(&self) -> Option<Option<Exit>> {
        self.exit
    }

    pub(crate) fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// The script was reaped.
    pub(crate) fn on_exit(&mut self, exit: Option<Exit>) {
        self.exit = Some(exit);
        if self.ending {
            self.group.kill();
        }
    }

    /// The request side is done: `abandoned` when the response was not used to its end
    /// (client gone, an error answer), which ends the group.
    pub(crate) fn on_end(&mut self, abandoned: bool) {
        self.ended = true;
        if abandoned && self.exit.is_none() {
            self.term();
        } else if abandoned {
            self.group.kill();
        }
    }

    /// A graceful stop of the server.
    pub(crate) fn on_stop(&mut self) {
        if !self.stopped && self.exit.is_none() && !self.ending {
            self.term();
        }
        self.stopped = true;
    }

    fn term(&mut self) {
        self.group.term();
        self.ending = true;
        self.kill_at = Some(std::time::Instant::now() + KILL_GRACE);
    }

    /// Fires the deadlines due at `now`; `true` when the timeout fired just now (the
    /// request side must stop reading stdout).
    pub(crate) fn on_time(&mut self, now: std::time::Instant) -> bool {
        let mut cut = false;
        if !self.timed_out && self.deadline.is_some_and(|d| d <= now) {
            self.timed_out = true;
            cut = true;
            if self.exit.is_none() {
                self.term();
            } else {
                self.group.kill();
            }
            self.answer_at = Some(now + KILL_GRACE * 2);
        }
        if self.ending && self.kill_at.is_some_and(|k| k <= now) {
            self.group.kill();
            self.ending = false;
        }
        if self.timed_out && !self.ended && self.answer_at.is_some_and(|a| a <= now) {
            self.gave_up = true;
        }
        cut
    }

    /// When [`on_time`](Supervision::on_time) has something to do next.
    pub(crate) fn next_deadline(&self) -> Option<std::time::Instant> {
        let timeout = self.deadline.filter(|_| !self.timed_out);
        let kill = self.kill_at.filter(|_| self.ending);
        let answer = self
            .answer_at
            .filter(|_| self.timed_out && !self.ended && !self.gave_up);
        [timeout, kill, answer].into_iter().flatten().min()
    }

    /// The script has exited and the request side is done with it (or had its time).
    pub(crate) fn is_done(&self) -> bool {
        self.exit.is_some() && (self.ended || self.gave_up)
    }

    /// Over: whatever the script left running in its group is its own business. The exit.
    pub(crate) fn finish(&mut self) -> Option<Exit> {
        self.group.disarm();
        self.exit.flatten()
    }
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
    let mut lines = StderrLines::default();
    // On the heap: an array here would be 4 KiB of the supervisor's future.
    let mut chunk = vec![0u8; 4096];
    loop {
        let n = r.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            lines.end(|l| emit(&log, &name, l));
            return;
        }
        lines.push(&chunk[..n], |l| emit(&log, &name, l));
    }
}

/// A script's stderr cut into lines (no I/O: both fronts feed it what they read). A line
/// longer than [`MAX_LINE`] is given in pieces.
#[derive(Debug, Default)]
pub(crate) struct StderrLines {
    buf: Vec<u8>,
}

impl StderrLines {
    /// Adds `data`; `line` gets each whole line, without its newline.
    pub(crate) fn push(&mut self, data: &[u8], mut line: impl FnMut(&[u8])) {
        self.buf.extend_from_slice(data);
        let mut at = 0;
        while let Some(i) = self.buf[at..].iter().position(|&b| b == b'\n') {
            line(&self.buf[at..at + i]);
            at += i + 1;
        }
        self.buf.drain(..at);
        if self.buf.len() > MAX_LINE {
            line(&self.buf);
            self.buf.clear();
        }
    }

    /// stderr ended: the last line, if it had no newline.
    pub(crate) fn end(&mut self, mut line: impl FnMut(&[u8])) {
        if !self.buf.is_empty() {
            line(&self.buf);
            self.buf.clear();
        }
    }
}

pub(crate) fn emit(log: &Log, name: &str, line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    log(&LogLine::Stderr {
        script: name.to_string(),
        line: String::from_utf8_lossy(line).into_owned(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant as Now;

    /// A `sleep` in a process group of its own: `(child, pgid)`.
    fn group() -> (Child, i32) {
        let child = crate::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pgid = child.id().unwrap() as i32;
        (child, pgid)
    }

    fn exit_of(child: &mut Child) -> Exit {
        let end = Now::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = child.try_wait().unwrap() {
                return e;
            }
            assert!(Now::now() < end, "the group was not ended");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_timeout_cuts_terms_then_kills_and_waits_for_the_answer() {
        let (mut child, pgid) = group();
        let t0 = Now::now();
        let mut s = Supervision::new(pgid, Some(t0 + Duration::from_millis(10)));
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_millis(10)));
        assert!(!s.on_time(t0), "not yet");
        assert!(s.on_time(t0 + Duration::from_millis(10)), "the cut");
        assert!(s.timed_out());
        assert!(!s.on_time(t0 + Duration::from_millis(20)), "only once");
        let e = exit_of(&mut child);
        assert_eq!(e.signal, libc::SIGTERM);
        s.on_exit(Some(e));
        assert!(!s.is_done(), "the request side has not answered yet");
        // The kill's deadline (harmless now), then the answer's.
        let mut last = t0;
        while let Some(at) = s.next_deadline() {
            s.on_time(at);
            last = at;
        }
        assert!(
            s.is_done(),
            "over without the request side after twice the grace"
        );
        assert!(last >= t0 + KILL_GRACE * 2);
        assert_eq!(s.finish(), Some(e));
    }

    #[test]
    fn an_abandoned_script_gets_term_and_a_finished_one_is_left_alone() {
        let (mut child, pgid) = group();
        let mut s = Supervision::new(pgid, None);
        assert_eq!(s.next_deadline(), None);
        s.on_end(true);
        let kill_at = s.next_deadline().expect("SIGKILL after the grace");
        assert!(kill_at > Now::now() + KILL_GRACE / 2);
        let e = exit_of(&mut child);
        assert_eq!(e.signal, libc::SIGTERM);
        s.on_exit(Some(e));
        assert!(s.is_done());

        let (mut child, pgid) = group();
        let mut s = Supervision::new(pgid, None);
        s.on_end(false);
        assert_eq!(s.next_deadline(), None);
        assert!(!s.is_done(), "not before its exit");
        assert_eq!(child.try_wait().unwrap(), None, "still running");
        // A graceful stop ends it all the same.
        s.on_stop();
        assert_eq!(exit_of(&mut child).signal, libc::SIGTERM);
    }

    #[test]
    fn stderr_is_cut_into_lines_with_long_ones_in_pieces() {
        let mut lines = StderrLines::default();
        let mut got = Vec::new();
        lines.push(b"one\ntw", |l| got.push(l.to_vec()));
        lines.push(b"o\n\nthree", |l| got.push(l.to_vec()));
        lines.end(|l| got.push(l.to_vec()));
        assert_eq!(got, [&b"one"[..], b"two", b"", b"three"]);
        got.clear();
        lines.push(&vec![b'x'; MAX_LINE + 1], |l| got.push(l.to_vec()));
        assert_eq!(got.len(), 1);
        lines.end(|l| got.push(l.to_vec()));
        assert_eq!(got.len(), 1, "nothing left");
    }
}
