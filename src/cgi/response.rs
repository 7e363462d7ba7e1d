//! The script's header block (RFC 3875 section 6): where it ends, and what it asks for.

use hyper::StatusCode;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};

/// What a CGI header block asks the server to do.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Send this status and these headers, then the rest of stdout as the body. Client
    /// redirects (`Location: http://...`, 302 unless `Status:` says otherwise) are this too.
    Document {
        status: StatusCode,
        reason: Option<String>,
        headers: HeaderMap,
    },
    /// `Location: /path?query` alone: the server answers as if the client had asked for it.
    LocalRedirect(String),
}

/// Where the header block ends: `(end of the block, start of the body)`, at the first empty
/// line (`\n\n` or `\n\r\n`). `None` while the block is incomplete. An empty first line
/// gives an empty block, which [`parse_cgi`] refuses.
/// The `Content-Length` a script's header block gives.
pub(crate) fn content_length_of(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

#[cfg(test)]
pub(crate) fn find_end(buf: &[u8]) -> Option<(usize, usize)> {
    find_end_from(buf, 0)
}

/// [`find_end`] resuming at `from`: a buffer already scanned up to `old_len` without a
/// match is rescanned from `old_len - 2`, the earliest place a blank line can still begin.
pub(crate) fn find_end_from(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let blank_at = |start: usize| -> Option<usize> {
        match buf.get(start..) {
            Some([b'\n', ..]) => Some(start + 1),
            Some([b'\r', b'\n', ..]) => Some(start + 2),
            _ => None,
        }
    };
    if from == 0 {
        if let Some(body) = blank_at(0) {
            return Some((0, body));
        }
    }
    let mut from = from.min(buf.len());
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\n') {
        let nl = from + i;
        if let Some(body) = blank_at(nl + 1) {
            return Some((nl + 1, body));
        }
        from = nl + 1;
    }
    None
}

/// Header lines, each `(name, value)`, with continuation lines folded in. `block` is what
/// [`find_end`] delimited.
fn fields(block: &[u8]) -> Result<Vec<(HeaderName, Vec<u8>)>, String> {
    let mut out: Vec<(HeaderName, Vec<u8>)> = Vec::new();
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if matches!(line[0], b' ' | b'\t') {
            let Some((_, value)) = out.last_mut() else {
                return Err("continuation line before any header".into());
            };
            // Folded with one space, never leaving one at either end (hyper would send
            // it, and the client would read another value).
            let more = line.trim_ascii();
            if !more.is_empty() {
                if !value.is_empty() {
                    value.push(b' ');
                }
                value.extend_from_slice(more);
            }
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(format!(
                "header line without a colon: {:?}",
                String::from_utf8_lossy(line)
            ));
        };
        let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| {
            format!(
                "bad header name {:?}",
                String::from_utf8_lossy(&line[..colon])
            )
        })?;
        out.push((name, line[colon + 1..].trim_ascii().to_vec()));
    }
    Ok(out)
}

/// Hop-by-hop headers: hyper frames the response itself, so a script's own are dropped.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-connection"
            | "te"
            | "trailer"
    )
}

fn value(name: &HeaderName, v: &[u8]) -> Result<HeaderValue, String> {
    // hyper will not send a response whose Content-Length is not a number (digits that fit
    // a u64): it would close the connection instead of answering. Refused here, the client
    // gets a 502.
    let number = || {
        v.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(v).is_ok_and(|s| s.parse::<u64>().is_ok())
    };
    if name == hyper::header::CONTENT_LENGTH && !number() {
        return Err(format!(
            "bad Content-Length {:?}",
            String::from_utf8_lossy(v)
        ));
    }
    HeaderValue::from_bytes(v).map_err(|_| format!("bad value for header {name}"))
}

/// One Content-Length at most: hyper would merge equal ones and refuse different ones
/// (closing the connection instead of answering).
fn one_length(headers: &HeaderMap) -> Result<(), String> {
    if headers
        .get_all(hyper::header::CONTENT_LENGTH)
        .iter()
        .count()
        > 1
    {
        return Err("two Content-Length headers".into());
    }
    Ok(())
}

/// `NNN reason` → the status and its reason phrase.
fn status_line(v: &[u8]) -> Result<(StatusCode, Option<String>), String> {
    let text = std::str::from_utf8(v).map_err(|_| "Status is not text".to_string())?;
    let (code, reason) = text.split_once(' ').unwrap_or((text, ""));
    // Exactly three digits (RFC 9110 15): `+200` and `0200` are not 200.
    let digits = code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit());
    let status = digits
        .then(|| code.parse::<u16>().ok())
        .flatten()
        .filter(|c| (200..=999).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| format!("bad Status {text:?}"))?;
    let reason = reason.trim();
    let reason = (!reason.is_empty()
        && reason
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
    .then(|| reason.to_string());
    Ok((status, reason))
}

