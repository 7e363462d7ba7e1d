//! The FastCGI server's threads: one event loop per core, each with its own `epoll` set
//! (`poll.rs`), all taking connections from the one listening socket (`EPOLLEXCLUSIVE`:
//! one loop wakes per connection). A loop owns its connections (`conn.rs`) and the scripts
//! they run (`job.rs`) from accept to close; nothing is shared between loops but the
//! server's `State` (limits, budgets, log) and the stop signal (`shared.rs`).
//!
//! `serve` is async like the HTTP front's: it starts the loops, awaits the shutdown, then
//! stops them gracefully (every script's group gets SIGTERM, then SIGKILL after the grace).
//! Dropped early, it stops them at once and kills every script still running.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, eventfd};
use rustix::net::SocketFlags;
use tokio::sync::oneshot;

use super::conn::Loop;
use super::job::Jobs;
use super::poll::{Poller, Ready, Token, Want};
use super::shared::{
    ACCEPT_AGAIN, CONN, Ctx, GRACEFUL, JOB_DISCARD, JOB_ERR, JOB_EXIT, JOB_IN, JOB_TIME, LISTEN,
    NOW, READ_CHUNK, RUN, STDOUT, STOP_OVER, Settings, Shared, Table, WAKE,
};
use crate::cgi::script::KILL_GRACE;
use crate::cgi::state::State;
use crate::cgi::tasks::{AcceptBackoff, accept_failed, accept_is_fatal};
use crate::error::{Error, Result, from_io};

/// The longest a loop sleeps without looking at its deadlines.
const LONGEST_WAIT: Duration = Duration::from_secs(5);
/// Connections one wake-up accepts before it serves the others' events.
const ACCEPT_BATCH: usize = 8;
/// How soon a loop at the connection cap tries again (a close in the same loop is sooner).
const CAP_RETRY: Duration = Duration::from_millis(50);
/// The most connections a stop takes from a Unix socket's backlog to close them (the
/// kernel's `somaxconn` default).
const BACKLOG_DRAIN: usize = 4096;

/// One loop's thread: the loop, and its share of accepting.
struct Thread {
    lp: Loop,
    me: usize,
    listening: bool,
    backoff: AcceptBackoff,
    /// Accepts paused after an error (out of fds) until then.
    paused_until: Option<Instant>,
}

fn token(kind: u8) -> Token {
    Token {
        kind,
        slot: 0,
        generation: 0,
    }
}

impl Thread {
    fn run(&mut self) {
        let _ = self.listen(true);
        let (mut ready, mut due) = (Vec::new(), Vec::new());
        loop {
            match self.lp.cx.sh.stop.load(Ordering::SeqCst) {
                NOW => return,
                GRACEFUL if self.lp.cx.stopping.is_none() => self.begin_stop(),
                _ => {}
            }
            if let Some(since) = self.lp.cx.stopping {
                if self.lp.jobs.len() == 0 || since.elapsed() >= KILL_GRACE * 2 {
                    return;
                }
            }
            ready.clear();
            due.clear();
            if let Err(e) = self.lp.cx.poll.wait(LONGEST_WAIT, &mut ready, &mut due) {
                self.fatal(from_io(e, "fastcgi: epoll_wait"));
                return;
            }
            for &(t, r) in &ready {
                self.dispatch(t, r);
                self.settle();
            }
            for &t in &due {
                self.deadline(t);
                self.settle();
            }
            self.compact_timers();
        }
    }

    /// After each event: what the jobs told goes to their connections; a connection that
    /// closed may let a waiting one in.
    fn settle(&mut self) {
        self.lp.deliver();
        if std::mem::take(&mut self.lp.closed_one) && !self.listening {
            self.resume_accepting();
        }
    }

    /// Deadlines of connections and scripts that are gone stay in the heap until they come
    /// (a script's timeout is minutes away): past a few per live entry, they are dropped,
    /// so the heap follows what is open, not the request rate.
    fn compact_timers(&mut self) {
        let lp = &mut self.lp;
        let live = lp.conns.len() + lp.jobs.len();
        if lp.cx.poll.timers() <= 1024.max(4 * live) {
            return;
        }
        let (conns, jobs) = (&lp.conns, &lp.jobs);
        lp.cx.poll.retain_timers(|t| match t.kind {
            CONN => conns.contains(t.slot, t.generation),
            JOB_TIME => jobs.contains(t.slot, t.generation),
            _ => true,
        });
    }

