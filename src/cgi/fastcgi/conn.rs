//! One FastCGI connection: requests one after another (`FCGI_MPXS_CONNS=0`; a second
//! `BEGIN_REQUEST` while one runs gets `FCGI_CANT_MPX_CONN`), each through the shared
//! script runner. Records that arrive while a script runs are still read: an
//! `ABORT_REQUEST` or the connection closing ends the script as a client disconnect does
//! in HTTP mode, and `GET_VALUES` is answered.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::out::Out;
use super::params::{self, Params};
use super::record::{self, ReadError, Reader, Record};
use crate::cgi::answer::{explain, text, text_saying};
use crate::cgi::body::ScriptBody;
use crate::cgi::log::{Log, LogLine};
use crate::cgi::map::Refusal;
use crate::cgi::meta::search_args;
use crate::cgi::response::content_length_of;
use crate::cgi::runner::{self, Outcome};
use crate::cgi::script::Shared;
use crate::cgi::state::State;
use crate::cgi::upload::{Spool, Upload, UploadError};

pub(crate) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// The FastCGI front's own settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Send the script's stderr lines to the web server as `FCGI_STDERR` too.
    pub stderr_to_client: bool,
    /// What `GET_VALUES` answers for `FCGI_MAX_CONNS` and `FCGI_MAX_REQS`.
    pub max_conns: usize,
}

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
/// Lines of stderr waiting to go to the web server, per request; more are only logged.
const STDERR_QUEUE: usize = 64;
/// How long the end of a response waits for the rest of stderr (with `stderr_to_client`).
const STDERR_WAIT: Duration = Duration::from_secs(1);
const MAX_REDIRECTS: usize = 10;
/// Output gathered from frames that are ready at once before one write.
const COALESCE: usize = 256 * 1024;

/// How a request left the connection.
enum Next {
    /// Whole: the next request may follow if the web server asked to keep the connection.
    Keep,
    /// Answered before its input was all read: drain, then close.
    Linger,
    /// Broken or gone: close now (a response cut short is one with no `END_REQUEST`).
    Close,
}

enum Event {
    Mine(Record),
    Abort,
    Gone,
    Timeout,
}

struct Conn {
    state: Arc<State>,
    settings: Arc<Settings>,
    reader: Reader<ReadHalf>,
    w: WriteHalf,
    out: Out,
}

pub(crate) async fn serve(state: Arc<State>, settings: Arc<Settings>, r: ReadHalf, w: WriteHalf) {
    let mut c = Conn {
        state,
        settings,
        reader: Reader::new(r),
        w,
        out: Out::default(),
    };
    let mut wait = PARAMS_TIMEOUT;
    loop {
        let (id, role, flags) = loop {
            match c.event(None, Instant::now() + wait).await {
                Event::Mine(rec) => match record::begin(&rec.content) {
                    Some((role, flags)) if rec.id != 0 => break (rec.id, role, flags),
                    _ => {
                        c.error("BEGIN_REQUEST with request id 0 or a short body");
                        return;
                    }
                },
                Event::Timeout | Event::Gone => return,
                Event::Abort => {}
            }
        };
        wait = IDLE;
        if role != record::RESPONDER {
            c.error(&format!("role {role} asked for; brood is a responder (1)"));
            record::put_end(c.out.small(), id, 0, record::UNKNOWN_ROLE);
            if c.flush().await.is_err() {
                return;
            }
            continue;
        }
        match c.request(id).await {
            Next::Keep if flags & record::KEEP_CONN != 0 => {}
            Next::Keep => break,
            Next::Linger => {
                let _ = c.w.shutdown().await;
                let _ = tokio::time::timeout(LINGER, c.reader.drain()).await;
                return;
            }
            Next::Close => return,
        }
    }
    let _ = c.w.shutdown().await;
}

impl Conn {
    fn error(&self, what: &str) {
        (self.state.log)(&LogLine::Error(format!("fastcgi: {what}")));
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.out.write_to(&mut self.w).await
    }

