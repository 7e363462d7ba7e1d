//! The spawn engine. `spawn` turns [`Options`] (what a `Command` holds) into a [`Plan`]: every string, pointer
//! array and fd the child will need, made in the parent, so the child itself (`child.rs`)
//! only makes system calls, in order, with no allocation, lock or panic. The platform file
//! (`linux.rs`) creates the child and reports how exec went.
//!
//! Flow: `Command::spawn` → [`prepare`] (strings, PATH candidates, fd plan, pipes) →
//! `sys::start` (clone, child runs [`child::run`]) → pid + pidfd → [`Spawned`], which `Command::spawn` makes a `Child` of.

mod args;
mod child;
mod options;
mod raw;
#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod sys;

use std::borrow::Cow;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream as StdUnixStream;

use crate::child_pipe::End;
use crate::error::{Error, Result};
use crate::fd;
use crate::stdio::Kind;
pub(crate) use options::Options;

use args::{ChildArgs, FdAction, Report, Source, Stage};

/// The parent's end of a pipe slot.
#[derive(Debug)]
pub(crate) enum ParentEnd {
    Pipe(End),
    /// The parent's end of an IPC channel; `true` when it speaks Node's protocol.
    Ipc(StdUnixStream, bool),
}

/// The parent's copy of everything the child needs; owns what `ChildArgs` points into.
pub(crate) struct Plan {
    program: OsString,
    paths: Vec<CString>,
    exec_fd: i32,
    path_ptrs: Vec<*const libc::c_char>,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    /// Every `NAME=value\0` entry, one after another (one allocation, not one per
    /// variable), and where each starts.
    envp: Vec<u8>,
    envp_starts: Vec<usize>,
    envp_ptrs: Vec<*const libc::c_char>,
    /// Pass this process's `environ` instead of `envp`.
    inherit_environ: bool,
    /// Where in `envp` the child writes its pid (`env_pid`): 21 bytes of room.
    pid_at: Option<usize>,
    cwd: Option<CString>,
    uid: Option<u32>,
    gid: Option<u32>,
    groups: Option<Vec<libc::gid_t>>,
    setsid: bool,
    pgid: Option<i32>,
    pdeathsig: i32,
    reset_signals: bool,
    actions: Vec<FdAction>,
    /// fds the child gets that the parent closes once the child has them.
    child_ends: Vec<OwnedFd>,
    /// Parent ends of pipes and IPC channels, by slot.
    parent_ends: Vec<(i32, ParentEnd)>,
    pub(crate) report: Report,
    kill_on_drop: bool,
}

/// Node's variables for a `Stdio::node_ipc` slot, as Node's `fork` sets them, unless the
/// caller named them with `.env()`; a serialization other than `json` is refused.
fn node_channel_env<'a>(
    cmd: &'a Options,
    env: &mut Env<'a>,
    slot: i32,
    op: SpawnOp<'_>,
) -> Result<()> {
    const MODE: &str = "NODE_CHANNEL_SERIALIZATION_MODE";
    if !cmd
        .env
        .contains_key(OsStr::new(crate::ipc::NODE_CHANNEL_FD_ENV))
    {
        env.insert(
            Cow::Borrowed(OsStr::new(crate::ipc::NODE_CHANNEL_FD_ENV)),
            Cow::Owned(slot.to_string().into()),
        );
    }
    match cmd.env.get(OsStr::new(MODE)) {
        Some(Some(mode)) if mode != "json" => {
            return Err(
                Error::new(libc::EPROTONOSUPPORT, op.to_string()).with_detail(format!(
                    "{MODE} is {mode:?}: brood speaks only Node's \"json\" serialization \
                 (not \"advanced\", V8's structured clone)"
                )),
            );
        }
        _ => {
            env.insert(
                Cow::Borrowed(OsStr::new(MODE)),
                Cow::Borrowed(OsStr::new("json")),
            );
        }
    }
    Ok(())
}

fn cstring(bytes: &[u8], op: SpawnOp<'_>, what: impl FnOnce() -> String) -> Result<CString> {
    CString::new(bytes)
        .map_err(|_| Error::invalid(op.to_string(), format!("{} contains a NUL byte", what())))
}

