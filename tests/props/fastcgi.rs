//! FastCGI, against a model of the protocol written from the spec (FastCGI 1.0): shared by
//! the fuzz targets `fastcgi_records` and `fastcgi_conn` and by `tests/prop_fastcgi.rs`.
//!
//! - Record layer (`check_records`): the bytes of a stream of records (or garbage), cut into
//!   reads of any size with "not ready yet" between some of them (the read in progress is
//!   then dropped, as `select!` drops it), give exactly the records the model parses from the
//!   whole stream at once, then the same end (EOF, truncated, bad version); the reader never
//!   reads while it holds a whole record, so it never holds more than one record.
//! - Name-value pairs (`check_pairs`): brood decodes as the model does, and what it decodes
//!   encodes back to bytes that decode the same.
//! - A connection (`check_conn`): the stream sent to a real FastCGI server (`serve_fastcgi`,
//!   a root with no script in it) gets the answers the model of the protocol gives: params
//!   over 128 KiB refused with 431, malformed pairs 400, `GET_VALUES` answered, unknown types
//!   `UNKNOWN_TYPE`, a second request `CANT_MPX_CONN`, aborts ended, everything else a
//!   refusal of the script (400/403/404) after the body was read.
#![allow(
    dead_code,
    reason = "shared by test binaries and fuzz targets; each uses a part"
)]

use std::cell::Cell;
use std::future::Future;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::{Context, Poll};

use brood::fuzzing::{FastCgiEnd, FastCgiReader, FastCgiRecord, fastcgi_pairs, fastcgi_put_pair};

pub const BEGIN_REQUEST: u8 = 1;
pub const ABORT_REQUEST: u8 = 2;
pub const END_REQUEST: u8 = 3;
pub const PARAMS: u8 = 4;
pub const STDIN: u8 = 5;
pub const STDOUT: u8 = 6;
pub const DATA: u8 = 8;
pub const GET_VALUES: u8 = 9;
pub const GET_VALUES_RESULT: u8 = 10;
pub const UNKNOWN_TYPE: u8 = 11;
/// The most params one request may send (docs/cgi.md).
pub const MAX_PARAMS: usize = 128 * 1024;
/// The request bodies the test server takes.
pub const MAX_BODY: u64 = 512 * 1024;
/// The most content of one record brood writes (65535 rounded down to 8).
pub const MAX_CONTENT: usize = 65528;

/// A record's content as the case describes it.
#[derive(Debug, Clone)]
pub enum Content {
    Literal(Vec<u8>),
    /// `len` copies of a byte (big records from small inputs).
    Fill(u16, u8),
    /// Name-value pairs, each repeated `n` times (many params from small inputs).
    Pairs(Vec<(Vec<u8>, Vec<u8>, usize)>),
}

/// A piece of the stream.
#[derive(Debug, Clone)]
pub enum Piece {
    /// Any bytes (garbage, half a header).
    Raw(Vec<u8>),
    Record {
        kind: u8,
        id: u16,
        padding: u8,
        content: Content,
    },
}

/// A stream and how it is read: `cuts` are the sizes of successive reads (cycled), 0 standing
/// for "not ready yet".
#[derive(Debug, Clone)]
pub struct Case {
    pub pieces: Vec<Piece>,
    pub cuts: Vec<usize>,
}

/// The model's encoding of one pair.
pub fn encode_pair(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    for len in [name.len(), value.len()] {
        if len < 128 {
            out.push(len as u8);
        } else {
            out.extend_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
        }
    }
    out.extend_from_slice(name);
    out.extend_from_slice(value);
}

fn content_bytes(c: &Content) -> Vec<u8> {
    match c {
        Content::Literal(b) => b.clone(),
        Content::Fill(n, b) => vec![*b; *n as usize],
        Content::Pairs(list) => {
            let mut out = Vec::new();
            'all: for (name, value, n) in list {
                for _ in 0..*n {
                    encode_pair(&mut out, name, value);
                    if out.len() > 65535 {
                        break 'all;
                    }
                }
            }
            out.truncate(65535);
            out
        }
    }
}

