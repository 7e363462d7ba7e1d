//! Fds a parent names in an environment variable (`BROOD_CHANNEL_FD`, Node's
//! `NODE_CHANNEL_FD`): taken once per process, checked, then owned, and the variable removed
//! so descendants do not inherit it.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use super::handle::{HandleType, handle_type};
use super::node::Protocol;
use crate::error::{Error, Result};

/// The environment variable through which a child learns its channel's fd (as Node's
/// `NODE_CHANNEL_FD`): set by [`Stdio::ipc`](crate::Stdio::ipc), read by
/// [`Channel::from_env`](super::Channel::from_env).
pub const CHANNEL_FD_ENV: &str = "BROOD_CHANNEL_FD";

/// The variable through which Node.js tells a child its IPC channel's fd
/// (`child_process.fork`, or `'ipc'` in `stdio`); [`Channel::from_env`](super::Channel::from_env) takes it when
/// `BROOD_CHANNEL_FD` is not set, and speaks Node's protocol on it.
pub const NODE_CHANNEL_FD_ENV: &str = "NODE_CHANNEL_FD";

/// Whether the channel variable has been taken (or rejected) in this process.
static TAKEN: Mutex<bool> = Mutex::new(false);

/// Node's variable naming the channel's serialization (`json` or `advanced`).
const NODE_SERIALIZATION_ENV: &str = "NODE_CHANNEL_SERIALIZATION_MODE";

/// Takes the channel fd a parent named, once per process: `BROOD_CHANNEL_FD`, else Node's
/// `NODE_CHANNEL_FD`. Removes the variable(s) from the environment, checks that the fd is
/// an inherited, connected Unix stream socket, and owns it (close-on-exec from now on). A
/// later call is `EALREADY`. A stale value (an fd that is not open, that this process made
/// itself, or that is not such a socket) is an error that leaves the fd alone.
pub(crate) fn take_channel_fd() -> Result<(OwnedFd, Protocol)> {
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    let op = |var: &str| format!("ipc channel from {var}");
    if *taken {
        return Err(Error::new(libc::EALREADY, op(CHANNEL_FD_ENV)).with_detail(
            "the channel is taken once per process, and an earlier Channel::from_env took it",
        ));
    }
    let (var, protocol) = if std::env::var_os(CHANNEL_FD_ENV).is_some() {
        (CHANNEL_FD_ENV, Protocol::Brood)
    } else if std::env::var_os(NODE_CHANNEL_FD_ENV).is_some() {
        (NODE_CHANNEL_FD_ENV, Protocol::Node)
    } else {
        return Err(
            Error::new(libc::ENOENT, op(CHANNEL_FD_ENV)).with_detail(format!(
                "neither {CHANNEL_FD_ENV} nor {NODE_CHANNEL_FD_ENV} is set"
            )),
        );
    };
    let op = op(var);
    *taken = true;
    let value = std::env::var_os(var).unwrap_or_default();
    let mode = match protocol {
        Protocol::Node => std::env::var_os(NODE_SERIALIZATION_ENV),
        Protocol::Brood => None,
    };
    // SAFETY: this is a caveat rather than a proof, and the docs of `Channel::from_env`
    // repeat it. `remove_var` is unsound when another thread reads or writes the
    // environment through libc (`getenv`, `setenv`: C libraries, DNS lookups) at the same
    // moment; std's own `env::var`/`set_var`/`remove_var` take one lock and are safe with
    // it. brood cannot see what other threads run. It removes the variables once per
    // process (under `TAKEN`), and `from_env` is documented as a start-up call, to be made
    // before threads that read the environment through C. (On glibc, `unsetenv` moves the
    // later entries of `environ` down in place and frees nothing, so a racing `getenv` may
    // miss a variable for that instant.)
    unsafe {
        std::env::remove_var(var);
        if protocol == Protocol::Node {
            std::env::remove_var(NODE_SERIALIZATION_ENV);
        }
    }
    if let Some(mode) = mode.filter(|m| m != "json") {
        return Err(Error::new(libc::EPROTONOSUPPORT, op).with_detail(format!(
            "{NODE_SERIALIZATION_ENV} is {mode:?}: brood speaks Node's \"json\" serialization, \
             not \"advanced\" (V8's structured clone)"
        )));
    }
    let fd: RawFd = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 0)
        .ok_or_else(|| Error::invalid(&op, format!("{value:?} is not an fd number")))?;
    check_inherited(fd, &op)?;
    // SAFETY: F_SETFD changes only the flags of `fd`, which is open (checked above).
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: `fd` was inherited through exec for this purpose (its close-on-exec flag was
    // clear, so nothing in this process made it) and is a connected Unix stream socket;
    // this process owns it from here on, once (`TAKEN`).
    Ok((unsafe { OwnedFd::from_raw_fd(fd) }, protocol))
}

/// Checks, without taking it, that `fd` is open, was inherited through exec, and is a
/// connected Unix stream socket.
fn check_inherited(fd: RawFd, op: &str) -> Result<()> {
    // SAFETY: F_GETFD only reads the descriptor flags of `fd`; a closed fd gives EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(Error::new(libc::EBADF, op)
            .with_detail(format!("fd {fd} is not open: the variable is stale")));
    }
    if flags & libc::FD_CLOEXEC != 0 {
        // A parent's fd reaches us through exec only with the flag clear (dup2 clears it);
        // every fd Rust's std and tokio make has it set.
        return Err(Error::new(libc::EBADF, op).with_detail(format!(
            "fd {fd} is close-on-exec, so this process made it rather than inheriting it: \
             the variable is stale"
        )));
    }
    // SAFETY: `fd` is open (F_GETFD succeeded just above) and is only borrowed for the
    // `fstat`/`getsockopt`/`getpeername` calls below, which do not close or change it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let kind = handle_type(borrowed);
    let connected = socket2::SockRef::from(&borrowed).peer_addr().is_ok();
    if kind != HandleType::Unix || !connected {
        let what = if kind == HandleType::Unix {
            "an unconnected Unix stream socket".to_string()
        } else {
            kind.to_string()
        };
        return Err(Error::new(libc::ENOTSOCK, op).with_detail(format!(
            "fd {} is {what}, not a connected Unix stream socket: the variable is stale",
            borrowed.as_raw_fd()
        )));
    }
    Ok(())
}
