//! IPC channels that carry bytes and open handles between processes: libuv's `ipc` pipes,
//! `uv_write2`, `uv_pipe_pending_count`/`_type` and `uv_accept` on a pipe.
//!
//! A parent makes one with [`Stdio::ipc`](crate::Stdio::ipc) in any slot and gets the
//! [`Channel`] from [`Child::take_channel`](crate::Child::take_channel); the child opens its
//! end with [`Channel::from_env`] (or [`Channel::from_fd`]). Unrelated processes use a named
//! Unix socket: [`Channel::connect`] and [`Channel::new`] on an accepted stream.
//!
//! ## Wire format
//!
//! Plain bytes on a `SOCK_STREAM` Unix socket. A write that carries handles has them
//! attached, as one `SCM_RIGHTS` control message, to its first byte (libuv does the same on
//! Unix). Nothing else is framed, so any language that can `sendmsg` fds talks to brood:
//! Python's `socket.send_fds(sock, [b"x"], [fd])` and `socket.recv_fds`, or C `sendmsg`.
//! The typed layer (`Sender::send_msg`, feature `json`) is one JSON object per line (`\n`-terminated), its
//! handles attached to the line's first byte.

mod channel;
mod handle;
mod wire;

#[cfg(feature = "cluster")]
pub(crate) use channel::own_inherited;
pub use channel::{CHANNEL_FD_ENV, Channel, Sender};
pub use handle::{FromHandle, Handle, HandleType, handle_type};
/// One non-blocking `sendmsg` (for the cluster master's sends that must never wait).
#[cfg(feature = "cluster")]
pub(crate) use wire::send as send_raw;
