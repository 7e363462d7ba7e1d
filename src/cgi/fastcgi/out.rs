//! The records of one connection waiting to be written. Small records (headers, ends,
//! answers) are copied into one buffer; a script's output is not copied at all: each
//! record's 8-byte header goes into that buffer and its content stays the body's own
//! [`Bytes`], and the lot is written with `writev`. Otherwise a 64 KiB response would be
//! copied once more, into a buffer grown to 64 KiB anew on every connection (nginx opens one
//! per request unless `fastcgi_keep_conn` is on).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::AsFd;

use bytes::{Buf, Bytes, BytesMut};

use super::record;

/// Stream data shorter than this is copied like the small records, so that many small pieces
/// (stderr lines, a script's short writes) make one iovec, not one each.
const COPY_BELOW: usize = 2048;
/// Slices per `writev` (Linux's `IOV_MAX` is 1024).
const MAX_SLICES: usize = 64;

/// Records in the order they are to be written.
#[derive(Default)]
pub(crate) struct Out {
    /// Small records not yet sealed into `queue`.
    small: BytesMut,
    /// Sealed pieces: copied records and borrowed contents, in order.
    queue: VecDeque<Bytes>,
    /// Bytes in `queue`.
    queued: usize,
}

impl Out {
    /// Where small records are written (`record::put_*`).
    pub(crate) fn small(&mut self) -> &mut BytesMut {
        &mut self.small
    }

    /// Bytes waiting.
    pub(crate) fn len(&self) -> usize {
        self.queued + self.small.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `data` as records of stream `kind` (`STDOUT`, `STDERR`), each the same record
    /// `record::put_stream` makes; empty `data` ends the stream.
    pub(crate) fn put_stream(&mut self, kind: u8, id: u16, data: Bytes) {
        if data.len() < COPY_BELOW {
            record::put_stream(&mut self.small, kind, id, &data);
            return;
        }
        let mut at = 0;
        while at < data.len() {
            let end = (at + record::STREAM_CONTENT).min(data.len());
            self.small
                .extend_from_slice(&record::header(kind, id, end - at));
            self.seal();
            self.push(data.slice(at..end));
            at = end;
        }
    }

    fn seal(&mut self) {
        if !self.small.is_empty() {
            let piece = self.small.split().freeze();
            self.push(piece);
        }
    }

    fn push(&mut self, piece: Bytes) {
        self.queued += piece.len();
        self.queue.push_back(piece);
    }

    /// Writes what a non-blocking `fd` takes now (vectored): `Ok(true)` once all is
    /// written. On an error what was not written is dropped: the connection is done for.
    pub(crate) fn write_nonblocking(&mut self, fd: impl AsFd) -> io::Result<bool> {
        self.write_with(|slices| match rustix::io::writev(fd.as_fd(), slices) {
            Ok(n) => Ok(n),
            Err(rustix::io::Errno::AGAIN) => Err(io::ErrorKind::WouldBlock.into()),
            Err(e) => Err(e.into()),
        })
    }

    /// [`write_nonblocking`](Out::write_nonblocking) through `writev`, which returns
    /// `WouldBlock` when the peer takes no more now.
    fn write_with(
        &mut self,
        mut writev: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<bool> {
        self.seal();
        while !self.queue.is_empty() {
            let r = {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut k = 0;
                for (slot, piece) in slices.iter_mut().zip(&self.queue) {
                    *slot = IoSlice::new(piece);
                    k += 1;
                }
                writev(&slices[..k])
            };
            match r {
                Ok(0) => {
                    self.clear();
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(n) => self.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.clear();
                    return Err(e);
                }
            }
        }
        Ok(true)
    }

    fn clear(&mut self) {
        self.queue.clear();
        self.queued = 0;
    }

    /// Drops `n` written bytes from the front.
    fn advance(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let front = self.queue.front_mut().expect("n counts queued bytes");
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.queue.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `each` bytes per call, then says it would block every
    /// other call.
    struct Trickle {
        got: Vec<u8>,
        each: usize,
        calls: usize,
    }

    impl Trickle {
        fn writev(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls % 2 == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut left = self.each;
            for b in bufs {
                let n = b.len().min(left);
                self.got.extend_from_slice(&b[..n]);
                left -= n;
                if left == 0 {
                    break;
                }
            }
            Ok(self.each - left)
        }
    }

    /// The same bytes as copying every record, however the writes are cut.
    #[test]
    fn the_same_records_as_copying_them_whatever_the_writes_take() {
        let big: Bytes = (0..100_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        let mut expected = BytesMut::new();
        record::put_end(&mut expected, 1, 0, 0);
        record::put_stream(&mut expected, record::STDOUT, 1, b"Status: 200\r\n\r\n");
        record::put_stream(&mut expected, record::STDOUT, 1, &big);
        record::put_stream(&mut expected, record::STDERR, 1, b"a line\n");
        record::put_stream(&mut expected, record::STDOUT, 1, &big[..COPY_BELOW]);
        record::put_stream(&mut expected, record::STDOUT, 1, b"");
        for each in [1, 7, 8, 9, 4096, 16384, 1 << 20] {
            let mut out = Out::default();
            record::put_end(out.small(), 1, 0, 0);
            out.put_stream(
                record::STDOUT,
                1,
                Bytes::from_static(b"Status: 200\r\n\r\n"),
            );
            out.put_stream(record::STDOUT, 1, big.clone());
            out.put_stream(record::STDERR, 1, Bytes::from_static(b"a line\n"));
            out.put_stream(record::STDOUT, 1, big.slice(..COPY_BELOW));
            out.put_stream(record::STDOUT, 1, Bytes::new());
            assert_eq!(out.len(), expected.len());
            let mut w = Trickle {
                got: Vec::new(),
                each,
                calls: 0,
            };
            let mut rounds = 0;
            while !out.write_with(|s| w.writev(s)).unwrap() {
                rounds += 1;
                assert!(rounds < 1_000_000);
            }
            assert!(out.is_empty());
            assert_eq!(w.got, &expected[..], "writes of {each}");
            if each == 1 << 20 {
                // Contents were not copied: 7 records' worth of slices in one writev.
                assert_eq!(w.calls, 1);
            }
        }
    }

    #[test]
    fn a_writer_that_takes_nothing_is_an_error_and_leaves_it_empty() {
        let mut out = Out::default();
        out.put_stream(record::STDOUT, 1, Bytes::from(vec![1u8; 10_000]));
        let e = out.write_with(|_| Ok(0)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
        assert!(out.is_empty());
    }

    #[test]
    fn a_socket_that_is_full_takes_the_rest_later() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut out = Out::default();
        let big = Bytes::from(vec![7u8; 4 << 20]);
        out.put_stream(record::STDOUT, 1, big);
        assert!(
            !out.write_nonblocking(&a).unwrap(),
            "4 MiB do not fit at once"
        );
        let reader = std::thread::spawn(move || {
            let mut n = 0;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match std::io::Read::read(&mut &b, &mut buf) {
                    Ok(0) | Err(_) => return n,
                    Ok(k) => n += k,
                }
            }
        });
        while !out.write_nonblocking(&a).unwrap() {
            std::thread::yield_now();
        }
        drop(a);
        let records = (4usize << 20).div_ceil(record::STREAM_CONTENT);
        assert_eq!(reader.join().unwrap(), (4 << 20) + 8 * records);
    }
}
