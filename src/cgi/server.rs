//! The HTTP side: accept connections, serve HTTP/1.1 with keep-alive through hyper, and
//! answer each request by running its script.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::answer::{text, text_saying};
use super::auth::{Htpasswd, basic_credentials};
use super::body::ScriptBody;
use super::log::{Access, LogLine};
use super::map::{Opened, Target};
use super::meta::{self, Head, Peer};
use super::response::content_length_of;
use super::runner::{self, Outcome};
use super::script;
use super::state::State;
use super::tasks::{AbortOnDrop, accept_loop};
use super::upload::{Spool, Upload, UploadError, read_all};
use crate::error::Result;

// `fuzzing.rs` reaches the query's argv here.
pub(crate) use super::meta::search_args;

/// The response body type: a script's stdout or a short message of the server's.
type Body = UnsyncBoxBody<Bytes, io::Error>;

/// How long a client has to send a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Local redirects followed for one request before answering 500.
const MAX_REDIRECTS: usize = 10;

pub(crate) async fn serve(
    state: Arc<State>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let _stop = AbortOnDrop(state.tasks.clone());
    // At the connection limit, new connections wait in the listen backlog (an idle
    // keep-alive connection is closed after HEADER_READ_TIMEOUT without a request).
    let serve = |(tcp, remote): (TcpStream, SocketAddr), slot| {
        let Ok(local) = tcp.local_addr() else {
            return;
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
                // Past MAX_HEADERS brood answers 431 itself, with a body; past this, hyper
                // does, without one.
                .max_headers(PARSED_HEADERS)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
            drop(slot);
        });
    };
    let log = state.log.clone();
    let bound = &listener;
    let accept = move || bound.accept();
    accept_loop(
        &state.connections,
        &log,
        "cgi: accept",
        accept,
        serve,
        shutdown,
    )
    .await?;
    // Graceful stop: no new connection; every running script's group gets SIGTERM, then
    // SIGKILL after the grace (its supervisor sees `stopping`); then the rest is aborted.
    drop(listener);
    state.stop_scripts().await;
    Ok(())
}

async fn handle(
    state: Arc<State>,
    peer: Peer,
    req: Request<Incoming>,
) -> std::result::Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    let head = Head {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
    };
    // RFC 9112 3.2: a server answers 400 to an HTTP/1.1 request without Host.
    if head.version == Version::HTTP_11
        && head.uri.authority().is_none()
        && !head.headers.contains_key(header::HOST)
    {
        return Ok(message(
            &state,
            &peer,
            &head,
            None,
            start,
            StatusCode::BAD_REQUEST,
        ));
    }
    // Every header becomes a variable of the script's environment: keep the whole within
    // what exec takes (one string over 128 KiB is E2BIG).
    let head_size: usize = head
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + head.uri.to_string().len();
    if head_size > MAX_REQUEST_HEAD || head.headers.len() > MAX_HEADERS {
        let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        return Ok(message(&state, &peer, &head, None, start, status));
    }
    let user = match &state.auth {
        None => None,
        Some(auth) => match authenticate(auth.clone(), &head).await {
            Some(user) => Some(user),
            None => return Ok(unauthorized(&state, &peer, &head, start)),
        },
    };
    Ok(respond(state, peer, head, Some(body), user, 0).await)
}

/// The user of valid Basic credentials, checked off the async threads (bcrypt is slow).
async fn authenticate(auth: Arc<Htpasswd>, head: &Head) -> Option<String> {
    let (user, password) = basic_credentials(head.headers.get(header::AUTHORIZATION)?.as_bytes())?;
    tokio::task::spawn_blocking(move || auth.check(&user, &password).then_some(user))
        .await
        .ok()
        .flatten()
}

/// 401 with the challenge.
fn unauthorized(state: &State, peer: &Peer, head: &Head, start: Instant) -> Response<Body> {
    let mut resp = message(state, peer, head, None, start, StatusCode::UNAUTHORIZED);
    let realm = state.realm.replace(['"', '\\'], "");
    if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\"")) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// The largest request head (target and headers) that is passed to a script.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// The most request headers passed to a script (hyper's default limit).
const MAX_HEADERS: usize = 100;

/// The most headers hyper parses (on the heap, per request): requests with more than
/// [`MAX_HEADERS`] up to this many get brood's 431 with a body, beyond it hyper's own 431.
const PARSED_HEADERS: usize = 1000;

/// A short plain-text answer from the server itself, logged.
fn message(
    state: &State,
    peer: &Peer,
    head: &Head,
    user: Option<&str>,
    start: Instant,
    status: StatusCode,
) -> Response<Body> {
    message_text(state, peer, head, user, start, status, text(status))
}

/// [`message`] with a body of its own.
#[allow(
    clippy::too_many_arguments,
    reason = "the parts of the access line and the answer"
)]
fn message_text(
    state: &State,
    peer: &Peer,
    head: &Head,
    user: Option<&str>,
    start: Instant,
    status: StatusCode,
    body: String,
) -> Response<Body> {
    let bytes = body.len() as u64;
    log_access(state, peer, head, user, status.as_u16(), bytes, start, None);
    short_text(status, body)
}

/// A short plain-text answer whose access line the supervisor writes.
fn short(status: StatusCode) -> Response<Body> {
    short_text(status, text(status))
}

fn short_text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
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

