//! One FastCGI connection in an event loop: requests one after another
//! (`FCGI_MPXS_CONNS=0`; a second `BEGIN_REQUEST` while one runs gets
//! `FCGI_CANT_MPX_CONN`), each through the shared runner's checks and command, the shared
//! header reader and parser, and a job (`job.rs`) under the shared supervision rules.
//! Records that arrive while a script runs are still read: an `ABORT_REQUEST` or the
//! connection closing ends the script as a client disconnect does in HTTP mode, and
//! `GET_VALUES` is answered.
//!
//! A connection is a state machine ([`Phase`]) driven by its socket's readiness, its
//! script's stdout, its deadline and notices from its job.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hyper::{Method, StatusCode};
use tokio::sync::OwnedSemaphorePermit;

use super::job::{Done, Feed, Job, Jobs, Notice, What, nonblocking};
use super::out::Out;
use super::params::{self, Params};
use super::poll::{Ready, Token, Want};
use super::record::{self, Parsed, Record};
use super::shared::{CONN, Ctx, STDOUT, Slot, Table};
use crate::cgi::answer::{explain, text, text_saying};
use crate::cgi::body::{EXIT_WAIT, Head, HeadError, HeadReader};
use crate::cgi::load::Counted;
use crate::cgi::log::LogLine;
use crate::cgi::map::Refusal;
use crate::cgi::meta::search_args;
use crate::cgi::response::{Reply, content_length_of};
use crate::cgi::runner::{self, log_name};
use crate::cgi::script::{StderrLines, Supervision};
use crate::cgi::tasks::LiveGuard;
use crate::cgi::upload::{Spool, Upload, UploadError};
use crate::{Exit, Stdio};

/// From a new connection (or `BEGIN_REQUEST`) to the end of its params.
const PARAMS_TIMEOUT: Duration = Duration::from_secs(30);
/// A kept connection with no request (longer than nginx's default upstream keepalive of
/// 60 s, so the web server closes first).
const IDLE: Duration = Duration::from_secs(120);
/// The largest params block: every param becomes a variable, and exec takes at most
/// 128 KiB per variable and a few MiB in all.
pub(crate) const MAX_PARAMS: usize = 128 * 1024;
/// How long a connection closed with unread input is drained first (a lingering close,
/// so the web server reads the answer rather than a reset).
const LINGER: Duration = Duration::from_secs(2);
/// How long output already queued may take to be written before a connection that is
/// ending closes anyway (a web server that stopped reading).
const LAST_WRITE: Duration = Duration::from_secs(30);
/// Lines of stderr held for the web server before the response's body begins; more are
/// only logged.
const STDERR_QUEUE: usize = 64;
/// How long the end of a response waits for the rest of stderr (with `stderr_to_client`).
const STDERR_WAIT: Duration = Duration::from_secs(1);
const MAX_REDIRECTS: usize = 10;
/// Output waiting to be written above which neither the script's stdout nor the socket is
/// read (and stderr lines are only logged) until the web server takes some.
const COALESCE: usize = 256 * 1024;

type Key = (u32, u32);

/// Where a connection is.
enum Phase {
    /// Waiting for `BEGIN_REQUEST`.
    Idle,
    Params(Req, BytesMut),
    Stdin(Req, Params, Spool, Option<u64>),
    /// Waiting for a `max_children` slot.
    Queued(Req, Params, Option<Upload>, Counted),
    Running(Req, Params, Box<Run>),
    /// A local redirect: waiting for the first script to be over (its slot free).
    Redirect(Req, Params, Key),
    /// Ending: what is queued is written, then the connection closes (or lingers);
    /// input is read and dropped.
    Ending,
}

/// The request a connection is serving.
struct Req {
    id: u16,
    keep: bool,
    start: Instant,
    depth: usize,
    /// Until when it may wait for a `max_children` slot, once it has waited.
    queue_until: Option<Instant>,
}

/// The request side of a running script.
struct Run {
    job: Key,
    stdout: Option<OwnedFd>,
    paused: bool,
    stage: Stage,
    nph: bool,
    name: String,
    bodyless_method: bool,
    status: u16,
    sent: u64,
    /// Bytes still due when the script sent `Content-Length`.
    remaining: Option<u64>,
    /// The exit, once the job has seen it.
    exit: Option<Option<Exit>>,
    /// The job is over (exited, stderr read).
    over: bool,
    /// The timeout cut stdout.
    cut: bool,
    /// The job was told the request side is done with it.
    ended: bool,
    /// `FCGI_STDERR` records sent.
    errs: usize,
    /// stderr lines before the body began.
    held: Vec<Vec<u8>>,
}

enum Stage {
    Head(HeadReader),
    Body,
    /// stdout ended: waiting for the exit (at most [`EXIT_WAIT`]).
    AtEof,
    /// The body is whole: waiting for the rest of stderr (at most [`STDERR_WAIT`]).
    StderrWait,
}

/// How a request left the connection.
enum Next {
    /// Whole: the next request may follow if the web server asked to keep the connection.
    Keep,
    /// Answered before its input was all read: write, shut down, drain, then close.
    Linger,
    /// Write what is queued, then close (a response cut short has no `END_REQUEST`).
    Close,
}

/// What a connection does once its output is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    Close,
    Linger,
}

pub(super) struct Conn {
    sock: OwnedFd,
    inbuf: BytesMut,
    out: Out,
    phase: Phase,
    /// When the phase's wait ends.
    deadline: Option<Instant>,
    /// The earliest deadline already set.
    armed: Option<Instant>,
    /// What the socket is registered for.
    want: Want,
    after: Option<After>,
    /// The socket was shut down for writing (lingering).
    shut: bool,
    /// The web server shut down its writing side only (a Unix socket): nothing more is
    /// read; the answer is written, and the connection closes after it.
    read_shut: bool,
    served: bool,
    _permit: OwnedSemaphorePermit,
}

impl Phase {
    fn active(&self) -> Option<u16> {
        match self {
            Phase::Idle | Phase::Ending => None,
            Phase::Params(r, _)
            | Phase::Stdin(r, ..)
            | Phase::Queued(r, ..)
            | Phase::Running(r, ..)
            | Phase::Redirect(r, ..) => Some(r.id),
        }
    }
}

/// One thread's event loop: its means ([`Ctx`]), its connections and their scripts. The
/// thread around it (`engine.rs`) accepts and dispatches; the connection logic is here and
/// the script's in `job.rs`.
pub(super) struct Loop {
    pub cx: Ctx,
    pub conns: Table<Conn>,
    pub jobs: Jobs,
    /// Connections waiting for a `max_children` slot, oldest first.
    pub queued: Vec<(u32, u32)>,
    /// A connection closed since the thread last looked (one may wait at the cap).
    pub closed_one: bool,
}

