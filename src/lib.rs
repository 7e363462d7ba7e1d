//! # brood
//!
//! libuv's process model for Rust, on tokio: spawn children with any stdio wiring
//! ([`Command`], [`Stdio`]), know how they ended ([`Exit`]), signal them race-free through a
//! pidfd ([`Child::kill`], [`kill`]), and reap every child, dropped ones on a background
//! thread (if that thread cannot start, a dropped child stays a zombie until this process
//! exits).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
//! let mut child = brood::Command::new("true").spawn()?;
//! println!("Launched process with ID {}", child.id().unwrap());
//! let exit = child.wait().await?;
//! println!("Process exited with status {}, signal {}", exit.status, exit.signal);
//! assert!(exit.success());
//! # Ok(()) }
//! ```
//!
//! The parts, each a module a libuv or Node user will recognise:
//!
//! - spawning: [`Command`], [`Stdio`], [`Child`], [`Exit`], [`kill`] (`uv_spawn`,
//!   `uv_process_t`, `uv_kill`);
//! - [`signal`]: signal watchers (`uv_signal_t`), many per signal, on any runtime;
//! - [`pipe`]: Unix domain socket servers and clients (`uv_pipe_t`);
//! - [`ipc`]: channels that carry bytes and open handles (`ipc` pipes, `uv_write2`);
//! - `cluster` (feature `cluster`): a master that hands connections to worker processes
//!   (Node's `cluster`);
//! - `cgi` (feature `cgi`): a CGI/1.1 server on hyper, and the seed's raw mode;
//! - [`init`]: what an init needs: child subreaper, reaping orphans by pid (`tini`);
//! - `notify` (feature `notify`, part of `cluster` and `cgi`): systemd's readiness protocol
//!   (`sd_notify`, `Type=notify`).
//!
//! ## Cargo features
//!
//! The default set is the process model above (spawn, signals, pipes, IPC channels), built on
//! tokio, libc and socket2 alone. Opt in to the rest:
//!
//! | feature | adds | pulls in |
//! |---|---|---|
//! | `json` | typed IPC messages: `Sender::send_msg`, `Channel::recv_msg` | serde, serde_json |
//! | `cluster` | `brood::cluster` (and `notify`, `json`) | tracing, prometheus-client, serde derive |
//! | `notify` | `brood::notify` | sd-notify, tracing |
//! | `cgi` | `brood::cgi` (and `notify`) | hyper, hyper-util, http-body-util, base64, bcrypt, md-5, sha1 |
//!
//! Linux is the tested platform; see README.md for what is Linux-only.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

#[cfg(any(feature = "cluster", feature = "cgi"))]
mod accept_backoff;
#[cfg(feature = "cgi")]
#[cfg_attr(docsrs, doc(cfg(feature = "cgi")))]
pub mod cgi;
mod child_pipe;
#[cfg(feature = "cluster")]
#[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
pub mod cluster;
mod command;
mod error;
mod exit;
mod fd;
#[cfg(all(feature = "cgi", feature = "cluster"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod init;
pub mod ipc;
#[cfg(feature = "notify")]
#[cfg_attr(docsrs, doc(cfg(feature = "notify")))]
pub mod notify;
pub mod pipe;
mod process;
mod reap;
pub mod signal;
mod signum;
mod spawn;
mod stdio;

pub use child_pipe::ChildPipe;
pub use command::Command;
pub use error::{Error, Result, errno_name};
pub use exit::Exit;
pub use fd::open_fd_count;
pub use process::{Child, Output, disable_stdio_inheritance, kill};
pub use signum::Signum;
pub use stdio::Stdio;