/// The bytes of the stream.
pub fn stream(pieces: &[Piece]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces {
        match p {
            Piece::Raw(b) => out.extend_from_slice(b),
            Piece::Record {
                kind,
                id,
                padding,
                content,
            } => {
                let c = content_bytes(content);
                out.push(1);
                out.push(*kind);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&(c.len() as u16).to_be_bytes());
                out.push(*padding);
                out.push(0);
                out.extend_from_slice(&c);
                out.extend(std::iter::repeat_n(0xa5, *padding as usize));
            }
        }
    }
    out
}

/// The model's record parser, over the whole stream at once: the records, the end, and the
/// size of each record with one more: the size of what the stream ends in (8 for a header).
pub fn model_records(mut s: &[u8]) -> (Vec<FastCgiRecord>, FastCgiEnd, Vec<usize>) {
    let mut records = Vec::new();
    let mut sizes = Vec::new();
    loop {
        sizes.push(8);
        if s.is_empty() {
            return (records, FastCgiEnd::Eof, sizes);
        }
        // A header is read whole before it is looked at.
        if s.len() < 8 {
            return (records, FastCgiEnd::Truncated, sizes);
        }
        if s[0] != 1 {
            return (records, FastCgiEnd::BadVersion(s[0]), sizes);
        }
        let clen = u16::from_be_bytes([s[4], s[5]]) as usize;
        let total = 8 + clen + s[6] as usize;
        sizes.pop();
        sizes.push(total);
        if s.len() < total {
            return (records, FastCgiEnd::Truncated, sizes);
        }
        records.push(FastCgiRecord {
            kind: s[1],
            id: u16::from_be_bytes([s[2], s[3]]),
            content: s[8..8 + clen].to_vec(),
        });
        s = &s[total..];
    }
}

/// A source that hands out the stream in the case's reads, and counts what it handed out.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    cuts: Vec<usize>,
    k: usize,
    pulled: Rc<Cell<usize>>,
    /// Bytes of the stream the test has taken as records.
    taken: Rc<Cell<usize>>,
    /// Size of the record in progress (from the model), for the bound.
    limit: Rc<Cell<usize>>,
}

impl tokio::io::AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let held = self.pulled.get() - self.taken.get();
        // It reads only when it holds no whole record: less than the record in progress
        // (at most 8 + 65535 + 255 bytes).
        assert!(
            held < self.limit.get().max(8),
            "read with {held} bytes held (record in progress {} bytes)",
            self.limit.get()
        );
        let cut = if self.cuts.is_empty() {
            4096
        } else {
            self.cuts[self.k % self.cuts.len()]
        };
        self.k += 1;
        if cut == 0 {
            return Poll::Pending;
        }
        // At most about 4096 reads a case, so big records stay quick.
        let cut = cut.max(self.data.len() / 4096);
        let n = cut.min(self.data.len() - self.pos).min(buf.remaining());
        let (pos, data) = (self.pos, std::mem::take(&mut self.data));
        buf.put_slice(&data[pos..pos + n]);
        self.data = data;
        self.pos += n;
        self.pulled.set(self.pulled.get() + n);
        Poll::Ready(Ok(()))
    }
}

/// Record layer: the reader on the case's reads (a "not ready" drops the read in progress)
/// gives what the model gives for the whole stream.
pub fn check_records(case: &Case) {
    let data = stream(&case.pieces);
    let (want, want_end, sizes) = model_records(&data);
    let (pulled, taken, limit) = (Rc::default(), Rc::new(Cell::new(0)), Rc::default());
    let mut cuts = case.cuts.clone();
    if !cuts.iter().any(|&c| c > 0) {
        cuts.push(1);
    }
    let src = Chunked {
        data: data.clone(),
        pos: 0,
        cuts,
        k: 0,
        pulled: Rc::clone(&pulled),
        taken: Rc::clone(&taken),
        limit: Rc::clone(&limit),
    };
    let mut reader = FastCgiReader::new(src);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut got = Vec::new();
    let end = loop {
        let i = got.len();
        // The record in progress: the model's next one, or what is left (then garbage).
        limit.set(sizes[i.min(sizes.len() - 1)]);
        let polled = {
            let mut next = pin!(reader.next());
            next.as_mut().poll(&mut cx)
        };
        match polled {
            Poll::Pending => continue, // dropped: cancelled; the next call resumes
            Poll::Ready(Ok(r)) => {
                taken.set(taken.get() + sizes.get(i).copied().unwrap_or(0));
                got.push(r);
            }
            Poll::Ready(Err(e)) => break e,
        }
    };
    assert_eq!(got.len(), want.len(), "records");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
    assert_eq!(end, want_end);
    for r in &got {
        check_pairs(&r.content);
    }
}

