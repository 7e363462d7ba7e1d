//! What a FastCGI request's params mean: which script runs (fcgiwrap's two modes, then
//! brood's own mapping), the script's environment, and the access-log record.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use hyper::StatusCode;
use percent_encoding::{AsciiSet, CONTROLS, percent_encode};

use bytes::Bytes;

use super::record;
use crate::Exit;
use crate::cgi::log::Access;
use crate::cgi::map::{Mapping, Refusal, Target, is_nph, refuse, resolve_under};

/// A request's params, in the order they came: the FCGI_PARAMS stream as it came and
/// where each name and value lies in it, so neither parsing nor a copy (for the access log)
/// copies every name and value.
#[derive(Debug, Clone, Default)]
pub(crate) struct Params {
    raw: Bytes,
    /// Name start, name end, value start, value end, in `raw`.
    at: Vec<[usize; 4]>,
}

impl Params {
    /// The params of an FCGI_PARAMS stream.
    pub(crate) fn parse(raw: Bytes) -> Result<Params, &'static str> {
        let base = raw.as_ptr() as usize;
        let at = record::pairs(&raw)?
            .into_iter()
            .map(|(n, v)| {
                let (n0, v0) = (n.as_ptr() as usize - base, v.as_ptr() as usize - base);
                [n0, n0 + n.len(), v0, v0 + v.len()]
            })
            .collect();
        Ok(Params { raw, at })
    }

    /// Params from name-value pairs, in that order.
    pub(crate) fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Params {
        let mut raw = Vec::new();
        let mut at = Vec::new();
        for (n, v) in pairs {
            let n0 = raw.len();
            raw.extend_from_slice(n);
            let v0 = raw.len();
            raw.extend_from_slice(v);
            at.push([n0, v0, v0, raw.len()]);
        }
        Params {
            raw: raw.into(),
            at,
        }
    }

    /// Every name and value, in the order they came.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = (&[u8], &[u8])> {
        self.at
            .iter()
            .map(|&[n0, n1, v0, v1]| (&self.raw[n0..n1], &self.raw[v0..v1]))
    }

    /// The last value given for `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&[u8]> {
        let name = name.as_bytes();
        // The lengths first: most names differ there, with no slicing or comparing.
        self.at
            .iter()
            .rev()
            .filter(|[n0, n1, ..]| n1 - n0 == name.len())
            .find(|&&[n0, n1, ..]| &self.raw[n0..n1] == name)
            .map(|&[_, _, v0, v1]| &self.raw[v0..v1])
    }

    /// A param that is present and not empty, as text when it is.
    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The params of the `GET` a local redirect (`Location: /path?q`) asks for.
    pub(crate) fn redirected(&self, location: &str) -> Params {
        let (path, query) = location.split_once('?').unwrap_or((location, ""));
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(path).collect();
        let set: [(&str, &[u8]); 5] = [
            ("REQUEST_METHOD", b"GET"),
            ("REQUEST_URI", location.as_bytes()),
            ("QUERY_STRING", query.as_bytes()),
            ("DOCUMENT_URI", &decoded),
            ("SCRIPT_NAME", &decoded),
        ];
        let gone = [
            "CONTENT_LENGTH",
            "CONTENT_TYPE",
            "SCRIPT_FILENAME",
            "PATH_INFO",
            "PATH_TRANSLATED",
        ];
        let kept = self.iter().filter(|(n, _)| {
            !gone
                .iter()
                .chain(set.iter().map(|(s, _)| s))
                .any(|g| g.as_bytes() == *n)
        });
        Params::from_pairs(kept.chain(set.iter().map(|(n, v)| (n.as_bytes(), *v))))
    }
}

/// Bytes of a decoded path that must be encoded again before `map.rs` decodes it.
const ENCODE: &AsciiSet = &CONTROLS.add(b'%').add(b'?').add(b'#');

/// An absolute file name with no `.` or `..` component and no NUL.
fn plain_absolute(name: &[u8]) -> Result<PathBuf, Refusal> {
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(name));
    if !path.is_absolute() || name.contains(&0) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "SCRIPT_FILENAME is not an absolute path",
        ));
    }
    // `components` drops `.` silently: look at the raw segments.
    if name
        .split(|&b| b == b'/')
        .any(|seg| seg == b"." || seg == b"..")
        || path.components().any(|c| c == Component::ParentDir)
    {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "dot segment in SCRIPT_FILENAME",
        ));
    }
    Ok(path)
}

