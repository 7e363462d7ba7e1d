//! Properties of brood's CGI parsing, shared by the fuzz targets (`fuzz/fuzz_targets/cgi_*.rs`)
//! and the property tests (`tests/prop_cgi.rs`). Each `check_*` panics when a property fails.
#![allow(
    dead_code,
    reason = "shared by a test binary and a fuzz target; each uses a part"
)]

use std::convert::Infallible;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use brood::fuzzing::{self, CgiReply, CgiTarget};
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------
// (a) The script's header block → the response brood sends.

/// Headers hyper frames itself: a script's own are dropped.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "te",
    "trailer",
];

/// Header lines of a block as RFC 3875 reads them: `(lowercase name, trimmed value)`,
/// continuation lines folded in. `None` when a line has no colon (the block is refused).
fn model_fields(block: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            let (_, v) = out.last_mut()?;
            let more = line.trim_ascii();
            if !more.is_empty() {
                if !v.is_empty() {
                    v.push(b' ');
                }
                v.extend_from_slice(more);
            }
            continue;
        }
        let colon = line.iter().position(|&b| b == b':')?;
        out.push((
            line[..colon].to_ascii_lowercase(),
            line[colon + 1..].trim_ascii().to_vec(),
        ));
    }
    Some(out)
}

/// A status as RFC 9110 writes it: exactly three digits, then optionally a space and a
/// reason. `None` for anything else.
fn model_status(v: &[u8]) -> Option<u16> {
    let code = v.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || !(v.len() == 3 || v[3] == b' ') {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// A body of unknown length that has not come yet, as a script's stdout: hyper frames it
/// itself and sends the head first.
struct Unsized;

impl Body for Unsized {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Pending
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// What hyper writes on the wire for `head` (with a body still to come), up to the end of
/// the response head.
pub fn wire_head(head: Response<()>) -> Vec<u8> {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
    }
    RT.with(|rt| {
        rt.block_on(async move {
            let (client, server) = tokio::io::duplex(1 << 16);
            let (parts, ()) = head.into_parts();
            let head = std::sync::Mutex::new(Some(parts));
            let svc = hyper::service::service_fn(move |_req| {
                let parts = head.lock().unwrap().take().expect("one request");
                async move { Ok::<_, Infallible>(Response::from_parts(parts, Unsized)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(server), svc);
            let client = async move {
                let mut client = client;
                client
                    .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let mut out = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                        out.truncate(end + 4);
                        return out;
                    }
                    let n = client.read(&mut buf).await.unwrap();
                    assert!(n > 0, "hyper wrote no complete head: {out:?}");
                    out.extend_from_slice(&buf[..n]);
                }
            };
            tokio::select! {
                out = client => out,
                r = conn => panic!("hyper ended the connection before answering: {r:?}"),
            }
        })
    })
}

/// A CGI (or NPH, `nph`) header block: brood answers with a response whose every header is
/// one the script sent (less hop-by-hop ones) and that hyper writes as exactly those lines,
/// with no CR or LF inside a field (no response splitting); a local redirect only for a
/// path that starts with one `/`; a `Status` (or NPH status line) parsed whole or refused.
pub fn check_cgi_reply(block: &[u8], nph: bool) {
    let reply = fuzzing::cgi_reply(block, nph);
    let fields = model_fields(if nph {
        block
            .iter()
            .position(|&b| b == b'\n')
            .map_or(&[][..], |i| &block[i + 1..])
    } else {
        block
    });
    let reply = match reply {
        Err(_) => return,
        Ok(r) => r,
    };
    let fields = fields.expect("a block with a line without a colon was accepted");
    match reply {
        CgiReply::LocalRedirect(path) => {
            assert!(!nph, "an NPH script's Location was followed");
            assert!(
                path.starts_with('/') && !path.starts_with("//"),
                "local redirect to {path:?}"
            );
            assert!(!path.contains(['\n', '\0']), "local redirect to {path:?}");
            let locs: Vec<_> = fields.iter().filter(|(n, _)| n == b"location").collect();
            assert_eq!(locs.len(), 1, "local redirect without exactly one Location");
            assert_eq!(locs[0].1, path.as_bytes());
            assert!(
                !fields.iter().any(|(n, _)| n == b"status"),
                "local redirect despite a Status"
            );
        }
        CgiReply::Document(resp) => {
            let status = resp.status();
            // The status: the script's own, parsed whole, or the CGI default.
            let said = if nph {
                let first = block.split(|&b| b == b'\n').next().unwrap_or(b"");
                let first = first.strip_suffix(b"\r").unwrap_or(first);
                let rest = first
                    .strip_prefix(b"HTTP/1.1 ")
                    .or_else(|| first.strip_prefix(b"HTTP/1.0 "))
                    .expect("NPH status line without HTTP/1.x accepted");
                Some(rest)
            } else {
                fields
                    .iter()
                    .find(|(n, _)| n == b"status")
                    .map(|(_, v)| v.as_slice())
            };
            match said {
                Some(v) => assert_eq!(
                    Some(status.as_u16()),
                    model_status(v),
                    "status {:?} taken as {status}",
                    String::from_utf8_lossy(v)
                ),
                None if fields.iter().any(|(n, _)| n == b"location") => {
                    assert_eq!(status, StatusCode::FOUND)
                }
                None => assert_eq!(status, StatusCode::OK),
            }
            assert!(
                status.as_u16() >= 200,
                "interim status {status} as a final answer"
            );
            // Every header sent is one the script wrote, not hop-by-hop.
            for (name, value) in resp.headers() {
                assert!(!HOP_BY_HOP.contains(&name.as_str()), "{name} passed on");
                assert!(
                    fields
                        .iter()
                        .any(|(n, v)| n == name.as_str().as_bytes() && v == value.as_bytes()),
                    "header {name}: {value:?} not in the script's block"
                );
                assert!(!value.as_bytes().contains(&b'\r') && !value.as_bytes().contains(&b'\n'));
            }
            let sent: Vec<(String, Vec<u8>)> = resp
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                .collect();
            // On the wire: hyper writes one status line and exactly these headers, plus its
            // own framing and date, and nothing else.
            let wire = wire_head(resp);
            let mut parsed = vec![httparse::EMPTY_HEADER; 8192];
            let mut r = httparse::Response::new(&mut parsed);
            match r.parse(&wire) {
                Ok(httparse::Status::Complete(n)) => assert_eq!(n, wire.len()),
                other => panic!("hyper wrote an unparsable head {other:?}: {wire:?}"),
            }
            assert_eq!(r.code, Some(status.as_u16()), "{wire:?}");
            let mut own = 0;
            let mut framing = Vec::new();
            for h in r.headers.iter() {
                let name = h.name.to_ascii_lowercase();
                if sent.iter().any(|(n, v)| *n == name && v == h.value) {
                    continue;
                }
                assert!(
                    matches!(
                        name.as_str(),
                        "date" | "content-length" | "transfer-encoding"
                    ),
                    "header {name}: {:?} on the wire that the script did not send: {wire:?}",
                    String::from_utf8_lossy(h.value)
                );
                own += 1;
                if name != "date" {
                    framing.push(name);
                }
            }
            assert_eq!(r.headers.len(), sent.len() + own, "{wire:?}");
            let cl = r
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
                .count();
            let te = r
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
            assert!(
                !(cl > 0 && te),
                "both Content-Length and Transfer-Encoding: {wire:?}"
            );
        }
    }
}

/// The header block's end found while reading in chunks (each scan resuming where the last
/// one could still match, as `read_head` does) is the first empty line of the whole input.
pub fn check_head_end(data: &[u8], chunks: &[usize]) {
    let model = || {
        let mut start = 0;
        loop {
            match data.get(start..) {
                Some([b'\n', ..]) => return Some((start, start + 1)),
                Some([b'\r', b'\n', ..]) => return Some((start, start + 2)),
                _ => {}
            }
            start += data.get(start..)?.iter().position(|&b| b == b'\n')? + 1;
        }
    };
    let mut len = 0;
    let mut found = None;
    for &c in chunks.iter().chain(std::iter::once(&usize::MAX)) {
        if len == data.len() {
            break;
        }
        let from = len.saturating_sub(2);
        len = len.saturating_add(c.max(1)).min(data.len());
        if let Some(end) = fuzzing::cgi_head_end(&data[..len], from) {
            found = Some(end);
            break;
        }
    }
    let want = model();
    assert_eq!(found, want, "input {data:?} read in chunks {chunks:?}");
}

// ---------------------------------------------------------------------------------------
// (b) Request path and query → script, SCRIPT_NAME, PATH_INFO, argv.

/// A scripts root made once per process: `a.cgi`, `nph-b`, `sub/c.cgi`, a data file that
/// is not executable, a symlink inside and two leading out, and a secret next to the root.
pub struct Tree {
    pub root: PathBuf,
    pub outside: PathBuf,
}

pub fn tree() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("brood-prop-cgi-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("www");
        let outside = base.join("outside");
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let exec = |p: &Path| {
            std::fs::write(p, "#!/bin/sh\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        exec(&root.join("a.cgi"));
        exec(&root.join("nph-b"));
        exec(&root.join("sub/c.cgi"));
        exec(&root.join("sub/deeper/d"));
        exec(&root.join("-x"));
        exec(&outside.join("secret"));
        exec(&base.join("secret"));
        std::fs::write(root.join("data.txt"), "plain").unwrap();
        std::os::unix::fs::symlink(root.join("sub/c.cgi"), root.join("link-in")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("link-out")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("dir-out")).unwrap();
        let root = std::fs::canonicalize(&root).unwrap();
        let outside = std::fs::canonicalize(&outside).unwrap();
        Tree { root, outside }
    })
}

fn merge_slashes(b: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    for &c in b {
        if !(c == b'/' && out.last() == Some(&b'/')) {
            out.push(c);
        }
    }
    out
}

fn decode(s: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(s).collect()
}

/// Properties of one resolution of `path` (raw, as `uri.path()` gives it) under `prefix`.
fn check_target(t: &CgiTarget, prefix: &str, path: &str, root: Option<&Path>) {
    let name = t.script_name.as_bytes();
    let info = t.path_info.as_bytes();
    if let Some(root) = root {
        let real = std::fs::canonicalize(&t.file).expect("the script exists");
        assert!(
            real.starts_with(root),
            "{path:?} ran {} outside the root",
            real.display()
        );
        assert!(!real.starts_with(&tree().outside));
        // SCRIPT_NAME: the prefix and clean segments.
        assert!(name.starts_with(prefix.as_bytes()), "SCRIPT_NAME {name:?}");
        for seg in name[prefix.len()..].split(|&b| b == b'/').skip(1) {
            assert!(
                !seg.is_empty() && seg != b"." && seg != b"..",
                "SCRIPT_NAME {:?}",
                String::from_utf8_lossy(name)
            );
        }
    } else {
        assert_eq!(name, prefix.as_bytes());
    }
    for b in [name, info] {
        assert!(!b.contains(&0), "NUL in a CGI variable for {path:?}");
        assert!(!b.split(|&c| c == b'/').any(|s| s == b".." || s == b"."));
    }
    assert!(info.is_empty() || info[0] == b'/', "PATH_INFO {info:?}");
    // SCRIPT_NAME + PATH_INFO is the decoded path (the script's name with its empty
    // segments merged; PATH_INFO as sent).
    let mut joined = name.to_vec();
    joined.extend_from_slice(info);
    let decoded = decode(path);
    if root.is_some() {
        assert_eq!(
            merge_slashes(&joined),
            merge_slashes(&decoded),
            "{path:?}: SCRIPT_NAME {:?} + PATH_INFO {:?}",
            t.script_name,
            t.path_info
        );
    } else {
        assert_eq!(joined, decoded, "{path:?}");
    }
    assert_eq!(
        t.nph,
        t.file
            .file_name()
            .is_some_and(|n| n.as_bytes().starts_with(b"nph-"))
    );
}

/// A request target (as a client sends it) under a root and under a single script, both at
/// `/cgi-bin`: the file that runs is inside the root whatever the encoding, SCRIPT_NAME and
/// PATH_INFO re-join to the decoded path, refusals are 400/403/404, and no argv word starts
/// with `-` or holds a NUL.
pub fn check_request_target(target: &[u8]) {
    let Ok(uri) = hyper::Uri::try_from(target) else {
        return;
    };
    let path = uri.path();
    let tree = tree();
    for prefix in ["/cgi-bin", ""] {
        match fuzzing::cgi_resolve_root(&tree.root, prefix, path) {
            Ok(t) => check_target(&t, prefix, path, Some(&tree.root)),
            Err(code) => assert!(matches!(code, 400 | 403 | 404), "{path:?}: {code}"),
        }
        let file = tree.root.join("a.cgi");
        match fuzzing::cgi_resolve_script(&file, prefix, path) {
            Ok(t) => {
                assert_eq!(t.file, file);
                check_target(&t, prefix, path, None);
            }
            Err(code) => assert!(matches!(code, 400 | 404), "{path:?}: {code}"),
        }
    }
    check_argv(&fuzzing::cgi_argv(uri.query()), uri.query());
}

fn check_argv(argv: &[OsString], query: Option<&str>) {
    for a in argv {
        let b = a.as_bytes();
        assert!(!b.starts_with(b"-"), "argv word {a:?} from query {query:?}");
        assert!(!b.contains(&0), "NUL in argv from {query:?}");
    }
    if let Some(q) = query {
        if q.contains('=') || q.is_empty() {
            assert!(argv.is_empty(), "argv {argv:?} from query {q:?}");
        }
    }
}

/// A request head as a client sends it → the script's meta-variables: every name is
/// `[A-Z][A-Z0-9_]*` and set once, no value holds a NUL, the request's own values arrive as
/// sent, and a header becomes `HTTP_*` only when no other header or meta-variable could
/// claim that name and the name is one a shell can use (only letters, digits and `-`; not
/// `Proxy` (httpoxy), credentials, or the two with their own variables).
pub fn check_request_head(raw: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(raw) else {
        return;
    };
    let mut b = hyper::Request::builder()
        .method(req.method.unwrap_or("GET"))
        .uri(req.path.unwrap_or("/"))
        .version(if req.version == Some(0) {
            hyper::Version::HTTP_10
        } else {
            hyper::Version::HTTP_11
        });
    for h in req.headers.iter() {
        b = b.header(h.name, h.value);
    }
    // What hyper refuses never reaches brood.
    let Ok(request) = b.body(()) else {
        return;
    };
    let file = tree().root.join("a.cgi");
    let (name, info) = match fuzzing::cgi_resolve_script(&file, "/cgi-bin", request.uri().path()) {
        Ok(t) => (
            t.script_name.to_string_lossy().into_owned(),
            t.path_info.to_string_lossy().into_owned(),
        ),
        Err(_) => ("/cgi-bin".to_string(), String::new()),
    };
    let length = request
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let vars = fuzzing::cgi_variables(&request, &name, &info, length);
    let mut seen = std::collections::BTreeSet::new();
    for (k, v) in &vars {
        let k = k.to_str().expect("an ASCII name");
        let mut chars = k.chars();
        assert!(
            chars.next().is_some_and(|c| c.is_ascii_uppercase())
                && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
            "variable name {k:?}"
        );
        assert!(seen.insert(k.to_string()), "{k} set twice: {vars:?}");
        assert!(!v.as_bytes().contains(&0), "NUL in {k}");
        assert!(
            !matches!(
                k,
                "HTTP_PROXY"
                    | "HTTP_AUTHORIZATION"
                    | "HTTP_PROXY_AUTHORIZATION"
                    | "HTTP_CONTENT_LENGTH"
                    | "HTTP_CONTENT_TYPE"
            ),
            "{k} from a request header"
        );
        if let Some(h) = k.strip_prefix("HTTP_") {
            let header = h.to_ascii_lowercase().replace('_', "-");
            assert!(
                request.headers().contains_key(header.as_str()),
                "{k} without a {header} header"
            );
        }
    }
    let get = |k: &str| {
        vars.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_bytes().to_vec())
    };
    assert_eq!(
        get("REQUEST_METHOD").unwrap(),
        request.method().as_str().as_bytes()
    );
    assert_eq!(
        get("QUERY_STRING").unwrap(),
        request.uri().query().unwrap_or("").as_bytes()
    );
    assert_eq!(get("SCRIPT_NAME").unwrap(), name.as_bytes());
    // PATH_INFO is unset, not empty, when the URL has none (as Apache and lighttpd do).
    if info.is_empty() {
        assert_eq!(get("PATH_INFO"), None);
    } else {
        assert_eq!(get("PATH_INFO").unwrap(), info.as_bytes());
    }
    assert_eq!(get("GATEWAY_INTERFACE").unwrap(), b"CGI/1.1");
    assert_eq!(
        get("CONTENT_LENGTH"),
        length.map(|n: u64| n.to_string().into_bytes())
    );
    // Each HTTP_* variable is the values of exactly one header that may have one.
    let skipped = |n: &str| {
        !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || matches!(
                n,
                "proxy"
                    | "authorization"
                    | "proxy-authorization"
                    | "content-length"
                    | "content-type"
                    // the body reaches the script de-chunked, with CONTENT_LENGTH
                    | "transfer-encoding"
            )
    };
    for name in request.headers().keys() {
        let n = name.as_str();
        let var = format!("HTTP_{}", n.to_ascii_uppercase().replace('-', "_"));
        if skipped(n) {
            continue;
        }
        let sep: &[u8] = if n == "cookie" { b"; " } else { b", " };
        let joined = request
            .headers()
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes())
            .collect::<Vec<_>>()
            .join(sep);
        assert_eq!(get(&var), Some(joined), "{n} → {var}");
    }
    for (k, _) in &vars {
        let k = k.to_str().unwrap();
        if let Some(h) = k.strip_prefix("HTTP_") {
            let from: Vec<_> = request
                .headers()
                .keys()
                .filter(|n| !skipped(n.as_str()))
                .filter(|n| n.as_str().to_ascii_uppercase().replace('-', "_") == h)
                .collect();
            assert_eq!(from.len(), 1, "{k} from {from:?}");
        }
    }
}