/// The model's pairs decoder.
pub fn model_pairs(mut d: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    fn len(d: &mut &[u8]) -> Option<usize> {
        let b = *d.first()?;
        if b < 128 {
            *d = &d[1..];
            return Some(b as usize);
        }
        let four: [u8; 4] = d.get(..4)?.try_into().ok()?;
        *d = &d[4..];
        Some((u32::from_be_bytes(four) & 0x7fff_ffff) as usize)
    }
    let mut out = Vec::new();
    while !d.is_empty() {
        let n = len(&mut d)?;
        let v = len(&mut d)?;
        if d.len() < n.checked_add(v)? {
            return None;
        }
        out.push((d[..n].to_vec(), d[n..n + v].to_vec()));
        d = &d[n + v..];
    }
    Some(out)
}

/// Pairs: decoded as the model decodes them (an error never a panic), and encoded back the
/// way the model encodes them, to bytes that decode the same.
pub fn check_pairs(data: &[u8]) {
    let got = fastcgi_pairs(data);
    let want = model_pairs(data);
    assert_eq!(got.as_ref().ok(), want.as_ref(), "pairs of {data:?}");
    if let Ok(list) = got {
        check_round_trip(&list);
    }
}

/// A list of pairs encodes (brood's encoder, the model's bytes) and decodes back to itself.
pub fn check_round_trip(list: &[(Vec<u8>, Vec<u8>)]) {
    let (mut ours, mut model) = (Vec::new(), Vec::new());
    for (n, v) in list {
        fastcgi_put_pair(&mut ours, n, v);
        encode_pair(&mut model, n, v);
    }
    assert_eq!(ours, model, "encoding");
    assert_eq!(fastcgi_pairs(&ours).expect("own encoding decodes"), list);
}

// ---------------------------------------------------------------------------------------
// A connection.

/// What the server answers, as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// `GET_VALUES_RESULT` naming these variables (values checked on the way), and its
    /// length.
    Values(Vec<Vec<u8>>, usize),
    /// `UNKNOWN_TYPE` for a record of this type.
    Unknown(u8),
    /// `END_REQUEST` alone, with this protocol status.
    End(u16, u8),
    /// An answer of brood's own (`Status: N` on `STDOUT`, then the end): the status, or 0
    /// for "the script was refused" (400, 403 or 404).
    Answer(u16, u16),
}

enum State {
    Idle,
    Params {
        id: u16,
        keep: bool,
        raw: Vec<u8>,
    },
    Stdin {
        id: u16,
        keep: bool,
        declared: Option<u64>,
        got: u64,
    },
}

