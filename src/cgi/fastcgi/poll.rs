//! The FastCGI event loop's readiness and clock: one `epoll` set (level-triggered) and a
//! heap of deadlines, each event and deadline naming what it is for by a [`Token`].
//!
//! By `rustix`, so without `unsafe`. Not tokio's reactor: a FastCGI request registers and
//! wakes on four fds (the connection, two pipes, the pidfd), and through tokio's tasks
//! and wakers that cost brood a third of its CPU per request (docs/benchmarks.md, FastCGI).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::buffer::spare_capacity;
use rustix::event::epoll::{self, CreateFlags, Event, EventData, EventFlags};

/// What an event or a deadline is for: a kind, a slot in one of the loop's tables and that
/// slot's generation, so an event for a connection or script that is gone (its slot
/// reused) is recognised and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Token {
    pub kind: u8,
    pub slot: u32,
    pub generation: u32,
}

impl Token {
    fn pack(self) -> u64 {
        (self.generation as u64) << 32 | (self.kind as u64) << 24 | (self.slot as u64 & 0xff_ffff)
    }

    fn unpack(v: u64) -> Token {
        Token {
            kind: (v >> 24) as u8,
            slot: (v & 0xff_ffff) as u32,
            generation: (v >> 32) as u32,
        }
    }
}

/// Readiness asked for an fd (a hang-up or an error is reported whatever is asked: a
/// stream paused is taken out of the set instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Want {
    pub read: bool,
    pub write: bool,
}

impl Want {
    pub(crate) const READ: Want = Want {
        read: true,
        write: false,
    };
    pub(crate) const WRITE: Want = Want {
        read: false,
        write: true,
    };
}

fn flags(want: Want) -> EventFlags {
    let mut f = EventFlags::empty();
    if want.read {
        f |= EventFlags::IN | EventFlags::RDHUP;
    }
    if want.write {
        f |= EventFlags::OUT;
    }
    f
}

/// One `epoll` set and its deadlines.
pub(crate) struct Poller {
    ep: OwnedFd,
    events: Vec<Event>,
    timers: BinaryHeap<Reverse<(Instant, Token)>>,
}

impl Poller {
    pub(crate) fn new() -> io::Result<Poller> {
        Ok(Poller {
            ep: epoll::create(CreateFlags::CLOEXEC)?,
            events: Vec::with_capacity(256),
            timers: BinaryHeap::new(),
        })
    }

    pub(crate) fn add(&self, fd: impl AsFd, token: Token, want: Want) -> io::Result<()> {
        let data = EventData::new_u64(token.pack());
        Ok(epoll::add(&self.ep, fd, data, flags(want))?)
    }

    /// A listening socket shared by every loop: only one loop wakes per connection.
    pub(crate) fn add_exclusive(&self, fd: impl AsFd, token: Token) -> io::Result<()> {
        let data = EventData::new_u64(token.pack());
        let f = EventFlags::IN | EventFlags::EXCLUSIVE;
        Ok(epoll::add(&self.ep, fd, data, f)?)
    }

    pub(crate) fn modify(&self, fd: impl AsFd, token: Token, want: Want) -> io::Result<()> {
        let data = EventData::new_u64(token.pack());
        Ok(epoll::modify(&self.ep, fd, data, flags(want))?)
    }

    pub(crate) fn delete(&self, fd: impl AsFd) {
        // Closing the fd would remove it as well; the explicit delete covers an fd a child
        // also holds (the open file stays, and with it the registration).
        let _ = epoll::delete(&self.ep, fd);
    }

    /// Calls `deadline` for `token` at `at` (or soon after).
    pub(crate) fn at(&mut self, at: Instant, token: Token) {
        self.timers.push(Reverse((at, token)));
    }

    /// Deadlines held.
    pub(crate) fn timers(&self) -> usize {
        self.timers.len()
    }

    /// Keeps only the deadlines whose token `keep` says.
    pub(crate) fn retain_timers(&mut self, mut keep: impl FnMut(Token) -> bool) {
        self.timers.retain(|Reverse((_, t))| keep(*t));
    }

    /// Waits for readiness until the next deadline (at most `longest`), then gives the
    /// ready tokens and those whose deadline has come.
    pub(crate) fn wait(
        &mut self,
        longest: Duration,
        ready: &mut Vec<(Token, Ready)>,
        due: &mut Vec<Token>,
    ) -> io::Result<()> {
        let now = Instant::now();
        let mut wait = longest;
        if let Some(Reverse((at, _))) = self.timers.peek() {
            // Rounded up to the millisecond: never wake just before the deadline.
            wait = wait.min(at.saturating_duration_since(now) + Duration::from_micros(999));
        }
        let ts = rustix::event::Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: (wait.subsec_millis() * 1_000_000) as _,
        };
        self.events.clear();
        match epoll::wait(&self.ep, spare_capacity(&mut self.events), Some(&ts)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        for ev in &self.events {
            let f = ev.flags;
            ready.push((
                Token::unpack(ev.data.u64()),
                Ready {
                    read: f.intersects(EventFlags::IN | EventFlags::HUP | EventFlags::ERR),
                    hangup: f.intersects(EventFlags::HUP | EventFlags::RDHUP | EventFlags::ERR),
                },
            ));
        }
        let now = Instant::now();
        while let Some(Reverse((at, token))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            due.push(token);
        }
        Ok(())
    }
}

/// What an fd is ready for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ready {
    pub read: bool,
    pub hangup: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for t in [
            Token {
                kind: 3,
                slot: 0xff_ffff,
                generation: u32::MAX,
            },
            Token {
                kind: 0,
                slot: 0,
                generation: 0,
            },
        ] {
            assert_eq!(Token::unpack(t.pack()), t);
        }
    }

    #[test]
    fn deadlines_come_in_order_and_readiness_with_its_token() {
        let mut p = Poller::new().unwrap();
        let (r, w) = crate::fd::pipe().unwrap();
        let t = |kind| Token {
            kind,
            slot: 1,
            generation: 7,
        };
        p.add(&r, t(1), Want::READ).unwrap();
        let now = Instant::now();
        p.at(now + Duration::from_millis(20), t(3));
        p.at(now, t(2));
        let (mut ready, mut due) = (Vec::new(), Vec::new());
        p.wait(Duration::from_secs(5), &mut ready, &mut due)
            .unwrap();
        assert!(ready.is_empty());
        assert_eq!(due, [t(2)]);
        rustix::io::write(&w, b"x").unwrap();
        due.clear();
        p.wait(Duration::from_secs(5), &mut ready, &mut due)
            .unwrap();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].0, t(1));
        assert!(ready[0].1.read);
        ready.clear();
        // Registered for nothing, a pipe whose writer is gone still wakes (hang-up)...
        let nothing = Want {
            read: false,
            write: false,
        };
        p.modify(&r, t(1), nothing).unwrap();
        drop(w);
        p.wait(Duration::from_secs(5), &mut ready, &mut due)
            .unwrap();
        assert!(
            ready.len() == 1 && ready[0].1.hangup,
            "a hang-up is always reported"
        );
        ready.clear();
        // ...so a paused stream is taken out of the set.
        p.delete(&r);
        while due.is_empty() {
            p.wait(Duration::from_secs(5), &mut ready, &mut due)
                .unwrap();
        }
        assert!(ready.is_empty(), "a paused fd does not wake");
        assert_eq!(due, [t(3)]);
        assert!(now.elapsed() >= Duration::from_millis(20));
    }
}
