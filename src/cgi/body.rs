//! The script's stdout: the header block read first, then the rest streamed to the client
//! as it comes, never the whole output in memory. Small writes are coalesced: each frame
//! holds what the pipe has at that moment, up to [`CHUNK`] bytes (cgit writes a page in
//! dozens of pieces).

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncReadExt;

use super::response::find_end_from;
use super::script::{Reader, Run, Shared};
use crate::Exit;

/// The largest frame: what one read may bring (a pipe holds 64 KiB by default).
const CHUNK: usize = 64 * 1024;
/// Below this much room left in the buffer, the next read gets a new one.
const MIN_SPARE: usize = 4 * 1024;

/// How long, after stdout's EOF, the end of the body waits for the script's exit status
/// (a script that closes stdout and works on ends its body cleanly after this).
pub(crate) const EXIT_WAIT: Duration = Duration::from_secs(2);

/// Why no header block came.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// stdout ended first (the script exited), or the timeout cut it.
    Eof,
    /// The block grew past the limit.
    TooLarge,
    /// Reading stdout failed.
    Io(io::Error),
}

/// The header block as it comes in, with no I/O of its own: both fronts feed it what they
/// read from stdout (the HTTP front and the script runner through [`read_head`], the
/// FastCGI event loop from its readiness events).
#[derive(Debug)]
pub(crate) struct HeadReader {
    buf: BytesMut,
    limit: usize,
}

/// What the bytes read so far make.
#[derive(Debug)]
pub(crate) enum Head {
    /// No end of the block yet: read more.
    More,
    /// The block (without its blank line) and the first body bytes.
    Done(Bytes, Bytes),
    /// The block grew past the limit.
    TooLarge,
}

impl HeadReader {
    pub(crate) fn new(limit: usize) -> HeadReader {
        HeadReader {
            buf: BytesMut::with_capacity(4096),
            limit,
        }
    }

    /// The buffer to read into (at least 1 KiB free); then call [`scan`](HeadReader::scan)
    /// with where the new bytes began.
    pub(crate) fn buf(&mut self) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(4096);
        }
        &mut self.buf
    }

    /// Bytes held.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Looks for the end of the block in what was added since `old_len` bytes were held.
    pub(crate) fn scan(&mut self, old_len: usize) -> Head {
        let from = old_len.saturating_sub(2);
        if let Some((end, body)) = find_end_from(&self.buf, from) {
            if end > self.limit {
                return Head::TooLarge;
            }
            let mut block = self.buf.split_to(body);
            block.truncate(end);
            return Head::Done(block.freeze(), std::mem::take(&mut self.buf).freeze());
        }
        if self.buf.len() > self.limit {
            return Head::TooLarge;
        }
        Head::More
    }

    /// Adds `data` and scans it (for callers that read into their own buffer).
    pub(crate) fn push(&mut self, data: &[u8]) -> Head {
        let old = self.buf.len();
        self.buf.extend_from_slice(data);
        self.scan(old)
    }
}

/// Reads stdout until the end of the header block: `(block, first body bytes)`. Stops at
/// the timeout's cut even when someone outside the group still holds stdout open.
pub(crate) async fn read_head(
    stdout: &mut Reader,
    shared: &Shared,
    limit: usize,
) -> Result<(Bytes, Bytes), HeadError> {
    let mut cut = shared.cut.subscribe();
    let mut head = HeadReader::new(limit);
    loop {
        let old = head.len();
        let n = tokio::select! {
            r = stdout.read_buf(head.buf()) => r.map_err(HeadError::Io)?,
            _ = cut.wait_for(|c| *c) => return Err(HeadError::Eof),
        };
        if n == 0 {
            return Err(HeadError::Eof);
        }
        match head.scan(old) {
            Head::More => {}
            Head::Done(block, rest) => return Ok((block, rest)),
            Head::TooLarge => return Err(HeadError::TooLarge),
        }
    }
}

type Waiting = Pin<Box<dyn Future<Output = bool> + Send>>;

/// The response body: the bytes already read past the header block, then stdout until EOF.
///
/// It ends cleanly only when the script's output is complete: `Content-Length` bytes were
/// sent, or stdout ended and the script exited on its own. A script killed by a signal
/// after its headers, or cut by the timeout, ends it with an error, so the client sees a
/// truncated response (no last chunk), never a clean short one. Dropped before its end (the
/// client went away) it drops its [`Run`], which ends the script's process group.
pub(crate) struct ScriptBody {
    first: Bytes,
    run: Option<Run>,
    buf: BytesMut,
    /// Bytes still due when the script sent `Content-Length`.
    remaining: Option<u64>,
    /// Resolves when the timeout cuts stdout.
    cut: Waiting,
    /// After EOF: resolves to whether the script ended well.
    exit: Option<Waiting>,
    /// What `exit` resolved to.
    well: Option<bool>,
    /// A failed end has given hyper its turn to flush.
    flushed: bool,
}

fn ended_well(exit: Option<Exit>) -> bool {
    exit.is_some_and(|e| e.signal == 0)
}