/// Which script a request runs, and whether brood worked out `SCRIPT_NAME` and `PATH_INFO`
/// itself (then they replace the params'):
///
/// 1. `SCRIPT_FILENAME`, when the web server sends it;
/// 2. with `--script`, that file, with the params' `SCRIPT_NAME` and `PATH_INFO`;
/// 3. `DOCUMENT_ROOT` + `SCRIPT_NAME`, split where the first file is: the rest goes before
///    `PATH_INFO`;
/// 4. brood's own mapping of the path of `REQUEST_URI`.
///
/// [`Mapping::open`] then checks the file that runs is inside the root (or is the script).
pub(crate) fn target(mapping: &Mapping, p: &Params) -> Result<(Target, bool), Refusal> {
    let os = |name: &str| OsString::from_vec(p.get(name).unwrap_or_default().to_vec());
    if let Some(file) = p.get("SCRIPT_FILENAME").filter(|f| !f.is_empty()) {
        let file = plain_absolute(file)?;
        return Ok((
            plain_target(file, os("SCRIPT_NAME"), os("PATH_INFO"), p),
            false,
        ));
    }
    if let Mapping::Script { file, .. } = mapping {
        if p.get("SCRIPT_NAME").is_some() || p.get("PATH_INFO").is_some() {
            let target = plain_target(file.clone(), os("SCRIPT_NAME"), os("PATH_INFO"), p);
            return Ok((target, false));
        }
    }
    if let (Some(root), Some(name)) = (
        p.get("DOCUMENT_ROOT").filter(|r| !r.is_empty()),
        p.get("SCRIPT_NAME").filter(|n| !n.is_empty()),
    ) {
        let root = std::fs::canonicalize(std::ffi::OsStr::from_bytes(root)).map_err(|e| {
            refuse(
                StatusCode::NOT_FOUND,
                format!("DOCUMENT_ROOT {}: {e}", String::from_utf8_lossy(root)),
            )
        })?;
        let encoded = percent_encode(name, ENCODE).to_string();
        let mut target = resolve_under(&root, "", &encoded)?;
        let mut info = target.path_info.into_vec();
        info.extend_from_slice(p.get("PATH_INFO").unwrap_or_default());
        target.path_info = OsString::from_vec(info);
        return Ok((target, true));
    }
    let uri = p.text("REQUEST_URI").unwrap_or("/");
    let path = uri.split_once('?').map_or(uri, |(path, _)| path);
    Ok((mapping.resolve(path)?, true))
}

fn plain_target(file: PathBuf, script_name: OsString, path_info: OsString, p: &Params) -> Target {
    let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
    let document_root = p
        .get("DOCUMENT_ROOT")
        .filter(|r| !r.is_empty())
        .map_or_else(
            || dir.clone(),
            |r| PathBuf::from(std::ffi::OsStr::from_bytes(r)),
        );
    Target {
        nph: is_nph(&file),
        file,
        dir,
        script_name,
        path_info,
        document_root,
    }
}

/// Params never passed on: `HTTP_PROXY` (httpoxy), credentials (RFC 3875 4.1.18, as HTTP
/// mode), the body's framing (the script gets it whole with brood's `CONTENT_LENGTH`).
fn withheld(name: &[u8]) -> bool {
    matches!(
        name,
        b"HTTP_PROXY"
            | b"HTTP_AUTHORIZATION"
            | b"HTTP_PROXY_AUTHORIZATION"
            | b"HTTP_TRANSFER_ENCODING"
            | b"HTTP_CONTENT_LENGTH"
            | b"HTTP_CONTENT_TYPE"
            | b"CONTENT_LENGTH"
    )
}

