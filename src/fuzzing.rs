//! Thin entry points into brood's internal parsers, for the fuzz targets (`fuzz/`) and the
//! property tests (`tests/prop_*.rs`). Not part of brood's API: names and types here follow
//! the internals and change with them. Each function is a wrapper of a few lines, so when a
//! parser moves only this file changes. See `docs/testing.md`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use hyper::{Response, StatusCode};

use crate::cgi::map::{Mapping, Target};
use crate::cgi::response::{self, Reply};

/// What a CGI header block makes brood do.
#[derive(Debug)]
pub enum CgiReply {
    /// The response head brood sends (status, headers, reason phrase extension), built the
    /// way `cgi/server.rs` builds it; the body is the rest of the script's stdout.
    Document(Response<()>),
    /// A local redirect to this path (the request is answered as if made for it).
    LocalRedirect(String),
}

/// Parses a CGI header block (`nph`: an NPH script's own status line and headers) and
/// builds the response head the server would send.
pub fn cgi_reply(block: &[u8], nph: bool) -> Result<CgiReply, String> {
    let reply = if nph {
        response::parse_nph(block)?
    } else {
        response::parse_cgi(block)?
    };
    Ok(match reply {
        Reply::LocalRedirect(path) => CgiReply::LocalRedirect(path),
        Reply::Document {
            status,
            reason,
            headers,
        } => CgiReply::Document(document(status, reason, headers)),
    })
}

/// The same steps as the end of `cgi/server.rs`'s `run_script`.
fn document(status: StatusCode, reason: Option<String>, headers: hyper::HeaderMap) -> Response<()> {
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    if let Some(reason) = reason.filter(|r| Some(r.as_str()) != status.canonical_reason()) {
        if let Ok(r) = hyper::ext::ReasonPhrase::try_from(reason.into_bytes()) {
            resp.extensions_mut().insert(r);
        }
    }
    resp
}

/// Where the header block in `buf` ends, scanning from `from` as the reading loop does
/// (`(end of block, start of body)`).
pub fn cgi_head_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    response::find_end_from(buf, from)
}

/// A request path resolved to a script.
#[derive(Debug, Clone)]
pub struct CgiTarget {
    /// The file that runs (`SCRIPT_FILENAME`).
    pub file: PathBuf,
    /// `SCRIPT_NAME`, decoded.
    pub script_name: OsString,
    /// `PATH_INFO`, decoded.
    pub path_info: OsString,
    /// Whether the script is NPH.
    pub nph: bool,
}

impl From<Target> for CgiTarget {
    fn from(t: Target) -> CgiTarget {
        CgiTarget {
            file: t.file,
            script_name: t.script_name,
            path_info: t.path_info,
            nph: t.nph,
        }
    }
}

/// Resolves a raw request path (`uri.path()`) under a scripts directory `root` (absolute
/// and canonical) mounted at `prefix`: the target, or the status of the refusal.
pub fn cgi_resolve_root(root: &Path, prefix: &str, path: &str) -> Result<CgiTarget, u16> {
    let m = Mapping::Root {
        root: root.to_path_buf(),
        prefix: prefix.to_string(),
    };
    resolve_and_open(&m, path)
}

/// What the server does with a request path: resolve it, then open the file and check
/// where the open file really is (the root check lives in that second step). The target
/// names the real file that would run.
fn resolve_and_open(m: &Mapping, path: &str) -> Result<CgiTarget, u16> {
    let target = m.resolve(path).map_err(|r| r.status.as_u16())?;
    let opened = m.open(&target).map_err(|r| r.status.as_u16())?;
    let mut t = CgiTarget::from(target);
    t.file = opened.real;
    Ok(t)
}

/// Resolves a raw request path for a single script `file` mounted at `prefix`.
pub fn cgi_resolve_script(file: &Path, prefix: &str, path: &str) -> Result<CgiTarget, u16> {
    let m = Mapping::Script {
        file: file.to_path_buf(),
        prefix: prefix.to_string(),
    };
    resolve_and_open(&m, path)
}

