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
//! The typed layer ([`Sender::send_msg`]) is one JSON object per line (`\n`-terminated), its
//! handles attached to the line's first byte. A write that carries handles holds one line.
//!
//! ## Which bytes a handle belongs to
//!
//! Linux merges the bytes of earlier writes without fds into the read that brings a later
//! write's fds, and ends that read inside the write that carried them. The receiver cannot
//! see where that write began, so brood binds a read's handles to the read's **last byte**:
//!
//! - [`Channel::recv`]: the handles become pending once that byte is consumed. A reader that
//!   reads a whole write at a time (or one byte per write, as the cluster's `c`) sees them
//!   with that write; after `send(b"p")` and `send_with_handles(b"c", ..)` the handle is
//!   pending after `c`, not after `p`.
//! - [`Channel::recv_msg`]: they belong to the line that holds that byte, which is the line
//!   whose write carried them (one line per write with handles).
//!
//! Handles lost on the way (`MSG_CTRUNC`: the receiver at its fd limit, or more handles
//! than [`Channel::set_max_handles`]) are reported the same way: an error for that line, or
//! from the `recv` just before that byte; the ones that arrived are closed, and the channel
//! goes on with the next bytes.

mod channel;
mod framing;
mod handle;
mod inherit;
mod node;
mod wire;

pub(crate) use channel::own_inherited;
pub use channel::{CHANNEL_FD_ENV, Channel, NODE_CHANNEL_FD_ENV, Sender};
pub use handle::{FromHandle, Handle, HandleType, LISTEN_BACKLOG, handle_type};
pub use node::Protocol;
/// One non-blocking `sendmsg` (for the cluster master's sends that must never wait).
pub(crate) use wire::send as send_raw;
