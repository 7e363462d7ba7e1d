//! One running script in a FastCGI loop, the loop's twin of the tokio supervisor
//! (`cgi/script.rs`), under the same rules (`Supervision`): it feeds the body to stdin,
//! logs stderr (and hands lines to the connection for `FCGI_STDERR`), reaps the exit
//! through the pidfd, fires the timeout, ends the group of an abandoned script, and once
//! the script is over frees its `max_children` slot and writes the access line.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use bytes::Bytes;

use super::poll::{Token, Want};
use super::shared::{Ctx, JOB_DISCARD, JOB_ERR, JOB_EXIT, JOB_IN, JOB_TIME, Slot, Table};
use crate::cgi::log::Log;
use crate::cgi::script::{STDERR_AFTER_EXIT, StderrLines, Supervision, emit};
use crate::cgi::tasks::LiveGuard;
use crate::cgi::upload::Reservation;
use crate::{Child, Exit};

/// How often the exit is polled for a child without a pidfd (kernels before 5.3, or
/// `BROOD_NO_PIDFD=1`).
const EXIT_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// What the access line is written with once the script is over: status, bytes, exit.
pub(super) type Done = Box<dyn FnOnce(u16, u64, Option<Exit>) + Send>;

/// The request body going to a stdin pipe.
pub(super) struct Feed {
    pub fd: OwnedFd,
    pub body: Bytes,
    /// Its share of the memory budget, given back once written.
    pub _budget: Reservation,
}

/// What a job tells the connection answering with it.
pub(super) enum What {
    /// The script was reaped.
    Exit(Option<Exit>),
    /// A stderr line, for `FCGI_STDERR` (with `stderr_to_client`).
    Line(Vec<u8>),
    /// The timeout cut stdout.
    Cut,
    /// The script is over (exited, stderr read, slot free).
    Over(Option<Exit>),
}

/// A [`What`] for the connection `conn`, about the job `job`.
pub(super) struct Notice {
    pub conn: (u32, u32),
    pub job: (u32, u32),
    pub what: What,
}

/// A loop's running scripts, and what they have to tell their connections (taken by the
/// loop after each event: a job never calls into a connection).
#[derive(Default)]
pub(super) struct Jobs {
    table: Table<Job>,
    pub notices: Vec<Notice>,
}

pub(super) struct Job {
    pub child: Child,
    pub sup: Supervision,
    pub stderr: Option<OwnedFd>,
    pub lines: StderrLines,
    pub name: String,
    pub log: Log,
    pub feed: Option<Feed>,
    pub disk: Option<Reservation>,
    pub permit: Option<Slot>,
    pub live: Option<LiveGuard>,
    /// The connection answering with this script's output (slot, generation).
    pub owner: Option<(u32, u32)>,
    /// Status and body bytes for the access line.
    pub status: u16,
    pub bytes: u64,
    pub done: Option<Done>,
    /// stdout of a response that sends no body (`HEAD`, 204, 304): read and thrown away.
    pub discard: Option<OwnedFd>,
    /// Once the supervision is done: how long stderr is still read.
    pub over_at: Option<Instant>,
    /// The earliest deadline already set for this job.
    pub armed: Option<Instant>,
    /// The exit is polled (no pidfd).
    pub poll_exit: bool,
}

impl Jobs {
    pub(super) fn insert(&mut self, job: Job) -> (u32, u32) {
        self.table.insert(job)
    }

    pub(super) fn get(&mut self, slot: u32, generation: u32) -> Option<&mut Job> {
        self.table.get(slot, generation)
    }

    pub(super) fn contains(&self, slot: u32, generation: u32) -> bool {
        self.table.contains(slot, generation)
    }

    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    /// A graceful stop: every script's group gets SIGTERM.
    pub(super) fn stop(&mut self, cx: &mut Ctx) {
        for (s, g) in self.table.keys() {
            if let Some(j) = self.table.get(s, g) {
                j.sup.on_stop();
            }
            self.after(cx, s, g);
        }
    }

