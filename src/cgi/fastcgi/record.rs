//! The FastCGI 1.0 record layer: an 8-byte header (version, type, request id, content and
//! padding lengths), at most 65535 content bytes, and name-value pairs for `PARAMS` and
//! `GET_VALUES`. Written here rather than taken from a crate: the available ones build a
//! whole request (its stdin included) in memory, while brood needs every byte bounded and
//! the request body spooled as it comes; the format itself is a page of the spec.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

pub(crate) const VERSION: u8 = 1;

pub(crate) const BEGIN_REQUEST: u8 = 1;
pub(crate) const ABORT_REQUEST: u8 = 2;
pub(crate) const END_REQUEST: u8 = 3;
pub(crate) const PARAMS: u8 = 4;
pub(crate) const STDIN: u8 = 5;
pub(crate) const STDOUT: u8 = 6;
pub(crate) const STDERR: u8 = 7;
pub(crate) const DATA: u8 = 8;
pub(crate) const GET_VALUES: u8 = 9;
pub(crate) const GET_VALUES_RESULT: u8 = 10;
pub(crate) const UNKNOWN_TYPE: u8 = 11;

/// The only role brood plays.
pub(crate) const RESPONDER: u16 = 1;
/// `BEGIN_REQUEST` flag: keep the connection open after this request.
pub(crate) const KEEP_CONN: u8 = 1;

/// `END_REQUEST` protocol statuses.
pub(crate) const REQUEST_COMPLETE: u8 = 0;
pub(crate) const CANT_MPX_CONN: u8 = 1;
pub(crate) const UNKNOWN_ROLE: u8 = 3;

const HEADER: usize = 8;
/// The most content one record carries: 65535 rounded down to 8 (records stay aligned).
pub(crate) const MAX_CONTENT: usize = 65528;
/// The content of the records brood writes for a stream: with its header, 16 KiB, one of
/// nginx's `fastcgi_buffers` on most systems, so a record never straddles two.
pub(crate) const STREAM_CONTENT: usize = 16 * 1024 - HEADER;

/// One record as read.
#[derive(Debug)]
pub(crate) struct Record {
    pub kind: u8,
    pub id: u16,
    pub content: Bytes,
}

/// Why no record came.
#[derive(Debug)]
#[cfg_attr(
    not(feature = "cluster"),
    allow(
        dead_code,
        reason = "the reader's ends are for the property tests (brood::fuzzing)"
    )
)]
pub(crate) enum ReadError {
    /// The peer closed the connection between two records.
    Eof,
    /// The peer closed it in the middle of one.
    Truncated,
    /// Not FastCGI 1 (garbage, or another protocol).
    BadVersion(u8),
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Eof => write!(f, "connection closed"),
            ReadError::Truncated => write!(f, "connection closed in the middle of a record"),
            ReadError::BadVersion(v) => write!(f, "not a FastCGI 1 record (version byte {v})"),
            ReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Reads records; holds at most one record (64 KiB + 263 bytes) at a time. `next` is
/// cancel-safe: what was read stays in the buffer.
#[cfg_attr(
    not(feature = "cluster"),
    allow(
        dead_code,
        reason = "what the property tests read records with (brood::fuzzing)"
    )
)]
pub(crate) struct Reader<R> {
    r: R,
    buf: BytesMut,
}

#[cfg_attr(
    not(feature = "cluster"),
    allow(
        dead_code,
        reason = "what the property tests read records with (brood::fuzzing)"
    )
)]
impl<R: AsyncRead + Unpin> Reader<R> {
    pub(crate) fn new(r: R) -> Reader<R> {
        Reader {
            r,
            buf: BytesMut::with_capacity(8 * 1024),
        }
    }

    pub(crate) async fn next(&mut self) -> Result<Record, ReadError> {
        loop {
            let want = match parse(&mut self.buf)? {
                Parsed::Record(r) => return Ok(r),
                Parsed::Need(n) => n,
            };
            self.buf
                .reserve(want.saturating_sub(self.buf.len()).max(4096));
            let n = self
                .r
                .read_buf(&mut self.buf)
                .await
                .map_err(ReadError::Io)?;
            if n == 0 {
                return Err(if self.buf.is_empty() {
                    ReadError::Eof
                } else {
                    ReadError::Truncated
                });
            }
        }
    }
}

/// What [`parse`] found at the start of the buffer.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// A whole record, taken off the buffer.
    Record(Record),
    /// Bytes the buffer must hold before a record can be taken.
    Need(
        #[cfg_attr(
            not(feature = "cluster"),
            allow(dead_code, reason = "read by `Reader`")
        )]
        usize,
    ),
}

/// Takes one whole record off the front of `buf`, or says how many bytes it needs first
/// (pure: no I/O; the fuzz target feeds it arbitrary bytes).
pub(crate) fn parse(buf: &mut BytesMut) -> Result<Parsed, ReadError> {
    if buf.len() < HEADER {
        return Ok(Parsed::Need(HEADER));
    }
    if buf[0] != VERSION {
        return Err(ReadError::BadVersion(buf[0]));
    }
    let clen = u16::from_be_bytes([buf[4], buf[5]]) as usize;
    let plen = buf[6] as usize;
    let total = HEADER + clen + plen;
    if buf.len() < total {
        return Ok(Parsed::Need(total));
    }
    let mut rec = buf.split_to(total);
    let kind = rec[1];
    let id = u16::from_be_bytes([rec[2], rec[3]]);
    rec.advance(HEADER);
    rec.truncate(clen);
    Ok(Parsed::Record(Record {
        kind,
        id,
        content: rec.freeze(),
    }))
}