impl ScriptBody {
    pub(crate) fn new(first: Bytes, run: Run, content_length: Option<u64>) -> ScriptBody {
        let mut cut = run.shared.cut.subscribe();
        ScriptBody {
            first,
            buf: BytesMut::new(),
            remaining: content_length,
            cut: Box::pin(async move {
                let _ = cut.wait_for(|c| *c).await;
                true
            }),
            exit: None,
            well: None,
            flushed: false,
            run: Some(run),
        }
    }

    /// Counts `data` as sent, trimmed to what `Content-Length` still allows; finishes the
    /// run when that is reached.
    fn sent(&mut self, mut data: Bytes) -> Option<Result<Frame<Bytes>, io::Error>> {
        let run = self.run.as_ref()?;
        if let Some(left) = &mut self.remaining {
            if data.len() as u64 > *left {
                data.truncate(*left as usize);
            }
            *left -= data.len() as u64;
        }
        run.shared
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if self.remaining == Some(0) {
            // Complete: the script may run on (bounded by the timeout), untouched.
            if let Some(run) = self.run.take() {
                run.finish();
            }
        }
        Some(Ok(Frame::data(data)))
    }

    fn cut_error(&mut self) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.run = None;
        Poll::Ready(Some(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "CGI script timed out",
        ))))
    }
}

impl Body for ScriptBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.run.is_none() {
            return Poll::Ready(None);
        }
        if let Some(wait) = &mut this.exit {
            let well = match this.well {
                Some(w) => w,
                None => {
                    let Poll::Ready(w) = wait.as_mut().poll(cx) else {
                        return Poll::Pending;
                    };
                    this.well = Some(w);
                    w
                }
            };
            let failed = !well
                || this
                    .run
                    .as_ref()
                    .is_some_and(|r| r.shared.timed_out.load(Ordering::SeqCst));
            if failed && !this.flushed {
                // One turn for hyper to flush what was already sent (the head and the
                // first bytes) before the error closes the connection.
                this.flushed = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let run = this.run.take().expect("checked above");
            if failed {
                return Poll::Ready(Some(Err(io::Error::other(
                    "CGI script died before the end of its output",
                ))));
            }
            if this.remaining.is_some_and(|n| n > 0) {
                return Poll::Ready(Some(Err(io::Error::other(
                    "CGI script sent less than its Content-Length",
                ))));
            }
            run.finish();
            return Poll::Ready(None);
        }
        if this.cut.as_mut().poll(cx).is_ready() {
            return this.cut_error();
        }
        // The bytes that came with the header block, then what the pipe has now, up to one
        // frame: however many pieces the script wrote them in. Read into the buffer's spare
        // capacity (nothing zeroed first), as much as the pipe holds per read.
        if !this.first.is_empty() {
            let first = std::mem::take(&mut this.first);
            if first.len() >= CHUNK / 2 {
                return Poll::Ready(this.sent(first));
            }
            this.buf.reserve(CHUNK.max(first.len()));
            this.buf.extend_from_slice(&first);
        }
        let mut eof = false;
        while this.buf.len() < CHUNK {
            // A new buffer only when this one is nearly used up: frames handed on share
            // their buffer, so a script writing a few bytes at a time pins one buffer for
            // many frames, not one buffer per frame.
            if this.buf.capacity() - this.buf.len() < MIN_SPARE {
                this.buf.reserve(CHUNK - this.buf.len());
            }
            let room = (CHUNK - this.buf.len()).min(this.buf.capacity() - this.buf.len());
            let run = this.run.as_mut().expect("checked above");
            let mut limited = (&mut this.buf).limit(room);
            let read = std::pin::pin!(run.stdout.read_buf(&mut limited)).poll(cx);
            match read {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => {
                    if !this.buf.is_empty() {
                        break;
                    }
                    this.run = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Ok(0)) => {
                    eof = true;
                    break;
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
        let filled = this.buf.len();
        if filled > 0 {
            let data = this.buf.split_to(filled).freeze();
            return Poll::Ready(this.sent(data));
        }
        if !eof {
            return Poll::Pending;
        }
        // EOF: complete only if the script ended on its own.
        let mut exit = this
            .run
            .as_ref()
            .expect("checked above")
            .shared
            .exit
            .subscribe();
        this.exit = Some(Box::pin(async move {
            match tokio::time::timeout(EXIT_WAIT, exit.wait_for(|e| e.is_some())).await {
                Ok(Ok(e)) => ended_well(e.flatten()),
                // Still running with stdout closed: it ended its output on purpose.
                Err(_) => true,
                Ok(Err(_)) => false,
            }
        }));
        Pin::new(this).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.run.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_is_found_across_pieces_and_bounded() {
        let mut h = HeadReader::new(64);
        assert!(matches!(h.push(b"Status: 200\r"), Head::More));
        assert!(matches!(h.push(b"\n\r"), Head::More));
        match h.push(b"\nbody") {
            Head::Done(block, rest) => {
                assert_eq!(&block[..], b"Status: 200\r\n");
                assert_eq!(&rest[..], b"body");
            }
            other => panic!("{other:?}"),
        }
        let mut h = HeadReader::new(16);
        assert!(matches!(h.push(&[b'x'; 17]), Head::TooLarge));
        let mut h = HeadReader::new(16);
        assert!(matches!(h.push(b"X-Long: 0123456789\n\nz"), Head::TooLarge));
    }
}
