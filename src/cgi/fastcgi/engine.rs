//! The FastCGI server's threads: one event loop per core, each with its own `epoll` set
//! (`poll.rs`), all taking connections from the one listening socket (`EPOLLEXCLUSIVE`:
//! one loop wakes per connection). A loop owns its connections (`conn.rs`) and the scripts
//! they run (`job.rs`) from accept to close; nothing is shared between loops but the
//! server's `State` (limits, budgets, log) and the stop signal.
//!
//! `serve` is async like the HTTP front's: it starts the loops, awaits the shutdown, then
//! stops them gracefully (every script's group gets SIGTERM, then SIGKILL after the grace).
//! Dropped early, it stops them at once and kills every script still running.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, eventfd};
use rustix::net::SocketFlags;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::conn::{Conn, Settings};
use super::job::Job;
use super::poll::{Poller, Ready, Token, Want};
use crate::cgi::log::LogLine;
use crate::cgi::script::KILL_GRACE;
use crate::cgi::state::State;
use crate::cgi::tasks::{AcceptBackoff, accept_failed, accept_is_fatal};
use crate::error::{Error, Result, from_io};

/// Token kinds.
pub(super) const LISTEN: u8 = 1;
pub(super) const WAKE: u8 = 2;
pub(super) const ACCEPT_AGAIN: u8 = 3;
/// A connection's socket, and its deadlines.
pub(super) const CONN: u8 = 4;
/// The stdout of the script a connection is answering with.
pub(super) const STDOUT: u8 = 5;
/// A script's stderr, stdin, pidfd, discarded stdout, and its deadlines.
pub(super) const JOB_ERR: u8 = 6;
pub(super) const JOB_IN: u8 = 7;
pub(super) const JOB_EXIT: u8 = 8;
pub(super) const JOB_DISCARD: u8 = 9;
pub(super) const JOB_TIME: u8 = 10;
/// The end of a graceful stop's wait.
const STOP_OVER: u8 = 11;

const RUN: u8 = 0;
const GRACEFUL: u8 = 1;
const NOW: u8 = 2;

/// Bytes one read takes from a socket or a pipe: what a pipe holds by default.
pub(super) const READ_CHUNK: usize = 64 * 1024;
/// The longest a loop sleeps without looking at its deadlines.
const LONGEST_WAIT: Duration = Duration::from_secs(5);
/// Connections one wake-up accepts before it serves the others' events.
const ACCEPT_BATCH: usize = 8;
/// How soon a loop at the connection cap tries again (a close in the same loop is sooner).
const CAP_RETRY: Duration = Duration::from_millis(50);

/// What every loop of one server shares.
pub(super) struct Shared {
    pub state: Arc<State>,
    pub settings: Settings,
    listener: OwnedFd,
    tcp: bool,
    /// One eventfd per loop: stop, or a `max_children` slot came free.
    wakers: Vec<OwnedFd>,
    stop: AtomicU8,
    /// Requests waiting for a `max_children` slot, all loops together.
    pub waiting: AtomicUsize,
    fatal: Mutex<Option<Error>>,
}

impl Shared {
    /// Wakes every loop (a slot came free, or a stop).
    pub(super) fn wake_all(&self) {
        for w in &self.wakers {
            let _ = rustix::io::write(w, &1u64.to_ne_bytes());
        }
    }

    fn stop(&self, how: u8) {
        self.stop.fetch_max(how, Ordering::SeqCst);
        self.wake_all();
    }
}

/// A `max_children` slot held by a script. Given back, it wakes every loop if requests
/// wait for one (they may be in another loop).
pub(super) struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    sh: Arc<Shared>,
}

impl Slot {
    pub(super) fn new(permit: OwnedSemaphorePermit, sh: &Arc<Shared>) -> Slot {
        Slot {
            permit: Some(permit),
            sh: sh.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Free first, then wake: a loop woken before would find none.
        drop(self.permit.take());
        // Pairs with the fence in `launch` after it counts itself waiting.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.sh.waiting.load(Ordering::SeqCst) > 0 {
            self.sh.wake_all();
        }
    }
}