/// The model of one connection (`cgi/fastcgi/conn.rs` as docs/cgi.md describes it) fed the
/// records of the stream: the answers, in order.
pub fn model_conn(records: &[FastCgiRecord]) -> Vec<Out> {
    let mut out = Vec::new();
    let mut st = State::Idle;
    for r in records {
        let active = match &st {
            State::Idle => None,
            State::Params { id, .. } | State::Stdin { id, .. } => Some(*id),
        };
        // Records that are not the request's own, whatever the state.
        let mine = match r.kind {
            GET_VALUES if r.id == 0 => {
                if let Some(list) = model_pairs(&r.content) {
                    let names = list
                        .into_iter()
                        .map(|(n, _)| n)
                        .filter(|n| {
                            [&b"FCGI_MAX_CONNS"[..], b"FCGI_MAX_REQS", b"FCGI_MPXS_CONNS"]
                                .contains(&n.as_slice())
                        })
                        .collect();
                    out.push(Out::Values(names, 0));
                }
                false
            }
            BEGIN_REQUEST if active.is_none() => true,
            BEGIN_REQUEST if active == Some(r.id) => return out, // closed
            BEGIN_REQUEST => {
                out.push(Out::End(r.id, 1)); // CANT_MPX_CONN
                false
            }
            ABORT_REQUEST | PARAMS | STDIN | DATA => active == Some(r.id),
            kind => {
                out.push(Out::Unknown(kind));
                false
            }
        };
        if !mine {
            continue;
        }
        let abort = r.kind == ABORT_REQUEST;
        st = match st {
            State::Idle => {
                if r.id == 0 || r.content.len() < 3 {
                    return out;
                }
                let role = u16::from_be_bytes([r.content[0], r.content[1]]);
                let keep = r.content[2] & 1 != 0;
                if role != 1 {
                    out.push(Out::End(r.id, 3)); // UNKNOWN_ROLE
                    State::Idle
                } else {
                    State::Params {
                        id: r.id,
                        keep,
                        raw: Vec::new(),
                    }
                }
            }
            State::Params { id, keep, .. } if abort => {
                out.push(Out::End(id, 0));
                if !keep {
                    return out;
                }
                State::Idle
            }
            State::Params { id, keep, mut raw } => {
                if r.kind != PARAMS {
                    return out; // STDIN or DATA before the end of the params: closed
                }
                if !r.content.is_empty() {
                    if raw.len() + r.content.len() > MAX_PARAMS {
                        out.push(Out::Answer(id, 431));
                        return out;
                    }
                    raw.extend_from_slice(&r.content);
                    State::Params { id, keep, raw }
                } else {
                    let Some(params) = model_pairs(&raw) else {
                        out.push(Out::Answer(id, 400));
                        return out;
                    };
                    // The last CONTENT_LENGTH that is not empty and is text.
                    let cl = params
                        .iter()
                        .rev()
                        .find(|(n, _)| n == b"CONTENT_LENGTH")
                        .map(|(_, v)| v.as_slice())
                        .filter(|v| !v.is_empty())
                        .and_then(|v| std::str::from_utf8(v).ok());
                    let declared = match cl.map(|v| v.trim().parse::<u64>()) {
                        None => None,
                        Some(Ok(n)) if n > MAX_BODY => {
                            out.push(Out::Answer(id, 413));
                            return out;
                        }
                        Some(Ok(n)) => Some(n),
                        Some(Err(_)) => {
                            out.push(Out::Answer(id, 400));
                            return out;
                        }
                    };
                    State::Stdin {
                        id,
                        keep,
                        declared,
                        got: 0,
                    }
                }
            }
            State::Stdin { id, keep, .. } if abort => {
                out.push(Out::End(id, 0));
                if !keep {
                    return out;
                }
                State::Idle
            }
            State::Stdin {
                id,
                keep,
                declared,
                got,
            } => {
                if r.kind != STDIN {
                    State::Stdin {
                        id,
                        keep,
                        declared,
                        got,
                    }
                } else if !r.content.is_empty() {
                    let got = got + r.content.len() as u64;
                    if got > MAX_BODY {
                        out.push(Out::Answer(id, 413));
                        return out;
                    }
                    State::Stdin {
                        id,
                        keep,
                        declared,
                        got,
                    }
                } else {
                    let status = if declared.is_some_and(|n| n != got) {
                        400
                    } else {
                        0
                    };
                    out.push(Out::Answer(id, status));
                    if !keep {
                        return out;
                    }
                    State::Idle
                }
            }
        };
    }
    out
}