    /// Reads one record and handles it when it is not the request's own (cancel-safe:
    /// it only reads and queues answers in `out`). `None`: nothing for the caller.
    async fn next_for(&mut self, active: Option<u16>) -> Option<Event> {
        let rec = match self.reader.next().await {
            Ok(r) => r,
            Err(ReadError::Eof) => return Some(Event::Gone),
            Err(e) => {
                self.error(&e.to_string());
                return Some(Event::Gone);
            }
        };
        match rec.kind {
            record::GET_VALUES if rec.id == 0 => {
                self.get_values(&rec.content);
                None
            }
            record::BEGIN_REQUEST if active.is_none() => Some(Event::Mine(rec)),
            record::BEGIN_REQUEST if active == Some(rec.id) => {
                self.error("BEGIN_REQUEST for a request already running");
                Some(Event::Gone)
            }
            record::BEGIN_REQUEST => {
                // One request at a time per connection, as GET_VALUES says.
                record::put_end(self.out.small(), rec.id, 0, record::CANT_MPX_CONN);
                None
            }
            record::ABORT_REQUEST if active == Some(rec.id) => Some(Event::Abort),
            record::PARAMS | record::STDIN | record::DATA if active == Some(rec.id) => {
                Some(Event::Mine(rec))
            }
            // Records of requests not running are ignored (FastCGI 1.0, 3.3).
            record::ABORT_REQUEST | record::PARAMS | record::STDIN | record::DATA => None,
            kind => {
                self.error(&format!("record type {kind} is not one a web server sends"));
                record::put_unknown_type(self.out.small(), kind);
                None
            }
        }
    }

    /// The next event for the request `active` (or a `BEGIN_REQUEST` when none runs),
    /// answering management records on the way; `Timeout` at `deadline`.
    async fn event(&mut self, active: Option<u16>, deadline: Instant) -> Event {
        loop {
            let ev = tokio::select! {
                ev = self.next_for(active) => ev,
                () = tokio::time::sleep_until(deadline) => return Event::Timeout,
            };
            if self.flush().await.is_err() {
                return Event::Gone;
            }
            if let Some(ev) = ev {
                return ev;
            }
        }
    }

    fn get_values(&mut self, content: &[u8]) {
        let Ok(asked) = record::pairs(content) else {
            self.error("malformed GET_VALUES");
            return;
        };
        let mut body = BytesMut::new();
        let n = self.settings.max_conns.min(u32::MAX as usize).to_string();
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
        // One record, not a stream (which `put_stream` would cut at 16 KiB).
        let head = record::header(record::GET_VALUES_RESULT, 0, body.len());
        self.out.small().put_slice(&head);
        self.out.small().put_slice(&body);
    }

    /// A short answer of brood's own: `Status`, a text body, the end of the request.
    fn put_answer(&mut self, id: u16, status: StatusCode) {
        self.put_answer_text(id, status, text(status));
    }

