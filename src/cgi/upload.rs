//! The request body, read whole before the script starts (as lighttpd does): de-chunked,
//! in memory up to [`MEMORY_LIMIT`], then in an unnamed temporary file, never more than the
//! server's `max_body`. So a script always gets `CONTENT_LENGTH` and exactly that many bytes
//! (RFC 3875 4.1.2), a client trickling its body holds no script, and a body that breaks
//! off (a bad chunk, a client gone) is never seen by one.
//!
//! Two budgets bound what bodies hold: memory for the whole process ([`MEMORY_BUDGET`]),
//! and the temporary files of one server (`Cgi::max_spool`): a body that would take more
//! disk than is left is refused (503), and a file's share is given back only when its
//! script has ended (the script reads the file as its stdin).

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
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

/// The process's memory budget for bodies.
static MEMORY: LazyLock<Arc<Budget>> = LazyLock::new(|| Budget::new(MEMORY_BUDGET as u64));

/// Bytes that many requests share: taken in [`Reservation`]s, never more than the limit.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicU64,
    limit: u64,
}

impl Budget {
    pub(crate) fn new(limit: u64) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicU64::new(0),
            limit,
        })
    }

    /// The most bytes it holds.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes reserved now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

/// A share of a [`Budget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<Budget>,
    n: u64,
}

impl Reservation {
    fn none(budget: &Arc<Budget>) -> Reservation {
        Reservation {
            budget: budget.clone(),
            n: 0,
        }
    }

    /// Takes `n` more bytes of the budget, or nothing when they do not fit.
    fn grow(&mut self, n: u64) -> bool {
        let b = &self.budget;
        let fits = b
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&u| u <= b.limit)
            })
            .is_ok();
        if fits {
            self.n += n;
        }
        fits
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.n, Ordering::Relaxed);
    }
}

/// A whole request body.
#[derive(Debug)]
pub(crate) enum Upload {
    /// With its share of the memory budget, to hold until the script has it all.
    Memory(Bytes, Reservation),
    /// Rewound to its start, with its share of the server's disk budget, to hold until
    /// the script has ended.
    File(File, u64, Reservation),
}

impl Upload {
    pub(crate) fn len(&self) -> u64 {
        match self {
            Upload::Memory(b, _) => b.len() as u64,
            Upload::File(_, n, _) => *n,
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
    /// The server's temporary files for bodies are at `max_spool`: 503.
    DiskFull,
    /// Larger than the whole `max_spool`: it can never fit, 413.
    OverSpool,
}

impl std::fmt::Display for UploadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadError::TooLarge => write!(f, "over the size limit"),
            UploadError::Idle => write!(f, "idle too long"),
            UploadError::Broken { why, .. } => write!(f, "{why}"),
            UploadError::Storage(e) => write!(f, "temporary file: {e}"),
            UploadError::DiskFull => write!(f, "the temporary files of bodies are at --max-spool"),
            UploadError::OverSpool => write!(f, "larger than the whole --max-spool"),
        }
    }
}

impl UploadError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            UploadError::TooLarge | UploadError::OverSpool => StatusCode::PAYLOAD_TOO_LARGE,
            UploadError::Idle => StatusCode::REQUEST_TIMEOUT,
            UploadError::Broken { .. } => StatusCode::BAD_REQUEST,
            UploadError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            UploadError::DiskFull => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The sentence the client gets, when it differs from its status's usual one.
    pub(crate) fn sentence(&self) -> Option<&'static str> {
        match self {
            UploadError::DiskFull => {
                Some("The server's space for request bodies is full; try again later.")
            }
            UploadError::OverSpool => {
                Some("The request body is larger than all the server's space for request bodies.")
            }
            _ => None,
        }
    }
}

/// A body being received, piece by piece, from any front: in memory up to
/// [`MEMORY_LIMIT`] (within the shared budget), then in a temporary file; never more than
/// `max` bytes, and never more disk than is left of the server's budget `disk`.
pub(crate) struct Spool {
    mem: BytesMut,
    held: Reservation,
    file: Option<File>,
    disk: Reservation,
    total: u64,
    max: u64,
}

