//! `Command`: everything `uv_process_options_t` holds, as a builder.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;

use crate::Signum;
use crate::error::Result;
use crate::process::Child;
use crate::spawn::{self, Options};
use crate::stdio::{Kind, Stdio};

/// A process to spawn: file, args, env, cwd, flags, uid/gid and a [`Stdio`] slot for any fd
/// number, as libuv's `uv_process_options_t`, with the builder style of
/// `std::process::Command`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
/// let dir = std::env::temp_dir();
/// let mut child = brood::Command::new("mkdir")
///     .arg("-p")
///     .arg("brood-doc-test-dir")
///     .current_dir(&dir)
///     .detached(false)
///     .stdio(3, brood::Stdio::inherit_fd(2))
///     .spawn()?;
/// println!("Launched process with ID {}", child.id().unwrap());
/// let exit = child.wait().await?;
/// assert!(exit.success());
/// # std::fs::remove_dir(dir.join("brood-doc-test-dir")).unwrap();
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Command {
    /// Everything the spawn engine reads; `Command` is the builder in front of it.
    pub(crate) opts: Options,
}

impl Command {
    /// A command that runs `program`: a path when it has a slash, otherwise searched in
    /// `PATH` as `execvp` does (the child's `PATH` when the environment is changed).
    pub fn new(program: impl AsRef<OsStr>) -> Command {
        Command {
            opts: Options {
                program: program.as_ref().to_owned(),
                args: Vec::new(),
                arg0: None,
                env_clear: false,
                env: BTreeMap::new(),
                env_pid: None,
                cwd: None,
                uid: None,
                gid: None,
                groups: None,
                detached: false,
                process_group: None,
                parent_death_signal: None,
                kill_on_drop: false,
                reset_signals: false,
                stdio: BTreeMap::new(),
                exec_fd: None,
            },
        }
    }

    /// Adds one argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Command {
        self.opts.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.opts
            .args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Execs this open file (`execveat(fd, "", AT_EMPTY_PATH)`, as `fexecve`) instead of
    /// looking the program up: what was checked is what runs, and the process is named
    /// after the file (Linux 6.14 and later; before, after the fd's number). The program
    /// given to [`Command::new`] is the fallback where `execveat` is missing. The fd must
    /// stay open until `spawn` returns.
    #[cfg(feature = "cgi")]
    pub(crate) fn exec_fd(&mut self, fd: std::os::fd::RawFd) -> &mut Command {
        self.opts.exec_fd = Some(fd);
        self
    }

    /// Sets `argv[0]`, which is the program as given unless set (`args[0]` in libuv).
    pub fn arg0(&mut self, arg0: impl AsRef<OsStr>) -> &mut Command {
        self.opts.arg0 = Some(arg0.as_ref().to_owned());
        self
    }