/// The server's answer bytes as `Out`s (every record well-formed, each answer whole).
pub fn parse_answers(bytes: &[u8]) -> Vec<Out> {
    let (records, end, _) = model_records(bytes);
    assert_eq!(end, FastCgiEnd::Eof, "the server wrote a broken record");
    let mut out = Vec::new();
    let mut stdout: Option<(u16, Vec<u8>, bool)> = None;
    for r in records {
        match r.kind {
            GET_VALUES_RESULT => {
                assert_eq!(r.id, 0);
                let list = model_pairs(&r.content).unwrap_or_else(|| {
                    panic!(
                        "GET_VALUES_RESULT of {} bytes holds no pairs: {:?}",
                        r.content.len(),
                        &r.content[..r.content.len().min(64)]
                    )
                });
                for (n, v) in &list {
                    if n == b"FCGI_MPXS_CONNS" {
                        assert_eq!(v, b"0");
                    } else {
                        assert!(!v.is_empty() && v.iter().all(u8::is_ascii_digit), "{v:?}");
                    }
                }
                let names = list.into_iter().map(|(n, _)| n).collect();
                out.push(Out::Values(names, r.content.len()));
            }
            UNKNOWN_TYPE => {
                assert_eq!((r.id, r.content.len()), (0, 8));
                out.push(Out::Unknown(r.content[0]));
            }
            STDOUT => match &mut stdout {
                None => {
                    assert!(!r.content.is_empty(), "an empty STDOUT first");
                    stdout = Some((r.id, r.content, false));
                }
                Some((id, head, ended)) => {
                    assert_eq!(*id, r.id, "STDOUT of two requests interleaved");
                    assert!(!*ended, "STDOUT after its end");
                    if r.content.is_empty() {
                        *ended = true;
                    } else {
                        head.extend_from_slice(&r.content);
                    }
                }
            },
            END_REQUEST => {
                assert_eq!(r.content.len(), 8);
                let status = r.content[4];
                match stdout.take() {
                    None => out.push(Out::End(r.id, status)),
                    Some((id, head, ended)) => {
                        assert!(ended && id == r.id && status == 0, "END_REQUEST of {id}");
                        let text = String::from_utf8_lossy(&head);
                        let code = text
                            .strip_prefix("Status: ")
                            .and_then(|t| t.get(..3))
                            .and_then(|c| c.parse::<u16>().ok())
                            .unwrap_or_else(|| panic!("no status in {text:?}"));
                        out.push(Out::Answer(id, code));
                    }
                }
            }
            kind => panic!("the server wrote a record of type {kind}"),
        }
    }
    assert!(stdout.is_none(), "an answer without its END_REQUEST");
    out
}

/// Whether the server's answers are the model's (`Answer(_, 0)`: any refusal of the script).
pub fn same_answers(got: &[Out], want: &[Out]) -> bool {
    got.len() == want.len()
        && got.iter().zip(want).all(|(g, w)| match (g, w) {
            (Out::Answer(gi, gs), Out::Answer(wi, 0)) => gi == wi && [400, 403, 404].contains(gs),
            // One record holds the answer: the first names, as many as fit.
            (Out::Values(g, len), Out::Values(w, _)) => {
                w.starts_with(g) && (g.len() == w.len() || *len > MAX_CONTENT - 64)
            }
            _ => g == w,
        })
}

/// A FastCGI server for the whole process (the fuzz target runs many cases) on an abstract
/// Unix socket, serving a root that is removed once it serves: nothing can run, nothing is
/// left behind.
fn server() -> &'static std::os::unix::net::SocketAddr {
    use std::os::linux::net::SocketAddrExt;
    static ADDR: std::sync::OnceLock<std::os::unix::net::SocketAddr> = std::sync::OnceLock::new();
    ADDR.get_or_init(|| {
        let name = format!("brood-prop-fastcgi-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).expect("a name");
        let listener = std::os::unix::net::UnixListener::bind_addr(&addr).expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let root = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&root).expect("a scratch directory");
        let served = root.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(listener).expect("tokio");
                let cgi = brood::cgi::Cgi::root(&served)
                    .max_body(MAX_BODY)
                    .body_timeout(std::time::Duration::from_secs(600))
                    .on_log(|_| {});
                let _ = cgi.serve_fastcgi(listener).await;
            });
        });
        // Once a GET_VALUES is answered the server runs (its root checked): remove the root.
        let mut s = std::os::unix::net::UnixStream::connect_addr(&addr).expect("connect");
        std::io::Write::write_all(&mut s, &[1, GET_VALUES, 0, 0, 0, 0, 0, 0]).expect("write");
        let mut head = [0u8; 8];
        std::io::Read::read_exact(&mut s, &mut head).expect("the server answers");
        std::fs::remove_dir(&root).expect("the root removed");
        addr
    })
}