/// Entries of one kind in a loop, by slot and generation (the generation is in every
/// token, so an event for what was in a reused slot is dropped).
pub(super) struct Table<T> {
    items: Vec<Option<T>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Table<T> {
    fn default() -> Table<T> {
        Table {
            items: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Table<T> {
    pub(super) fn insert(&mut self, item: T) -> (u32, u32) {
        let slot = match self.free.pop() {
            Some(s) => s as usize,
            None => {
                self.items.push(None);
                self.generations.push(0);
                self.items.len() - 1
            }
        };
        let generation = self.generations[slot].wrapping_add(1);
        self.generations[slot] = generation;
        self.items[slot] = Some(item);
        self.len += 1;
        (slot as u32, generation)
    }

    pub(super) fn get(&mut self, slot: u32, generation: u32) -> Option<&mut T> {
        let i = slot as usize;
        if self.generations.get(i) != Some(&generation) {
            return None;
        }
        self.items[i].as_mut()
    }

    pub(super) fn contains(&self, slot: u32, generation: u32) -> bool {
        let i = slot as usize;
        self.generations.get(i) == Some(&generation) && self.items[i].is_some()
    }

    pub(super) fn remove(&mut self, slot: u32, generation: u32) -> Option<T> {
        let i = slot as usize;
        if self.generations.get(i) != Some(&generation) {
            return None;
        }
        let item = self.items[i].take()?;
        self.free.push(slot);
        self.len -= 1;
        Some(item)
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Slots and generations of every entry.
    pub(super) fn keys(&self) -> Vec<(u32, u32)> {
        (0..self.items.len())
            .filter(|&i| self.items[i].is_some())
            .map(|i| (i as u32, self.generations[i]))
            .collect()
    }
}

/// One thread's loop.
pub(super) struct Loop {
    pub sh: Arc<Shared>,
    pub poll: Poller,
    pub conns: Table<Conn>,
    pub jobs: Table<Job>,
    /// Where reads land before they are parsed or framed.
    pub scratch: Vec<u8>,
    /// Connections waiting for a `max_children` slot, oldest first.
    pub queued: Vec<(u32, u32)>,
    me: usize,
    listening: bool,
    backoff: AcceptBackoff,
    /// Accepts paused after an error (out of fds) until then.
    paused_until: Option<Instant>,
    /// When a graceful stop began.
    pub stopping: Option<Instant>,
}

fn token(kind: u8) -> Token {
    Token {
        kind,
        slot: 0,
        generation: 0,
    }
}

impl Loop {
    fn run(&mut self) {
        let _ = self.listen(true);
        let (mut ready, mut due) = (Vec::new(), Vec::new());
        loop {
            match self.sh.stop.load(Ordering::SeqCst) {
                NOW => return,
                GRACEFUL if self.stopping.is_none() => self.begin_stop(),
                _ => {}
            }
            if let Some(since) = self.stopping {
                if self.jobs.len() == 0 || since.elapsed() >= KILL_GRACE * 2 {
                    return;
                }
            }
            ready.clear();
            due.clear();
            if let Err(e) = self.poll.wait(LONGEST_WAIT, &mut ready, &mut due) {
                self.fatal(from_io(e, "fastcgi: epoll_wait"));
                return;
            }
            for &(t, r) in &ready {
                self.dispatch(t, r);
            }
            for &t in &due {
                self.deadline(t);
            }
            self.compact_timers();
        }
    }

    /// Deadlines of connections and scripts that are gone stay in the heap until they come
    /// (a script's timeout is minutes away): past a few per live entry, they are dropped,
    /// so the heap follows what is open, not the request rate.
    fn compact_timers(&mut self) {
        let live = self.conns.len() + self.jobs.len();
        if self.poll.timers() <= 1024.max(4 * live) {
            return;
        }
        let (conns, jobs) = (&self.conns, &self.jobs);
        self.poll.retain_timers(|t| match t.kind {
            CONN => conns.contains(t.slot, t.generation),
            JOB_TIME => jobs.contains(t.slot, t.generation),
            _ => true,
        });
    }

    fn fatal(&self, e: Error) {
        let mut f = self.sh.fatal.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(e);
        drop(f);
        self.sh.stop(NOW);
    }

    fn dispatch(&mut self, t: Token, r: Ready) {
        match t.kind {
            LISTEN => self.accept(),
            WAKE => {
                let mut b = [0u8; 8];
                let _ = rustix::io::read(&self.sh.wakers[self.me], &mut b);
                self.retry_queued();
            }
            CONN => self.conn_ready(t.slot, t.generation, r),
            STDOUT => self.stdout_ready(t.slot, t.generation),
            JOB_ERR | JOB_IN | JOB_EXIT | JOB_DISCARD => {
                self.job_ready(t.slot, t.generation, t.kind)
            }
            _ => {}
        }
    }

    fn deadline(&mut self, t: Token) {
        match t.kind {
            ACCEPT_AGAIN => self.resume_accepting(),
            CONN => self.conn_time(t.slot, t.generation),
            JOB_TIME => self.job_time(t.slot, t.generation),
            _ => {}
        }
    }

    fn begin_stop(&mut self) {
        let now = Instant::now();
        self.stopping = Some(now);
        self.poll.at(now + KILL_GRACE * 2, token(STOP_OVER));
        let _ = self.listen(false);
        for (s, g) in self.jobs.keys() {
            if let Some(j) = self.jobs.get(s, g) {
                j.sup.on_stop();
            }
            self.job_after(s, g);
        }
    }

    /// Takes connections from the listening socket (`on`) or stops.
    fn listen(&mut self, on: bool) -> std::io::Result<()> {
        if on == self.listening {
            return Ok(());
        }
        self.listening = on;
        if on {
            self.poll.add_exclusive(&self.sh.listener, token(LISTEN))
        } else {
            self.poll.delete(&self.sh.listener);
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
        self.poll.at(until, token(ACCEPT_AGAIN));
    }

    fn resume_accepting(&mut self) {
        if self.stopping.is_some() || self.paused_until.is_some_and(|t| t > Instant::now()) {
            return;
        }
        self.paused_until = None;
        let _ = self.listen(true);
    }

    /// A connection closed in this loop: one may be waiting at the cap.
    pub(super) fn conn_closed(&mut self) {
        if !self.listening {
            self.resume_accepting();
        }
    }

    fn accept(&mut self) {
        let state = self.sh.state.clone();
        for _ in 0..ACCEPT_BATCH {
            let Some(permit) = state.connections.try_slot(&state.log) else {
                self.pause_accepting(CAP_RETRY, false);
                return;
            };
            let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
            match rustix::net::accept_with(&self.sh.listener, flags) {
                Ok(fd) => {
                    self.backoff.ok();
                    if self.sh.tcp {
                        let _ = rustix::net::sockopt::set_tcp_nodelay(&fd, true);
                    }
                    self.open_conn(fd, permit);
                }
                Err(rustix::io::Errno::AGAIN) => return,
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

    pub(super) fn log_error(&self, what: String) {
        (self.sh.state.log)(&LogLine::Error(what));
    }

    /// Registers `fd` for `kind` of the entry at `slot`/`generation`.
    pub(super) fn watch(
        &self,
        fd: impl AsFd,
        kind: u8,
        slot: u32,
        generation: u32,
        want: Want,
    ) -> bool {
        let t = Token {
            kind,
            slot,
            generation,
        };
        self.poll.add(fd, t, want).is_ok()
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
                        let mut lp = Loop {
                            sh: sh.clone(),
                            poll,
                            conns: Table::default(),
                            jobs: Table::default(),
                            scratch: vec![0; READ_CHUNK],
                            queued: Vec::new(),
                            me,
                            listening: false,
                            backoff: AcceptBackoff::default(),
                            paused_until: None,
                            stopping: None,
                        };
                        lp.run();
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