/// A record's header.
pub(crate) fn header(kind: u8, id: u16, len: usize) -> [u8; HEADER] {
    debug_assert!(len <= MAX_CONTENT);
    let [a, b] = (id).to_be_bytes();
    let [c, d] = (len as u16).to_be_bytes();
    [VERSION, kind, a, b, c, d, 0, 0]
}

/// `data` as records of a stream (`STDOUT`, `STDERR`), appended to `out`. Empty `data`
/// makes the empty record that ends the stream.
pub(crate) fn put_stream(out: &mut BytesMut, kind: u8, id: u16, data: &[u8]) {
    if data.is_empty() {
        out.put_slice(&header(kind, id, 0));
        return;
    }
    for piece in data.chunks(STREAM_CONTENT) {
        out.put_slice(&header(kind, id, piece.len()));
        out.put_slice(piece);
    }
}

/// `END_REQUEST` for `id`.
pub(crate) fn put_end(out: &mut BytesMut, id: u16, app_status: u32, protocol_status: u8) {
    out.put_slice(&header(END_REQUEST, id, 8));
    out.put_u32(app_status);
    out.put_slice(&[protocol_status, 0, 0, 0]);
}

/// `UNKNOWN_TYPE` answering a record of type `kind`.
pub(crate) fn put_unknown_type(out: &mut BytesMut, kind: u8) {
    out.put_slice(&header(UNKNOWN_TYPE, 0, 8));
    out.put_slice(&[kind, 0, 0, 0, 0, 0, 0, 0]);
}

/// `BEGIN_REQUEST`'s body: `(role, flags)`.
pub(crate) fn begin(content: &[u8]) -> Option<(u16, u8)> {
    (content.len() >= 3).then(|| (u16::from_be_bytes([content[0], content[1]]), content[2]))
}

/// One name-value pair, borrowed from the record.
pub(crate) type Pair<'a> = (&'a [u8], &'a [u8]);

/// Name-value pairs (lengths of one byte, or four with the top bit set).
pub(crate) fn pairs(mut data: &[u8]) -> Result<Vec<Pair<'_>>, &'static str> {
    fn length(data: &mut &[u8]) -> Result<usize, &'static str> {
        let first = *data.first().ok_or("truncated length")?;
        if first & 0x80 == 0 {
            *data = &data[1..];
            return Ok(first as usize);
        }
        let four: [u8; 4] = data
            .get(..4)
            .ok_or("truncated length")?
            .try_into()
            .expect("4 bytes");
        *data = &data[4..];
        Ok((u32::from_be_bytes(four) & 0x7fff_ffff) as usize)
    }
    let mut out = Vec::new();
    while !data.is_empty() {
        let n = length(&mut data)?;
        let v = length(&mut data)?;
        if data.len() < n.saturating_add(v) {
            return Err("a name or value runs past the end");
        }
        out.push((&data[..n], &data[n..n + v]));
        data = &data[n + v..];
    }
    Ok(out)
}

/// Appends one name-value pair.
pub(crate) fn put_pair(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    for len in [name.len(), value.len()] {
        if len < 0x80 {
            out.put_u8(len as u8);
        } else {
            out.put_u32(len as u32 | 0x8000_0000);
        }
    }
    out.put_slice(name);
    out.put_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_short_and_long() {
        let long = vec![b'x'; 300];
        let mut out = BytesMut::new();
        put_pair(&mut out, b"A", b"b");
        put_pair(&mut out, b"LONG", &long);
        let got = pairs(&out).unwrap();
        assert_eq!(got, vec![(&b"A"[..], &b"b"[..]), (&b"LONG"[..], &long[..])]);
    }

    #[test]
    fn malformed_pairs_are_errors_not_panics() {
        for bad in [
            &[5u8][..],
            &[1, 1, b'a'],
            &[0x80, 0, 0],
            &[0xff, 0xff, 0xff, 0xff, 1, b'a'],
            &[1, 0x80, 0, 0, 9, b'a'],
        ] {
            assert!(pairs(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn records_parse_only_when_whole() {
        let mut out = BytesMut::new();
        put_stream(&mut out, STDOUT, 7, b"hello");
        put_end(&mut out, 7, 3, REQUEST_COMPLETE);
        let mut buf = BytesMut::from(&out[..10]);
        assert!(matches!(parse(&mut buf), Ok(Parsed::Need(13))));
        let mut buf = out.clone();
        let Ok(Parsed::Record(r)) = parse(&mut buf) else {
            panic!()
        };
        assert_eq!((r.kind, r.id, &r.content[..]), (STDOUT, 7, &b"hello"[..]));
        let Ok(Parsed::Record(r)) = parse(&mut buf) else {
            panic!()
        };
        assert_eq!(r.kind, END_REQUEST);
        assert_eq!(&r.content[..5], &[0, 0, 0, 3, REQUEST_COMPLETE]);
        assert!(buf.is_empty());
        let mut garbage = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(matches!(
            parse(&mut garbage),
            Err(ReadError::BadVersion(b'G'))
        ));
    }

    #[test]
    fn long_streams_split_into_records() {
        let data = vec![1u8; STREAM_CONTENT + 10];
        let mut out = BytesMut::new();
        put_stream(&mut out, STDOUT, 1, &data);
        assert_eq!(out.len(), data.len() + 16);
    }
}