    fn put_answer_text(&mut self, id: u16, status: StatusCode, body: String) {
        let head = format!(
            "Status: {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        record::put_stream(self.out.small(), record::STDOUT, id, head.as_bytes());
        record::put_stream(self.out.small(), record::STDOUT, id, b"");
        record::put_end(self.out.small(), id, 0, record::REQUEST_COMPLETE);
    }

    /// Answers `status` and writes the access line.
    async fn refuse(&mut self, id: u16, p: &Params, start: Instant, status: StatusCode) {
        self.refuse_text(id, p, start, status, text(status)).await
    }

    /// An answer about a request body that broke off, and its access line.
    async fn refuse_upload(&mut self, id: u16, p: &Params, start: Instant, e: &UploadError) {
        let body = text_saying(e.status(), e.sentence().unwrap_or(explain(e.status())));
        self.refuse_text(id, p, start, e.status(), body).await
    }

    async fn refuse_text(
        &mut self,
        id: u16,
        p: &Params,
        start: Instant,
        status: StatusCode,
        body: String,
    ) {
        let bytes = body.len() as u64;
        self.put_answer_text(id, status, body);
        let line = params::access(p, status.as_u16(), bytes, start.elapsed(), None);
        (self.state.log)(&LogLine::Access(line));
        let _ = self.flush().await;
    }

    async fn request(&mut self, id: u16) -> Next {
        let start = Instant::now();
        let p = match self.params(id).await {
            Ok(p) => p,
            Err(next) => return next,
        };
        let Some(stdin) = self.stdin(id, &p, start).await else {
            return Next::Close;
        };
        let (mut upload, stdin_read) = match stdin {
            Ok(u) => (u, true),
            Err(next) => return next,
        };
        let mut p = p;
        let mut depth = 0;
        let after = |read: bool| if read { Next::Keep } else { Next::Linger };
        loop {
            let (target, computed) = match params::target(&self.state.mapping, &p) {
                Ok(t) => t,
                Err(r) => return self.refused(id, &p, start, r, after(stdin_read)).await,
            };
            let opened = match self.state.mapping.open(&target) {
                Ok(o) => o,
                Err(r) => return self.refused(id, &p, start, r, after(stdin_read)).await,
            };
            let Some(permit) = self.state.slot().await else {
                self.refuse(id, &p, start, StatusCode::SERVICE_UNAVAILABLE)
                    .await;
                return after(stdin_read);
            };
            let length = upload.as_ref().map(Upload::len);
            let env = params::environment(&p, &target, computed, length, &self.state.env);
            let method = p
                .get("REQUEST_METHOD")
                .and_then(|m| Method::from_bytes(m).ok())
                .unwrap_or(Method::GET);
            let (log, stderr) = self.stderr_log();
            let done = {
                let (state, p) = (self.state.clone(), p.clone());
                move |shared: &Shared, exit| {
                    let status = shared.status.load(Ordering::Relaxed);
                    let bytes = shared.bytes.load(Ordering::Relaxed);
                    let line = params::access(&p, status, bytes, start.elapsed(), exit);
                    (state.log)(&LogLine::Access(line));
                }
            };
            let launch = runner::Launch {
                args: search_args(&method, p.text("QUERY_STRING")),
                target,
                opened,
                env,
                upload: upload.take(),
                permit,
                log,
            };
            let state = self.state.clone();
            let running = runner::launch(&state, launch, done);
            tokio::pin!(running);
            let outcome = loop {
                tokio::select! {
                    o = &mut running => break o,
                    ev = self.next_for(Some(id)) => match ev {
                        Some(Event::Abort) => return self.aborted(id).await,
                        Some(Event::Gone) => return Next::Close,
                        _ => {}
                    },
                }
                if self.flush().await.is_err() {
                    return Next::Close;
                }
            };
            match outcome {
                Outcome::NotRun(status) => {
                    self.refuse(id, &p, start, status).await;
                    return Next::Keep;
                }
                Outcome::Failed(status) => {
                    self.put_answer(id, status);
                    return if self.flush().await.is_ok() {
                        Next::Keep
                    } else {
                        Next::Close
                    };
                }
                Outcome::LocalRedirect(location) => {
                    depth += 1;
                    if depth > MAX_REDIRECTS {
                        self.error(&format!("more than {MAX_REDIRECTS} local redirects"));
                        self.put_answer(id, StatusCode::INTERNAL_SERVER_ERROR);
                        let _ = self.flush().await;
                        return Next::Keep;
                    }
                    p = p.redirected(&location);
                }
                Outcome::Document {
                    status,
                    reason,
                    headers,
                    rest,
                    run,
                } => {
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
                    record::put_stream(self.out.small(), record::STDOUT, id, &head);
                    let shared = run.shared.clone();
                    let bodyless = method == Method::HEAD
                        || status == StatusCode::NO_CONTENT
                        || status == StatusCode::NOT_MODIFIED;
                    if bodyless {
                        self.state.tasks.spawn(run.discard_rest());
                        return self.end(id, &shared, 0).await;
                    }
                    let body = ScriptBody::new(rest, run, content_length_of(&headers));
                    return self.stream(id, body, stderr, &shared).await;
                }
            }
        }
    }

    async fn refused(
        &mut self,
        id: u16,
        p: &Params,
        start: Instant,
        r: Refusal,
        next: Next,
    ) -> Next {
        if r.status != StatusCode::NOT_FOUND {
            let what = p.text("REQUEST_URI").unwrap_or("-");
            self.error(&format!("{what}: {}", r.why));
        }
        self.refuse(id, p, start, r.status).await;
        next
    }

    /// Reads the params up to their empty record, within [`PARAMS_TIMEOUT`] and
    /// [`MAX_PARAMS`].
    async fn params(&mut self, id: u16) -> Result<Params, Next> {
        let deadline = Instant::now() + PARAMS_TIMEOUT;
        let mut raw = BytesMut::new();
        loop {
            match self.event(Some(id), deadline).await {
                Event::Mine(rec) if rec.kind == record::PARAMS => {
                    if rec.content.is_empty() {
                        break;
                    }
                    if raw.len() + rec.content.len() > MAX_PARAMS {
                        self.error(&format!("params over {MAX_PARAMS} bytes"));
                        self.put_answer(id, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
                        let _ = self.flush().await;
                        return Err(Next::Linger);
                    }
                    raw.extend_from_slice(&rec.content);
                }
                Event::Mine(_) => {
                    self.error("STDIN or DATA before the end of PARAMS");
                    return Err(Next::Close);
                }
                Event::Abort => {
                    record::put_end(self.out.small(), id, 0, record::REQUEST_COMPLETE);
                    let _ = self.flush().await;
                    return Err(Next::Keep);
                }
                Event::Gone => return Err(Next::Close),
                Event::Timeout => {
                    self.error("params did not come in time");
                    return Err(Next::Close);
                }
            }
        }
        match record::pairs(&raw) {
            Ok(list) => Ok(Params(
                list.into_iter()
                    .map(|(n, v)| (n.to_vec(), v.to_vec()))
                    .collect(),
            )),
            Err(why) => {
                self.error(&format!("malformed params: {why}"));
                self.put_answer(id, StatusCode::BAD_REQUEST);
                let _ = self.flush().await;
                Err(Next::Linger)
            }
        }
    }

    /// Reads `FCGI_STDIN` whole (memory, then a temporary file), each record within the
    /// body timeout of the last. `None` when the connection is gone.
    async fn stdin(
        &mut self,
        id: u16,
        p: &Params,
        start: Instant,
    ) -> Option<Result<Option<Upload>, Next>> {
        let declared = match p.text("CONTENT_LENGTH").map(|v| v.trim().parse::<u64>()) {
            None => None,
            Some(Ok(n)) => Some(n),
            Some(Err(_)) => {
                self.error("CONTENT_LENGTH is not a number");
                self.refuse(id, p, start, StatusCode::BAD_REQUEST).await;
                return Some(Err(Next::Linger));
            }
        };
        if declared.is_some_and(|n| n > self.state.max_body) {
            self.error("body over --max-body");
            self.refuse(id, p, start, StatusCode::PAYLOAD_TOO_LARGE)
                .await;
            return Some(Err(Next::Linger));
        }
        let mut spool = Spool::new(self.state.max_body, &self.state.disk);
        loop {
            let deadline = Instant::now() + self.state.body_timeout;
            match self.event(Some(id), deadline).await {
                Event::Mine(rec) if rec.kind == record::STDIN => {
                    if rec.content.is_empty() {
                        break;
                    }
                    if let Err(e) = spool.push(&rec.content) {
                        self.error(&format!("request body: {e}"));
                        self.refuse_upload(id, p, start, &e).await;
                        return Some(Err(Next::Linger));
                    }
                }
                Event::Mine(_) => {}
                Event::Abort => return Some(Err(self.aborted(id).await)),
                Event::Gone => {
                    // The web server went away mid-request: 400, as in HTTP mode (nginx).
                    let line = params::access(p, 400, 0, start.elapsed(), None);
                    (self.state.log)(&LogLine::Access(line));
                    return None;
                }
                Event::Timeout => {
                    let e = UploadError::Idle;
                    self.error(&format!("request body: {e}"));
                    self.refuse_upload(id, p, start, &e).await;
                    return Some(Err(Next::Linger));
                }
            }
        }
        if declared.is_some_and(|n| n != spool.len()) {
            self.error("the body is not CONTENT_LENGTH bytes long");
            self.refuse(id, p, start, StatusCode::BAD_REQUEST).await;
            return Some(Err(Next::Keep));
        }
        if declared.is_none() && spool.len() == 0 {
            return Some(Ok(None));
        }
        match spool.finish() {
            Ok(u) => Some(Ok(Some(u))),
            Err(e) => {
                self.error(&format!("request body: {e}"));
                self.refuse_upload(id, p, start, &e).await;
                Some(Err(Next::Keep))
            }
        }
    }

    async fn aborted(&mut self, id: u16) -> Next {
        record::put_end(self.out.small(), id, 0, record::REQUEST_COMPLETE);
        match self.flush().await {
            Ok(()) => Next::Keep,
            Err(_) => Next::Close,
        }
    }

    /// The log for a script's stderr: the server's, and with `stderr_to_client` also a
    /// bounded queue of lines for `FCGI_STDERR`.
    fn stderr_log(&self) -> (Log, Option<mpsc::Receiver<String>>) {
        if !self.settings.stderr_to_client {
            return (self.state.log.clone(), None);
        }
        let (tx, rx) = mpsc::channel(STDERR_QUEUE);
        let log = self.state.log.clone();
        let both: Log = Arc::new(move |line: &LogLine| {
            log(line);
            if let LogLine::Stderr { line, .. } = line {
                let _ = tx.try_send(line.clone());
            }
        });
        (both, Some(rx))
    }

    /// Streams the body as `FCGI_STDOUT` (and stderr lines as `FCGI_STDERR`) while reading
    /// what the web server sends: an abort or a closed connection drops the body, which
    /// ends the script's group.
    async fn stream(
        &mut self,
        id: u16,
        mut body: ScriptBody,
        mut stderr: Option<mpsc::Receiver<String>>,
        shared: &Shared,
    ) -> Next {
        let mut errs = 0;
        // Bytes already there go out with the header block, in one write: `ready` means
        // "take what the body has now without waiting, then write".
        let mut ready = true;
        loop {
            if !ready && self.flush().await.is_err() {
                return Next::Close;
            }
            let data = tokio::select! {
                biased;
                f = body.frame() => f,
                ev = self.next_for(Some(id)), if !ready => match ev {
                    Some(Event::Abort) => {
                        drop(body);
                        return self.aborted(id).await;
                    }
                    Some(Event::Gone) => return Next::Close,
                    _ => continue,
                },
                Some(line) = recv(&mut stderr), if !ready => {
                    errs += 1;
                    let mut line = line.into_bytes();
                    line.push(b'\n');
                    record::put_stream(self.out.small(), record::STDERR, id, &line);
                    continue;
                }
                () = std::future::ready(()), if ready => {
                    ready = false;
                    continue;
                }
            };
            match data {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.out.put_stream(record::STDOUT, id, data);
                    }
                    // What stdout already holds goes out in the same write.
                    ready = self.out.len() < COALESCE;
                }
                // Cut short (the script died or timed out after its headers): no
                // END_REQUEST, so the web server sees a truncated response.
                Some(Err(_)) => {
                    let _ = self.flush().await;
                    return Next::Close;
                }
                None => break,
            }
        }
        if let Some(rx) = &mut stderr {
            // The rest of stderr: the queue closes when the supervisor is done with the
            // script (its stderr read to the end), right after its exit; bounded for a
            // script that works on after its output.
            let deadline = Instant::now() + STDERR_WAIT;
            while let Ok(Some(line)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                errs += 1;
                let mut line = line.into_bytes();
                line.push(b'\n');
                record::put_stream(self.out.small(), record::STDERR, id, &line);
            }
        }
        self.end(id, shared, errs).await
    }

    /// Ends the streams and the request.
    async fn end(&mut self, id: u16, shared: &Shared, errs: usize) -> Next {
        record::put_stream(self.out.small(), record::STDOUT, id, b"");
        if errs > 0 {
            record::put_stream(self.out.small(), record::STDERR, id, b"");
        }
        let app_status = match *shared.exit.borrow() {
            Some(Some(e)) if e.signal != 0 => 128 + e.signal as u32,
            Some(Some(e)) => e.status as u32,
            _ => 0,
        };
        record::put_end(self.out.small(), id, app_status, record::REQUEST_COMPLETE);
        match self.flush().await {
            Ok(()) => Next::Keep,
            Err(_) => Next::Close,
        }
    }
}

async fn recv(rx: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