impl Loop {
    /// Hands what the jobs have told on to their connections, until none is left.
    pub(super) fn deliver(&mut self) {
        while !self.jobs.notices.is_empty() {
            for Notice { conn, job, what } in std::mem::take(&mut self.jobs.notices) {
                match what {
                    What::Exit(exit) => self.conn_job_exit(conn.0, conn.1, job, exit),
                    What::Line(line) => self.conn_stderr_line(conn.0, conn.1, job, line),
                    What::Cut => self.conn_cut(conn.0, conn.1, job),
                    What::Over(exit) => self.conn_job_over(conn.0, conn.1, job, exit),
                }
            }
        }
    }
}

impl Loop {
    pub(super) fn open_conn(&mut self, sock: OwnedFd, permit: OwnedSemaphorePermit) {
        let c = Conn {
            sock,
            inbuf: BytesMut::new(),
            out: Out::default(),
            phase: Phase::Idle,
            deadline: Some(Instant::now() + PARAMS_TIMEOUT),
            armed: None,
            want: Want::READ,
            after: None,
            shut: false,
            read_shut: false,
            served: false,
            _permit: permit,
        };
        let (slot, generation) = self.conns.insert(c);
        let c = self.conns.get(slot, generation).expect("just inserted");
        let t = Token {
            kind: CONN,
            slot,
            generation,
        };
        if self.cx.poll.add(&c.sock, t, Want::READ).is_err() {
            self.cx
                .log_error("fastcgi: epoll_ctl failed for a new connection".into());
            self.conns.remove(slot, generation);
            self.closed_one = true;
            return;
        }
        self.conn_after((slot, generation));
    }

    fn error(&self, what: &str) {
        self.cx.log_error(format!("fastcgi: {what}"));
    }

    /// The connection's socket is ready.
    pub(super) fn conn_ready(&mut self, slot: u32, generation: u32, r: Ready) {
        let key = (slot, generation);
        let reading = self
            .conns
            .get(slot, generation)
            .is_some_and(|c| c.out.len() < COALESCE);
        if reading && (r.read || r.hangup) {
            self.conn_input(key);
        }
        self.conn_after(key);
    }

    fn conn_input(&mut self, key: Key) {
        let Some(c) = self.conns.get(key.0, key.1) else {
            return;
        };
        let n = match rustix::io::read(&c.sock, &mut self.cx.scratch[..]) {
            Ok(n) => n,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => return,
            Err(_) => 0,
        };
        if n == 0 {
            if !c.inbuf.is_empty() && !matches!(c.phase, Phase::Ending) {
                self.error("connection closed in the middle of a record");
            } else if self.half_closed(key) {
                return;
            }
            self.conn_gone(key);
            return;
        }
        if matches!(c.phase, Phase::Ending) {
            return;
        }
        c.inbuf.extend_from_slice(&self.cx.scratch[..n]);
        loop {
            let Some(c) = self.conns.get(key.0, key.1) else {
                return;
            };
            if matches!(c.phase, Phase::Ending) {
                c.inbuf.clear();
                return;
            }
            match record::parse(&mut c.inbuf) {
                Ok(Parsed::Record(rec)) => self.conn_record(key, rec),
                Ok(Parsed::Need(_)) => return,
                Err(e) => {
                    self.error(&e.to_string());
                    self.conn_gone(key);
                    return;
                }
            }
        }
    }