/// The `spawn "name"` operation of a spawn's errors, formatted only when an error needs it.
#[derive(Clone, Copy)]
struct SpawnOp<'a>(&'a OsStr);

impl std::fmt::Display for SpawnOp<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "spawn {:?}", self.0.to_string_lossy())
    }
}

/// The `spawn "name"` operation text used in every spawn error.
fn spawn_op(program: &OsStr) -> String {
    format!("spawn {:?}", program.to_string_lossy())
}

impl Plan {
    /// The `ChildArgs` that point into this plan. The plan must not move or change until
    /// the child has exec'd.
    pub(crate) fn child_args(&mut self) -> ChildArgs {
        let pid_digits = match self.pid_at {
            // SAFETY: `at` is within `envp`, with 21 bytes of room after it (`prepare`).
            Some(at) => unsafe { self.envp.as_mut_ptr().add(at) },
            None => std::ptr::null_mut(),
        };
        ChildArgs {
            paths: self.path_ptrs.as_ptr(),
            npaths: self.paths.len(),
            exec_fd: self.exec_fd,
            argv: self.argv_ptrs.as_ptr(),
            envp: if self.inherit_environ {
                // SAFETY: reads the pointer without std's environment lock (std's own spawn
                // takes it; brood cannot). `std::env::set_var`/`remove_var` are `unsafe`
                // because of readers like this one: a program that calls them while another
                // thread spawns breaks their contract, as it would with libc's `getenv`.
                unsafe { environ }
            } else {
                self.envp_ptrs.as_ptr()
            },
            pid_digits,
            cwd: self.cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            uid: self.uid,
            gid: self.gid,
            set_groups: self.groups.is_some(),
            groups: self
                .groups
                .as_ref()
                .map_or(std::ptr::null(), |g| g.as_ptr()),
            ngroups: self.groups.as_ref().map_or(0, |g| g.len()),
            setsid: self.setsid,
            pgid: self.pgid,
            pdeathsig: self.pdeathsig,
            // Only the parent-death check needs it (a getpid saved otherwise).
            parent_pid: if self.pdeathsig != 0 {
                std::process::id() as i32
            } else {
                0
            },
            reset_signals: self.reset_signals,
            block_sigchld: false,
            handlers_cleared: false,
            first_rt_signal: libc::SIGRTMIN(),
            // SAFETY: getuid cannot fail and touches no memory.
            as_root: (self.uid.is_some() || self.gid.is_some()) && unsafe { libc::getuid() } == 0,
            actions: self.actions.as_mut_ptr(),
            nactions: self.actions.len(),
            report: &mut self.report,
        }
    }

    /// Turns the child's report into the error `spawn` returns.
    fn error(&self) -> Error {
        let op = spawn_op(&self.program);
        let r = self.report;
        let e = Error::new(r.errno, op);
        match r.stage {
            Stage::None | Stage::Exec => e,
            Stage::Setsid => e.with_detail("setsid"),
            Stage::Setpgid => e.with_detail(format!("setpgid {}", self.pgid.unwrap_or(0))),
            Stage::Setgroups => match self.groups.as_deref() {
                None => e.with_detail("setgroups (drop supplementary groups)"),
                Some(groups) if groups.len() <= 16 => {
                    e.with_detail(format!("setgroups {groups:?}"))
                }
                Some(groups) => e.with_detail(format!("setgroups ({} groups)", groups.len())),
            },
            Stage::Setgid => e.with_detail(format!("setgid {}", self.gid.unwrap_or(0))),
            Stage::Setuid => e.with_detail(format!("setuid {}", self.uid.unwrap_or(0))),
            Stage::Chdir => e.with_detail(format!(
                "chdir {:?}",
                self.cwd
                    .as_ref()
                    .map(|c| c.to_string_lossy())
                    .unwrap_or_default()
            )),
            Stage::ParentDeath => e.with_detail("prctl PR_SET_PDEATHSIG"),
            Stage::Stdio => e.with_detail(format!("stdio slot {}", r.slot)),
        }
    }
}

