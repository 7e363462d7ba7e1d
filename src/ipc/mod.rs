//! IPC channels that carry bytes and open handles between processes: libuv's `ipc` pipes,
//! `uv_write2`, `uv_pipe_pending_count`/`_type` and `uv_accept` on a pipe.
//!
//! A parent makes one with [`Stdio::ipc`](crate::Stdio::ipc) in any slot and gets the
//! [`Channel`] from [`Child::take_channel`](crate::Child::take_channel); the child opens its
//! end with [`Channel::from_env`] (or [`Channel::from_fd`]). Unrelated processes use a named
//! Unix socket: [`Channel::connect`] and [`Channel::new`] on an accepted stream.
//!
//! A parent hands a child an open file; the child reads from it:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
//! use brood::{Command, Stdio};
//! use std::os::fd::AsFd;
//!
//! // The child: read one byte from its channel (fd 3), then `cat` the fd that came with it.
//! let script = "import os, socket; ch = socket.socket(fileno=3); \
//!               _, fds, _, _ = socket.recv_fds(ch, 1, 1); os.dup2(fds[0], 0); \
//!               os.execvp('cat', ['cat'])";
//! let mut child = Command::new("python3")
//!     .args(["-c", script])
//!     .stdio(3, Stdio::ipc())
//!     .stdout(Stdio::piped())
//!     .spawn()?;
//! let channel = child.take_channel(3).unwrap();
//! let path = std::env::temp_dir().join(format!("brood-ipc-doc-{}", std::process::id()));
//! std::fs::write(&path, "from the parent's file\n").unwrap();
//! let file = std::fs::File::open(&path).unwrap();
//! std::fs::remove_file(&path).unwrap(); // the open file lives on
//! channel.send_with_handles(b"f", &[file.as_fd()]).await?; // uv_write2
//! let out = child.wait_with_output().await?;
//! assert_eq!(out.stdout, b"from the parent's file\n");
//! # Ok(()) }
//! ```
//!
//! The wire format (plain bytes; handles as one `SCM_RIGHTS` message on a write's first byte,
//! as libuv does on Unix; the typed layer of feature `json` is one JSON object per line) is
//! described for peers in other languages in `docs/protocols.md`.
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
//! - `Channel::recv_msg` (feature `json`): they belong to the line that holds that byte, which is the line
//!   whose write carried them (one line per write with handles).
//!
//! Handles lost on the way (`MSG_CTRUNC`: the receiver at its fd limit, or more handles
//! than [`Channel::set_max_handles`]) are reported the same way: an error for that line, or
//! from the `recv` just before that byte; the ones that arrived are closed, and the channel
//! goes on with the next bytes.

mod channel;
pub(crate) mod framing;
mod handle;
mod handoff;
mod inherit;
mod io;
pub(crate) mod node;
#[cfg(feature = "json")]
mod node_reader;
mod wire;

#[cfg(any(feature = "cluster", feature = "cgi"))]
pub(crate) use channel::own_inherited;
pub use channel::{Channel, Sender};
pub use handle::{FromHandle, Handle, HandleType, LISTEN_BACKLOG, handle_type};
pub use handoff::HandoffListener;
#[cfg(feature = "cluster")]
pub(crate) use handoff::register as register_handoff_listener;
pub use inherit::{CHANNEL_FD_ENV, NODE_CHANNEL_FD_ENV};
/// Node's protocol as the cluster master speaks it to Node workers.
#[cfg(feature = "cluster")]
pub(crate) use node::CONNECTION as NODE_CONNECTION;
pub use node::Protocol;
#[cfg(feature = "cluster")]
pub(crate) use node::{Line as NodeLine, classify_value as node_line};
/// One non-blocking `sendmsg` (for the cluster master's sends that must never wait).
#[cfg(feature = "cluster")]
pub(crate) use wire::send as send_raw;
