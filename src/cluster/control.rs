//! The control socket of a cluster master (`--control PATH`) and its client, `brood ctl`.
//!
//! One command per connection, one line of at most 1 KiB: `status` (`status --json`),
//! `reload` (answered when the rolling restart is over), `scale N`, `kill PID [SIGNAL]`,
//! `stop` or `upgrade` (answered when the new master is ready, or failed); the answer is
//! text (or one line of JSON) and the master closes the connection. The socket is mode 0600 and the master also checks
//! the peer's uid (`SO_PEERCRED`): only the same user (or root) may use it.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::proto::{CONTROL_FD_ENV, Event, Request};
use crate::Signum;
use crate::error::{Error, Result, from_io};

/// The longest command line read.
const MAX_LINE: u64 = 1024;

pub(crate) fn parse(line: &str) -> Option<Request> {
    let mut words = line.split_whitespace();
    let req = match (words.next()?, words.next()) {
        ("status", None) => Request::Status,
        ("status", Some("--json" | "json")) => Request::StatusJson,
        ("reload", None) => Request::Reload,
        ("scale", Some(n)) => Request::Scale(n.parse().ok()?),
        ("kill", Some(pid)) => {
            let sig = match words.next() {
                Some(s) => s.parse().ok()?,
                None => Signum::TERM,
            };
            Request::Kill(pid.parse().ok()?, sig)
        }
        ("stop", None) => Request::Stop,
        ("upgrade", None) => Request::Upgrade,
        _ => return None,
    };
    words.next().is_none().then_some(req)
}

/// What a command that cannot be parsed gets.
const USAGE: &str = "error: commands are `status [--json]`, `reload`, `scale N`, `kill PID [SIGNAL]`, `stop` and `upgrade`\n";

/// Binds the control socket (mode 0600). A socket file left by a dead master is replaced;
/// a live master's is not.
pub(crate) fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener> {
    let op = format!("control socket {:?}", path.display().to_string());
    // The new master of an upgrade takes over the old one's socket.
    if let Some(fd) = super::upgrade::inherited(CONTROL_FD_ENV) {
        let listener = std::os::unix::net::UnixListener::from(fd);
        listener.set_nonblocking(true).map_err(|e| from_io(e, op))?;
        return Ok(listener);
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(
                Error::new(libc::EADDRINUSE, op).with_detail("another master answers there")
            );
        }
        std::fs::remove_file(path).map_err(|e| from_io(e, op.clone()))?;
    }
    let listener =
        std::os::unix::net::UnixListener::bind(path).map_err(|e| from_io(e, op.clone()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| from_io(e, op.clone()))?;
    listener.set_nonblocking(true).map_err(|e| from_io(e, op))?;
    Ok(listener)
}

/// Serves the control socket in a task.
pub(crate) fn serve(
    listener: std::os::unix::net::UnixListener,
    events: mpsc::Sender<Event>,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = UnixListener::from_std(listener).map_err(|e| from_io(e, "control socket"))?;
    // SAFETY: getuid cannot fail.
    let me = unsafe { libc::getuid() };
    Ok(tokio::spawn(async move {
        // Out of fds, accept fails at once until some close: pause instead of spinning.
        let mut pause = Duration::from_millis(10);
        loop {
            let conn = match listener.accept().await {
                Ok((conn, _)) => {
                    pause = Duration::from_millis(10);
                    conn
                }
                Err(e) => {
                    tracing::warn!("control socket: accept: {e}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let events = events.clone();
            tokio::spawn(async move {
                let allowed = conn
                    .peer_cred()
                    .map(|c| c.uid() == me || c.uid() == 0)
                    .unwrap_or(false);
                let mut conn = BufReader::new(conn);
                if !allowed {
                    let _ = conn
                        .get_mut()
                        .write_all(b"error: permission denied\n")
                        .await;
                    return;
                }
                let mut line = String::new();
                // At most MAX_LINE bytes are read: a line without its newline is refused
                // with no more memory than that.
                let read = tokio::time::timeout(
                    Duration::from_secs(5),
                    (&mut conn).take(MAX_LINE).read_line(&mut line),
                )
                .await;
                let answer = match (read, parse(&line)) {
                    (Ok(Ok(_)), Some(req)) => {
                        let (tx, rx) = oneshot::channel();
                        if events.send(Event::Control(req, tx)).await.is_err() {
                            return;
                        }
                        rx.await
                            .unwrap_or_else(|_| "error: master is stopping\n".into())
                    }
                    _ => USAGE.into(),
                };
                let _ = conn.get_mut().write_all(answer.as_bytes()).await;
            });
        }
    }))
}

/// Sends one command (`"status"`, `"reload"`, `"scale 4"`) to the master listening at `path`
/// and returns its answer.
pub async fn ctl(path: impl AsRef<Path>, command: &str) -> Result<String> {
    let path = path.as_ref();
    let op = format!("ctl {:?}", path.display().to_string());
    let mut s = UnixStream::connect(path)
        .await
        .map_err(|e| from_io(e, op.clone()))?;
    s.write_all(format!("{}\n", command.trim()).as_bytes())
        .await
        .map_err(|e| from_io(e, op.clone()))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .await
        .map_err(|e| from_io(e, op))?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(parse("status\n"), Some(Request::Status));
        assert_eq!(parse("reload"), Some(Request::Reload));
        assert_eq!(parse("scale 3"), Some(Request::Scale(3)));
        assert_eq!(parse("scale x"), None);
        assert_eq!(parse("status now"), None);
        assert_eq!(parse("status --json"), Some(Request::StatusJson));
        assert_eq!(parse("kill 42"), Some(Request::Kill(42, Signum::TERM)));
        assert_eq!(parse("kill 42 KILL"), Some(Request::Kill(42, Signum::KILL)));
        assert_eq!(
            parse("kill 42 SIGUSR1"),
            Some(Request::Kill(42, Signum::USR1))
        );
        assert_eq!(parse("kill x"), None);
        assert_eq!(parse("kill 42 NOPE"), None);
        assert_eq!(parse("stop"), Some(Request::Stop));
        assert_eq!(parse("upgrade"), Some(Request::Upgrade));
        assert_eq!(parse(""), None);
    }
}
