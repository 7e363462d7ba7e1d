//! The one error type of brood: an OS errno, its libuv-style name and what was being done.

use std::fmt;
use std::io;

/// An error from brood.
///
/// It keeps the OS error number ([`errno`](Error::errno)), its libuv-style name
/// ([`name`](Error::name), e.g. `"ENOENT"`) and the operation that failed with its subject
/// ([`op`](Error::op), e.g. `spawn "nosuchprog"`). It prints as libuv users expect:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let err = brood::Command::new("brood-no-such-program").spawn().unwrap_err();
/// assert_eq!(err.name(), "ENOENT");
/// assert_eq!(
///     err.to_string(),
///     "spawn \"brood-no-such-program\": ENOENT: no such file or directory"
/// );
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    errno: i32,
    op: String,
    detail: Option<String>,
}

impl Error {
    /// An error for `errno` while doing `op` (for example `spawn "ls"`).
    pub fn new(errno: i32, op: impl Into<String>) -> Error {
        Error {
            errno,
            op: op.into(),
            detail: None,
        }
    }

    /// The current thread's `errno` for `op`.
    pub fn last(op: impl Into<String>) -> Error {
        Error::new(io::Error::last_os_error().raw_os_error().unwrap_or(0), op)
    }

    /// Bad input: `EINVAL` with a sentence that says what is wrong.
    pub fn invalid(op: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::new(libc::EINVAL, op).with_detail(detail)
    }

    /// Adds a sentence of detail, printed after the errno's message.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Error {
        self.detail = Some(detail.into());
        self
    }

    /// Prefixes the operation with an outer one: `spawn "x"` becomes `run: spawn "x"`.
    pub fn context(mut self, outer: impl fmt::Display) -> Error {
        self.op = format!("{outer}: {}", self.op);
        self
    }

    /// The OS error number (`libc::ENOENT`, ...).
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// The libuv-style name of the error number: `"ENOENT"`, `"EACCES"`, ...
    pub fn name(&self) -> &'static str {
        errno_name(self.errno)
    }

    /// What was being done, with its subject: `spawn "nosuchprog"`, `bind "/tmp/x.sock"`.
    pub fn op(&self) -> &str {
        &self.op
    }

    /// The extra sentence, when there is one.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The matching [`std::io::ErrorKind`].
    pub fn kind(&self) -> io::ErrorKind {
        io::Error::from_raw_os_error(self.errno).kind()
    }

    /// The errno's message as libuv's `uv_strerror` words it ("no such file or directory").
    pub fn message(&self) -> String {
        errno_message(self.errno)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.op, self.name(), self.message())?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "brood::Error({self})")
    }
}

impl std::error::Error for Error {}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        io::Error::new(io::Error::from_raw_os_error(e.errno).kind(), e)
    }
}

/// Wraps an [`io::Error`] from a library call (tokio, std) with the operation it belongs to.
pub(crate) fn from_io(e: io::Error, op: impl Into<String>) -> Error {
    match e.raw_os_error() {
        Some(errno) => Error::new(errno, op),
        None => {
            let errno = match e.kind() {
                io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => libc::EINVAL,
                io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe => libc::EPIPE,
                io::ErrorKind::TimedOut => libc::ETIMEDOUT,
                io::ErrorKind::WouldBlock => libc::EAGAIN,
                io::ErrorKind::Unsupported => libc::ENOTSUP,
                _ => libc::EIO,
            };
            Error::new(errno, op).with_detail(e.to_string())
        }
    }
}

/// A `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// One row per errno: (number, libuv name, libuv message).
macro_rules! errno_table {
    ($($e:ident => $msg:literal,)*) => {
        fn errno_row(errno: i32) -> Option<(&'static str, &'static str)> {
            match errno {
                $(libc::$e => Some((stringify!($e), $msg)),)*
                _ => None,
            }
        }
    };
}

