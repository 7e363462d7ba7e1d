//! Which script a request path names, with no way out of the root: `PREFIX/script/extra`
//! under a directory, or every path to one script.

use std::ffi::{OsStr, OsString};
use std::io::ErrorKind;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hyper::StatusCode;
use percent_encoding::percent_decode;

/// Where scripts come from, with paths already made absolute and canonical.
#[derive(Debug, Clone)]
pub(crate) enum Mapping {
    /// `PREFIX/name/extra` runs `root/name` with `PATH_INFO=/extra`.
    Root { root: PathBuf, prefix: String },
    /// Every path under `prefix` runs `file`; the rest of the path is `PATH_INFO`.
    Script { file: PathBuf, prefix: String },
}

/// A request path resolved to a script.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `SCRIPT_FILENAME`: the file that is executed.
    pub file: PathBuf,
    /// The script's directory: its cwd.
    pub dir: PathBuf,
    /// `SCRIPT_NAME`, decoded.
    pub script_name: OsString,
    /// `PATH_INFO`, decoded (empty when there is none).
    pub path_info: OsString,
    /// `DOCUMENT_ROOT`.
    pub document_root: PathBuf,
    /// The file's name starts with `nph-`.
    pub nph: bool,
}

/// Why a path runs nothing: the status to answer and a sentence for the log.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub why: String,
}

pub(crate) fn refuse(status: StatusCode, why: impl Into<String>) -> Refusal {
    Refusal {
        status,
        why: why.into(),
    }
}

/// Splits the raw (still percent-encoded) path after the prefix into decoded segments.
/// Refuses `.` and `..` in any spelling, encoded slashes and NUL bytes: with them refused,
/// no segment can climb out of the directory it is joined to.
fn segments(rest: &str) -> Result<Vec<Vec<u8>>, Refusal> {
    let mut out = Vec::new();
    for raw in rest.split('/').skip(1) {
        let seg: Vec<u8> = percent_decode(raw.as_bytes()).collect();
        if seg == b"." || seg == b".." {
            return Err(refuse(StatusCode::BAD_REQUEST, "dot segment in path"));
        }
        if seg.iter().any(|&b| b == b'/' || b == 0 || b == b'\\') {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "encoded slash, backslash or NUL in path",
            ));
        }
        out.push(seg);
    }
    Ok(out)
}

/// The part of `path` after `prefix` ("" or "/x/y"), or `None` when it is not under it.
fn strip_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

fn join_info(segs: &[Vec<u8>]) -> OsString {
    let mut info = Vec::new();
    for s in segs {
        info.push(b'/');
        info.extend_from_slice(s);
    }
    OsString::from_vec(info)
}

pub(crate) fn is_nph(file: &Path) -> bool {
    file.file_name()
        .is_some_and(|n| n.as_encoded_bytes().starts_with(b"nph-"))
}

impl Mapping {
    /// Resolves the raw request path (`uri.path()`, percent-encoded).
    pub(crate) fn resolve(&self, path: &str) -> Result<Target, Refusal> {
        match self {
            Mapping::Script { file, prefix } => {
                let rest = strip_prefix(path, prefix)
                    .ok_or_else(|| refuse(StatusCode::NOT_FOUND, "path outside the prefix"))?;
                let segs = segments(rest)?;
                let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
                Ok(Target {
                    file: file.clone(),
                    dir: dir.clone(),
                    script_name: prefix.into(),
                    path_info: join_info(&segs),
                    document_root: dir,
                    nph: is_nph(file),
                })
            }
            Mapping::Root { root, prefix } => resolve_under(root, prefix, path),
        }
    }
}