/// The script's arguments for a `GET` request's query string (RFC 3875 4.4 search
/// strings; other methods never get any).
pub fn cgi_argv(query: Option<&str>) -> Vec<OsString> {
    crate::cgi::server::search_args(&hyper::Method::GET, query)
}

/// A control-socket line as the master understands it (`None`: refused).
pub fn cluster_control(line: &str) -> Option<String> {
    crate::cluster::control::parse(line).map(|r| format!("{r:?}"))
}

/// The CGI meta-variables brood sets for a request (method, target, headers) to the script
/// `script_name` (`PATH_INFO` `path_info`) under `/srv/www`, from 192.0.2.1:40000 to
/// 127.0.0.1:8080.
pub fn cgi_variables(
    request: &hyper::Request<()>,
    script_name: &str,
    path_info: &str,
    content_length: Option<u64>,
) -> Vec<(OsString, OsString)> {
    use crate::cgi::meta::{self, Head, Peer};
    let head = Head {
        method: request.method().clone(),
        uri: request.uri().clone(),
        version: request.version(),
        headers: request.headers().clone(),
    };
    let target = Target {
        file: PathBuf::from("/srv/www").join(script_name.trim_start_matches('/')),
        dir: PathBuf::from("/srv/www"),
        script_name: script_name.into(),
        path_info: path_info.into(),
        document_root: PathBuf::from("/srv/www"),
        nph: false,
    };
    let peer = Peer {
        remote: "192.0.2.1:40000".parse().expect("an address"),
        local: "127.0.0.1:8080".parse().expect("an address"),
    };
    meta::variables(&head, &target, &peer, content_length, None)
}

/// The receive side of an IPC channel without its socket (`ipc/framing.rs`), with plain
/// numbers standing for handles.
#[derive(Debug, Default)]
pub struct IpcFramer(crate::ipc::framing::Framer<u32>);

impl IpcFramer {
    /// One read: its bytes and the handles that came with it.
    pub fn push(&mut self, bytes: &[u8], handles: Vec<u32>) {
        let n = bytes.len();
        self.0.space(n)[..n].copy_from_slice(bytes);
        self.0.commit(n, handles, None);
    }

    /// The next complete line (without its newline) and the handles bound to it.
    pub fn take_line(&mut self) -> Option<(Vec<u8>, Vec<u32>)> {
        self.0
            .take_line(|line, bound| (line.to_vec(), bound.handles))
    }

    /// Byte layer: copies unread bytes into `out`; their handles become pending.
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        self.0.read(out).unwrap_or(0)
    }

    /// The next pending handle.
    pub fn pop_pending(&mut self) -> Option<u32> {
        self.0.pop_pending()
    }

    /// Unread bytes.
    pub fn buffered(&self) -> usize {
        self.0.buffered()
    }
}

/// One FastCGI record as brood's record layer (`cgi/fastcgi/record.rs`) reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastCgiRecord {
    /// The record type.
    pub kind: u8,
    /// The request id.
    pub id: u16,
    /// The content (padding dropped).
    pub content: Vec<u8>,
}

/// Why the record layer gave no record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FastCgiEnd {
    /// End of input between two records.
    Eof,
    /// End of input inside a record.
    Truncated,
    /// A header whose version byte is not 1.
    BadVersion(u8),
    /// The reader failed.
    Io(String),
}

/// brood's FastCGI record reader over any byte source.
pub struct FastCgiReader<R>(crate::cgi::fastcgi::record::Reader<R>);

impl<R> std::fmt::Debug for FastCgiReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FastCgiReader")
    }
}

impl<R: tokio::io::AsyncRead + Unpin> FastCgiReader<R> {
    /// A reader of the records in `r`.
    pub fn new(r: R) -> FastCgiReader<R> {
        FastCgiReader(crate::cgi::fastcgi::record::Reader::new(r))
    }

    /// The next record (cancel-safe, as the connection uses it in `select!`).
    pub async fn next(&mut self) -> Result<FastCgiRecord, FastCgiEnd> {
        use crate::cgi::fastcgi::record::ReadError;
        match self.0.next().await {
            Ok(r) => Ok(FastCgiRecord {
                kind: r.kind,
                id: r.id,
                content: r.content.to_vec(),
            }),
            Err(ReadError::Eof) => Err(FastCgiEnd::Eof),
            Err(ReadError::Truncated) => Err(FastCgiEnd::Truncated),
            Err(ReadError::BadVersion(v)) => Err(FastCgiEnd::BadVersion(v)),
            Err(ReadError::Io(e)) => Err(FastCgiEnd::Io(e.to_string())),
        }
    }
}

