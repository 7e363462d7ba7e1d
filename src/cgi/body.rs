//! The script's stdout: the header block read first, then the rest streamed to the client
//! as it comes, one read at a time, never the whole output in memory.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use crate::ChildPipe;
use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::response::find_end_from;
use super::script::Run;

/// Bytes asked of the kernel per read: small at first (most answers are small), doubled
/// each time a read fills the buffer, up to the largest.
const FIRST_CHUNK: usize = 4 * 1024;
const CHUNK: usize = 64 * 1024;

/// Why no header block came.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// stdout ended first (the script exited, or was killed by the timeout).
    Eof,
    /// The block grew past the limit.
    TooLarge,
    /// Reading stdout failed.
    Io(io::Error),
}

/// Reads stdout until the end of the header block: `(block, first body bytes)`.
pub(crate) async fn read_head(
    stdout: &mut ChildPipe,
    limit: usize,
) -> Result<(Bytes, Bytes), HeadError> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let from = buf.len().saturating_sub(2);
        let n = stdout.read_buf(&mut buf).await.map_err(HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Eof);
        }
        if let Some((end, body)) = find_end_from(&buf, from) {
            if end > limit {
                return Err(HeadError::TooLarge);
            }
            let mut block = buf.split_to(body);
            block.truncate(end);
            return Ok((block.freeze(), buf.freeze()));
        }
        if buf.len() > limit {
            return Err(HeadError::TooLarge);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
    }
}

/// The response body: the bytes already read past the header block, then stdout until EOF.
/// Dropped before EOF (the client went away) it drops its [`Run`], which kills the script's
/// process group. When the timeout has fired, EOF is an error, so the client sees a cut
/// response rather than a short complete one.
pub(crate) struct ScriptBody {
    first: Bytes,
    run: Option<Run>,
    buf: BytesMut,
    chunk: usize,
}

impl ScriptBody {
    pub(crate) fn new(first: Bytes, run: Run) -> ScriptBody {
        ScriptBody {
            first,
            run: Some(run),
            buf: BytesMut::new(),
            chunk: FIRST_CHUNK,
        }
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
        let Some(run) = this.run.as_mut() else {
            return Poll::Ready(None);
        };
        if !this.first.is_empty() {
            let data = std::mem::take(&mut this.first);
            run.shared
                .bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if this.buf.len() < this.chunk {
            this.buf.resize(this.chunk, 0);
        }
        let mut rb = ReadBuf::new(&mut this.buf[..]);
        let res = ready!(Pin::new(&mut run.stdout).poll_read(cx, &mut rb));
        let n = rb.filled().len();
        match res {
            Err(e) => {
                this.run = None;
                Poll::Ready(Some(Err(e)))
            }
            Ok(()) if n == 0 => {
                let run = this.run.take().expect("checked above");
                if run.shared.timed_out.load(Ordering::SeqCst) {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "CGI script timed out",
                    ))));
                }
                run.finish();
                Poll::Ready(None)
            }
            Ok(()) => {
                if n == this.buf.len() {
                    this.chunk = (this.chunk * 2).min(CHUNK);
                }
                run.shared.bytes.fetch_add(n as u64, Ordering::Relaxed);
                Poll::Ready(Some(Ok(Frame::data(this.buf.split_to(n).freeze()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.run.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