pub(crate) fn resolve_under(root: &Path, prefix: &str, path: &str) -> Result<Target, Refusal> {
    let rest = strip_prefix(path, prefix)
        .ok_or_else(|| refuse(StatusCode::NOT_FOUND, "path outside the prefix"))?;
    let segs = segments(rest)?;
    let mut file = root.to_path_buf();
    let mut name = prefix.as_bytes().to_vec();
    for (i, seg) in segs.iter().enumerate() {
        if seg.is_empty() {
            continue;
        }
        file.push(OsStr::from_bytes(seg));
        name.push(b'/');
        name.extend_from_slice(seg);
        let meta = match std::fs::metadata(&file) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    format!("{}: {e}", file.display()),
                ));
            }
            Err(e) => {
                return Err(refuse(
                    StatusCode::NOT_FOUND,
                    format!("{}: {e}", file.display()),
                ));
            }
        };
        if meta.is_dir() {
            continue;
        }
        // Symlinks are followed, but only to files inside the root: `Mapping::open` checks
        // where the file it opened really is.
        if !meta.is_file() {
            return Err(refuse(StatusCode::FORBIDDEN, "not a regular file"));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                format!("{} is not executable", file.display()),
            ));
        }
        let dir = file.parent().unwrap_or(root).to_path_buf();
        return Ok(Target {
            nph: is_nph(&file),
            file,
            dir,
            script_name: OsString::from_vec(name),
            path_info: join_info(&segs[i + 1..]),
            document_root: root.to_path_buf(),
        });
    }
    Err(refuse(
        StatusCode::FORBIDDEN,
        "no script named (a directory)",
    ))
}

/// The file a request runs, opened once: what is checked is what is executed.
#[derive(Debug)]
pub(crate) struct Opened {
    /// Kept open until the script has been exec'd (the spawn returns after the exec).
    pub file: std::fs::File,
    /// Where the opened file really is (read back from the open file, not from the path).
    pub real: PathBuf,
    /// It starts with `#!`: the kernel hands its interpreter a path, not the open file.
    pub interpreted: bool,
}

/// The fd a `#!` script is handed to its interpreter on, in by-fd mode (`/dev/fd/3`).
pub(crate) const SCRIPT_FD: i32 = 3;

impl Opened {
    /// What to exec: the open file itself (`/proc/self/fd/N`, which the kernel resolves
    /// to this very open file, not by name); for a `#!` script, `/dev/fd/3` in by-fd mode
    /// (the open file handed over as fd 3: the interpreter opens that fd's file), else its
    /// real path, which the interpreter opens again by name.
    pub(crate) fn program(&self, by_fd: bool) -> PathBuf {
        use std::os::fd::AsRawFd;
        match (self.interpreted, by_fd) {
            (true, true) => PathBuf::from(format!("/dev/fd/{SCRIPT_FD}")),
            (true, false) => self.real.clone(),
            (false, _) => PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd())),
        }
    }

    /// Checks, just before a `#!` script is run by its real path, that this path still
    /// leads to the open file with no symlink on the way (`openat2` with
    /// `RESOLVE_NO_SYMLINKS`, then the same device and inode), so a name swapped since the
    /// open is refused rather than run. What this leaves open is the short time from here
    /// to the interpreter's own open of the path (docs/cgi.md says so).
    pub(crate) fn recheck(&self) -> Result<(), Refusal> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let changed = |why: String| {
            refuse(
                StatusCode::FORBIDDEN,
                format!("{}: {why}", self.real.display()),
            )
        };
        let flags = OFlags::PATH | OFlags::CLOEXEC;
        let now = match rustix::fs::openat2(
            rustix::fs::CWD,
            &self.real,
            flags,
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => fd,
            // Before Linux 5.6: the last component at least is no symlink, and the whole
            // path is still its own canonical form.
            Err(rustix::io::Errno::NOSYS) => {
                if std::fs::canonicalize(&self.real).ok().as_ref() != Some(&self.real) {
                    return Err(changed("its path changed since it was checked".into()));
                }
                rustix::fs::openat(
                    rustix::fs::CWD,
                    &self.real,
                    flags | OFlags::NOFOLLOW,
                    Mode::empty(),
                )
                .map_err(|e| changed(format!("changed since it was checked ({e})")))?
            }
            Err(e) => {
                if let Some(status) = shortage(Some(e.raw_os_error())) {
                    return Err(refuse(status, format!("{}: {e}", self.real.display())));
                }
                return Err(changed(format!("changed since it was checked ({e})")));
            }
        };
        let (a, b) = (rustix::fs::fstat(&now), rustix::fs::fstat(&self.file));
        match (a, b) {
            (Ok(a), Ok(b)) if a.st_dev == b.st_dev && a.st_ino == b.st_ino => Ok(()),
            _ => Err(changed("another file since it was checked".into())),
        }
    }
}

