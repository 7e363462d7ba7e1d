//! The script's environment: RFC 3875 meta-variables, and of the server's own environment
//! only `PATH` and what the operator passes on.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStringExt;

use base64::Engine;
use hyper::header::{self, HeaderMap};
use hyper::{Method, Uri, Version};

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
/// `HTTP_PROXY`), credentials (RFC 3875 4.1.18), and the two that have their own.
fn skipped(name: &str) -> bool {
    matches!(
        name,
        "proxy" | "authorization" | "proxy-authorization" | "content-length" | "content-type"
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

/// `AUTH_TYPE` and `REMOTE_USER` from an `Authorization` header (the user of Basic
/// credentials, as sent: brood does not check passwords).
fn auth(headers: &HeaderMap) -> (Option<String>, Option<Vec<u8>>) {
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return (None, None);
    };
    let (scheme, rest) = v.trim().split_once(' ').unwrap_or((v.trim(), ""));
    if scheme.is_empty() {
        return (None, None);
    }
    let user = if scheme.eq_ignore_ascii_case("basic") {
        base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()
            .map(|creds| {
                let end = creds.iter().position(|&b| b == b':').unwrap_or(creds.len());
                creds[..end].to_vec()
            })
            .filter(|u| !u.contains(&0))
    } else {
        None
    };
    let scheme = if scheme.eq_ignore_ascii_case("basic") {
        "Basic".to_string()
    } else {
        scheme.to_string()
    };
    (Some(scheme), user)
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_09 => "HTTP/0.9",
        _ => "HTTP/1.1",
    }
}

/// Every meta-variable for one run of `target`. `content_length` is the body's length when
/// the request said it (absent for chunked bodies and for requests without a body).
pub(crate) fn variables(
    head: &Head,
    target: &Target,
    peer: &Peer,
    content_length: Option<u64>,
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
    set("PATH_INFO", target.path_info.clone());
    if !target.path_info.is_empty() {
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
    let (auth_type, user) = auth(&head.headers);
    if let Some(t) = auth_type {
        set("AUTH_TYPE", t.into());
    }
    if let Some(u) = user {
        set("REMOTE_USER", OsString::from_vec(u));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_user() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            "Basic YWxpY2U6c2VjcmV0".parse().unwrap(),
        );
        let (t, u) = auth(&h);
        assert_eq!(t.as_deref(), Some("Basic"));
        assert_eq!(u.as_deref(), Some(&b"alice"[..]));
        h.insert(header::AUTHORIZATION, "Bearer xyz".parse().unwrap());
        assert_eq!(auth(&h), (Some("Bearer".into()), None));
    }

    #[test]
    fn header_names() {
        assert_eq!(http_name("accept-language"), "HTTP_ACCEPT_LANGUAGE");
        assert!(skipped("proxy"));
    }
}
