//! What is at a socket path that is in use: a live server, a stale socket file, or a file
//! that is not a socket. Found by one non-blocking connect, as `bind` cannot tell.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use socket2::{Domain, SockAddr, Socket, Type};

/// What a path in use holds.
#[derive(Debug)]
pub(crate) enum Found {
    /// A socket a server accepts on.
    Live,
    /// A socket file nobody accepts on: its server is gone.
    Stale,
    /// Something that is not a socket.
    NotSocket,
    /// Nothing (it went away meanwhile).
    Missing,
    /// The probe itself failed.
    Unknown(std::io::Error),
}

impl Found {
    /// The sentence for an `EADDRINUSE` error.
    pub(crate) fn why(&self) -> String {
        match self {
            Found::Live => "a server is listening on it".into(),
            Found::Stale => "a stale socket file of a server that is gone; remove it, or bind \
                             with replace_stale(true)"
                .into(),
            Found::NotSocket => "the path exists and is not a socket; it was left alone".into(),
            Found::Missing => "the path was in use and is gone now; try again".into(),
            Found::Unknown(e) => format!("could not tell what holds it: {e}"),
        }
    }
}

pub(crate) fn what_is_at(path: &Path) -> Found {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => return Found::NotSocket,
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Found::Missing,
        Err(e) => return Found::Unknown(e),
    }
    let attempt = SockAddr::unix(path).and_then(|addr| {
        // Non-blocking, so a live server with a full backlog gives EAGAIN instead of a wait.
        let socket = Socket::new(Domain::UNIX, Type::STREAM.nonblocking(), None)?;
        socket.connect(&addr)
    });
    match attempt {
        Ok(()) => Found::Live,
        Err(e) => match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINPROGRESS) => Found::Live,
            Some(libc::ECONNREFUSED) => Found::Stale,
            Some(libc::ENOENT) => Found::Missing,
            _ => Found::Unknown(e),
        },
    }
}