impl Spool {
    pub(crate) fn new(max: u64, disk: &Arc<Budget>) -> Spool {
        Spool {
            mem: BytesMut::new(),
            held: Reservation::none(&MEMORY),
            file: None,
            disk: Reservation::none(disk),
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
            Some(f) => {
                if !self.disk.grow(data.len() as u64) {
                    return Err(self.disk_full());
                }
                write(f, data)?
            }
            None if self.mem.len() + data.len() <= MEMORY_LIMIT
                && self.held.grow(data.len() as u64) =>
            {
                self.mem.extend_from_slice(data)
            }
            None => {
                if !self.disk.grow((self.mem.len() + data.len()) as u64) {
                    return Err(self.disk_full());
                }
                let mut f = temp_file().map_err(UploadError::Storage)?;
                write(&mut f, &self.mem)?;
                write(&mut f, data)?;
                self.mem = BytesMut::new();
                self.held = Reservation::none(&MEMORY);
                self.file = Some(f);
            }
        }
        Ok(())
    }

    /// No disk left for this body: for now (503), or ever, when it is already larger than
    /// the whole budget (413).
    fn disk_full(&self) -> UploadError {
        if self.total > self.disk.budget.limit {
            UploadError::OverSpool
        } else {
            UploadError::DiskFull
        }
    }

    /// Whether a body of `n` bytes (its declared length) can never be taken: larger than
    /// `max` ([`UploadError::TooLarge`]), or than what stays in memory and the whole disk
    /// budget ([`UploadError::OverSpool`]).
    pub(crate) fn refuse(n: u64, max: u64, disk: &Budget) -> Option<UploadError> {
        if n > max {
            Some(UploadError::TooLarge)
        } else if n > MEMORY_LIMIT as u64 && n > disk.limit() {
            Some(UploadError::OverSpool)
        } else {
            None
        }
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
                Ok(Upload::File(f, self.total, self.disk))
            }
        }
    }
}

/// Reads the whole body: at most `max` bytes, each frame within `idle` of the last.
pub(crate) async fn read_all(
    mut body: Incoming,
    max: u64,
    disk: &Arc<Budget>,
    idle: Duration,
) -> Result<Upload, UploadError> {
    let mut spool = Spool::new(max, disk);
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
    fn a_budget_is_shared_and_given_back() {
        let budget = Budget::new(100);
        let mut all = Reservation::none(&budget);
        assert!(all.grow(100), "the whole budget is free");
        let mut none = Reservation::none(&budget);
        assert!(!none.grow(1));
        drop(all);
        assert!(none.grow(1));
        assert_eq!(budget.used(), 1);
        drop(none);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_spool_past_the_disk_budget_is_refused_and_gives_its_share_back() {
        let disk = Budget::new(MEMORY_LIMIT as u64 * 2);
        let piece = vec![7u8; MEMORY_LIMIT];
        let mut a = Spool::new(u64::MAX, &disk);
        a.push(&piece).unwrap();
        a.push(&piece).unwrap(); // to a file: the whole budget
        let mut b = Spool::new(u64::MAX, &disk);
        b.push(&piece[..10]).unwrap(); // memory: no disk
        assert!(matches!(b.push(&piece), Err(UploadError::DiskFull)));
        // One larger than the whole budget never fits: 413, not "try again later".
        let mut c = Spool::new(u64::MAX, &disk);
        c.push(&piece).unwrap();
        assert!(matches!(c.push(&piece), Err(UploadError::DiskFull)));
        let mut d = Spool::new(u64::MAX, &Budget::new(MEMORY_LIMIT as u64));
        d.push(&piece).unwrap();
        let over = d.push(&piece[..1]).unwrap_err();
        assert!(matches!(over, UploadError::OverSpool), "{over:?}");
        assert_eq!(over.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let whole = a.finish().unwrap();
        assert_eq!(disk.used(), MEMORY_LIMIT as u64 * 2);
        drop(whole);
        assert_eq!(disk.used(), 0);
    }
}
