//! The request body, read whole before the script starts (as lighttpd does): de-chunked,
//! in memory up to [`MEMORY_LIMIT`], then in an unnamed temporary file, never more than the
//! server's `max_body`. So a script always gets `CONTENT_LENGTH` and exactly that many bytes
//! (RFC 3875 4.1.2), a client trickling its body holds no script, and a body that breaks
//! off (a bad chunk, a client gone) is never seen by one.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::StatusCode;
use hyper::body::Incoming;

/// Bodies up to this size stay in memory.
pub(crate) const MEMORY_LIMIT: usize = 256 * 1024;

/// Request body bytes held in memory by all requests of the process together; past it,
/// bodies go to temporary files however small they are.
pub(crate) const MEMORY_BUDGET: usize = 64 * 1024 * 1024;

static IN_MEMORY: AtomicUsize = AtomicUsize::new(0);

/// A share of [`MEMORY_BUDGET`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation(usize);

impl Reservation {
    fn take(n: usize) -> Option<Reservation> {
        let before = IN_MEMORY.fetch_add(n, Ordering::Relaxed);
        if before + n > MEMORY_BUDGET {
            IN_MEMORY.fetch_sub(n, Ordering::Relaxed);
            return None;
        }
        Some(Reservation(n))
    }

    fn grow(&mut self, n: usize) -> bool {
        match Reservation::take(n) {
            Some(more) => {
                self.0 += more.0;
                std::mem::forget(more);
                true
            }
            None => false,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        IN_MEMORY.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// A whole request body.
#[derive(Debug)]
pub(crate) enum Upload {
    /// With its share of the memory budget, to hold until the script has it all.
    Memory(Bytes, Reservation),
    /// Rewound to its start.
    File(File, u64),
}

impl Upload {
    pub(crate) fn len(&self) -> u64 {
        match self {
            Upload::Memory(b, _) => b.len() as u64,
            Upload::File(_, n) => *n,
        }
    }
}

/// Why there is no whole body.
#[derive(Debug)]
pub(crate) enum UploadError {
    /// Larger than `max_body`: 413.
    TooLarge,
    /// No byte for the idle timeout: 408.
    Idle,
    /// A malformed body, or a client gone mid-way (`gone`): 400, if anyone is still there.
    Broken { why: String, gone: bool },
    /// The temporary file could not be written: 500.
    Storage(std::io::Error),
}

impl std::fmt::Display for UploadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadError::TooLarge => write!(f, "over the size limit"),
            UploadError::Idle => write!(f, "idle too long"),
            UploadError::Broken { why, .. } => write!(f, "{why}"),
            UploadError::Storage(e) => write!(f, "temporary file: {e}"),
        }
    }
}

impl UploadError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            UploadError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UploadError::Idle => StatusCode::REQUEST_TIMEOUT,
            UploadError::Broken { .. } => StatusCode::BAD_REQUEST,
            UploadError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A body being received, piece by piece, from any front: in memory up to
/// [`MEMORY_LIMIT`] (within the shared budget), then in a temporary file; never more than
/// `max` bytes.
pub(crate) struct Spool {
    mem: BytesMut,
    held: Reservation,
    file: Option<File>,
    total: u64,
    max: u64,
}

impl Spool {
    pub(crate) fn new(max: u64) -> Spool {
        Spool {
            mem: BytesMut::new(),
            held: Reservation::take(0).expect("nothing fits"),
            file: None,
            total: 0,
            max,
        }
    }

    /// Adds the next piece of the body.
    pub(crate) fn push(&mut self, data: &[u8]) -> Result<(), UploadError> {
        self.total += data.len() as u64;
        if self.total > self.max {
            return Err(UploadError::TooLarge);
        }
        match &mut self.file {
            Some(f) => write(f, data)?,
            None if self.mem.len() + data.len() <= MEMORY_LIMIT && self.held.grow(data.len()) => {
                self.mem.extend_from_slice(data)
            }
            None => {
                let mut f = temp_file().map_err(UploadError::Storage)?;
                write(&mut f, &self.mem)?;
                write(&mut f, data)?;
                self.mem = BytesMut::new();
                self.held = Reservation::take(0).expect("nothing fits");
                self.file = Some(f);
            }
        }
        Ok(())
    }

    /// Bytes received so far.
    pub(crate) fn len(&self) -> u64 {
        self.total
    }

    /// The whole body, a file rewound to its start.
    pub(crate) fn finish(self) -> Result<Upload, UploadError> {
        match self.file {
            None => Ok(Upload::Memory(self.mem.freeze(), self.held)),
            Some(mut f) => {
                f.seek(SeekFrom::Start(0)).map_err(UploadError::Storage)?;
                Ok(Upload::File(f, self.total))
            }
        }
    }
}

/// Reads the whole body: at most `max` bytes, each frame within `idle` of the last.
pub(crate) async fn read_all(
    mut body: Incoming,
    max: u64,
    idle: Duration,
) -> Result<Upload, UploadError> {
    let mut spool = Spool::new(max);
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(UploadError::Idle),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(UploadError::Broken {
                    why: e.to_string(),
                    gone: client_gone(&e),
                });
            }
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        spool.push(&data)?;
    }
    spool.finish()
}

/// Whether a body error is the client going away (rather than a malformed body).
fn client_gone(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
            );
        }
        source = s.source();
    }
    false
}

/// Writes to the temporary file. A plain write: a frame (at most hyper's read buffer) into
/// the page cache, which does not stall the thread as a network wait would.
fn write(f: &mut File, data: &[u8]) -> Result<(), UploadError> {
    f.write_all(data).map_err(UploadError::Storage)
}

/// An unnamed file in the temporary directory (`O_TMPFILE`): nothing to clean up, whatever
/// happens to the server. Falls back to a named file removed at once.
fn temp_file() -> std::io::Result<File> {
    let dir = std::env::temp_dir();
    let unnamed = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .mode(0o600)
        .open(&dir);
    match unnamed {
        Ok(f) => Ok(f),
        Err(_) => {
            static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.join(format!("brood-cgi-body-{}-{n}", std::process::id()));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            let _ = std::fs::remove_file(&path);
            Ok(f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_budget_is_shared_and_given_back() {
        let all = Reservation::take(MEMORY_BUDGET).expect("the whole budget is free");
        assert!(Reservation::take(1).is_none());
        let mut none = Reservation::take(0).unwrap();
        assert!(!none.grow(1));
        drop(all);
        assert!(none.grow(1));
    }
}