/// The candidates `execvp` would try for `program` with `path` (the child's `PATH`).
fn exec_candidates(program: &[u8], path: Option<&[u8]>) -> Vec<Vec<u8>> {
    if program.contains(&b'/') {
        return vec![program.to_vec()];
    }
    // glibc's default when PATH is unset (confstr(_CS_PATH)).
    let path = path.unwrap_or(b"/bin:/usr/bin");
    path.split(|&b| b == b':')
        .map(|dir| {
            // An empty element means the current directory, as in execvp.
            let dir = if dir.is_empty() { &b"."[..] } else { dir };
            let mut full = dir.to_vec();
            if !full.ends_with(b"/") {
                full.push(b'/');
            }
            full.extend_from_slice(program);
            full
        })
        .collect()
}

unsafe extern "C" {
    /// The C library's environment of this process.
    static environ: *const *const libc::c_char;
}

/// The child's environment: this process's own (unless cleared) with the changes on top.
/// The changes are borrowed, not copied (a CGI script's twenty-odd variables would be
/// copied twice more per request otherwise).
fn child_env(cmd: &Options) -> Env<'_> {
    if cmd.env_clear {
        // The changes alone, already sorted by name and unique (a `BTreeMap`).
        let vars = cmd.env.iter().filter_map(|(k, v)| {
            let v = v.as_ref()?;
            Some((Cow::Borrowed(k.as_os_str()), Cow::Borrowed(v.as_os_str())))
        });
        return Env(vars.collect());
    }
    let mut env = Env(std::env::vars_os()
        .map(|(k, v)| (Cow::Owned(k), Cow::Owned(v)))
        .collect());
    // A name twice in this process's environment: the last one, as a map built in order
    // keeps (reversed, then a stable sort and `dedup` keep the first of each name).
    env.0.reverse();
    env.0.sort_by(|a, b| a.0.cmp(&b.0));
    env.0.dedup_by(|a, b| a.0 == b.0);
    for (k, v) in &cmd.env {
        match v {
            Some(v) => env.insert(Cow::Borrowed(k.as_os_str()), Cow::Borrowed(v.as_os_str())),
            None => env.remove(k.as_os_str()),
        };
    }
    env
}

/// Environment names to values, each borrowed from the `Options` or owned, sorted by
/// name with no name twice (a vector: for a CGI script's thirty variables a map's nodes
/// cost more than they save).
#[derive(Default)]
struct Env<'a>(Vec<(Cow<'a, OsStr>, Cow<'a, OsStr>)>);

impl<'a> Env<'a> {
    fn find(&self, k: &OsStr) -> std::result::Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| (**n).cmp(k))
    }

    fn insert(&mut self, k: Cow<'a, OsStr>, v: Cow<'a, OsStr>) {
        match self.find(&k) {
            Ok(i) => self.0[i].1 = v,
            Err(i) => self.0.insert(i, (k, v)),
        }
    }

    fn remove(&mut self, k: &OsStr) {
        if let Ok(i) = self.find(k) {
            self.0.remove(i);
        }
    }

    fn get(&self, k: &OsStr) -> Option<&Cow<'a, OsStr>> {
        self.find(k).ok().map(|i| &self.0[i].1)
    }
}

