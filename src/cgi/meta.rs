//! The script's environment: RFC 3875 meta-variables, and of the server's own environment
//! only `PATH` and what the operator passes on.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStringExt;

use hyper::header::{self, HeaderMap};
use hyper::{Method, Uri, Version};
use percent_encoding::percent_decode_str;

use super::map::Target;

/// The request line and headers: what the meta-variables are made from.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
}

/// Both ends of the connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

/// `PATH` when the server has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The part of every script's environment that is fixed at start: the server's `PATH`,
/// the variables named by `pass` (when the server has them), then `set`.
pub(crate) fn base_env(
    set: &[(OsString, OsString)],
    pass: &[OsString],
) -> Vec<(OsString, OsString)> {
    let mut env = vec![(
        OsString::from("PATH"),
        std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
    )];
    for name in pass {
        if let Some(v) = std::env::var_os(name) {
            env.push((name.clone(), v));
        }
    }
    env.extend(set.iter().cloned());
    env
}

/// Request headers that get no `HTTP_*` variable: `Proxy` (httpoxy: it would become
/// `HTTP_PROXY`), credentials (RFC 3875 4.1.18), the two that have their own, and
/// `Transfer-Encoding` (the script gets the body de-chunked, with `CONTENT_LENGTH`).
fn skipped(name: &str) -> bool {
    matches!(
        name,
        "proxy"
            | "authorization"
            | "proxy-authorization"
            | "content-length"
            | "content-type"
            | "transfer-encoding"
    )
}

/// `HTTP_ACCEPT_LANGUAGE` for `accept-language`.
fn http_name(name: &str) -> String {
    let mut out = String::with_capacity(5 + name.len());
    out.push_str("HTTP_");
    out.extend(name.chars().map(|c| match c {
        '-' => '_',
        c => c.to_ascii_uppercase(),
    }));
    out
}

/// `SERVER_NAME`: the Host header's host, else the address the connection came in on.
fn server_name(head: &Head, peer: &Peer) -> String {
    let host = head
        .uri
        .host()
        .map(str::to_string)
        .or_else(|| {
            let h = head.headers.get(header::HOST)?.to_str().ok()?;
            let uri: Uri = format!("http://{h}/").parse().ok()?;
            uri.host().map(str::to_string)
        })
        .filter(|h| !h.is_empty());
    host.unwrap_or_else(|| peer.local.ip().to_string())
}

pub(crate) fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_09 => "HTTP/0.9",
        _ => "HTTP/1.1",
    }
}

/// Every meta-variable for one run of `target`. `content_length` is the length of the body
/// the script gets on stdin (absent when the request has none); `user` is the user brood
/// authenticated, the only source of `REMOTE_USER`.
pub(crate) fn variables(
    head: &Head,
    target: &Target,
    peer: &Peer,
    content_length: Option<u64>,
    user: Option<&str>,
) -> Vec<(OsString, OsString)> {
    let mut v: Vec<(OsString, OsString)> = Vec::with_capacity(32);
    let mut set = |k: &str, val: OsString| v.push((k.into(), val));
    set("GATEWAY_INTERFACE", "CGI/1.1".into());
    set(
        "SERVER_SOFTWARE",
        concat!("brood/", env!("CARGO_PKG_VERSION")).into(),
    );
    set("SERVER_PROTOCOL", protocol(head.version).into());
    set("SERVER_NAME", server_name(head, peer).into());
    set("SERVER_PORT", peer.local.port().to_string().into());
    set("SERVER_ADDR", peer.local.ip().to_string().into());
    set("REQUEST_METHOD", head.method.as_str().into());
    set("REQUEST_SCHEME", "http".into());
    set(
        "REQUEST_URI",
        head.uri.path_and_query().map_or("/", |p| p.as_str()).into(),
    );
    set("QUERY_STRING", head.uri.query().unwrap_or("").into());
    set("SCRIPT_NAME", target.script_name.clone());
    set("SCRIPT_FILENAME", target.file.clone().into());
    set("DOCUMENT_ROOT", target.document_root.clone().into());
    // Unset, not empty, when the URL has none (as Apache and lighttpd do).
    if !target.path_info.is_empty() {
        set("PATH_INFO", target.path_info.clone());
        let mut t = target.document_root.clone().into_os_string().into_vec();
        t.extend_from_slice(target.path_info.as_encoded_bytes());
        set("PATH_TRANSLATED", OsString::from_vec(t));
    }
    set("REMOTE_ADDR", peer.remote.ip().to_string().into());
    set("REMOTE_HOST", peer.remote.ip().to_string().into());
    set("REMOTE_PORT", peer.remote.port().to_string().into());
    // For php-cgi and others that refuse to run unless a server set this.
    set("REDIRECT_STATUS", "200".into());
    if let Some(n) = content_length {
        set("CONTENT_LENGTH", n.to_string().into());
    }
    if let Some(t) = head.headers.get(header::CONTENT_TYPE) {
        set("CONTENT_TYPE", OsString::from_vec(t.as_bytes().to_vec()));
    }
    if let Some(u) = user {
        set("AUTH_TYPE", "Basic".into());
        set("REMOTE_USER", u.into());
    }
    // HTTP_* for the rest; names with anything but letters, digits and `-` are skipped, so
    // no header can pose as another (`X_Forwarded_For` as `X-Forwarded-For`) or as a
    // meta-variable, and every variable name is one a shell can use (`A|b` would not be).
    for name in head.headers.keys() {
        let n = name.as_str();
        if skipped(n) || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            continue;
        }
        let sep: &[u8] = if name == header::COOKIE { b"; " } else { b", " };
        let mut joined = Vec::new();
        for (i, val) in head.headers.get_all(name).iter().enumerate() {
            if i > 0 {
                joined.extend_from_slice(sep);
            }
            joined.extend_from_slice(val.as_bytes());
        }
        set(&http_name(n), OsString::from_vec(joined));
    }
    v
}

/// RFC 3875 4.4: a `GET`/`HEAD` query with no `=` is a search string, given to the script
/// as arguments (split on `+`, then decoded). None when any word does not decode cleanly
/// or starts with `-`, which a program would take as an option (php-cgi's CVE-2012-1823:
/// `?-d+allow_url_include%3d1`).
pub(crate) fn search_args(method: &Method, query: Option<&str>) -> Vec<OsString> {
    if !matches!(*method, Method::GET | Method::HEAD) {
        return Vec::new();
    }
    let Some(q) = query.filter(|q| !q.is_empty() && !q.contains('=')) else {
        return Vec::new();
    };
    let words: Vec<Vec<u8>> = q
        .split('+')
        .map(|w| percent_decode_str(w).collect())
        .collect();
    if words
        .iter()
        .any(|w| w.contains(&0) || w.first() == Some(&b'-') || w.contains(&b'='))
    {
        return Vec::new();
    }
    words.into_iter().map(OsString::from_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names() {
        assert_eq!(http_name("accept-language"), "HTTP_ACCEPT_LANGUAGE");
        assert!(skipped("proxy"));
    }
}