/// A name and its value.
pub type FastCgiPair = (Vec<u8>, Vec<u8>);

/// FastCGI name-value pairs (`PARAMS`, `GET_VALUES`) as brood decodes them.
pub fn fastcgi_pairs(data: &[u8]) -> Result<Vec<FastCgiPair>, &'static str> {
    crate::cgi::fastcgi::record::pairs(data).map(|list| {
        list.into_iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect()
    })
}

/// One name-value pair, encoded as brood encodes it.
pub fn fastcgi_put_pair(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let mut b = bytes::BytesMut::new();
    crate::cgi::fastcgi::record::put_pair(&mut b, name, value);
    out.extend_from_slice(&b);
}

/// What a line of Node's IPC protocol is to brood (`ipc/node.rs`).
#[cfg(feature = "json")]
#[derive(Debug, Clone, PartialEq)]
pub enum NodeLine {
    /// The user's message.
    User(serde_json::Value),
    /// A `NODE_HANDLE`'s inner message, for the user with the handle.
    Handle(serde_json::Value),
    /// A `NODE_HANDLE` whose inner message is Node's own.
    InternalHandle,
    /// `NODE_HANDLE_ACK`.
    Ack,
    /// `NODE_HANDLE_NACK`.
    Nack,
    /// Another of Node's internal messages.
    Internal,
}

/// Classifies one received line (without its newline) as a channel in Node's protocol does.
#[cfg(feature = "json")]
pub fn node_classify(bytes: &[u8]) -> crate::Result<NodeLine> {
    use crate::ipc::node::{self, Line};
    Ok(match node::classify(bytes)? {
        Line::User(v) => NodeLine::User(v),
        Line::Handle(v) => NodeLine::Handle(v),
        Line::InternalHandle => NodeLine::InternalHandle,
        Line::Ack => NodeLine::Ack,
        Line::Nack => NodeLine::Nack,
        Line::Internal => NodeLine::Internal,
    })
}

/// The `NODE_HANDLE` line (with its newline) that sends `msg` with a handle of `kind`.
#[cfg(feature = "json")]
pub fn node_wrap(
    msg: &serde_json::Value,
    kind: crate::ipc::HandleType,
    ipv6: bool,
) -> crate::Result<Vec<u8>> {
    crate::ipc::node::wrap(msg, kind, ipv6)
}

/// The lines a channel in Node's protocol answers with.
#[cfg(feature = "json")]
pub const NODE_ACK: &[u8] = crate::ipc::node::ACK;
/// See [`NODE_ACK`].
#[cfg(feature = "json")]
pub const NODE_NACK: &[u8] = crate::ipc::node::NACK;

/// A worker as the master counts it from the bytes of its channel: each read summed into a
/// `cluster/proto.rs` `Report`, then applied the way `cluster/master.rs` applies it (and a
/// connection handed to it counted as `cluster/handoff.rs` counts it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkerCount {
    /// Connections open in the worker (`ctl status`'s OPEN).
    pub open: u64,
    /// Connections handled (HANDLED).
    pub handled: u64,
    /// The worker said it is ready.
    pub ready: bool,
    /// Reads that held a pong.
    pub pongs: u64,
    /// Events the worker's task sent the master (at most one a read).
    pub events: u64,
}

impl WorkerCount {
    /// One read of the worker's channel.
    pub fn read(&mut self, bytes: &[u8]) {
        let mut r = crate::cluster::proto::Report::default();
        r.add(bytes);
        if r.is_empty() {
            return;
        }
        self.events += 1;
        self.ready |= r.ready;
        self.pongs += u64::from(r.pong);
        self.open = r.apply(self.open);
        self.handled += u64::from(r.accepted);
    }

    /// The master handed the worker a connection.
    pub fn handed(&mut self) {
        self.handled += 1;
        self.open += 1;
    }
}