/// Builds the plan: every allocation of the spawn happens here.
pub(crate) fn prepare(cmd: &mut Options) -> Result<Plan> {
    let op = SpawnOp(&cmd.program);
    let program = cmd.program.as_bytes();
    if program.is_empty() {
        return Err(Error::new(libc::ENOENT, op.to_string()).with_detail("empty program name"));
    }
    // m68k's setuid/setgid take 16-bit ids and the libc crate has no number for their
    // 32-bit versions there (x86, arm and sparc use setuid32/setgid32 in `child.rs`).
    #[cfg(target_arch = "m68k")]
    for (what, id) in [("uid", cmd.uid), ("gid", cmd.gid)] {
        if id.is_some_and(|id| id > 0xffff) {
            return Err(Error::invalid(
                op.to_string(),
                format!("{what} above 65535: this platform's set{what} takes 16 bits"),
            ));
        }
    }
    if cmd.detached && cmd.process_group.is_some() {
        // setsid makes the child a group leader of its own; setpgid after it would fail
        // with EPERM from the child, which says nothing about why.
        return Err(Error::invalid(
            op.to_string(),
            "detached(true) starts a new session and process group; it cannot be combined with process_group(..)",
        ));
    }

    let ipc_slot = |node: bool| {
        cmd.stdio
            .iter()
            .find(|(_, s)| matches!(s.0, Kind::Ipc { node: n } if n == node))
            .map(|(n, _)| *n)
    };
    let (ipc_slot, node_slot) = (ipc_slot(false), ipc_slot(true));
    // An unchanged environment is passed as this process's own `environ`, as libuv and std
    // do: copying it for every spawn was a quarter of the parent's CPU per spawn.
    let inherit_environ = !cmd.env_clear
        && cmd.env.is_empty()
        && cmd.env_pid.is_none()
        && ipc_slot.is_none()
        && node_slot.is_none();
    let mut env = if inherit_environ {
        Env::default()
    } else {
        child_env(cmd)
    };
    let path_var = if inherit_environ {
        std::env::var_os("PATH")
    } else {
        env.get(OsStr::new("PATH")).map(|p| p.clone().into_owned())
    };
    // The channel's slot, unless the caller named it with `.env()` themselves: a value
    // inherited from this process's own environment is stale for the child.
    if let Some(slot) = ipc_slot {
        if !cmd.env.contains_key(OsStr::new(crate::ipc::CHANNEL_FD_ENV)) {
            env.insert(
                Cow::Borrowed(OsStr::new(crate::ipc::CHANNEL_FD_ENV)),
                Cow::Owned(slot.to_string().into()),
            );
        }
    }
    if let Some(slot) = node_slot {
        node_channel_env(cmd, &mut env, slot, op)?;
    }
    if let Some(key) = &cmd.env_pid {
        env.remove(key.as_os_str());
    }
    let paths: Vec<CString> = exec_candidates(program, path_var.as_deref().map(|p| p.as_bytes()))
        .into_iter()
        .map(|p| cstring(&p, op, || "program".into()))
        .collect::<Result<_>>()?;

    let argv0 = cmd.arg0.as_deref().unwrap_or(&cmd.program);
    let argv: Vec<CString> = std::iter::once(argv0)
        .chain(cmd.args.iter().map(|a| a.as_os_str()))
        .enumerate()
        .map(|(i, a)| cstring(a.as_bytes(), op, || format!("argument {i}")))
        .collect::<Result<_>>()?;

    let size: usize = env.0.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut envp: Vec<u8> =
        Vec::with_capacity(size + cmd.env_pid.as_ref().map_or(0, |k| k.len() + 22));
    let mut envp_starts = Vec::with_capacity(env.0.len() + 1);
    for (k, v) in &env.0 {
        let (k, v) = (k.as_bytes(), v.as_bytes());
        if k.is_empty() || k.contains(&b'=') || k.contains(&0) || v.contains(&0) {
            return Err(Error::invalid(
                op.to_string(),
                format!(
                    "environment variable {:?} has an empty name, '=' in its name or a NUL byte",
                    String::from_utf8_lossy(k)
                ),
            ));
        }
        envp_starts.push(envp.len());
        envp.extend_from_slice(k);
        envp.push(b'=');
        envp.extend_from_slice(v);
        envp.push(0);
    }
    let mut pid_at = None;
    if let Some(key) = &cmd.env_pid {
        let key = key.as_bytes();
        if key.is_empty() || key.contains(&b'=') || key.contains(&0) {
            return Err(Error::invalid(
                op.to_string(),
                "env_pid name is empty or has '=' or NUL",
            ));
        }
        envp_starts.push(envp.len());
        envp.extend_from_slice(key);
        envp.push(b'=');
        pid_at = Some(envp.len());
        envp.extend_from_slice(&[0u8; 21]);
    }

    let cwd = match &cmd.cwd {
        Some(dir) => Some(cstring(dir.as_os_str().as_bytes(), op, || "cwd".into())?),
        None => None,
    };

    if let Some(sig) = cmd.parent_death_signal {
        if !(1..=crate::signum::max_signal()).contains(&sig.as_raw()) {
            return Err(Error::invalid(
                op.to_string(),
                format!("parent death signal {sig} is not valid"),
            ));
        }
    }

    // The fd plan: slots 0-2 default to inherit; everything else comes from `cmd.stdio`.
    let stdio = &mut cmd.stdio;
    let mut actions = Vec::with_capacity(stdio.len() + 3);
    let mut child_ends = Vec::new();
    let mut parent_ends = Vec::new();
    for fd in 0..3 {
        if !stdio.contains_key(&fd) && fd::is_open(fd) {
            actions.push(FdAction {
                target: fd,
                source: Source::Fd(fd),
                make_blocking: false,
            });
        }
    }
    if stdio.values().any(|s| s.is_pipe()) && tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::invalid(
            op.to_string(),
            "pipes to a child need a tokio runtime: spawn inside one",
        ));
    }
    // Inherited fds are checked before any pipe is made: a pipe made for one slot could
    // take the number of a closed fd that another slot inherits, and go to the child in
    // its place.
    for (&slot, s) in stdio.iter() {
        let from = match s.0 {
            Kind::Inherit => slot,
            Kind::InheritFd(n) => n,
            _ => continue,
        };
        if !fd::is_open(from) {
            return Err(Error::new(libc::EBADF, op.to_string())
                .with_detail(format!("stdio slot {slot}: fd {from} is not open")));
        }
    }
    for (&slot, s) in stdio.iter_mut() {
        fd::check_slot(slot).map_err(|e| e.context(op))?;
        let source = match &mut s.0 {
            Kind::Ignore if slot <= 2 => Source::DevNull,
            Kind::Ignore | Kind::Closed => Source::Close,
            Kind::Inherit => Source::Fd(slot),
            Kind::InheritFd(n) => Source::Fd(*n),
            Kind::Owned(_) => {
                // The fd goes to this child only; the parent's copy is closed after the spawn.
                let Kind::Owned(owned) = std::mem::replace(&mut s.0, Kind::Given) else {
                    unreachable!()
                };
                let raw = owned.as_raw_fd();
                child_ends.push(owned);
                Source::Fd(raw)
            }
            Kind::Given => {
                return Err(Error::new(libc::EBADF, op.to_string()).with_detail(format!(
                    "stdio slot {slot}: its fd was given to an earlier spawn of this Command"
                )));
            }
            // One-way: a kernel pipe, so the child may open /dev/stdin, /dev/stdout or
            // /proc/self/fd/N on it (a socket gives ENXIO there). Only the parent's end is
            // made non-blocking (each end has its own file description).
            &mut Kind::Pipe { readable, writable } if readable != writable => {
                let (read, write) = fd::pipe().map_err(|e| e.context(op))?;
                let (parent, child, end): (_, OwnedFd, fn(OwnedFd) -> End) = if readable {
                    (write, read, End::Sender)
                } else {
                    (read, write, End::Receiver)
                };
                fd::set_nonblocking(parent.as_fd()).map_err(|e| e.context(op))?;
                let raw = child.as_raw_fd();
                child_ends.push(child);
                parent_ends.push((slot, ParentEnd::Pipe(end(parent))));
                Source::Fd(raw)
            }
            Kind::Pipe { .. } | Kind::Ipc { .. } => {
                let ipc = match s.0 {
                    Kind::Ipc { node } => Some(node),
                    _ => None,
                };
                let (parent, child) = fd::socketpair().map_err(|e| e.context(op))?;
                parent
                    .set_nonblocking(true)
                    .map_err(|e| crate::error::from_io(e, format!("{op}: set_nonblocking")))?;
                let raw = child.as_raw_fd();
                child_ends.push(child.into());
                parent_ends.push((
                    slot,
                    match ipc {
                        Some(node) => ParentEnd::Ipc(parent, node),
                        None => ParentEnd::Pipe(End::Duplex(parent)),
                    },
                ));
                Source::Fd(raw)
            }
            Kind::Invalid(e) => return Err(e.clone().context(op)),
        };
        // Only an fd the caller named is made blocking at 0-2: the parent's own stdio,
        // inherited, is left as it was (its flags are shared with the parent).
        let make_blocking = matches!(s.0, Kind::InheritFd(_) | Kind::Given);
        actions.push(FdAction {
            target: slot,
            source,
            make_blocking,
        });
    }
    actions.sort_by_key(|a| a.target);

    let mut plan = Plan {
        program: cmd.program.clone(),
        path_ptrs: Vec::new(),
        paths,
        exec_fd: cmd.exec_fd.unwrap_or(-1),
        argv_ptrs: Vec::new(),
        _argv: argv,
        envp,
        envp_starts,
        envp_ptrs: Vec::new(),
        inherit_environ,
        pid_at,
        cwd,
        uid: cmd.uid,
        gid: cmd.gid,
        groups: cmd.groups.clone(),
        setsid: cmd.detached,
        pgid: cmd.process_group,
        pdeathsig: cmd.parent_death_signal.map_or(0, |s| s.as_raw()),
        reset_signals: cmd.reset_signals,
        actions,
        child_ends,
        parent_ends,
        report: Report {
            stage: Stage::None,
            errno: 0,
            slot: -1,
        },
        kill_on_drop: cmd.kill_on_drop,
    };
    plan.path_ptrs = plan.paths.iter().map(|p| p.as_ptr()).collect();
    plan.path_ptrs.push(std::ptr::null());
    plan.argv_ptrs = plan._argv.iter().map(|a| a.as_ptr()).collect();
    plan.argv_ptrs.push(std::ptr::null());
    // (`envp` is complete: it never grows again, so these pointers stay valid.)
    let base = plan.envp.as_ptr();
    plan.envp_ptrs = plan
        .envp_starts
        .iter()
        // SAFETY: every start is an offset within `envp`.
        .map(|&at| unsafe { base.add(at) }.cast())
        .collect();
    plan.envp_ptrs.push(std::ptr::null());
    Ok(plan)
}