#[allow(
    clippy::too_many_arguments,
    reason = "one access-log line is made of these eight parts"
)]
fn log_access(
    state: &State,
    peer: &Peer,
    head: &Head,
    user: Option<&str>,
    status: u16,
    bytes: u64,
    start: Instant,
    exit: Option<crate::Exit>,
) {
    let header = |name| {
        head.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    (state.log)(&LogLine::Access(Access {
        remote: peer.remote,
        method: head.method.to_string(),
        target: head
            .uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.to_string()),
        protocol: meta::protocol(head.version).to_string(),
        // Nothing was answered: the client went away first (nginx's 499).
        status: if status == 0 { 499 } else { status },
        bytes,
        elapsed: start.elapsed(),
        exit,
        user: user.map(str::to_string),
        referer: header(header::REFERER),
        user_agent: header(header::USER_AGENT),
        time: std::time::SystemTime::now(),
    }));
}

/// The request's `Content-Length`, when it has one and is not chunked.
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
    user: Option<String>,
    depth: usize,
) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
    Box::pin(async move {
        let start = Instant::now();
        let user_ref = user.as_deref();
        let refused = |why: &str, status| {
            if status != StatusCode::NOT_FOUND {
                (state.log)(&LogLine::Error(format!(
                    "{} {}: {why}",
                    head.method,
                    head.uri.path(),
                )));
            }
            message(&state, &peer, &head, user_ref, start, status)
        };
        let target = match state.mapping.resolve(head.uri.path()) {
            Ok(t) => t,
            Err(r) => return refused(&r.why, r.status),
        };
        let opened = match state.mapping.open(&target) {
            Ok(o) => o,
            Err(r) => return refused(&r.why, r.status),
        };
        let has_body = body.is_some()
            && (head.headers.contains_key(header::TRANSFER_ENCODING)
                || head.headers.contains_key(header::CONTENT_LENGTH));
        let upload = match body.filter(|_| has_body) {
            None => None,
            Some(body) => match match content_length(&head)
                .and_then(|n| Spool::refuse(n, state.max_body, &state.disk))
            {
                // Refused from its Content-Length, before a byte is read.
                Some(e) => Err(e),
                None => read_all(body, state.max_body, &state.disk, state.body_timeout).await,
            } {
                Ok(u) => Some(u),
                Err(UploadError::Broken { gone: true, .. }) => {
                    // The client went away mid-request: 400, as nginx logs it (499 is for a
                    // whole request whose client left before the answer).
                    let status = StatusCode::BAD_REQUEST;
                    log_access(&state, &peer, &head, user_ref, 400, 0, start, None);
                    return short(status);
                }
                Err(e) => {
                    let why = format!("request body: {e}");
                    let Some(sentence) = e.sentence() else {
                        return refused(&why, e.status());
                    };
                    (state.log)(&LogLine::Error(format!(
                        "{} {}: {why}",
                        head.method,
                        head.uri.path()
                    )));
                    let body = text_saying(e.status(), sentence);
                    return message_text(&state, &peer, &head, user_ref, start, e.status(), body);
                }
            },
        };
        let Some(permit) = state.slot().await else {
            let status = StatusCode::SERVICE_UNAVAILABLE;
            return message(&state, &peer, &head, user_ref, start, status);
        };
        let job = Job {
            peer,
            head,
            user,
            depth,
            target,
            opened,
            upload,
            permit,
            start,
        };
        run_script(state, job).await
    })
}

/// One request ready to run: its script opened, its body read, its slot taken.
struct Job {
    peer: Peer,
    head: Head,
    user: Option<String>,
    depth: usize,
    target: Target,
    opened: Opened,
    upload: Option<Upload>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    start: Instant,
}

async fn run_script(state: Arc<State>, job: Job) -> Response<Body> {
    let Job {
        peer,
        head,
        user,
        depth,
        target,
        opened,
        upload,
        permit,
        start,
    } = job;
    let length = upload.as_ref().map(Upload::len);
    let env = state
        .env
        .iter()
        .cloned()
        .chain(meta::variables(
            &head,
            &target,
            &peer,
            length,
            user.as_deref(),
        ))
        .collect();
    let name = runner::log_name(&target);
    let done = {
        let (state, head, user) = (state.clone(), head.clone(), user.clone());
        move |shared: &script::Shared, exit| {
            let status = shared.status.load(Ordering::Relaxed);
            let bytes = shared.bytes.load(Ordering::Relaxed);
            log_access(
                &state,
                &peer,
                &head,
                user.as_deref(),
                status,
                bytes,
                start,
                exit,
            );
        }
    };
    let launch = runner::Launch {
        args: search_args(&head.method, head.uri.query()),
        target,
        opened,
        env,
        upload,
        permit,
        log: state.log.clone(),
    };
    let (status, reason, headers, rest, run) = match runner::launch(&state, launch, done).await {
        Outcome::NotRun(status) => {
            return message(&state, &peer, &head, user.as_deref(), start, status);
        }
        Outcome::Failed(status) => return short(status),
        Outcome::LocalRedirect(location) => {
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
            return respond(state.clone(), peer, again, None, user, depth + 1).await;
        }
        Outcome::Document {
            status,
            reason,
            headers,
            rest,
            run,
        } => (status, reason, headers, rest, run),
    };
    let bodyless = head.method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let body = if bodyless {
        // Nothing of stdout goes out: it is read and dropped, so the script may finish on
        // its own.
        state.tasks.spawn(run.discard_rest());
        Empty::new().map_err(|never| match never {}).boxed_unsync()
    } else {
        ScriptBody::new(rest, run, content_length_of(&headers)).boxed_unsync()
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
