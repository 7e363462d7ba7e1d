//! What every part of a FastCGI event loop works with: the server-wide [`Shared`] state
//! (settings, the listening socket, the loops' wake-ups, the stop), a loop's own [`Ctx`]
//! (its `epoll` set and deadlines, its read buffer), the [`Table`]s that hold its
//! connections and scripts, the token kinds, and the [`Slot`] a running script holds.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use super::poll::{Poller, Token, Want};
use crate::cgi::log::LogLine;
use crate::cgi::state::State;
use crate::error::Error;

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
pub(super) const STOP_OVER: u8 = 11;

/// `Shared::stop`: running, stopping gracefully, stopping now.
pub(super) const RUN: u8 = 0;
pub(super) const GRACEFUL: u8 = 1;
pub(super) const NOW: u8 = 2;

/// Bytes one read takes from a socket or a pipe: what a pipe holds by default.
pub(super) const READ_CHUNK: usize = 64 * 1024;

/// The FastCGI front's own settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Send the script's stderr lines to the web server as `FCGI_STDERR` too.
    pub stderr_to_client: bool,
    /// What `GET_VALUES` answers for `FCGI_MAX_CONNS` and `FCGI_MAX_REQS`.
    pub max_conns: usize,
}

/// What every loop of one server shares.
pub(super) struct Shared {
    pub state: Arc<State>,
    pub settings: Settings,
    pub listener: OwnedFd,
    pub tcp: bool,
    /// Shut the listening socket down when a graceful stop begins: `bind` made it.
    pub refuse_on_stop: bool,
    /// One eventfd per loop: stop, or a `max_children` slot came free.
    pub wakers: Vec<OwnedFd>,
    pub stop: AtomicU8,
    /// Requests waiting for a `max_children` slot, all loops together.
    pub waiting: AtomicUsize,
    pub fatal: Mutex<Option<Error>>,
}

impl Shared {
    /// Wakes every loop (a slot came free, or a stop).
    pub(super) fn wake_all(&self) {
        for w in &self.wakers {
            let _ = rustix::io::write(w, &1u64.to_ne_bytes());
        }
    }

    pub(super) fn stop(&self, how: u8) {
        self.stop.fetch_max(how, Ordering::SeqCst);
        self.wake_all();
    }

    /// Whether a stop began.
    pub(super) fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst) != RUN
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

/// One loop's own means: its `epoll` set and deadlines, its read buffer, whether it stops.
pub(super) struct Ctx {
    pub sh: Arc<Shared>,
    pub poll: Poller,
    /// Where reads land before they are parsed or framed.
    pub scratch: Vec<u8>,
    /// When a graceful stop began.
    pub stopping: Option<Instant>,
}

impl Ctx {
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