errno_table! {
    E2BIG => "argument list too long",
    EACCES => "permission denied",
    EADDRINUSE => "address already in use",
    EADDRNOTAVAIL => "address not available",
    EAFNOSUPPORT => "address family not supported",
    EAGAIN => "resource temporarily unavailable",
    EALREADY => "connection already in progress",
    EBADF => "bad file descriptor",
    EBUSY => "resource busy or locked",
    ECANCELED => "operation canceled",
    ECHILD => "no child processes",
    ECONNABORTED => "software caused connection abort",
    ECONNREFUSED => "connection refused",
    ECONNRESET => "connection reset by peer",
    EDESTADDRREQ => "destination address required",
    EEXIST => "file already exists",
    EFAULT => "bad address in system call argument",
    EFBIG => "file too large",
    EHOSTUNREACH => "host is unreachable",
    EINTR => "interrupted system call",
    EINVAL => "invalid argument",
    EIO => "i/o error",
    EISCONN => "socket is already connected",
    EISDIR => "illegal operation on a directory",
    ELOOP => "too many symbolic links encountered",
    EMFILE => "too many open files",
    EMSGSIZE => "message too long",
    ENAMETOOLONG => "name too long",
    ENETDOWN => "network is down",
    ENETUNREACH => "network is unreachable",
    ENFILE => "file table overflow",
    ENOBUFS => "no buffer space available",
    ENODEV => "no such device",
    ENOENT => "no such file or directory",
    ENOEXEC => "exec format error",
    ENOMEM => "not enough memory",
    ENOSPC => "no space left on device",
    ENOSYS => "function not implemented",
    ENOTCONN => "socket is not connected",
    ENOTDIR => "not a directory",
    ENOTEMPTY => "directory not empty",
    ENOTSOCK => "socket operation on non-socket",
    ENOTSUP => "operation not supported on socket",
    ENOTTY => "inappropriate ioctl for device",
    ENXIO => "no such device or address",
    EOVERFLOW => "value too large for defined data type",
    EPERM => "operation not permitted",
    EPIPE => "broken pipe",
    EPROTO => "protocol error",
    EPROTONOSUPPORT => "protocol not supported",
    EPROTOTYPE => "protocol wrong type for socket",
    ERANGE => "result too large",
    EROFS => "read-only file system",
    ESPIPE => "invalid seek",
    ESRCH => "no such process",
    ETIMEDOUT => "connection timed out",
    ETXTBSY => "text file is busy",
    EXDEV => "cross-device link not permitted",
}

/// The libuv-style name of an errno (`"ENOENT"`), or `"UNKNOWN"`.
pub fn errno_name(errno: i32) -> &'static str {
    errno_row(errno).map_or("UNKNOWN", |(name, _)| name)
}

fn errno_message(errno: i32) -> String {
    match errno_row(errno) {
        Some((_, msg)) => msg.to_string(),
        None => {
            // Not in libuv's table: the C library's words, lower-cased as libuv's are.
            let text = io::Error::from_raw_os_error(errno).to_string();
            let text = text.split(" (os error").next().unwrap_or(&text);
            text.to_lowercase()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_op_name_and_message() {
        let e = Error::new(libc::ENOENT, "spawn \"nosuchprog\"");
        assert_eq!(
            e.to_string(),
            "spawn \"nosuchprog\": ENOENT: no such file or directory"
        );
        assert_eq!(e.name(), "ENOENT");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn detail_and_context() {
        let e = Error::invalid("spawn \"x\"", "argument 1 contains a NUL byte").context("run");
        assert_eq!(
            e.to_string(),
            "run: spawn \"x\": EINVAL: invalid argument (argument 1 contains a NUL byte)"
        );
    }

    #[test]
    fn unknown_errno_still_prints() {
        let e = Error::new(libc::EDOM, "x");
        assert_eq!(e.name(), "UNKNOWN");
        assert!(!e.message().is_empty());
    }

    #[test]
    fn into_io_error_keeps_kind() {
        let io: io::Error = Error::new(libc::EACCES, "x").into();
        assert_eq!(io.kind(), io::ErrorKind::PermissionDenied);
    }
}