    /// Registers a new job's fds; `false` if that failed (the job is dropped, which kills
    /// its group).
    pub(super) fn started(&mut self, cx: &mut Ctx, slot: u32, generation: u32) -> bool {
        let Some(j) = self.table.get(slot, generation) else {
            return false;
        };
        let mut ok = true;
        let t = |kind| Token {
            kind,
            slot,
            generation,
        };
        if let Some(e) = &j.stderr {
            ok &= cx.poll.add(e, t(JOB_ERR), Want::READ).is_ok();
        }
        if let Some(f) = &j.feed {
            ok &= cx.poll.add(&f.fd, t(JOB_IN), Want::WRITE).is_ok();
        }
        // Started while the server stops (a kept connection, a queued request, a local
        // redirect): it gets the stop's SIGTERM too.
        if cx.stopping.is_some() {
            j.sup.on_stop();
        }
        // Without a pidfd that epoll takes (Linux before 5.3), the exit is polled.
        j.poll_exit = j
            .child
            .pidfd()
            .is_none_or(|p| cx.poll.add(p, t(JOB_EXIT), Want::READ).is_err());
        self.after(cx, slot, generation);
        ok
    }

    pub(super) fn ready(&mut self, cx: &mut Ctx, slot: u32, generation: u32, kind: u8) {
        match kind {
            JOB_EXIT => self.exit(cx, slot, generation),
            JOB_ERR => self.stderr(cx, slot, generation),
            JOB_IN => self.feed(cx, slot, generation),
            JOB_DISCARD => self.discard(cx, slot, generation),
            _ => {}
        }
        self.after(cx, slot, generation);
    }

    fn exit(&mut self, cx: &mut Ctx, slot: u32, generation: u32) {
        let Some(j) = self.table.get(slot, generation) else {
            return;
        };
        if j.sup.exit().is_some() {
            return;
        }
        let exit = match j.child.try_wait() {
            Ok(None) => return,
            Ok(Some(e)) => Some(e),
            Err(_) => None,
        };
        if let Some(p) = j.child.pidfd() {
            cx.poll.delete(p);
        }
        j.sup.on_exit(exit);
        if let Some((cs, cg)) = j.owner {
            self.notices.push(Notice {
                conn: (cs, cg),
                job: (slot, generation),
                what: What::Exit(exit),
            });
        }
    }

    fn stderr(&mut self, cx: &mut Ctx, slot: u32, generation: u32) {
        let Some(j) = self.table.get(slot, generation) else {
            return;
        };
        let Some(fd) = &j.stderr else { return };
        let n = match rustix::io::read(fd, &mut cx.scratch[..4096]) {
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => return,
            Ok(n) => n,
            Err(_) => 0,
        };
        let mut got = Vec::new();
        let (log, name) = (&j.log, &j.name);
        let mut line = |l: &[u8]| {
            emit(log, name, l);
            got.push(l.to_vec());
        };
        if n == 0 {
            j.lines.end(&mut line);
            if let Some(fd) = j.stderr.take() {
                cx.poll.delete(&fd);
            }
        } else {
            j.lines.push(&cx.scratch[..n], &mut line);
        }
        if let Some((cs, cg)) = j.owner {
            if cx.sh.settings.stderr_to_client {
                for l in got {
                    self.notices.push(Notice {
                        conn: (cs, cg),
                        job: (slot, generation),
                        what: What::Line(l),
                    });
                }
            }
        }
    }

    fn feed(&mut self, cx: &mut Ctx, slot: u32, generation: u32) {
        let Some(j) = self.table.get(slot, generation) else {
            return;
        };
        let Some(f) = &mut j.feed else { return };
        loop {
            match rustix::io::write(&f.fd, &f.body) {
                Ok(n) => {
                    bytes::Buf::advance(&mut f.body, n);
                    if f.body.is_empty() {
                        break;
                    }
                }
                Err(rustix::io::Errno::AGAIN) => return,
                Err(rustix::io::Errno::INTR) => {}
                // EPIPE: the script stopped reading.
                Err(_) => break,
            }
        }
        // All written, or the script will read no more: close it (EOF for the script).
        if let Some(f) = j.feed.take() {
            cx.poll.delete(&f.fd);
        }
    }

    fn discard(&mut self, cx: &mut Ctx, slot: u32, generation: u32) {
        let Some(j) = self.table.get(slot, generation) else {
            return;
        };
        let Some(fd) = &j.discard else { return };
        match rustix::io::read(fd, &mut cx.scratch[..]) {
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
            Ok(n) if n > 0 => {}
            _ => self.discarded(cx, slot, generation),
        }
    }

    /// A discarded stdout is at its end (or cut): the script may finish on its own.
    fn discarded(&mut self, cx: &mut Ctx, slot: u32, generation: u32) {
        let Some(j) = self.table.get(slot, generation) else {
            return;
        };
        if let Some(fd) = j.discard.take() {
            cx.poll.delete(&fd);
            j.sup.on_end(false);
        }
    }

