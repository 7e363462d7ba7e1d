//! The cluster's listening sockets: bound here, taken from systemd, or one `SO_REUSEPORT`
//! socket per worker.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{Error, Result, from_io};

const BACKLOG: i32 = 1024;

/// Resolves `addr` ("127.0.0.1:8080", "[::1]:0", "localhost:8080") to one address.
pub(crate) fn resolve(addr: &str) -> Result<SocketAddr> {
    let op = format!("listen {addr:?}");
    addr.to_socket_addrs()
        .map_err(|e| from_io(e, op.clone()))?
        .next()
        .ok_or_else(|| Error::new(libc::EADDRNOTAVAIL, op).with_detail("no address"))
}

fn socket(addr: SocketAddr, reuseport: bool) -> Result<Socket> {
    let op = format!("bind {addr}");
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| from_io(e, op.clone()))?;
    s.set_reuse_address(true)
        .map_err(|e| from_io(e, op.clone()))?;
    if reuseport {
        s.set_reuse_port(true).map_err(|e| from_io(e, op.clone()))?;
    }
    s.bind(&addr.into()).map_err(|e| from_io(e, op))?;
    Ok(s)
}

fn listen(s: Socket, addr: SocketAddr) -> Result<TcpListener> {
    s.listen(BACKLOG)
        .map_err(|e| from_io(e, format!("listen {addr}")))?;
    Ok(s.into())
}

/// A listening socket on `addr`, or the one systemd passed (`LISTEN_FDS`/`LISTEN_PID` for
/// this process: fd 3).
pub(crate) fn listener(addr: &str) -> Result<TcpListener> {
    if let Some(l) = from_systemd()? {
        return Ok(l);
    }
    let addr = resolve(addr)?;
    listen(socket(addr, false)?, addr)
}

/// The systemd-passed listener, if this process was started that way.
fn from_systemd() -> Result<Option<TcpListener>> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    if !pid_ok || count == 0 {
        return Ok(None);
    }
    let fd = crate::ipc::own_inherited(3).map_err(|e| e.context("LISTEN_FDS"))?;
    if crate::ipc::handle_type(std::os::fd::AsFd::as_fd(&fd)) != crate::ipc::HandleType::TcpListener
    {
        return Err(Error::new(libc::ENOTSOCK, "LISTEN_FDS")
            .with_detail("fd 3 is not a listening TCP socket"));
    }
    Ok(Some(TcpListener::from(fd)))
}

/// The anchor of a reuseport group: bound with `SO_REUSEPORT` but not listening, so it holds
/// the port (and resolves port 0) without taking connections.
pub(crate) fn reuseport_anchor(addr: &str) -> Result<(Socket, SocketAddr)> {
    let addr = resolve(addr)?;
    let s = socket(addr, true)?;
    let bound = s
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| Error::new(libc::EINVAL, format!("bind {addr}")))?;
    Ok((s, bound))
}

/// One more listening socket of the reuseport group at `addr`.
pub(crate) fn reuseport_listener(addr: SocketAddr) -> Result<TcpListener> {
    listen(socket(addr, true)?, addr)
}
