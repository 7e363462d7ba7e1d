//! The HTTP side: accept connections, serve HTTP/1.1 with keep-alive through hyper, and
//! answer each request by running its script.

use std::convert::Infallible;
use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use percent_encoding::percent_decode_str;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::body::{HeadError, ScriptBody, read_head};
use super::map::{Mapping, Target};
use super::meta::{self, Head, Peer};
use super::response::{Reply, parse_cgi, parse_nph};
use super::script::{self, Watch};
use super::{Access, Log, LogLine};
use crate::error::{Result, from_io};
use crate::{Command, Stdio};

/// The response body type: a script's stdout or a short message of the server's.
type Body = UnsyncBoxBody<Bytes, io::Error>;

/// How long a client has to send a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Local redirects followed for one request before answering 500.
const MAX_REDIRECTS: usize = 10;

/// Tasks of one server (connections, supervisors): aborted together when it stops, which
/// kills every script still running.
#[derive(Clone, Default)]
pub(crate) struct Tasks(Arc<Mutex<JoinSet<()>>>);

impl Tasks {
    pub(crate) fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        while set.try_join_next().is_some() {}
        set.spawn(fut);
    }

    pub(crate) fn abort_all(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).abort_all();
    }
}

/// Aborts a server's tasks when its `serve` future ends or is dropped.
pub(crate) struct AbortOnDrop(pub Tasks);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort_all();
    }
}

/// A server's fixed settings.
pub(crate) struct State {
    pub mapping: Mapping,
    pub env: Vec<(OsString, OsString)>,
    pub timeout: Option<Duration>,
    pub limit: Option<Arc<Semaphore>>,
    pub queue: Duration,
    pub max_header: usize,
    pub log: Log,
    pub tasks: Tasks,
}

/// Whether an accept error concerns one connection (go on) or the listener (stop).
pub(crate) fn accept_is_fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP)
    )
}