/// The script's environment: the params (those exec can carry), brood's `CONTENT_LENGTH`,
/// the script names brood worked out, then the server's `PATH`, `--pass-env` and `--env`.
pub(crate) fn environment(
    p: &Params,
    target: &Target,
    computed: bool,
    length: Option<u64>,
    base: &[(OsString, OsString)],
) -> Vec<(OsString, OsString)> {
    let names = [
        "SCRIPT_NAME",
        "SCRIPT_FILENAME",
        "PATH_INFO",
        "PATH_TRANSLATED",
    ];
    let mut env: Vec<(OsString, OsString)> = p
        .iter()
        .filter(|(n, v)| {
            let unfit = n.is_empty() || n.contains(&b'=') || n.contains(&0) || v.contains(&0);
            let replaced = computed && names.iter().any(|c| c.as_bytes() == *n);
            !(unfit || withheld(n) || replaced)
        })
        .map(|(n, v)| {
            (
                OsString::from_vec(n.to_vec()),
                OsString::from_vec(v.to_vec()),
            )
        })
        .collect();
    let mut set = |k: &str, v: OsString| env.push((k.into(), v));
    if p.get("GATEWAY_INTERFACE").is_none() {
        set("GATEWAY_INTERFACE", "CGI/1.1".into());
    }
    if let Some(n) = length {
        set("CONTENT_LENGTH", n.to_string().into());
    }
    if computed {
        set("SCRIPT_NAME", target.script_name.clone());
        set("SCRIPT_FILENAME", target.file.clone().into());
        if !target.path_info.is_empty() {
            set("PATH_INFO", target.path_info.clone());
            let mut t = target.document_root.clone().into_os_string().into_vec();
            t.extend_from_slice(target.path_info.as_encoded_bytes());
            set("PATH_TRANSLATED", OsString::from_vec(t));
        }
    }
    env.extend(base.iter().cloned());
    env
}

/// The access-log record of a request, from what the web server said of it.
pub(crate) fn access(
    p: &Params,
    status: u16,
    bytes: u64,
    elapsed: Duration,
    exit: Option<Exit>,
) -> Access {
    let text = |n: &str| p.get(n).map(|v| String::from_utf8_lossy(v).into_owned());
    let ip = p
        .text("REMOTE_ADDR")
        .and_then(|a| a.parse::<IpAddr>().ok())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let port = p
        .text("REMOTE_PORT")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    Access {
        remote: SocketAddr::new(ip, port),
        method: text("REQUEST_METHOD").unwrap_or_else(|| "-".into()),
        target: text("REQUEST_URI").unwrap_or_else(|| "-".into()),
        protocol: text("SERVER_PROTOCOL").unwrap_or_else(|| "-".into()),
        status: if status == 0 { 499 } else { status },
        bytes,
        elapsed,
        exit,
        user: text("REMOTE_USER").filter(|u| !u.is_empty()),
        referer: text("HTTP_REFERER"),
        user_agent: text("HTTP_USER_AGENT"),
        time: SystemTime::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(list: &[(&str, &str)]) -> Params {
        Params::from_pairs(list.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    #[test]
    fn script_filename_must_be_plain() {
        let map = Mapping::Root {
            root: "/srv".into(),
            prefix: String::new(),
        };
        for bad in ["relative/x", "/srv/../etc/passwd", "/srv/./x", "/srv/a/.."] {
            let p = params(&[("SCRIPT_FILENAME", bad)]);
            assert_eq!(
                target(&map, &p).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        let p = params(&[("SCRIPT_FILENAME", "/srv/x"), ("PATH_INFO", "/a")]);
        let (t, computed) = target(&map, &p).unwrap();
        assert_eq!((t.file.as_path(), computed), (Path::new("/srv/x"), false));
        assert_eq!(t.path_info, "/a");
    }

    #[test]
    fn withheld_params_and_env_order() {
        let p = params(&[
            ("HTTP_PROXY", "http://evil"),
            ("HTTP_AUTHORIZATION", "Basic x"),
            ("CONTENT_LENGTH", "999"),
            ("QUERY_STRING", "a=1"),
            ("MODE", "client"),
            ("BAD=NAME", "x"),
        ]);
        let t = plain_target("/srv/x".into(), "/x".into(), "".into(), &p);
        let base = vec![("MODE".into(), "operator".into())];
        let env = environment(&p, &t, false, Some(3), &base);
        let get = |k: &str| {
            env.iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.to_str().unwrap())
        };
        assert_eq!(get("HTTP_PROXY"), None);
        assert_eq!(get("HTTP_AUTHORIZATION"), None);
        assert_eq!(get("BAD=NAME"), None);
        assert_eq!(get("CONTENT_LENGTH"), Some("3"));
        assert_eq!(get("QUERY_STRING"), Some("a=1"));
        assert_eq!(get("MODE"), Some("operator"));
        assert_eq!(get("GATEWAY_INTERFACE"), Some("CGI/1.1"));
    }
}