    fn fatal(&self, e: Error) {
        let sh = &self.lp.cx.sh;
        let mut f = sh.fatal.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(e);
        drop(f);
        sh.stop(NOW);
    }

    fn dispatch(&mut self, t: Token, r: Ready) {
        let lp = &mut self.lp;
        match t.kind {
            LISTEN => self.accept(),
            WAKE => {
                let mut b = [0u8; 8];
                let _ = rustix::io::read(&lp.cx.sh.wakers[self.me], &mut b);
                lp.retry_queued();
            }
            CONN => lp.conn_ready(t.slot, t.generation, r),
            STDOUT => lp.stdout_ready(t.slot, t.generation),
            JOB_ERR | JOB_IN | JOB_EXIT | JOB_DISCARD => {
                lp.jobs.ready(&mut lp.cx, t.slot, t.generation, t.kind)
            }
            _ => {}
        }
    }

    fn deadline(&mut self, t: Token) {
        let lp = &mut self.lp;
        match t.kind {
            ACCEPT_AGAIN => self.resume_accepting(),
            CONN => lp.conn_time(t.slot, t.generation),
            JOB_TIME => lp.jobs.time(&mut lp.cx, t.slot, t.generation),
            // STOP_OVER only wakes the loop: `run` looks at the stop's time.
            STOP_OVER => {}
            _ => {}
        }
    }

    fn begin_stop(&mut self) {
        let now = Instant::now();
        let lp = &mut self.lp;
        lp.cx.stopping = Some(now);
        lp.cx.poll.at(now + KILL_GRACE * 2, token(STOP_OVER));
        let _ = self.listen(false);
        if self.lp.cx.sh.refuse_on_stop {
            self.refuse();
        }
        let lp = &mut self.lp;
        lp.jobs.stop(&mut lp.cx);
    }

    /// At a graceful stop, on a socket only this process holds: from now on a connection
    /// is refused at once (the web server answers 502 or tries its next server now), not
    /// left in the backlog until the loops end. Every loop does it (the first one counts),
    /// before any script is told to stop.
    fn refuse(&mut self) {
        let listener = &self.lp.cx.sh.listener;
        // TCP: the kernel resets what waits in the backlog, and refuses new connections.
        // Unix: new connections are refused, but those already queued stay (until the
        // last close of the socket): they are taken and closed here, so that they get their
        // EOF now, not at the end of the grace. The queue only shrinks; bounded anyway.
        let _ = rustix::net::shutdown(listener, rustix::net::Shutdown::Both);
        if !self.lp.cx.sh.tcp {
            let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
            for _ in 0..BACKLOG_DRAIN {
                if rustix::net::accept_with(listener, flags).is_err() {
                    break;
                }
            }
        }
    }

    /// Takes connections from the listening socket (`on`) or stops.
    fn listen(&mut self, on: bool) -> std::io::Result<()> {
        if on == self.listening {
            return Ok(());
        }
        self.listening = on;
        let cx = &self.lp.cx;
        if on {
            cx.poll.add_exclusive(&cx.sh.listener, token(LISTEN))
        } else {
            cx.poll.delete(&cx.sh.listener);
            Ok(())
        }
    }

    /// Stops accepting for `pause`; `backoff`: after an error, which nothing cuts short.
    fn pause_accepting(&mut self, pause: Duration, backoff: bool) {
        let _ = self.listen(false);
        let until = Instant::now() + pause;
        if backoff {
            self.paused_until = Some(until);
        }
        self.lp.cx.poll.at(until, token(ACCEPT_AGAIN));
    }

    fn resume_accepting(&mut self) {
        let paused = self.paused_until.is_some_and(|t| t > Instant::now());
        if self.lp.cx.stopping.is_some() || paused {
            return;
        }
        self.paused_until = None;
        let _ = self.listen(true);
    }