/// Parses a CGI header block: `Status`, `Location` and `Content-Type` are CGI fields, every
/// other header is passed on. At least one CGI field is required.
pub(crate) fn parse_cgi(block: &[u8]) -> Result<Reply, String> {
    let mut status = None;
    let mut location = None;
    let mut has_type = false;
    let mut headers = HeaderMap::new();
    for (name, v) in fields(block)? {
        if name.as_str() == "status" {
            if status.is_some() {
                return Err("two Status headers".into());
            }
            status = Some(status_line(&v)?);
            continue;
        }
        if name == hyper::header::LOCATION {
            if location.is_some() {
                return Err("two Location headers".into());
            }
            location = Some(String::from_utf8(v.clone()).map_err(|_| "Location is not text")?);
        }
        if name == hyper::header::CONTENT_TYPE {
            has_type = true;
        }
        if is_hop_by_hop(&name) {
            continue;
        }
        let v = value(&name, &v)?;
        headers.append(name, v);
    }
    one_length(&headers)?;
    match (&location, &status) {
        (Some(loc), None) if loc.starts_with('/') && !loc.starts_with("//") => {
            return Ok(Reply::LocalRedirect(loc.clone()));
        }
        (None, None) if !has_type => {
            return Err("no Content-Type, Location or Status header".into());
        }
        _ => {}
    }
    let (status, reason) = match status {
        Some(s) => s,
        None if location.is_some() => (StatusCode::FOUND, None),
        None => (StatusCode::OK, None),
    };
    Ok(Reply::Document {
        status,
        reason,
        headers,
    })
}

/// Parses an NPH script's own response head (`HTTP/1.1 200 OK` then headers), passed on as
/// the script wrote it, with no CGI field interpreted.
pub(crate) fn parse_nph(block: &[u8]) -> Result<Reply, String> {
    let first_end = block
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(block.len());
    let first = block[..first_end]
        .strip_suffix(b"\r")
        .unwrap_or(&block[..first_end]);
    let rest = block.get(first_end + 1..).unwrap_or(&[]);
    let line = std::str::from_utf8(first).map_err(|_| "status line is not text")?;
    let Some(after) = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))
    else {
        return Err(format!("bad NPH status line {line:?}"));
    };
    let (status, reason) = status_line(after.as_bytes())?;
    let mut headers = HeaderMap::new();
    for (name, v) in fields(rest)? {
        if is_hop_by_hop(&name) {
            continue;
        }
        let v = value(&name, &v)?;
        headers.append(name, v);
    }
    one_length(&headers)?;
    Ok(Reply::Document {
        status,
        reason,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_of_block() {
        assert_eq!(find_end(b"A: b\n\nbody"), Some((5, 6)));
        assert_eq!(find_end(b"A: b\r\n\r\nbody"), Some((6, 8)));
        assert_eq!(find_end(b"\nbody"), Some((0, 1)));
        assert_eq!(find_end(b"A: b\r\nC: d\r\n"), None);
    }

    #[test]
    fn document_status_and_headers() {
        let Reply::Document {
            status,
            reason,
            headers,
        } = parse_cgi(b"Status: 404 Gone Away\r\nContent-Type: text/plain\r\nX-A: 1\r\nX-A: 2\r\nConnection: close\r\n")
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(reason.as_deref(), Some("Gone Away"));
        assert_eq!(headers.get_all("x-a").iter().count(), 2);
        assert!(headers.get("connection").is_none());
    }

    #[test]
    fn redirects() {
        assert!(matches!(
            parse_cgi(b"Location: /other?x=1\n").unwrap(),
            Reply::LocalRedirect(p) if p == "/other?x=1"
        ));
        let Reply::Document { status, .. } = parse_cgi(b"Location: http://e.x/\n").unwrap() else {
            panic!()
        };
        assert_eq!(status, StatusCode::FOUND);
    }

    #[test]
    fn malformed() {
        for bad in [
            &b""[..],
            b"X-Only: 1\n",
            b"no colon here\n",
            b"Status: abc\n",
            b"Status: 100 Continue\n",
            b" leading: continuation\n",
            b"Bad Name: x\n",
        ] {
            assert!(
                parse_cgi(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn nph_head() {
        let Reply::Document { status, reason, .. } =
            parse_nph(b"HTTP/1.1 201 Made It\r\nX: y\r\n").unwrap()
        else {
            panic!()
        };
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(reason.as_deref(), Some("Made It"));
    }
}