/// 503 for an error that says the server is short of something (fds, memory), not that
/// the script is missing or forbidden: the request may succeed when tried again.
fn shortage(errno: Option<i32>) -> Option<StatusCode> {
    matches!(
        errno,
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
    )
    .then_some(StatusCode::SERVICE_UNAVAILABLE)
}

/// Opens `path` for reading only if no component of it is a symlink (`openat2` with
/// `RESOLVE_NO_SYMLINKS`); `None` otherwise, or on any error (the caller's general open
/// reports it). Saves the `readlink` of `/proc/self/fd/N` for most requests.
fn open_no_symlinks(path: &Path) -> Option<std::fs::File> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    // Only a path already in normal form (absolute, no `.`, `..` or doubled `/`: rebuilt
    // from its components it has the same bytes) can be its own real path.
    let normal: PathBuf = path.components().collect();
    if !path.is_absolute()
        || normal.as_os_str() != path.as_os_str()
        || path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return None;
    }
    rustix::fs::openat2(
        rustix::fs::CWD,
        path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .ok()
    .map(std::fs::File::from)
}

impl Mapping {
    /// Opens the target's file (following symlinks), then checks where the open file really
    /// is: inside the root, a regular executable file. A symlink swapped after this check
    /// changes nothing, because the open file is what runs.
    pub(crate) fn open(&self, target: &Target) -> Result<Opened, Refusal> {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let (file, real) = match open_no_symlinks(&target.file) {
            // No symlink on the way: the path (absolute, no `.` or `..`) is its own real path.
            Some(file) => (file, target.file.clone()),
            // A symlink on the way (or any error, or a kernel without `openat2`): open it
            // following links, and read back where the open file really is.
            None => {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK)
                    .open(&target.file)
                    .map_err(|e| {
                        let status = match e.kind() {
                            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
                            _ => shortage(e.raw_os_error()).unwrap_or(StatusCode::NOT_FOUND),
                        };
                        refuse(status, format!("{}: {e}", target.file.display()))
                    })?;
                let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
                    .map_err(|e| {
                        let status = shortage(e.raw_os_error()).unwrap_or(StatusCode::FORBIDDEN);
                        refuse(status, format!("reading its path back: {e}"))
                    })?;
                (file, real)
            }
        };
        let inside = match self {
            Mapping::Root { root, .. } => real.starts_with(root),
            Mapping::Script { file, .. } => &real == file,
        };
        if !inside {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                format!("{} leads out of the root", target.file.display()),
            ));
        }
        let meta = file.metadata().map_err(|e| {
            let status = shortage(e.raw_os_error()).unwrap_or(StatusCode::FORBIDDEN);
            refuse(status, e.to_string())
        })?;
        if !meta.is_file() {
            return Err(refuse(StatusCode::FORBIDDEN, "not a regular file"));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                format!("{} is not executable", target.file.display()),
            ));
        }
        let mut magic = [0u8; 2];
        let interpreted = (&file).read_exact(&mut magic).is_ok() && &magic == b"#!";
        Ok(Opened {
            file,
            real,
            interpreted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_refused_in_any_spelling() {
        for p in [
            "/a/../b",
            "/a/%2e%2e/b",
            "/a/%2E%2e",
            "/./x",
            "/a%2fb",
            "/a%00",
        ] {
            let e = segments(p).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{p}");
        }
        assert_eq!(segments("/a/b%20c/").unwrap().len(), 3);
    }

    #[test]
    fn prefix_must_end_at_a_slash() {
        assert_eq!(strip_prefix("/cgi-bin/x", "/cgi-bin"), Some("/x"));
        assert_eq!(strip_prefix("/cgi-binx", "/cgi-bin"), None);
        assert_eq!(strip_prefix("/x", ""), Some("/x"));
    }
}