    /// Sets one environment variable for the child.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Command {
        self.opts
            .env
            .insert(key.as_ref().to_owned(), Some(value.as_ref().to_owned()));
        self
    }

    /// Sets several environment variables.
    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Command
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self.env(k, v);
        }
        self
    }

    /// [`envs`](Command::envs) that moves the names and values in instead of copying them
    /// (the CGI runner's whole environment, per request).
    #[cfg(feature = "cgi")]
    pub(crate) fn envs_owned(
        &mut self,
        vars: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    ) -> &mut Command {
        for (k, v) in vars {
            self.opts.env.insert(k, Some(v));
        }
        self
    }

    /// Removes one variable from the child's environment.
    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Command {
        self.opts.env.insert(key.as_ref().to_owned(), None);
        self
    }

    /// Starts the child's environment empty: with [`env`](Command::env) calls after it, the
    /// child gets exactly those variables (libuv's `env` array). Without it, the child
    /// inherits the parent's environment.
    pub fn env_clear(&mut self) -> &mut Command {
        self.opts.env_clear = true;
        self.opts.env.clear();
        self
    }

    /// Sets the variable `key` to the child's own pid, written in the child just before exec
    /// (systemd's `LISTEN_PID` needs this, and no parent can know the pid in advance).
    pub fn env_pid(&mut self, key: impl AsRef<OsStr>) -> &mut Command {
        self.opts.env_pid = Some(key.as_ref().to_owned());
        self
    }

    /// The child's working directory (`cwd`). A relative program path is found from it,
    /// as `execvp` after `chdir` does.
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Command {
        self.opts.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// `UV_PROCESS_SETUID`: the child runs as this user. Supplementary groups are dropped
    /// unless [`groups`](Command::groups) lists them.
    pub fn uid(&mut self, uid: u32) -> &mut Command {
        self.opts.uid = Some(uid);
        self
    }

    /// `UV_PROCESS_SETGID`: the child runs with this group. Supplementary groups are dropped
    /// unless [`groups`](Command::groups) lists them.
    pub fn gid(&mut self, gid: u32) -> &mut Command {
        self.opts.gid = Some(gid);
        self
    }

    /// The child's supplementary groups (`setgroups(2)`), set before [`gid`](Command::gid)
    /// and [`uid`](Command::uid), as `setpriv --groups` or `runuser` do. An empty list drops
    /// them all. Without this call, a `uid` or `gid` change drops them, best effort. Needs
    /// privilege (`CAP_SETGID`): a failure is the spawn's error (`EPERM`, stage
    /// `setgroups`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
    /// let spawned = brood::Command::new("true").groups([65534, 100]).status().await;
    /// match spawned {
    ///     Ok(exit) => assert!(exit.success()),             // as root
    ///     Err(e) => assert_eq!(e.name(), "EPERM"),        // without CAP_SETGID
    /// }
    /// # Ok(()) }
    /// ```
    pub fn groups(&mut self, groups: impl IntoIterator<Item = u32>) -> &mut Command {
        self.opts.groups = Some(groups.into_iter().collect());
        self
    }

    /// `UV_PROCESS_DETACHED`: the child starts a new session (`setsid`), so it keeps running
    /// after the parent exits and is not hit by the terminal's signals. A dropped `Child`
    /// never keeps the parent or its runtime alive, detached or not.
    pub fn detached(&mut self, detached: bool) -> &mut Command {
        self.opts.detached = detached;
        self
    }

    /// Puts the child in process group `pgid`, or in a new group of its own when 0
    /// (`setpgid(0, pgid)`), so the whole group can be signalled with a negative pid.
    pub fn process_group(&mut self, pgid: i32) -> &mut Command {
        self.opts.process_group = Some(pgid);
        self
    }

    /// Linux: the child gets `signal` when the thread that spawned it dies
    /// (`PR_SET_PDEATHSIG`). If the parent is already gone by then, the child exits before
    /// exec. Spawn from a long-lived thread (a runtime worker, `main`) when you use this.
    pub fn parent_death_signal(&mut self, signal: impl Into<Signum>) -> &mut Command {
        self.opts.parent_death_signal = Some(signal.into());
        self
    }

    /// Sends `SIGKILL` to the child when its [`Child`] is dropped before it has exited.
    pub fn kill_on_drop(&mut self, kill: bool) -> &mut Command {
        self.opts.kill_on_drop = kill;
        self
    }

    /// Which signal dispositions the child starts with.
    ///
    /// By default (`false`) the child keeps every signal this process ignores (`SIG_IGN`),
    /// as `std::process::Command`, Go and glibc's `posix_spawn` do, so `nohup` and
    /// `trap '' HUP` in front of a brood program still protect its children; only `SIGPIPE`
    /// goes back to `SIG_DFL`, as std does (Rust programs ignore it themselves, the programs
    /// they run expect to die of it in a pipeline), and so do glibc's internal 32 and 33,
    /// which no program ignores by choice. Caught signals always become `SIG_DFL`: exec
    /// resets handlers.
    ///
    /// `true` resets every signal to `SIG_DFL`, as libuv does for each spawn.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
    /// // A reset child ignores no signal (the kernel's `SigIgn` mask is empty).
    /// let out = brood::Command::new("grep").args(["^SigIgn:", "/proc/self/status"])
    ///     .reset_signal_dispositions(true)
    ///     .output().await?;
    /// assert_eq!(out.stdout, b"SigIgn:\t0000000000000000\n");
    /// # Ok(()) }
    /// ```
    pub fn reset_signal_dispositions(&mut self, reset: bool) -> &mut Command {
        self.opts.reset_signals = reset;
        self
    }

    /// Sets what the child gets at fd number `fd` (any number: 0, 1, 2, 3, 9, ...).
    ///
    /// Slots may name each other's fds: `stdio(1, Stdio::inherit_fd(2))` with
    /// `stdio(2, Stdio::inherit_fd(1))` swaps stdout and stderr.
    pub fn stdio(&mut self, fd: i32, stdio: Stdio) -> &mut Command {
        let stdio = match stdio.0 {
            Kind::Pipe {
                readable: false,
                writable: false,
            } => Stdio(Kind::Pipe {
                readable: fd != 1 && fd != 2,
                writable: fd != 0,
            }),
            other => Stdio(other),
        };
        self.opts.stdio.insert(fd, stdio);
        self
    }

    /// Slot 0.
    pub fn stdin(&mut self, stdio: Stdio) -> &mut Command {
        self.stdio(0, stdio)
    }

    /// Slot 1.
    pub fn stdout(&mut self, stdio: Stdio) -> &mut Command {
        self.stdio(1, stdio)
    }

    /// Slot 2.
    pub fn stderr(&mut self, stdio: Stdio) -> &mut Command {
        self.stdio(2, stdio)
    }

    /// `UV_PROCESS_WINDOWS_VERBATIM_ARGUMENTS`: accepted and ignored on Unix, as in libuv.
    pub fn windows_verbatim_arguments(&mut self, _on: bool) -> &mut Command {
        self
    }

    /// `UV_PROCESS_WINDOWS_HIDE`: accepted and ignored on Unix, as in libuv.
    pub fn windows_hide(&mut self, _on: bool) -> &mut Command {
        self
    }

    /// `UV_PROCESS_WINDOWS_HIDE_CONSOLE`: accepted and ignored on Unix, as in libuv.
    pub fn windows_hide_console(&mut self, _on: bool) -> &mut Command {
        self
    }

    /// `UV_PROCESS_WINDOWS_HIDE_GUI`: accepted and ignored on Unix, as in libuv.
    pub fn windows_hide_gui(&mut self, _on: bool) -> &mut Command {
        self
    }

    /// `UV_PROCESS_WINDOWS_FILE_PATH_EXACT_NAME`: accepted and ignored on Unix, as in libuv.
    pub fn windows_file_path_exact_name(&mut self, _on: bool) -> &mut Command {
        self
    }

    /// The program as given to [`new`](Command::new).
    pub fn get_program(&self) -> &OsStr {
        &self.opts.program
    }

    /// The arguments after the program, as given (not `argv[0]`).
    ///
    /// ```
    /// let mut cmd = brood::Command::new("ls");
    /// cmd.args(["-l", "/"]);
    /// let args: Vec<_> = cmd.get_args().collect();
    /// assert_eq!(args, ["-l", "/"]);
    /// ```
    pub fn get_args(&self) -> impl ExactSizeIterator<Item = &OsStr> + '_ {
        self.opts.args.iter().map(|a| a.as_os_str())
    }

    /// The changes made to the child's environment, in name order: `Some(value)` for a
    /// variable set, `None` for one removed. Variables inherited unchanged are not listed,
    /// as in `std::process::Command::get_envs` (after [`env_clear`](Command::env_clear), only
    /// the ones set since).
    ///
    /// ```
    /// use std::ffi::OsStr;
    /// let mut cmd = brood::Command::new("env");
    /// cmd.env("A", "1").env_remove("B");
    /// let envs: Vec<_> = cmd.get_envs().collect();
    /// assert_eq!(envs, [(OsStr::new("A"), Some(OsStr::new("1"))), (OsStr::new("B"), None)]);
    /// ```
    pub fn get_envs(&self) -> impl ExactSizeIterator<Item = (&OsStr, Option<&OsStr>)> + '_ {
        self.opts
            .env
            .iter()
            .map(|(k, v)| (k.as_os_str(), v.as_deref()))
    }

    /// The working directory set with [`current_dir`](Command::current_dir), if any.
    pub fn get_current_dir(&self) -> Option<&Path> {
        self.opts.cwd.as_deref()
    }

    /// Starts the child (`uv_spawn`). The `Command` stays as it was and may spawn again,
    /// except for slots given an fd by value (`Stdio::from(file)`,
    /// [`Stdio::inherit_stream`]): their fd goes to the first child and is closed in the
    /// parent after that spawn, so a later spawn fails with `EBADF` for that slot until it is
    /// set again.
    ///
    /// Every failure comes back here, synchronously, with no child left behind: a missing
    /// program (`ENOENT`), one that may not be run (`EACCES`) or is not an executable format
    /// (`ENOEXEC`), a bad `cwd`, a uid change without privilege (`EPERM`), a bad slot fd
    /// (`EBADF`), `detached(true)` with a `process_group` (`EINVAL`). Pipes need to be made
    /// inside a tokio runtime; the rest does not.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
    /// let mut cmd = brood::Command::new("true");
    /// if cfg!(debug_assertions) {
    ///     cmd.env("VERBOSE", "1");
    /// }
    /// for _ in 0..2 {
    ///     assert!(cmd.spawn()?.wait().await?.success());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn spawn(&mut self) -> Result<Child> {
        let s = spawn::spawn(&mut self.opts)?;
        Child::new(s.pid, s.pidfd, s.parent_ends, s.kill_on_drop)
    }

    /// Spawns with stdout and stderr piped (unless set otherwise), and stdin ignored unless
    /// set; reads both to the end concurrently and waits for the exit, as Node's
    /// `execFile` and Python's `communicate()`. The defaults do not stay in the `Command`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brood::Error> {
    /// let out = brood::Command::new("sh").args(["-c", "echo hi; echo oops >&2; exit 3"])
    ///     .output().await?;
    /// assert_eq!(out.stdout, b"hi\n");
    /// assert_eq!(out.stderr, b"oops\n");
    /// assert_eq!(out.exit.status, 3);
    /// # Ok(()) }
    /// ```
    pub async fn output(&mut self) -> Result<crate::Output> {
        let mut added = Vec::new();
        for (fd, default) in [
            (0, Stdio::ignore()),
            (1, Stdio::piped()),
            (2, Stdio::piped()),
        ] {
            if !self.opts.stdio.contains_key(&fd) {
                self.stdio(fd, default);
                added.push(fd);
            }
        }
        let child = self.spawn();
        for fd in added {
            self.opts.stdio.remove(&fd);
        }
        child?.wait_with_output().await
    }

    /// Spawns and waits for the exit, with stdio inherited unless set otherwise.
    pub async fn status(&mut self) -> Result<crate::Exit> {
        self.spawn()?.wait().await
    }
}