    /// Hands a response's stdout to the job, to be read to its end and thrown away.
    pub(super) fn discard_rest(
        &mut self,
        cx: &mut Ctx,
        slot: u32,
        generation: u32,
        stdout: OwnedFd,
    ) {
        let Some(j) = self.table.get(slot, generation) else {
            return;
        };
        j.owner = None;
        let t = Token {
            kind: JOB_DISCARD,
            slot,
            generation,
        };
        if j.sup.timed_out() || cx.poll.add(&stdout, t, Want::READ).is_err() {
            j.sup.on_end(false);
        } else {
            j.discard = Some(stdout);
        }
        self.after(cx, slot, generation);
    }

    /// The request side is done with the job: `abandoned` ends its group, and the
    /// connection hears no more of it; otherwise it still gets stderr lines and the end.
    pub(super) fn end(&mut self, cx: &mut Ctx, slot: u32, generation: u32, abandoned: bool) {
        let Some(j) = self.table.get(slot, generation) else {
            return;
        };
        if abandoned {
            j.owner = None;
        }
        j.sup.on_end(abandoned);
        self.after(cx, slot, generation);
    }

    /// Records the status and bytes the client got, for the access line.
    pub(super) fn answered(&mut self, slot: u32, generation: u32, status: u16, bytes: u64) {
        if let Some(j) = self.table.get(slot, generation) {
            j.status = status;
            j.bytes = bytes;
        }
    }

    pub(super) fn time(&mut self, cx: &mut Ctx, slot: u32, generation: u32) {
        let Some(j) = self.table.get(slot, generation) else {
            return;
        };
        j.armed = None;
        if j.poll_exit && j.sup.exit().is_none() {
            self.exit(cx, slot, generation);
        }
        let Some(j) = self.table.get(slot, generation) else {
            return;
        };
        if j.sup.on_time(Instant::now()) {
            // The timeout cut stdout: the request side stops reading it.
            if let Some((cs, cg)) = j.owner {
                self.notices.push(Notice {
                    conn: (cs, cg),
                    job: (slot, generation),
                    what: What::Cut,
                });
            }
            self.discarded(cx, slot, generation);
        }
        self.after(cx, slot, generation);
    }

    /// After every event of a job: the end of it once it is over, else its next deadline.
    pub(super) fn after(&mut self, cx: &mut Ctx, slot: u32, generation: u32) {
        let Some(j) = self.table.get(slot, generation) else {
            return;
        };
        let now = Instant::now();
        if j.sup.is_done() {
            j.feed = None;
            if let Some(fd) = j.discard.take() {
                cx.poll.delete(&fd);
            }
            let over_at = *j.over_at.get_or_insert(now + STDERR_AFTER_EXIT);
            if j.stderr.is_none() || over_at <= now {
                self.over(cx, slot, generation);
                return;
            }
        }
        let Some(j) = self.table.get(slot, generation) else {
            return;
        };
        let mut next = j.sup.next_deadline();
        if j.sup.is_done() {
            next = j.over_at;
        }
        if j.poll_exit && j.sup.exit().is_none() {
            let poll = now + EXIT_POLL;
            next = Some(next.map_or(poll, |n| n.min(poll)));
        }
        if let Some(at) = next {
            if j.armed.is_none_or(|a| at < a) {
                j.armed = Some(at);
                let t = Token {
                    kind: JOB_TIME,
                    slot,
                    generation,
                };
                cx.poll.at(at, t);
            }
        }
    }

    /// The script is over: its slot and budgets go back, the access line is written, and
    /// the connection (if it waits for the end) goes on.
    fn over(&mut self, cx: &mut Ctx, slot: u32, generation: u32) {
        let Some(mut j) = self.table.remove(slot, generation) else {
            return;
        };
        if let Some(fd) = j.stderr.take() {
            cx.poll.delete(&fd);
            j.lines.end(|l| emit(&j.log, &j.name, l));
        }
        let exit = j.sup.finish();
        // The slot first: a local redirect runs its next script in it.
        drop(j.permit.take());
        drop(j.disk.take());
        drop(j.live.take());
        if let Some(done) = j.done.take() {
            done(j.status, j.bytes, exit);
        }
        let owner = j.owner;
        drop(j);
        if let Some((cs, cg)) = owner {
            self.notices.push(Notice {
                conn: (cs, cg),
                job: (slot, generation),
                what: What::Over(exit),
            });
        }
    }
}

/// An fd that must not block the loop.
pub(super) fn nonblocking(fd: impl AsFd) -> bool {
    crate::fd::set_nonblocking(fd.as_fd()).is_ok()
}
