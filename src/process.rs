//! `Child`: a running process, its pipes, its exit report, and signals to it.

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::{BorrowedFd, OwnedFd};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::ChildPipe;
use crate::Signum;
use crate::error::{Error, Result, from_io};
pub use crate::exit::Exit;
use crate::ipc::Channel;
use crate::reap;
use crate::spawn::ParentEnd;

/// What [`Command::output`](crate::Command::output) and [`Child::wait_with_output`] give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// How the child ended.
    pub exit: Exit,
    /// All it wrote to stdout (empty when stdout was not a pipe).
    pub stdout: Vec<u8>,
    /// All it wrote to stderr (empty when stderr was not a pipe).
    pub stderr: Vec<u8>,
}

/// A spawned process (`uv_process_t`).
///
/// Dropping a `Child` that is still running hands it to a background reaper thread, which
/// reaps it when it exits (after killing it if [`kill_on_drop`] was set); if that thread
/// cannot be started, the child stays a zombie until this process exits. A dropped `Child`
/// does not keep a runtime or the program alive.
///
/// Pipes made with [`Stdio::pipe_*`](crate::Stdio) are here: slot 0, 1, 2 as `stdin`,
/// `stdout`, `stderr`, any other slot with [`take_pipe`](Child::take_pipe). Each is a
/// [`ChildPipe`]: a kernel pipe for a one-way slot, a socketpair for a duplex one,
/// `AsyncRead` + `AsyncWrite`, splittable with `into_split`.
/// Writing to a child that closed its end is an `EPIPE` error, never a SIGPIPE death (see
/// [`ChildPipe`]).
///
/// [`kill_on_drop`]: crate::Command::kill_on_drop
pub struct Child {
    pid: i32,
    pidfd: reap::PidFd,
    exit: Option<Exit>,
    kill_on_drop: bool,
    /// The parent's end of a pipe at slot 0, if any.
    pub stdin: Option<ChildPipe>,
    /// The parent's end of a pipe at slot 1, if any.
    pub stdout: Option<ChildPipe>,
    /// The parent's end of a pipe at slot 2, if any.
    pub stderr: Option<ChildPipe>,
    pipes: BTreeMap<i32, ChildPipe>,
    channels: BTreeMap<i32, Channel>,
}

impl fmt::Debug for Child {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Child")
            .field("pid", &self.pid)
            .field("exit", &self.exit)
            .finish_non_exhaustive()
    }
}

impl Child {
    pub(crate) fn new(
        pid: i32,
        pidfd: Option<OwnedFd>,
        ends: Vec<(i32, ParentEnd)>,
        kill_on_drop: bool,
    ) -> Result<Child> {
        let mut child = Child {
            pid,
            pidfd: reap::PidFd::new(pid, pidfd),
            exit: None,
            kill_on_drop,
            stdin: None,
            stdout: None,
            stderr: None,
            pipes: BTreeMap::new(),
            channels: BTreeMap::new(),
        };
        // If a pipe cannot be registered, `child` drops here: killed if asked, and reaped.
        for (slot, end) in ends {
            let op = || format!("spawn: register pipe of slot {slot}");
            let end = match end {
                ParentEnd::Ipc(s, node) => {
                    let s = UnixStream::from_std(s).map_err(|e| from_io(e, op()))?;
                    let mut channel = Channel::new(s);
                    if node {
                        channel
                            .set_protocol(crate::ipc::Protocol::Node)
                            .map_err(|e| e.context(op()))?;
                    }
                    child.channels.insert(slot, channel);
                    continue;
                }
                ParentEnd::Pipe(end) => ChildPipe::new(end).map_err(|e| from_io(e, op()))?,
            };
            match slot {
                0 => child.stdin = Some(end),
                1 => child.stdout = Some(end),
                2 => child.stderr = Some(end),
                _ => {
                    child.pipes.insert(slot, end);
                }
            }
        }
        Ok(child)
    }

    /// The child's process id (`uv_process_get_pid`) while it has not been reaped, `None`
    /// after [`wait`](Child::wait) or [`try_wait`](Child::try_wait) has reported its exit.
    ///
    /// This is tokio's choice (`tokio::process::Child::id`), not std's (which always gives
    /// the number): once reaped, the number is free and may already name another process,
    /// so signalling or inspecting it would hit a stranger.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
    /// let mut child = brood::Command::new("true").spawn()?;
    /// assert!(child.id().is_some());
    /// child.wait().await?;
    /// assert_eq!(child.id(), None);
    /// # Ok(()) }
    /// ```
    pub fn id(&self) -> Option<u32> {
        self.exit.is_none().then_some(self.pid as u32)
    }