    /// The web server's end of `key` read as closed: whether it only shut its writing side
    /// (`shutdown(SHUT_WR)`) after a whole request, so that the answer is still written.
    /// Only a Unix socket tells: its peer's `close` also hangs up brood's writing side
    /// (`POLLHUP`), a half-close does not. Over TCP both are a FIN: while a script runs
    /// or waits for it, the connection is taken as gone (the script is ended) rather than
    /// risk running a script for a web server that left (nginx never half-closes); an
    /// answer already made is still written.
    fn half_closed(&mut self, key: Key) -> bool {
        let tcp = self.cx.sh.tcp;
        let Some(c) = self.conns.get(key.0, key.1) else {
            return false;
        };
        // Whether the answer is still being written with no script left to run for it
        // (over TCP too: writing on costs nothing, and a web server gone for good resets),
        // or a whole request's script runs or waits (a Unix socket only).
        let answer_left = match c.phase {
            Phase::Idle => !c.out.is_empty(),
            Phase::Ending => !c.shut,
            Phase::Queued(..) | Phase::Running(..) | Phase::Redirect(..) => false,
            Phase::Params(..) | Phase::Stdin(..) => return false,
        };
        if !answer_left && (tcp || c.phase.active().is_none()) {
            return false;
        }
        let mut fds = [rustix::event::PollFd::new(
            &c.sock,
            rustix::event::PollFlags::OUT,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let hung_up = match rustix::event::poll(&mut fds, Some(&zero)) {
            Ok(_) => fds[0]
                .revents()
                .intersects(rustix::event::PollFlags::HUP | rustix::event::PollFlags::ERR),
            Err(_) => true,
        };
        if hung_up {
            return false;
        }
        if !c.read_shut {
            c.read_shut = true;
            // Out of the read set now (`conn_after`): the closed read side stays readable.
            c.inbuf.clear();
            // Nothing is left to drain: no linger after the answer; and no request can
            // follow one that is over.
            if c.after == Some(After::Linger) || matches!(c.phase, Phase::Idle) {
                c.after = Some(After::Close);
                c.deadline = Some(Instant::now() + LAST_WRITE);
            }
        }
        true
    }

    fn conn_record(&mut self, key: Key, rec: Record) {
        let Some(c) = self.conns.get(key.0, key.1) else {
            return;
        };
        let active = c.phase.active();
        match rec.kind {
            record::GET_VALUES if rec.id == 0 => self.get_values(key, &rec.content),
            record::BEGIN_REQUEST if active.is_none() => self.begin(key, &rec),
            record::BEGIN_REQUEST if active == Some(rec.id) => {
                self.error("BEGIN_REQUEST for a request already running");
                self.conn_gone(key);
            }
            record::BEGIN_REQUEST => {
                // One request at a time per connection, as GET_VALUES says.
                record::put_end(c.out.small(), rec.id, 0, record::CANT_MPX_CONN);
            }
            record::ABORT_REQUEST if active == Some(rec.id) => self.abort(key),
            record::PARAMS | record::STDIN | record::DATA if active == Some(rec.id) => {
                self.mine(key, rec)
            }
            // Records of requests not running are ignored (FastCGI 1.0, 3.3).
            record::ABORT_REQUEST | record::PARAMS | record::STDIN | record::DATA => {}
            kind => {
                self.error(&format!("record type {kind} is not one a web server sends"));
                if let Some(c) = self.conns.get(key.0, key.1) {
                    record::put_unknown_type(c.out.small(), kind);
                }
            }
        }
    }

    fn get_values(&mut self, key: Key, content: &[u8]) {
        let Ok(asked) = record::pairs(content) else {
            self.error("malformed GET_VALUES");
            return;
        };
        let mut body = BytesMut::new();
        let n = self
            .cx
            .sh
            .settings
            .max_conns
            .min(u32::MAX as usize)
            .to_string();
        for (name, _) in asked {
            let value = match name {
                b"FCGI_MAX_CONNS" | b"FCGI_MAX_REQS" => n.as_bytes(),
                b"FCGI_MPXS_CONNS" => b"0",
                _ => continue,
            };
            // The answer is one record: whole pairs only (names and values below 128 bytes
            // take one length byte each).
            if body.len() + 2 + name.len() + value.len() > record::MAX_CONTENT {
                break;
            }
            record::put_pair(&mut body, name, value);
        }
        let Some(c) = self.conns.get(key.0, key.1) else {
            return;
        };
        // One record, not a stream (which `put_stream` would cut at 16 KiB).
        let head = record::header(record::GET_VALUES_RESULT, 0, body.len());
        c.out.small().put_slice(&head);
        c.out.small().put_slice(&body);
    }

    fn begin(&mut self, key: Key, rec: &Record) {
        let Some((role, flags)) = record::begin(&rec.content).filter(|_| rec.id != 0) else {
            self.error("BEGIN_REQUEST with request id 0 or a short body");
            self.conn_gone(key);
            return;
        };
        let Some(c) = self.conns.get(key.0, key.1) else {
            return;
        };
        c.served = true;
        if role != record::RESPONDER {
            record::put_end(c.out.small(), rec.id, 0, record::UNKNOWN_ROLE);
            c.deadline = Some(Instant::now() + IDLE);
            self.error(&format!("role {role} asked for; brood is a responder (1)"));
            return;
        }
        let req = Req {
            id: rec.id,
            keep: flags & record::KEEP_CONN != 0,
            start: Instant::now(),
            depth: 0,
            queue_until: None,
        };
        c.phase = Phase::Params(req, BytesMut::new());
        c.deadline = Some(Instant::now() + PARAMS_TIMEOUT);
    }

    /// A record of the running request.
    fn mine(&mut self, key: Key, rec: Record) {
        let body_timeout = self.cx.sh.state.body_timeout;
        let Some(c) = self.conns.get(key.0, key.1) else {
            return;
        };
        match &mut c.phase {
            Phase::Params(_, raw) if rec.kind == record::PARAMS => {
                if rec.content.is_empty() {
                    return self.params_done(key);
                }
                if raw.len() + rec.content.len() > MAX_PARAMS {
                    let id = c.phase.active().unwrap_or(0);
                    put_answer(&mut c.out, id, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
                    self.error(&format!("params over {MAX_PARAMS} bytes"));
                    return self.request_over(key, Next::Linger);
                }
                raw.extend_from_slice(&rec.content);
            }
            Phase::Params(..) => {
                self.error("STDIN or DATA before the end of PARAMS");
                self.request_over(key, Next::Close);
            }
            Phase::Stdin(req, p, spool, _) => {
                c.deadline = Some(Instant::now() + body_timeout);
                if rec.kind != record::STDIN {
                    return;
                }
                if rec.content.is_empty() {
                    return self.stdin_done(key);
                }
                if let Err(e) = spool.push(&rec.content) {
                    let (id, start, p) = (req.id, req.start, p.clone());
                    self.error(&format!("request body: {e}"));
                    self.refuse_upload(key, id, &p, start, &e);
                    self.request_over(key, Next::Linger);
                }
            }
            // Input after the body is not the script's.
            _ => {}
        }
    }

    fn params_done(&mut self, key: Key) {
        let Some(c) = self.conns.get(key.0, key.1) else {
            return;
        };
        let Phase::Params(req, raw) = std::mem::replace(&mut c.phase, Phase::Ending) else {
            return;
        };
        let p = match Params::parse(raw.freeze()) {
            Ok(p) => p,
            Err(why) => {
                put_answer(&mut c.out, req.id, StatusCode::BAD_REQUEST);
                self.error(&format!("malformed params: {why}"));
                return self.request_over(key, Next::Linger);
            }
        };
        let (id, start) = (req.id, req.start);
        let declared = match p.text("CONTENT_LENGTH").map(|v| v.trim().parse::<u64>()) {
            None => None,
            Some(Ok(n)) => Some(n),
            Some(Err(_)) => {
                c.phase = Phase::Params(req, BytesMut::new());
                self.error("CONTENT_LENGTH is not a number");
                self.refuse(key, id, &p, start, StatusCode::BAD_REQUEST);
                return self.request_over(key, Next::Linger);
            }
        };
        let state = self.cx.sh.state.clone();
        if declared.is_some_and(|n| n > state.max_body) {
            c.phase = Phase::Params(req, BytesMut::new());
            self.error("body over --max-body");
            self.refuse(key, id, &p, start, StatusCode::PAYLOAD_TOO_LARGE);
            return self.request_over(key, Next::Linger);
        }
        let spool = Spool::new(state.max_body, &state.disk);
        c.phase = Phase::Stdin(req, p, spool, declared);
        c.deadline = Some(Instant::now() + state.body_timeout);
    }

    fn stdin_done(&mut self, key: Key) {
        let Some(c) = self.conns.get(key.0, key.1) else {
            return;
        };
        let Phase::Stdin(req, p, spool, declared) = std::mem::replace(&mut c.phase, Phase::Ending)
        else {
            return;
        };
        let (id, start) = (req.id, req.start);
        c.phase = Phase::Params(req, BytesMut::new());
        if declared.is_some_and(|n| n != spool.len()) {
            self.error("the body is not CONTENT_LENGTH bytes long");
            self.refuse(key, id, &p, start, StatusCode::BAD_REQUEST);
            return self.request_over(key, Next::Keep);
        }
        let upload = if declared.is_none() && spool.len() == 0 {
            None
        } else {
            match spool.finish() {
                Ok(u) => Some(u),
                Err(e) => {
                    self.error(&format!("request body: {e}"));
                    self.refuse_upload(key, id, &p, start, &e);
                    return self.request_over(key, Next::Keep);
                }
            }
        };
        let Some(c) = self.conns.get(key.0, key.1) else {
            return;
        };
        let Phase::Params(req, _) = std::mem::replace(&mut c.phase, Phase::Ending) else {
            return;
        };
        self.launch(key, req, p, upload);
    }

    /// Runs the script the params name, or answers why not.
    fn launch(&mut self, key: Key, req: Req, p: Params, upload: Option<Upload>) {
        let state = self.cx.sh.state.clone();
        let (id, start) = (req.id, req.start);
        let refused = |lp: &mut Loop, req: Req, r: Refusal| {
            if r.status != StatusCode::NOT_FOUND {
                let what = p.text("REQUEST_URI").unwrap_or("-");
                lp.error(&format!("{what}: {}", r.why));
            }
            lp.set_phase(key, Phase::Params(req, BytesMut::new()));
            lp.refuse(key, id, &p, start, r.status);
            lp.request_over(key, Next::Keep);
        };
        let (target, computed) = match params::target(&state.mapping, &p) {
            Ok(t) => t,
            Err(r) => return refused(self, req, r),
        };
        let opened = match state.mapping.open(&target) {
            Ok(o) => o,
            Err(r) => return refused(self, req, r),
        };
        let permit = match &state.limit {
            None => None,
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) if state.queue.is_zero() => {
                    self.set_phase(key, Phase::Params(req, BytesMut::new()));
                    self.refuse(key, id, &p, start, StatusCode::SERVICE_UNAVAILABLE);
                    return self.request_over(key, Next::Keep);
                }
                Err(_) => {
                    // Counted as waiting before the second try: a slot given back in
                    // between wakes this loop.
                    self.cx.sh.waiting.fetch_add(1, Ordering::SeqCst);
                    // Pairs with the fence in `Slot::drop`: either that drop sees this
                    // count, or this try sees its permit.
                    std::sync::atomic::fence(Ordering::SeqCst);
                    match sem.clone().try_acquire_owned() {
                        Ok(p) => {
                            self.cx.sh.waiting.fetch_sub(1, Ordering::SeqCst);
                            Some(p)
                        }
                        Err(_) => return self.queue(key, req, p, upload),
                    }
                }
            },
        }
        .map(|p| Slot::new(p, &self.cx.sh));
        // Running now: a local redirect later waits a whole `--queue` again if it must.
        let mut req = req;
        req.queue_until = None;
        let length = upload.as_ref().map(Upload::len);
        let env = params::environment(&p, &target, computed, length, &state.env);
        let method = p
            .get("REQUEST_METHOD")
            .and_then(|m| Method::from_bytes(m).ok())
            .unwrap_or(Method::GET);
        let args = search_args(&method, p.text("QUERY_STRING"));
        let name = log_name(&target);
        let mut cmd = match runner::command(&state, &target, &opened, args, env) {
            Ok(c) => c,
            Err(status) => {
                self.set_phase(key, Phase::Params(req, BytesMut::new()));
                self.refuse(key, id, &p, start, status);
                return self.request_over(key, Next::Keep);
            }
        };
        let not_run = |lp: &mut Loop, req: Req, e: crate::Error| {
            let status = runner::spawn_failed(&state, &name, &e);
            lp.set_phase(key, Phase::Params(req, BytesMut::new()));
            lp.refuse(key, id, &p, start, status);
            lp.request_over(key, Next::Keep);
        };
        let pipes = crate::fd::pipe().and_then(|o| Ok((o, crate::fd::pipe()?)));
        let ((out_r, out_w), (err_r, err_w)) = match pipes {
            Ok(p) => p,
            Err(e) => return not_run(self, req, e.context("pipe for the script")),
        };
        // The body: a file is the script's stdin itself; one in memory goes through a pipe.
        let mut feed = None;
        let mut disk = None;
        // The child's ends go by value: the spawn closes our copies once the child has them.
        let stdin = match upload {
            Some(Upload::File(f, _, r)) => {
                disk = Some(r);
                Stdio::from(OwnedFd::from(f))
            }
            Some(Upload::Memory(body, budget)) if !body.is_empty() => {
                let (r, w) = match crate::fd::pipe() {
                    Ok(p) => p,
                    Err(e) => return not_run(self, req, e.context("pipe for the body")),
                };
                feed = Some(Feed {
                    fd: w,
                    body,
                    _budget: budget,
                });
                Stdio::from(r)
            }
            _ => state.no_body(),
        };
        cmd.stdin(stdin)
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w));
        // The exec has happened when spawn returns: the open script may go.
        let spawned = cmd.spawn();
        drop(opened);
        let child = match spawned {
            Ok(c) => c,
            Err(e) => return not_run(self, req, e),
        };
        let pgid = child.id().unwrap_or(0) as i32;
        let ok = nonblocking(&out_r)
            && nonblocking(&err_r)
            && feed.as_ref().is_none_or(|f| nonblocking(&f.fd));
        let done: Done = {
            let (log, p) = (state.log.clone(), p.clone());
            Box::new(move |status, bytes, exit| {
                let line = params::access(&p, status, bytes, start.elapsed(), exit);
                log(&LogLine::Access(line));
            })
        };
        let job = Job {
            child,
            sup: Supervision::new(pgid, state.timeout.map(|t| Instant::now() + t)),
            stderr: Some(err_r),
            lines: StderrLines::default(),
            name: name.clone(),
            log: state.log.clone(),
            feed,
            disk,
            permit,
            live: Some(LiveGuard::new(&state.live, &state.load)),
            owner: Some(key),
            status: 0,
            bytes: 0,
            done: Some(done),
            discard: None,
            over_at: None,
            armed: None,
            poll_exit: false,
        };
        let (js, jg) = self.jobs.insert(job);
        let run = Run {
            job: (js, jg),
            stdout: Some(out_r),
            paused: false,
            stage: Stage::Head(HeadReader::new(state.max_header)),
            nph: target.nph,
            name,
            bodyless_method: method == Method::HEAD,
            status: 0,
            sent: 0,
            remaining: None,
            exit: None,
            over: false,
            cut: false,
            ended: false,
            errs: 0,
            held: Vec::new(),
        };
        let registered = ok
            && self.cx.watch(
                run.stdout.as_ref().expect("just set"),
                STDOUT,
                key.0,
                key.1,
                Want::READ,
            );
        self.set_phase(key, Phase::Running(req, p, Box::new(run)));
        if !(self.jobs.started(&mut self.cx, js, jg) && registered) {
            self.fail(
                key,
                StatusCode::INTERNAL_SERVER_ERROR,
                "epoll_ctl failed".into(),
            );
        }
    }

    /// Waits for a `max_children` slot, until `--queue` after the request first waited
    /// (a request that lost a free slot to another loop goes back to the front).
    fn queue(&mut self, key: Key, mut req: Req, p: Params, upload: Option<Upload>) {
        let counted = self.cx.sh.state.load.waiting();
        let again = req.queue_until.is_some();
        let until = *req
            .queue_until
            .get_or_insert_with(|| Instant::now() + self.cx.sh.state.queue);
        if again {
            self.queued.insert(0, key);
        } else {
            self.queued.push(key);
        }
        if let Some(c) = self.conns.get(key.0, key.1) {
            c.deadline = Some(until);
        }
        self.set_phase(key, Phase::Queued(req, p, upload, counted));
    }

    fn set_phase(&mut self, key: Key, phase: Phase) {
        if let Some(c) = self.conns.get(key.0, key.1) {
            c.phase = phase;
        }
    }

    /// A `max_children` slot may be free: the oldest waiting requests of this loop go.
    pub(super) fn retry_queued(&mut self) {
        while let Some(&key) = self.queued.first() {
            let Some(c) = self.conns.get(key.0, key.1) else {
                self.queued.remove(0);
                continue;
            };
            if !matches!(c.phase, Phase::Queued(..)) {
                self.queued.remove(0);
                continue;
            }
            let Some(sem) = self.cx.sh.state.limit.clone() else {
                return;
            };
            // The launch takes it (another loop may be quicker: then this request waits
            // again, at the end of the line).
            if sem.available_permits() == 0 {
                return;
            }
            self.queued.remove(0);
            let Phase::Queued(req, p, upload, counted) =
                std::mem::replace(&mut c.phase, Phase::Ending)
            else {
                continue;
            };
            drop(counted);
            self.cx.sh.waiting.fetch_sub(1, Ordering::SeqCst);
            self.launch(key, req, p, upload);
            self.conn_after(key);
        }
    }

    /// The script's stdout is readable.
    pub(super) fn stdout_ready(&mut self, slot: u32, generation: u32) {
        let key = (slot, generation);
        // A few reads per wake-up: a header block in pieces, or a body while the
        // connection takes it.
        for _ in 0..4 {
            if !self.stdout_once(key) {
                break;
            }
        }
        self.conn_after(key);
    }

    /// One read of stdout; `true` if another may follow at once.
    fn stdout_once(&mut self, key: Key) -> bool {
        let Some(c) = self.conns.get(key.0, key.1) else {
            return false;
        };
        let Phase::Running(_, _, run) = &mut c.phase else {
            return false;
        };
        if run.paused || c.out.len() >= COALESCE {
            return false;
        }
        let Some(fd) = &run.stdout else { return false };
        let n = match rustix::io::read(fd, &mut self.cx.scratch[..]) {
            Ok(n) => n,
            Err(rustix::io::Errno::AGAIN) => return false,
            Err(rustix::io::Errno::INTR) => return true,
            Err(e) => {
                if let Stage::Head(_) = run.stage {
                    let e = HeadError::Io(e.into());
                    let (status, why) = runner::no_head(&e, false, 0);
                    self.fail(key, status, why);
                } else {
                    self.conn_cut_short(key);
                }
                return false;
            }
        };
        match &mut run.stage {
            Stage::Head(h) => {
                if n == 0 {
                    let timed_out = run.cut;
                    let max = self.cx.sh.state.max_header;
                    let (status, why) = runner::no_head(&HeadError::Eof, timed_out, max);
                    self.fail(key, status, why);
                    return false;
                }
                match h.push(&self.cx.scratch[..n]) {
                    Head::More => true,
                    Head::Done(block, rest) => {
                        self.on_head(key, block, rest);
                        true
                    }
                    Head::TooLarge => {
                        let max = self.cx.sh.state.max_header;
                        let (status, why) = runner::no_head(&HeadError::TooLarge, false, max);
                        self.fail(key, status, why);
                        false
                    }
                }
            }
            Stage::Body if n == 0 => {
                self.body_eof(key);
                false
            }
            Stage::Body => {
                let data = Bytes::copy_from_slice(&self.cx.scratch[..n]);
                self.send(key, data);
                true
            }
            Stage::AtEof | Stage::StderrWait => false,
        }
    }

    /// The header block came: answer with it (or redirect, or fail).
    fn on_head(&mut self, key: Key, block: Bytes, rest: Bytes) {
        let Some(c) = self.conns.get(key.0, key.1) else {
            return;
        };
        let Phase::Running(req, _, run) = &mut c.phase else {
            return;
        };
        let reply = match runner::parse_head(run.nph, &block) {
            Ok(r) => r,
            Err(why) => return self.fail(key, StatusCode::BAD_GATEWAY, why),
        };
        match reply {
            Reply::LocalRedirect(location) => {
                let job = run.job;
                let stdout = run.stdout.take();
                req.depth += 1;
                let too_deep = req.depth > MAX_REDIRECTS;
                let id = req.id;
                self.jobs
                    .answered(job.0, job.1, StatusCode::FOUND.as_u16(), 0);
                if let Some(fd) = stdout {
                    self.cx.poll.delete(&fd);
                }
                if too_deep {
                    // The script's own answer was used: it ends on its own.
                    self.jobs.end(&mut self.cx, job.0, job.1, false);
                    if let Some(j) = self.jobs.get(job.0, job.1) {
                        j.owner = None;
                    }
                    self.error(&format!("more than {MAX_REDIRECTS} local redirects"));
                    if let Some(c) = self.conns.get(key.0, key.1) {
                        put_answer(&mut c.out, id, StatusCode::INTERNAL_SERVER_ERROR);
                    }
                    return self.request_over(key, Next::Keep);
                }
                let Some(c) = self.conns.get(key.0, key.1) else {
                    return;
                };
                let Phase::Running(req, p, _) = std::mem::replace(&mut c.phase, Phase::Ending)
                else {
                    return;
                };
                let p = p.redirected(&location);
                c.phase = Phase::Redirect(req, p, job);
                // The script ends on its own; its slot comes free when it is over.
                self.jobs.end(&mut self.cx, job.0, job.1, false);
            }
            Reply::Document {
                status,
                reason,
                headers,
            } => {
                run.status = status.as_u16();
                let mut head = format!(
                    "Status: {} {}\r\n",
                    status.as_u16(),
                    reason
                        .as_deref()
                        .or(status.canonical_reason())
                        .unwrap_or("")
                )
                .into_bytes();
                for (name, value) in &headers {
                    head.put_slice(name.as_str().as_bytes());
                    head.put_slice(b": ");
                    head.put_slice(value.as_bytes());
                    head.put_slice(b"\r\n");
                }
                head.put_slice(b"\r\n");
                record::put_stream(c.out.small(), record::STDOUT, req.id, &head);
                let job = run.job;
                self.jobs.answered(job.0, job.1, status.as_u16(), 0);
                let Some(c) = self.conns.get(key.0, key.1) else {
                    return;
                };
                let Phase::Running(req, _, run) = &mut c.phase else {
                    return;
                };
                let bodyless = run.bodyless_method
                    || status == StatusCode::NO_CONTENT
                    || status == StatusCode::NOT_MODIFIED;
                if bodyless {
                    let stdout = run.stdout.take();
                    if let Some(fd) = stdout {
                        self.cx.poll.delete(&fd);
                        self.jobs.discard_rest(&mut self.cx, job.0, job.1, fd);
                    }
                    if let Some(c) = self.conns.get(key.0, key.1) {
                        if let Phase::Running(_, _, run) = &mut c.phase {
                            run.ended = true;
                        }
                    }
                    return self.end_request(key);
                }
                run.stage = Stage::Body;
                run.remaining = content_length_of(&headers);
                let id = req.id;
                for line in std::mem::take(&mut run.held) {
                    put_stderr(&mut c.out, id, line);
                    run.errs += 1;
                }
                if !rest.is_empty() {
                    self.send(key, rest);
                }
            }
        }
    }

    /// Body bytes from stdout, trimmed to what `Content-Length` still allows.
    fn send(&mut self, key: Key, mut data: Bytes) {
        let Some(c) = self.conns.get(key.0, key.1) else {
            return;
        };
        let Phase::Running(req, _, run) = &mut c.phase else {
            return;
        };
        if let Some(left) = &mut run.remaining {
            if data.len() as u64 > *left {
                data.truncate(*left as usize);
            }
            *left -= data.len() as u64;
        }
        run.sent += data.len() as u64;
        let (job, status, sent) = (run.job, run.status, run.sent);
        if !data.is_empty() {
            c.out.put_stream(record::STDOUT, req.id, data);
        }
        let complete = run.remaining == Some(0);
        self.jobs.answered(job.0, job.1, status, sent);
        if complete {
            // Complete: the script may run on (bounded by the timeout), untouched.
            self.body_done(key);
        }
    }

    /// stdout ended: complete only if the script ended on its own.
    fn body_eof(&mut self, key: Key) {
        let Some(c) = self.conns.get(key.0, key.1) else {
            return;
        };
        let Phase::Running(_, _, run) = &mut c.phase else {
            return;
        };
        if let Some(fd) = run.stdout.take() {
            self.cx.poll.delete(&fd);
        }
        run.stage = Stage::AtEof;
        match run.exit {
            Some(exit) => self.eof_decide(key, Some(exit)),
            None => c.deadline = Some(Instant::now() + EXIT_WAIT),
        }
    }

    /// At stdout's EOF, with the exit (`None`: not within [`EXIT_WAIT`], so the script
    /// closed stdout on purpose and works on).
    fn eof_decide(&mut self, key: Key, exit: Option<Option<Exit>>) {
        let Some(c) = self.conns.get(key.0, key.1) else {
            return;
        };
        let Phase::Running(_, _, run) = &mut c.phase else {
            return;
        };
        let well = exit.is_none_or(|e| e.is_some_and(|e| e.signal == 0));
        if !well || run.cut || run.remaining.is_some_and(|n| n > 0) {
            // Cut short: no END_REQUEST, so the web server sees a truncated response.
            return self.conn_cut_short(key);
        }
        self.body_done(key);
    }

    /// The body is whole: the script may finish on its own; the rest of its stderr goes
    /// to the web server (bounded), then the end of the request.
    fn body_done(&mut self, key: Key) {
        let to_client = self.cx.sh.settings.stderr_to_client;
        let Some(c) = self.conns.get(key.0, key.1) else {
            return;
        };
        let Phase::Running(_, _, run) = &mut c.phase else {
            return;
        };
        if let Some(fd) = run.stdout.take() {
            self.cx.poll.delete(&fd);
        }
        let job = run.job;
        run.ended = true;
        let wait = to_client && !run.over;
        if wait {
            run.stage = Stage::StderrWait;
            c.deadline = Some(Instant::now() + STDERR_WAIT);
        }
        self.jobs.end(&mut self.cx, job.0, job.1, false);
        if !wait {
            self.end_request(key);
        }
    }

    /// Ends the streams and the request.
    fn end_request(&mut self, key: Key) {
        let Some(c) = self.conns.get(key.0, key.1) else {
            return;
        };
        let Phase::Running(req, _, run) = &mut c.phase else {
            return;
        };
        let id = req.id;
        record::put_stream(c.out.small(), record::STDOUT, id, b"");
        if run.errs > 0 {
            record::put_stream(c.out.small(), record::STDERR, id, b"");
        }
        let app_status = match run.exit {
            Some(Some(e)) if e.signal != 0 => 128 + e.signal as u32,
            Some(Some(e)) => e.status as u32,
            _ => 0,
        };
        record::put_end(c.out.small(), id, app_status, record::REQUEST_COMPLETE);
        let job = run.job;
        // Done with the job; it still writes the access line when it is over.
        if let Some(j) = self.jobs.get(job.0, job.1) {
            if j.owner == Some(key) {
                j.owner = None;
            }
        }
        self.request_over(key, Next::Keep);
    }

    /// A response that cannot be completed: what was sent goes out, without
    /// `END_REQUEST`, and the connection closes; the script's group is ended.
    fn conn_cut_short(&mut self, key: Key) {
        self.drop_run(key, true);
        self.request_over(key, Next::Close);
    }

    /// The script gave no usable answer: logged, answered with `status`.
    fn fail(&mut self, key: Key, status: StatusCode, why: String) {
        let Some(c) = self.conns.get(key.0, key.1) else {
            return;
        };
        let Phase::Running(req, _, run) = &mut c.phase else {
            return;
        };
        let (id, job) = (req.id, run.job);
        let name = run.name.clone();
        put_answer(&mut c.out, id, status);
        self.cx.log_error(format!("{name}: {why}"));
        self.jobs
            .answered(job.0, job.1, status.as_u16(), text(status).len() as u64);
        self.drop_run(key, true);
        self.request_over(key, Next::Keep);
    }

    /// Lets go of the running script: its stdout closes and, `abandoned` before its
    /// response was used to the end, its group ends.
    fn drop_run(&mut self, key: Key, abandoned: bool) {
        let Some(c) = self.conns.get(key.0, key.1) else {
            return;
        };
        let Phase::Running(_, _, run) = &mut c.phase else {
            return;
        };
        if let Some(fd) = run.stdout.take() {
            self.cx.poll.delete(&fd);
        }
        if !std::mem::replace(&mut run.ended, true) {
            let job = run.job;
            self.jobs.end(&mut self.cx, job.0, job.1, abandoned);
        }
    }

    fn abort(&mut self, key: Key) {
        let Some(c) = self.conns.get(key.0, key.1) else {
            return;
        };
        let id = c.phase.active().unwrap_or(0);
        if let Phase::Running(_, _, run) = &c.phase {
            if let Stage::StderrWait = run.stage {
                // The response is whole: end it as it would have ended.
                return self.end_request(key);
            }
            self.drop_run(key, true);
        }
        let Some(c) = self.conns.get(key.0, key.1) else {
            return;
        };
        record::put_end(c.out.small(), id, 0, record::REQUEST_COMPLETE);
        self.request_over(key, Next::Keep);
    }

    /// The request is over; what the connection does next.
    fn request_over(&mut self, key: Key, next: Next) {
        let Some(c) = self.conns.get(key.0, key.1) else {
            return;
        };
        let keep = match &c.phase {
            Phase::Idle | Phase::Ending => false,
            Phase::Params(r, _)
            | Phase::Stdin(r, ..)
            | Phase::Queued(r, ..)
            | Phase::Running(r, ..)
            | Phase::Redirect(r, ..) => r.keep,
        };
        if let Phase::Queued(..) = std::mem::replace(&mut c.phase, Phase::Ending) {
            self.cx.sh.waiting.fetch_sub(1, Ordering::SeqCst);
            self.queued.retain(|k| *k != key);
        }
        let Some(c) = self.conns.get(key.0, key.1) else {
            return;
        };
        match next {
            Next::Keep if keep && !c.read_shut => {
                c.phase = Phase::Idle;
                c.deadline = Some(Instant::now() + IDLE);
            }
            Next::Keep | Next::Close => {
                c.after = Some(After::Close);
                c.deadline = Some(Instant::now() + LAST_WRITE);
            }
            Next::Linger => {
                c.after = Some(After::Linger);
                c.deadline = Some(Instant::now() + LAST_WRITE);
            }
        }
    }

    /// The connection is closed (by the web server, an error, or its end): what runs for
    /// it is abandoned.
    fn conn_gone(&mut self, key: Key) {
        let Some(mut c) = self.conns.remove(key.0, key.1) else {
            return;
        };
        // What was answered before goes out if the socket takes it now (a peer that only
        // shut its write side still reads).
        let _ = c.out.write_nonblocking(&c.sock);
        self.cx.poll.delete(&c.sock);
        match std::mem::replace(&mut c.phase, Phase::Ending) {
            Phase::Running(_, _, mut run) => {
                if let Some(fd) = run.stdout.take() {
                    self.cx.poll.delete(&fd);
                }
                // A response used to its end (waiting for stderr) leaves its script alone.
                if !run.ended {
                    self.jobs.end(&mut self.cx, run.job.0, run.job.1, true);
                } else if let Some(j) = self.jobs.get(run.job.0, run.job.1) {
                    j.owner = None;
                }
            }
            Phase::Stdin(req, p, ..) => {
                // The web server went away mid-request: 400, as in HTTP mode (nginx).
                let line = params::access(&p, 400, 0, req.start.elapsed(), None);
                (self.cx.sh.state.log)(&LogLine::Access(line));
            }
            Phase::Queued(req, p, ..) => {
                self.cx.sh.waiting.fetch_sub(1, Ordering::SeqCst);
                self.queued.retain(|k| *k != key);
                let line = params::access(&p, 499, 0, req.start.elapsed(), None);
                (self.cx.sh.state.log)(&LogLine::Access(line));
            }
            Phase::Redirect(_, _, job) => {
                if let Some(j) = self.jobs.get(job.0, job.1) {
                    j.owner = None;
                }
            }
            _ => {}
        }
        drop(c);
        self.closed_one = true;
    }

    /// After every event of a connection: write what is queued, then set what it waits for.
    pub(super) fn conn_after(&mut self, key: Key) {
        let Some(c) = self.conns.get(key.0, key.1) else {
            return;
        };
        if !c.out.is_empty() {
            match c.out.write_nonblocking(&c.sock) {
                Ok(_) => {}
                Err(_) => return self.conn_gone(key),
            }
        }
        if c.out.is_empty() {
            match c.after {
                Some(After::Close) => return self.conn_gone(key),
                Some(After::Linger) if !c.shut => {
                    c.shut = true;
                    let _ = rustix::net::shutdown(&c.sock, rustix::net::Shutdown::Write);
                    c.deadline = Some(Instant::now() + LINGER);
                }
                _ => {}
            }
        }
        // Input is read while the answers to it are taken: a web server that sends records
        // and reads nothing fills its socket, not brood's memory.
        let want = Want {
            read: c.out.len() < COALESCE && !c.read_shut,
            write: !c.out.is_empty(),
        };
        if want != c.want {
            c.want = want;
            let t = Token {
                kind: CONN,
                slot: key.0,
                generation: key.1,
            };
            let _ = self.cx.poll.modify(&c.sock, t, want);
        }
        // The script's stdout is read while the web server takes the output.
        if let Phase::Running(_, _, run) = &mut c.phase {
            let pause = c.out.len() >= COALESCE;
            if let Some(fd) = &run.stdout {
                if pause != run.paused {
                    // Out of the set while paused, not registered for nothing: epoll
                    // reports a pipe's hang-up whatever was asked, and a script that exits
                    // while paused would wake the loop on every turn.
                    let t = Token {
                        kind: STDOUT,
                        slot: key.0,
                        generation: key.1,
                    };
                    if pause {
                        self.cx.poll.delete(fd);
                        run.paused = true;
                    } else if self.cx.poll.add(fd, t, Want::READ).is_ok() {
                        run.paused = false;
                    }
                }
            }
        }
        if let Some(at) = c.deadline {
            if c.armed.is_none_or(|a| at < a) {
                c.armed = Some(at);
                let t = Token {
                    kind: CONN,
                    slot: key.0,
                    generation: key.1,
                };
                self.cx.poll.at(at, t);
            }
        }
    }

    /// A connection's deadline may have come.
    pub(super) fn conn_time(&mut self, slot: u32, generation: u32) {
        let key = (slot, generation);
        let Some(c) = self.conns.get(slot, generation) else {
            return;
        };
        c.armed = None;
        let now = Instant::now();
        if c.deadline.is_none_or(|d| d > now) {
            return self.conn_after(key);
        }
        c.deadline = None;
        if c.after.is_some() {
            // Ending, and the output is not taken (or the linger is over).
            return self.conn_gone(key);
        }
        match &mut c.phase {
            Phase::Idle => return self.conn_gone(key),
            Phase::Params(..) => {
                self.error("params did not come in time");
                return self.conn_gone(key);
            }
            Phase::Stdin(req, p, ..) => {
                let (id, start, p) = (req.id, req.start, p.clone());
                let e = UploadError::Idle;
                self.error(&format!("request body: {e}"));
                self.refuse_upload(key, id, &p, start, &e);
                self.request_over(key, Next::Linger);
            }
            Phase::Queued(req, p, ..) => {
                let (id, start, p) = (req.id, req.start, p.clone());
                self.queued.retain(|k| *k != key);
                self.refuse(key, id, &p, start, StatusCode::SERVICE_UNAVAILABLE);
                self.request_over(key, Next::Keep);
            }
            Phase::Running(_, _, run) => match run.stage {
                Stage::AtEof => self.eof_decide(key, None),
                Stage::StderrWait => self.end_request(key),
                _ => {}
            },
            Phase::Redirect(..) | Phase::Ending => {}
        }
        self.conn_after(key);
    }

    /// The job of a connection saw its exit.
    pub(super) fn conn_job_exit(
        &mut self,
        slot: u32,
        generation: u32,
        job: Key,
        exit: Option<Exit>,
    ) {
        let key = (slot, generation);
        let Some(c) = self.conns.get(slot, generation) else {
            return;
        };
        let Phase::Running(_, _, run) = &mut c.phase else {
            return;
        };
        if run.job != job {
            return;
        }
        run.exit = Some(exit);
        if let Stage::AtEof = run.stage {
            self.eof_decide(key, Some(exit));
            self.conn_after(key);
        }
    }

    /// The job of a connection is over.
    pub(super) fn conn_job_over(
        &mut self,
        slot: u32,
        generation: u32,
        job: Key,
        exit: Option<Exit>,
    ) {
        let key = (slot, generation);
        let Some(c) = self.conns.get(slot, generation) else {
            return;
        };
        match &mut c.phase {
            Phase::Running(_, _, run) if run.job == job => {
                run.over = true;
                run.exit.get_or_insert(exit);
                if let Stage::StderrWait = run.stage {
                    self.end_request(key);
                }
            }
            Phase::Redirect(_, _, j) if *j == job => {
                let Phase::Redirect(req, p, _) = std::mem::replace(&mut c.phase, Phase::Ending)
                else {
                    return;
                };
                self.launch(key, req, p, None);
            }
            _ => return,
        }
        self.conn_after(key);
    }

    /// The timeout cut the job's stdout.
    pub(super) fn conn_cut(&mut self, slot: u32, generation: u32, job: Key) {
        let key = (slot, generation);
        let Some(c) = self.conns.get(slot, generation) else {
            return;
        };
        let Phase::Running(_, _, run) = &mut c.phase else {
            return;
        };
        if run.job != job {
            return;
        }
        run.cut = true;
        match run.stage {
            Stage::Head(_) => {
                let max = self.cx.sh.state.max_header;
                let (status, why) = runner::no_head(&HeadError::Eof, true, max);
                self.fail(key, status, why);
            }
            Stage::Body | Stage::AtEof => self.conn_cut_short(key),
            Stage::StderrWait => {}
        }
        self.conn_after(key);
    }

    /// A line the job's script wrote to stderr, for `FCGI_STDERR`.
    pub(super) fn conn_stderr_line(&mut self, slot: u32, generation: u32, job: Key, line: Vec<u8>) {
        let key = (slot, generation);
        let Some(c) = self.conns.get(slot, generation) else {
            return;
        };
        let Phase::Running(req, _, run) = &mut c.phase else {
            return;
        };
        if run.job != job {
            return;
        }
        match run.stage {
            Stage::Head(_) => {
                if run.held.len() < STDERR_QUEUE {
                    run.held.push(line);
                }
                return;
            }
            _ if c.out.len() >= COALESCE => return,
            _ => {
                put_stderr(&mut c.out, req.id, line);
                run.errs += 1;
            }
        }
        self.conn_after(key);
    }

    /// Answers `status` and writes the access line.
    fn refuse(&mut self, key: Key, id: u16, p: &Params, start: Instant, status: StatusCode) {
        self.refuse_text(key, id, p, start, status, text(status))
    }

    /// An answer about a request body that broke off, and its access line.
    fn refuse_upload(&mut self, key: Key, id: u16, p: &Params, start: Instant, e: &UploadError) {
        let body = text_saying(e.status(), e.sentence().unwrap_or(explain(e.status())));
        self.refuse_text(key, id, p, start, e.status(), body)
    }

    fn refuse_text(
        &mut self,
        key: Key,
        id: u16,
        p: &Params,
        start: Instant,
        status: StatusCode,
        body: String,
    ) {
        let Some(c) = self.conns.get(key.0, key.1) else {
            return;
        };
        let bytes = body.len() as u64;
        put_answer_text(&mut c.out, id, status, body);
        let line = params::access(p, status.as_u16(), bytes, start.elapsed(), None);
        (self.cx.sh.state.log)(&LogLine::Access(line));
    }
}

/// A short answer of brood's own: `Status`, a text body, the end of the request.
fn put_answer(out: &mut Out, id: u16, status: StatusCode) {
    put_answer_text(out, id, status, text(status));
}

fn put_answer_text(out: &mut Out, id: u16, status: StatusCode, body: String) {
    let head = format!(
        "Status: {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    record::put_stream(out.small(), record::STDOUT, id, head.as_bytes());
    record::put_stream(out.small(), record::STDOUT, id, b"");
    record::put_end(out.small(), id, 0, record::REQUEST_COMPLETE);
}

fn put_stderr(out: &mut Out, id: u16, mut line: Vec<u8>) {
    line.push(b'\n');
    record::put_stream(out.small(), record::STDERR, id, &line);
}