/// A started child, for `Command::spawn` to make a [`Child`](crate::Child) of.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub pid: i32,
    pub pidfd: Option<OwnedFd>,
    /// Parent ends of pipes and IPC channels, by slot.
    pub parent_ends: Vec<(i32, ParentEnd)>,
    pub kill_on_drop: bool,
}

/// Starts the child `cmd` describes (`Command::spawn`).
pub(crate) fn spawn(cmd: &mut Options) -> Result<Spawned> {
    let mut plan = prepare(cmd)?;
    let mut args = plan.child_args();
    // SAFETY: `args` points into `plan`, which neither moves nor changes until `start`
    // returns (the child has exec'd or exited by then: vfork semantics).
    let started = unsafe { sys::start(&mut args) };
    // The child has its copies now (or failed); the parent's copies of its ends go.
    plan.child_ends.clear();
    let (pid, pidfd) = match started {
        Ok(s) => s,
        Err(errno) => return Err(Error::new(errno, spawn_op(&plan.program)).with_detail("clone")),
    };
    if plan.report.stage != Stage::None {
        let err = plan.error();
        sys::reap_failed(pid, pidfd);
        return Err(err);
    }
    Ok(Spawned {
        pid,
        pidfd,
        parent_ends: plan.parent_ends,
        kill_on_drop: plan.kill_on_drop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;

    fn prepare(cmd: &mut Command) -> Result<Plan> {
        super::prepare(&mut cmd.opts)
    }

    #[test]
    fn candidates_follow_execvp() {
        assert_eq!(
            exec_candidates(b"./x", Some(b"/bin")),
            vec![b"./x".to_vec()]
        );
        assert_eq!(
            exec_candidates(b"ls", Some(b"/a:/b/::/c")),
            vec![
                b"/a/ls".to_vec(),
                b"/b/ls".to_vec(),
                b"./ls".to_vec(),
                b"/c/ls".to_vec()
            ]
        );
        assert_eq!(exec_candidates(b"ls", None).len(), 2);
    }

    #[test]
    fn nul_in_argument_is_refused() {
        let err = prepare(Command::new("echo").arg("a\0b")).err().unwrap();
        assert_eq!(err.name(), "EINVAL");
        assert!(err.to_string().contains("argument 1"), "{err}");
    }

    #[test]
    fn bad_env_name_is_refused() {
        let err = prepare(Command::new("echo").env("A=B", "c")).err().unwrap();
        assert_eq!(err.name(), "EINVAL");
    }

    #[test]
    fn env_clear_gives_exactly_the_given_env() {
        let plan = prepare(Command::new("x").env_clear().env("A", "1")).unwrap();
        assert_eq!(plan.envp, b"A=1\0");
        assert_eq!(plan.envp_starts, vec![0]);
    }

    #[test]
    fn closed_inherit_fd_is_refused() {
        let err = prepare(Command::new("x").stdio(5, crate::Stdio::inherit_fd(987_654)))
            .err()
            .unwrap();
        assert_eq!(err.name(), "EBADF");
    }
}