    /// The child's pidfd (Linux 5.3+, `None` on older kernels or with `BROOD_NO_PIDFD=1`),
    /// borrowed: it stays open as long as the `Child`, also after the exit, so polling it
    /// or `pidfd_getfd` on it never touches a recycled fd number.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
    /// use std::os::fd::AsRawFd;
    /// let mut child = brood::Command::new("true").spawn()?;
    /// if let Some(fd) = child.pidfd() {
    ///     assert!(fd.as_raw_fd() > 2);
    /// }
    /// child.wait().await?;
    /// # Ok(()) }
    /// ```
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.fd()
    }

    /// Sends `SIGKILL` without waiting for the exit (`tokio::process::Child::start_kill`):
    /// call [`wait`](Child::wait) to reap. A child that has already ended gives `ESRCH`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
    /// let mut child = brood::Command::new("sleep").arg("100").spawn()?;
    /// child.start_kill()?;
    /// assert_eq!(child.wait().await?.signal, libc::SIGKILL);
    /// # Ok(()) }
    /// ```
    pub fn start_kill(&mut self) -> Result<()> {
        self.kill(Signum::KILL)
    }

    /// Takes the parent's end of the pipe at `slot` (0-2 included, taken from
    /// `stdin`/`stdout`/`stderr`).
    pub fn take_pipe(&mut self, slot: i32) -> Option<ChildPipe> {
        match slot {
            0 => self.stdin.take(),
            1 => self.stdout.take(),
            2 => self.stderr.take(),
            _ => self.pipes.remove(&slot),
        }
    }

    /// Takes the parent's end of the IPC channel at `slot` (made with
    /// [`Stdio::ipc`](crate::Stdio::ipc) or [`Stdio::node_ipc`](crate::Stdio::node_ipc)).
    pub fn take_channel(&mut self, slot: i32) -> Option<Channel> {
        self.channels.remove(&slot)
    }

    /// Waits for the child to end and reaps it. Cancel-safe: drop the future and call again.
    /// Once it has returned, it returns the same report again.
    ///
    /// The parent's end of a stdin pipe, if still in [`stdin`](Child::stdin), is closed
    /// first, as std and tokio do: a child reading its stdin to the end (`cat`, `sort`)
    /// would otherwise wait for more forever. Take it out first to keep it.
    pub async fn wait(&mut self) -> Result<Exit> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        drop(self.stdin.take());
        let exit = self
            .pidfd
            .wait()
            .await
            .map_err(|e| e.context(self.op("wait")))?;
        self.exit = Some(exit);
        Ok(exit)
    }

    /// Reaps the child if it has ended, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<Exit>> {
        if let Some(exit) = self.exit {
            return Ok(Some(exit));
        }
        let exit = self
            .pidfd
            .try_wait()
            .map_err(|e| e.context(self.op("wait")))?;
        self.exit = exit;
        Ok(exit)
    }

    /// Sends `signal` (`uv_process_kill`). Through the pidfd where there is one, so it can
    /// never reach another process that got the pid after this one was reaped. A child that
    /// has already ended gives `ESRCH`, as libuv.
    pub fn kill(&mut self, signal: impl Into<Signum>) -> Result<()> {
        let signal = signal.into();
        let op = format!("kill {} {signal}", self.pid);
        if self.try_wait()?.is_some() {
            return Err(Error::new(libc::ESRCH, op));
        }
        self.pidfd
            .send_signal(signal)
            .map_err(|e| Error::new(e.errno(), op))
    }

    /// Waits for the exit while reading stdout and stderr (where they are pipes) to the end,
    /// all concurrently, so a child that fills one pipe never deadlocks. stdin, if a pipe, is
    /// closed first so the child sees EOF.
    pub async fn wait_with_output(self) -> Result<Output> {
        self.communicate(&[]).await
    }

    /// Writes `input` to the child's stdin (a pipe) and closes it, while reading stdout and
    /// stderr to the end and waiting for the exit, all at once (Python's `communicate`,
    /// Node's `input` option): no deadlock whatever the sizes. A child that exits without
    /// reading all its input is not an error: the rest is dropped (`EPIPE`, never SIGPIPE).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
    /// use brood::{Command, Stdio};
    /// let child = Command::new("tr").args(["a-z", "A-Z"])
    ///     .stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    /// let out = child.communicate(b"shout\n").await?;
    /// assert_eq!(out.stdout, b"SHOUT\n");
    /// # Ok(()) }
    /// ```
    pub async fn communicate(mut self, input: &[u8]) -> Result<Output> {
        let stdin = self.stdin.take();
        let feed = async move {
            if let Some(mut pipe) = stdin {
                match pipe.write_all(input).await {
                    Ok(()) => drop(pipe),
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                    Err(e) => return Err(from_io(e, "write stdin")),
                }
            }
            Ok(())
        };
        async fn read_all(pipe: Option<ChildPipe>, what: &str) -> Result<Vec<u8>> {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                p.read_to_end(&mut buf)
                    .await
                    .map_err(|e| from_io(e, format!("read {what}")))?;
            }
            Ok(buf)
        }
        let (out, err) = (self.stdout.take(), self.stderr.take());
        let (fed, stdout, stderr, exit) = tokio::join!(
            feed,
            read_all(out, "stdout"),
            read_all(err, "stderr"),
            self.wait()
        );
        fed?;
        Ok(Output {
            exit: exit?,
            stdout: stdout?,
            stderr: stderr?,
        })
    }

    fn op(&self, what: &str) -> String {
        format!("{what} {}", self.pid)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.exit.is_some() {
            return;
        }
        if let Ok(Some(_)) = self.try_wait() {
            return;
        }
        if self.kill_on_drop {
            let _ = self.pidfd.send_signal(Signum::KILL);
        }
        reap::adopt(std::mem::take(&mut self.pidfd));
    }
}

/// Sends `signal` to the process `pid` (`uv_kill`). A negative pid signals a process group,
/// as `kill(2)`.
///
/// ```
/// // Signal 0 checks that a process exists.
/// brood::kill(std::process::id() as i32, 0).unwrap();
/// ```
pub fn kill(pid: i32, signal: impl Into<Signum>) -> Result<()> {
    let signal = signal.into();
    reap::kill_pid(pid, signal).map_err(|e| Error::new(e.errno(), format!("kill {pid} {signal}")))
}

/// Marks every fd this process inherited (3 and above) close-on-exec, so no child gets one
/// by accident (`uv_disable_stdio_inheritance`). Call it early in `main`. Unlike libuv it
/// leaves 0-2 alone, so `std::process` and other spawners keep working; brood children get
/// exactly their slots anyway.
pub fn disable_stdio_inheritance() {
    crate::fd::cloexec_from(3);
}