pub(crate) async fn serve(state: Arc<State>, listener: TcpListener) -> Result<()> {
    let _stop = AbortOnDrop(state.tasks.clone());
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) if accept_is_fatal(&e) => return Err(from_io(e, "cgi: accept")),
            Err(e) => {
                (state.log)(&LogLine::Error(format!("accept: {e}")));
                // Out of fds or memory: give running requests a moment to release some.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(local) = tcp.local_addr() else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let peer = Peer { remote, local };
        let st = state.clone();
        state.tasks.spawn(async move {
            let svc = service_fn(move |req| handle(st.clone(), peer, req));
            let _ = http1::Builder::new()
                .keep_alive(true)
                // A client gets this long to send a request head (slowloris).
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

async fn handle(
    state: Arc<State>,
    peer: Peer,
    req: Request<Incoming>,
) -> std::result::Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let head = Head {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
    };
    Ok(respond(state, peer, head, Some(body), 0).await)
}

/// A short plain-text answer from the server itself, logged.
fn message(
    state: &State,
    peer: &Peer,
    head: &Head,
    start: Instant,
    status: StatusCode,
) -> Response<Body> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    log_access(
        state,
        peer,
        head,
        status.as_u16(),
        text.len() as u64,
        start,
        None,
    );
    let mut resp = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn log_access(
    state: &State,
    peer: &Peer,
    head: &Head,
    status: u16,
    bytes: u64,
    start: Instant,
    exit: Option<crate::Exit>,
) {
    (state.log)(&LogLine::Access(Access {
        remote: peer.remote,
        method: head.method.to_string(),
        target: head
            .uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.to_string()),
        status,
        bytes,
        elapsed: start.elapsed(),
        exit,
    }));
}

/// RFC 3875 4.4: a query with no `=` is a search string, given to the script as
/// arguments (split on `+`, decoded); none when any word does not decode cleanly.
fn search_args(query: Option<&str>) -> Vec<OsString> {
    let Some(q) = query.filter(|q| !q.is_empty() && !q.contains('=')) else {
        return Vec::new();
    };
    let words: Vec<Vec<u8>> = q
        .split('+')
        .map(|w| percent_decode_str(w).collect())
        .collect();
    if words.iter().any(|w| w.contains(&0)) {
        return Vec::new();
    }
    words.into_iter().map(OsString::from_vec).collect()
}

/// `CONTENT_LENGTH`: the request's own, when its body is not chunked.
fn content_length(head: &Head) -> Option<u64> {
    if head.headers.contains_key(header::TRANSFER_ENCODING) {
        return None;
    }
    head.headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn respond(
    state: Arc<State>,
    peer: Peer,
    head: Head,
    body: Option<Incoming>,
    depth: usize,
) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
    Box::pin(async move {
        let start = Instant::now();
        let target = match state.mapping.resolve(head.uri.path()) {
            Ok(t) => t,
            Err(refusal) => {
                if refusal.status != StatusCode::NOT_FOUND {
                    (state.log)(&LogLine::Error(format!(
                        "{} {}: {}",
                        head.method,
                        head.uri.path(),
                        refusal.why
                    )));
                }
                return message(&state, &peer, &head, start, refusal.status);
            }
        };
        let permit = match &state.limit {
            None => None,
            Some(sem) => {
                let sem = sem.clone();
                let acquired = if state.queue.is_zero() {
                    sem.try_acquire_owned().ok()
                } else {
                    tokio::time::timeout(state.queue, sem.acquire_owned())
                        .await
                        .ok()
                        .and_then(|r| r.ok())
                };
                match acquired {
                    Some(p) => Some(p),
                    None => {
                        return message(
                            &state,
                            &peer,
                            &head,
                            start,
                            StatusCode::SERVICE_UNAVAILABLE,
                        );
                    }
                }
            }
        };
        run_script(state, peer, head, body, depth, target, permit, start).await
    })
}

#[allow(clippy::too_many_arguments)]
async fn run_script(
    state: Arc<State>,
    peer: Peer,
    head: Head,
    body: Option<Incoming>,
    depth: usize,
    target: Target,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    start: Instant,
) -> Response<Body> {
    let length = body.as_ref().and(content_length(&head));
    let has_body = body.is_some()
        && (length.is_some_and(|n| n > 0)
            || length.is_none() && head.headers.contains_key(header::TRANSFER_ENCODING));
    let mut cmd = Command::new(&target.file);
    cmd.args(search_args(head.uri.query()))
        .env_clear()
        .envs(state.env.iter().map(|(k, v)| (k, v)))
        .envs(meta::variables(&head, &target, &peer, length))
        .current_dir(&target.dir)
        .process_group(0)
        .kill_on_drop(true)
        .stdin(if has_body {
            Stdio::pipe_readable()
        } else {
            Stdio::ignore()
        })
        // A socket, not a kernel pipe: the supervisor's timeout cuts it with shutdown()
        // even while a grandchild holds the write end (script.rs).
        .stdout(Stdio::pipe_duplex())
        .stderr(Stdio::pipe_writable());
    let name = if target.script_name.is_empty() {
        target.file.display().to_string()
    } else {
        target.script_name.to_string_lossy().into_owned()
    };
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            (state.log)(&LogLine::Error(format!("{name}: {e}")));
            let status = match e.errno() {
                libc::EACCES | libc::EPERM => StatusCode::FORBIDDEN,
                // The file was found: ENOENT here is a missing `#!` interpreter.
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return message(&state, &peer, &head, start, status);
        }
    };
    let watch = Watch {
        body: if has_body { body } else { None },
        deadline: state.timeout.map(|t| Instant::now() + t),
        permit,
        name: name.clone(),
        log: state.log.clone(),
    };
    let done = {
        let (state, head) = (state.clone(), head.clone());
        move |shared: &script::Shared, exit| {
            let status = shared.status.load(Ordering::Relaxed);
            let bytes = shared.bytes.load(Ordering::Relaxed);
            log_access(&state, &peer, &head, status, bytes, start, exit);
        }
    };
    let (mut run, supervisor) = match script::start(child, watch, done) {
        Ok(x) => x,
        Err(e) => {
            (state.log)(&LogLine::Error(format!("{name}: {e}")));
            return message(
                &state,
                &peer,
                &head,
                start,
                StatusCode::INTERNAL_SERVER_ERROR,
            );
        }
    };
    state.tasks.spawn(supervisor);

    let fail = |run: script::Run, status: StatusCode, why: String| {
        (state.log)(&LogLine::Error(format!("{name}: {why}")));
        run.shared.status.store(status.as_u16(), Ordering::Relaxed);
        drop(run);
        short(status)
    };
    let (block, rest) = match read_head(&mut run.stdout, state.max_header).await {
        Ok(x) => x,
        Err(HeadError::Eof) if run.shared.timed_out.load(Ordering::SeqCst) => {
            return fail(
                run,
                StatusCode::GATEWAY_TIMEOUT,
                "timed out before its headers".into(),
            );
        }
        Err(HeadError::Eof) => {
            return fail(
                run,
                StatusCode::BAD_GATEWAY,
                "ended before its headers".into(),
            );
        }
        Err(HeadError::TooLarge) => {
            let why = format!("header block over {} bytes", state.max_header);
            return fail(run, StatusCode::BAD_GATEWAY, why);
        }
        Err(HeadError::Io(e)) => {
            return fail(run, StatusCode::BAD_GATEWAY, format!("reading stdout: {e}"));
        }
    };
    let reply = if target.nph {
        parse_nph(&block)
    } else {
        parse_cgi(&block)
    };
    let (status, reason, headers) = match reply {
        Err(why) => {
            return fail(
                run,
                StatusCode::BAD_GATEWAY,
                format!("bad header block: {why}"),
            );
        }
        Ok(Reply::LocalRedirect(location)) => {
            run.shared
                .status
                .store(StatusCode::FOUND.as_u16(), Ordering::Relaxed);
            run.finish_and_wait().await;
            if depth >= MAX_REDIRECTS {
                let why = format!("more than {MAX_REDIRECTS} local redirects");
                (state.log)(&LogLine::Error(format!("{name}: {why}")));
                return short(StatusCode::INTERNAL_SERVER_ERROR);
            }
            let Ok(uri) = location.parse::<Uri>() else {
                let why = format!("bad local Location {location:?}");
                (state.log)(&LogLine::Error(format!("{name}: {why}")));
                return short(StatusCode::BAD_GATEWAY);
            };
            let mut headers = head.headers.clone();
            headers.remove(header::CONTENT_LENGTH);
            headers.remove(header::CONTENT_TYPE);
            headers.remove(header::TRANSFER_ENCODING);
            let again = Head {
                method: Method::GET,
                uri,
                version: head.version,
                headers,
            };
            return respond(state.clone(), peer, again, None, depth + 1).await;
        }
        Ok(Reply::Document {
            status,
            reason,
            headers,
        }) => (status, reason, headers),
    };
    run.shared.status.store(status.as_u16(), Ordering::Relaxed);
    let body = if head.method == Method::HEAD {
        run.finish();
        Empty::new().map_err(|never| match never {}).boxed_unsync()
    } else {
        ScriptBody::new(rest, run).boxed_unsync()
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    if let Some(reason) = reason.filter(|r| Some(r.as_str()) != status.canonical_reason()) {
        if let Ok(r) = hyper::ext::ReasonPhrase::try_from(reason.into_bytes()) {
            resp.extensions_mut().insert(r);
        }
    }
    resp
}

/// A bodyless answer whose access line the supervisor writes.
fn short(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *resp.status_mut() = status;
    resp
}
