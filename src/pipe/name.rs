//! Socket names: a filesystem path, or (Linux) an abstract name written `@name`.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The room in `sockaddr_un.sun_path`, terminating NUL included.
pub(crate) const SUN_PATH_LEN: usize = 108;

/// The name of a Unix domain socket: a path in the filesystem, an abstract name (Linux), or
/// none (the unnamed end of a connection or socketpair).
///
/// Names are given to brood as strings: `"echo.sock"` and `"/run/app.sock"` are paths, and a
/// leading `@` (or NUL, as libuv and Node take it) makes an abstract name, which lives in the
/// kernel only, has no file and vanishes with its socket. Write `./@x` for a file named `@x`.
///
/// ```
/// use brood::pipe::Name;
///
/// assert_eq!(Name::parse("echo.sock").as_path(), Some(std::path::Path::new("echo.sock")));
/// assert_eq!(Name::parse("@brood-demo").as_abstract(), Some(&b"brood-demo"[..]));
/// assert_eq!(Name::parse("\0brood-demo"), Name::parse("@brood-demo"));
/// assert_eq!(Name::parse("@brood-demo").to_string(), "@brood-demo");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Name {
    /// A socket file.
    Path(PathBuf),
    /// A Linux abstract name, without the leading NUL.
    Abstract(Vec<u8>),
    /// No name: an unbound socket.
    Unnamed,
}

impl Name {
    /// Reads a name as brood takes it: leading `@` or NUL for an abstract name, else a path.
    pub fn parse(name: impl AsRef<OsStr>) -> Name {
        let bytes = name.as_ref().as_bytes();
        match bytes.first() {
            Some(b'@') | Some(0) => Name::Abstract(bytes[1..].to_vec()),
            _ => Name::Path(PathBuf::from(name.as_ref())),
        }
    }

    /// The path, for a socket file.
    pub fn as_path(&self) -> Option<&Path> {
        match self {
            Name::Path(p) => Some(p),
            _ => None,
        }
    }

    /// The abstract name (without the leading NUL), for an abstract socket.
    pub fn as_abstract(&self) -> Option<&[u8]> {
        match self {
            Name::Abstract(a) => Some(a),
            _ => None,
        }
    }

    /// The bytes for `sun_path` (NUL-led for an abstract name), checked: `ENAMETOOLONG` over
    /// the room in `sun_path`, `EINVAL` for an empty name or a path with a NUL in it.
    pub(crate) fn sun_path(&self, op: &str) -> Result<PathBuf> {
        let max = SUN_PATH_LEN - 1;
        match self {
            Name::Path(p) => {
                let bytes = p.as_os_str().as_bytes();
                if bytes.is_empty() {
                    return Err(Error::invalid(op, "the socket path is empty"));
                }
                if bytes.contains(&0) {
                    return Err(Error::invalid(op, "the socket path contains a NUL byte"));
                }
                if bytes.len() > max {
                    return Err(Error::new(libc::ENAMETOOLONG, op).with_detail(format!(
                        "the path is {} bytes; a socket path holds at most {max}",
                        bytes.len()
                    )));
                }
                Ok(p.clone())
            }
            Name::Abstract(a) => {
                if a.len() > max {
                    return Err(Error::new(libc::ENAMETOOLONG, op).with_detail(format!(
                        "the abstract name is {} bytes; it holds at most {max}",
                        a.len()
                    )));
                }
                let mut bytes = Vec::with_capacity(a.len() + 1);
                bytes.push(0);
                bytes.extend_from_slice(a);
                Ok(PathBuf::from(OsString::from_vec(bytes)))
            }
            Name::Unnamed => Err(Error::invalid(op, "an unnamed socket has no address")),
        }
    }

    pub(crate) fn from_tokio(addr: &tokio::net::unix::SocketAddr) -> Name {
        if let Some(p) = addr.as_pathname() {
            Name::Path(p.to_owned())
        } else if let Some(a) = addr.as_abstract_name() {
            Name::Abstract(a.to_vec())
        } else {
            Name::Unnamed
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Name::Path(p) => write!(f, "{}", p.display()),
            Name::Abstract(a) => write!(f, "@{}", String::from_utf8_lossy(a)),
            Name::Unnamed => f.write_str("(unnamed)"),
        }
    }
}

/// `bind "/tmp/x.sock"`: the operation text of errors about a name.
pub(crate) fn op(what: &str, name: &Name) -> String {
    format!("{what} {:?}", name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_checked() {
        let ok = "a".repeat(SUN_PATH_LEN - 1);
        assert!(Name::parse(&ok).sun_path("bind").is_ok());
        let long = "a".repeat(SUN_PATH_LEN);
        let e = Name::parse(&long).sun_path("bind").unwrap_err();
        assert_eq!(e.name(), "ENAMETOOLONG");
        let e = Name::parse(format!("@{long}"))
            .sun_path("bind")
            .unwrap_err();
        assert_eq!(e.name(), "ENAMETOOLONG");
        assert_eq!(
            Name::parse("").sun_path("bind").unwrap_err().name(),
            "EINVAL"
        );
    }

    #[test]
    fn abstract_gets_a_leading_nul() {
        let p = Name::parse("@x").sun_path("bind").unwrap();
        assert_eq!(p.as_os_str().as_bytes(), b"\0x");
    }
}