/// A connection: the stream sent (then the write side shut), the answers read to the end,
/// compared with the model's.
pub fn check_conn(case: &Case) {
    use std::io::{Read, Write};
    let data = stream(&case.pieces);
    let (records, _, _) = model_records(&data);
    let want = model_conn(&records);
    let mut s = std::os::unix::net::UnixStream::connect_addr(server()).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let cuts = case.cuts.clone();
    let writer = std::thread::spawn(move || {
        // The server may close first (then EPIPE/ECONNRESET here).
        let mut pos = 0;
        let mut k = 0;
        while pos < data.len() {
            let c = cuts
                .get(k % cuts.len().max(1))
                .copied()
                .unwrap_or(4096)
                .max(1);
            k += 1;
            let end = (pos + c).min(data.len());
            if w.write_all(&data[pos..end]).is_err() {
                break;
            }
            pos = end;
        }
        let _ = w.shutdown(std::net::Shutdown::Write);
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            // The server closed with input unread (a connection it drops): the rest is lost.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            // libFuzzer's timer signal.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("reading the answer: {e}"),
        }
    }
    writer.join().expect("writer");
    let got = parse_answers(&answer);
    assert!(
        same_answers(&got, &want),
        "answers {got:?}\nthe model's {want:?}"
    );
}

/// A case from fuzzer bytes: a count of reads and their sizes (one byte each: below 128
/// bytes, or 512-byte steps; 0: not ready), then pieces, each an op byte and its fields.
pub fn decode(data: &[u8]) -> Option<Case> {
    let mut d = data.iter().copied();
    let n = d.next()? as usize % 16;
    let cuts = (0..n)
        .map(|_| {
            let c = d.next().unwrap_or(1);
            if c & 0x80 != 0 {
                ((c & 0x7f) as usize) << 9
            } else {
                c as usize
            }
        })
        .collect();
    const NAMES: [&[u8]; 8] = [
        b"FCGI_MAX_CONNS",
        b"FCGI_MAX_REQS",
        b"FCGI_MPXS_CONNS",
        b"CONTENT_LENGTH",
        b"SCRIPT_FILENAME",
        b"REQUEST_URI",
        b"DOCUMENT_ROOT",
        b"SCRIPT_NAME",
    ];
    let mut pieces = Vec::new();
    fn take(d: &mut std::iter::Copied<std::slice::Iter<'_, u8>>, n: usize) -> Vec<u8> {
        d.by_ref().take(n).collect()
    }
    while let Some(op) = d.next() {
        if op % 4 == 0 {
            let n = d.next().unwrap_or(0) as usize % 32;
            pieces.push(Piece::Raw(take(&mut d, n)));
            continue;
        }
        let kind = d.next().unwrap_or(0);
        let id = (d.next().unwrap_or(0) % 4) as u16;
        let padding = d.next().unwrap_or(0) % 8;
        let content = match op % 4 {
            1 => {
                let n = d.next().unwrap_or(0) as usize;
                Content::Literal(take(&mut d, n))
            }
            2 => {
                let hi = d.next().unwrap_or(0);
                let lo = d.next().unwrap_or(0);
                Content::Fill(u16::from_be_bytes([hi, lo]), d.next().unwrap_or(0))
            }
            _ => {
                let k = d.next().unwrap_or(0) % 4;
                let mut list = Vec::new();
                for _ in 0..k {
                    let b = d.next().unwrap_or(0);
                    let name = if (b as usize) < NAMES.len() {
                        NAMES[b as usize].to_vec()
                    } else {
                        take(&mut d, b as usize % 16)
                    };
                    let v = d.next().unwrap_or(0);
                    let value = if v & 0x80 != 0 {
                        vec![b'x'; ((v & 0x7f) as usize) << 8]
                    } else {
                        take(&mut d, v as usize % 32)
                    };
                    let r = d.next().unwrap_or(0);
                    let repeat = if r & 0x80 != 0 {
                        ((r & 0x7f) as usize + 1) * 64
                    } else {
                        1
                    };
                    list.push((name, value, repeat));
                }
                Content::Pairs(list)
            }
        };
        pieces.push(Piece::Record {
            kind,
            id,
            padding,
            content,
        });
    }
    Some(Case { pieces, cuts })
}