    fn accept(&mut self) {
        let state = self.lp.cx.sh.state.clone();
        for _ in 0..ACCEPT_BATCH {
            let Some(permit) = state.connections.try_slot(&state.log) else {
                self.pause_accepting(CAP_RETRY, false);
                return;
            };
            let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
            match rustix::net::accept_with(&self.lp.cx.sh.listener, flags) {
                Ok(fd) => {
                    self.backoff.ok();
                    if self.lp.cx.sh.tcp {
                        let _ = rustix::net::sockopt::set_tcp_nodelay(&fd, true);
                    }
                    self.lp.open_conn(fd, permit);
                }
                Err(rustix::io::Errno::AGAIN) => return,
                // A stop began: the loop stops accepting, whatever failed (a TCP socket the
                // stop shut down fails with EINVAL).
                Err(_) if self.lp.cx.sh.stopping() => return,
                Err(e) => {
                    let e = std::io::Error::from(e);
                    if accept_is_fatal(&e) {
                        self.fatal(from_io(e, "fastcgi: accept"));
                        return;
                    }
                    let pause = accept_failed(&mut self.backoff, &e, &state.log);
                    if !pause.is_zero() {
                        self.pause_accepting(pause, true);
                        return;
                    }
                }
            }
        }
    }
}

/// The running loops of one server; dropped, it stops them at once (every script still
/// running is killed) and waits for their threads.
struct Loops {
    sh: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Loops {
    fn drop(&mut self) {
        self.sh.stop(NOW);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Serves FastCGI on `listener` (a listening socket, non-blocking) until `shutdown`.
pub(super) async fn serve(
    state: Arc<State>,
    settings: Settings,
    listener: OwnedFd,
    tcp: bool,
    refuse_on_stop: bool,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let wakers = (0..n)
        .map(|_| {
            eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(std::io::Error::from)
        })
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| from_io(e, "fastcgi: eventfd"))?;
    let sh = Arc::new(Shared {
        state,
        settings,
        listener,
        tcp,
        refuse_on_stop,
        wakers,
        stop: AtomicU8::new(RUN),
        waiting: AtomicUsize::new(0),
        fatal: Mutex::new(None),
    });
    let mut loops = Loops {
        sh: sh.clone(),
        threads: Vec::new(),
    };
    let (ended_tx, ended) = oneshot::channel::<()>();
    let ended_tx = Arc::new(Mutex::new(Some(ended_tx)));
    for me in 0..n {
        let sh = sh.clone();
        let ended_tx = ended_tx.clone();
        let t = std::thread::Builder::new()
            .name("brood-fastcgi".into())
            .spawn(move || {
                // Made here: the epoll event buffer stays on its thread.
                match Poller::new().and_then(|poll| {
                    poll.add(&sh.wakers[me], token(WAKE), Want::READ)?;
                    Ok(poll)
                }) {
                    Ok(poll) => {
                        let cx = Ctx {
                            sh: sh.clone(),
                            poll,
                            scratch: vec![0; READ_CHUNK],
                            stopping: None,
                        };
                        let lp = Loop {
                            cx,
                            conns: Table::default(),
                            jobs: Jobs::default(),
                            queued: Vec::new(),
                            closed_one: false,
                        };
                        let mut thread = Thread {
                            lp,
                            me,
                            listening: false,
                            backoff: AcceptBackoff::default(),
                            paused_until: None,
                        };
                        thread.run();
                    }
                    Err(e) => {
                        let mut f = sh.fatal.lock().unwrap_or_else(|p| p.into_inner());
                        f.get_or_insert(from_io(e, "fastcgi: epoll"));
                        drop(f);
                        sh.stop(NOW);
                    }
                }
                // The first loop to end (a fatal error, or the stop) says so.
                if let Some(tx) = ended_tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    let _ = tx.send(());
                }
            })
            .map_err(|e| from_io(e, "fastcgi: start a loop thread"))?;
        loops.threads.push(t);
    }
    drop(ended_tx);
    tokio::pin!(ended);
    tokio::select! {
        () = shutdown => {
            sh.stop(GRACEFUL);
            let _ = ended.as_mut().await;
        }
        _ = &mut ended => {}
    }
    // The rest of the loops end within the grace too; join them off the runtime.
    let threads = std::mem::take(&mut loops.threads);
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
    drop(loops);
    let fatal = sh.fatal.lock().unwrap_or_else(|p| p.into_inner()).take();
    match fatal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
