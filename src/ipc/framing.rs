//! Framing: the chunks `recvmsg` returns, each with the fds that came with it, in; bytes,
//! pending handles and newline-ended messages with their handles bound to them, out. Pure
//! logic with no system calls, generic over the handle type, so it is unit-tested (and can
//! be fuzzed) without processes or fds.
//!
//! ## Which bytes a handle belongs to
//!
//! A sender attaches the fds of a write to its first byte (one `SCM_RIGHTS` message on the
//! write's first buffer). Linux's `unix_stream_read_generic` copies queued buffers into one
//! read until the caller's buffer is full, and stops right after a buffer that carried fds.
//! So a read that brings fds may begin with bytes of earlier, fd-less writes (merged in), and
//! it ends inside the write that carried them: **the fds belong to the write that holds the
//! read's last byte**. A read never carries the fds of two writes, and the receiver cannot
//! tell where in the read the fd-carrying write began.
//!
//! brood therefore binds a read's fds to the read's last byte:
//!
//! - byte layer: the handles become pending once that byte is consumed;
//! - line layer: they belong to the line that holds that byte. As every write with handles
//!   holds one line (brood's `send_msg`, and the documented wire format for other peers), that
//!   line is the one whose write carried them.
//!
//! A read whose control data was cut short (`MSG_CTRUNC`: more fds than the receiver has
//! room for, or the receiver at its fd limit) is bound the same way: its surviving fds are
//! dropped at once and the loss is reported, once, for the line (or just before the byte)
//! the fds belonged to. Later bytes and lines are not affected.

use std::collections::VecDeque;

/// Handles of one read were lost (`MSG_CTRUNC`); `arrived` of them reached us (and were
/// closed), `room` is how many the read had room for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Truncated {
    pub arrived: usize,
    pub room: usize,
}

/// What is bound to one byte of the stream.
#[derive(Debug)]
enum Item<H> {
    Handle(H),
    Lost(Truncated),
}

/// A line taken by [`Framer::take_line`]: its bytes (without the newline) are passed to the
/// caller's closure alongside this.
#[cfg_attr(
    not(feature = "json"),
    allow(
        dead_code,
        reason = "the line layer serves the typed messages of feature json"
    )
)]
#[derive(Debug)]
pub(crate) struct Bound<H> {
    /// The handles that came with the line.
    pub handles: Vec<H>,
    /// Handles meant for this line that were lost on the way.
    pub lost: Option<Truncated>,
}

/// The receive side of a channel, without the socket.
#[derive(Debug)]
pub(crate) struct Framer<H> {
    /// Initialised storage: unread bytes are `buf[start..end]`, `buf[end..]` is room for
    /// the next read. Grown (zero-filled) only when a read needs more room, so a read costs
    /// no zeroing.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// `buf[start..scanned]` holds no newline (so a line search resumes there).
    scanned: usize,
    /// Handles and losses with the stream offset of the byte they are bound to, in order.
    marks: VecDeque<(u64, Item<H>)>,
    /// Handles whose byte the byte layer has consumed.
    pending: VecDeque<H>,
    /// The line layer drops bytes up to the next newline ([`skip_line`](Framer::skip_line)).
    skipping: bool,
}

impl<H> Default for Framer<H> {
    fn default() -> Self {
        Framer {
            buf: Vec::new(),
            start: 0,
            end: 0,
            base: 0,
            scanned: 0,
            marks: VecDeque::new(),
            pending: VecDeque::new(),
            skipping: false,
        }
    }
}

impl<H> Framer<H> {
    /// Room for the next read: at least `want` bytes (more when the buffer already has it).
    pub fn space(&mut self, want: usize) -> &mut [u8] {
        if self.buf.len() - self.end < want {
            self.compact();
            if self.buf.len() - self.end < want {
                self.buf.resize(self.end + want, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Records a read of `n` bytes into [`space`](Framer::space), with the fds that came
    /// with it, or the news that some were lost (then `handles` are dropped here: they are
    /// no use without the rest). A read of no bytes binds nothing: its handles are dropped.
    pub fn commit(
        &mut self,
        n: usize,
        handles: impl IntoIterator<Item = H>,
        lost: Option<Truncated>,
    ) {
        let n = n.min(self.buf.len() - self.end);
        self.end += n;
        if n == 0 {
            return;
        }
        let at = self.base + self.end as u64 - 1;
        match lost {
            Some(t) => {
                drop(handles.into_iter());
                self.marks.push_back((at, Item::Lost(t)));
            }
            None => self
                .marks
                .extend(handles.into_iter().map(|h| (at, Item::Handle(h)))),
        }
    }

    /// A read of `bytes` (copied in): [`space`](Framer::space) then [`commit`](Framer::commit).
    #[cfg(test)]
    pub fn push(
        &mut self,
        bytes: &[u8],
        handles: impl IntoIterator<Item = H>,
        lost: Option<Truncated>,
    ) {
        self.space(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        self.commit(bytes.len(), handles, lost);
    }

    /// Unread bytes.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Stream offset of the next unread byte.
    fn pos(&self) -> u64 {
        self.base + self.start as u64
    }

    /// Byte layer: copies unread bytes into `out` and makes pending the handles bound to the
    /// bytes consumed. A loss is reported (once) just before the byte it is bound to, and the
    /// copy stops short of that byte. `Ok(0)` when nothing is buffered (or `out` is empty).
    pub fn read(&mut self, out: &mut [u8]) -> Result<usize, Truncated> {
        let pos = self.pos();
        let mut n = out.len().min(self.buffered());
        if let Some(at) = self.next_loss() {
            if at == pos {
                return Err(self.take_loss_at(at));
            }
            n = n.min((at - pos) as usize);
        }
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.consume(n);
        let to = self.pos();
        while self.marks.front().is_some_and(|(at, _)| *at < to) {
            if let Some((_, Item::Handle(h))) = self.marks.pop_front() {
                self.pending.push_back(h);
            }
        }
        Ok(n)
    }

    fn next_loss(&self) -> Option<u64> {
        self.marks.iter().find_map(|(at, item)| match item {
            Item::Lost(_) => Some(*at),
            Item::Handle(_) => None,
        })
    }

    /// Removes the loss bound at `at` (and returns it); handles before it stay.
    fn take_loss_at(&mut self, at: u64) -> Truncated {
        let i = self
            .marks
            .iter()
            .position(|(a, item)| *a == at && matches!(item, Item::Lost(_)));
        match i.and_then(|i| self.marks.remove(i)) {
            Some((_, Item::Lost(t))) => t,
            _ => Truncated {
                arrived: 0,
                room: 0,
            },
        }
    }

    #[cfg_attr(
        not(feature = "json"),
        allow(
            dead_code,
            reason = "the line layer serves the typed messages of feature json"
        )
    )]
    /// Line layer: the next complete line (without its `\n`), handed to `f` with what is
    /// bound to it, then consumed. `None` when no complete line is buffered.
    pub fn take_line<R>(&mut self, f: impl FnOnce(&[u8], Bound<H>) -> R) -> Option<R> {
        if self.skipping {
            self.skip();
            if self.skipping {
                return None;
            }
        }
        let from = self.scanned.max(self.start);
        let Some(i) = self.buf[from..self.end].iter().position(|&b| b == b'\n') else {
            self.scanned = self.end;
            return None;
        };
        let nl = from + i;
        let line_end = self.base + nl as u64; // offset of the newline
        let mut bound = Bound {
            handles: Vec::new(),
            lost: None,
        };
        while self.marks.front().is_some_and(|(at, _)| *at <= line_end) {
            match self.marks.pop_front() {
                Some((_, Item::Handle(h))) => bound.handles.push(h),
                Some((_, Item::Lost(t))) => bound.lost = Some(t),
                None => {}
            }
        }
        let r = f(&self.buf[self.start..nl], bound);
        self.consume(nl + 1 - self.start);
        Some(r)
    }

    #[cfg_attr(
        not(feature = "json"),
        allow(
            dead_code,
            reason = "the line layer serves the typed messages of feature json"
        )
    )]
    /// Bytes of the buffered line that no newline ends yet (valid after
    /// [`take_line`](Framer::take_line) returned `None`: then that is everything buffered).
    pub fn unterminated(&self) -> usize {
        self.scanned.max(self.start) - self.start
    }

    #[cfg_attr(
        not(feature = "json"),
        allow(
            dead_code,
            reason = "the line layer serves the typed messages of feature json"
        )
    )]
    /// Handles (and losses) bound to bytes not consumed yet.
    pub fn bound(&self) -> usize {
        self.marks.len()
    }

    #[cfg_attr(
        not(feature = "json"),
        allow(
            dead_code,
            reason = "the line layer serves the typed messages of feature json"
        )
    )]
    /// Line layer: drops the line being received (valid after
    /// [`take_line`](Framer::take_line) returned `None`: everything buffered), and the rest
    /// of it as it arrives, up to and including its newline; the handles bound to it are
    /// dropped. The next line is taken as usual, and memory stays at one read however long
    /// the dropped line is.
    pub fn skip_line(&mut self) {
        self.skipping = true;
        self.skip();
    }

    #[cfg_attr(
        not(feature = "json"),
        allow(
            dead_code,
            reason = "the line layer serves the typed messages of feature json"
        )
    )]
    /// While skipping: drops the buffered bytes up to and including the next newline (the
    /// skip ends there), or all of them.
    fn skip(&mut self) {
        let n = match self.buf[self.start..self.end]
            .iter()
            .position(|&b| b == b'\n')
        {
            Some(i) => {
                self.skipping = false;
                i + 1
            }
            None => self.end - self.start,
        };
        let to = self.pos() + n as u64;
        while self.marks.front().is_some_and(|(at, _)| *at < to) {
            self.marks.pop_front();
        }
        self.consume(n);
    }

    /// Handles waiting for the byte layer's [`pop_pending`](Framer::pop_pending).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The next pending handle.
    pub fn peek_pending(&self) -> Option<&H> {
        self.pending.front()
    }

    /// Takes the next pending handle.
    pub fn pop_pending(&mut self) -> Option<H> {
        self.pending.pop_front()
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            // Empty: start over at the front, and give back a buffer a long line grew.
            self.base += self.start as u64;
            self.start = 0;
            self.end = 0;
            self.scanned = 0;
            if self.buf.len() > SHRINK_OVER {
                self.buf = Vec::new();
            }
        }
    }

    /// Moves the unread bytes to the front of the buffer.
    fn compact(&mut self) {
        if self.start == 0 {
            return;
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.base += self.start as u64;
        self.scanned = self.scanned.saturating_sub(self.start);
        self.end -= self.start;
        self.start = 0;
    }
}

/// A buffer grown past this by a long line is freed once it is empty again.
const SHRINK_OVER: usize = 256 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(f: &mut Framer<u32>) -> Vec<(String, Vec<u32>, bool)> {
        let mut out = Vec::new();
        while let Some(l) = f.take_line(|b, bound| {
            (
                String::from_utf8(b.to_vec()).unwrap(),
                bound.handles,
                bound.lost.is_some(),
            )
        }) {
            out.push(l);
        }
        out
    }

    fn no_loss() -> Option<Truncated> {
        None
    }

    #[test]
    fn handles_of_a_merged_read_go_to_the_last_line_not_the_first() {
        // The kernel merged fd-less "first" into the read that carried "second"'s fd.
        let mut f = Framer::default();
        f.push(b"first\nsecond\n", [7], no_loss());
        assert_eq!(
            lines(&mut f),
            vec![
                ("first".into(), vec![], false),
                ("second".into(), vec![7], false)
            ]
        );
    }

    #[test]
    fn byte_layer_makes_handles_pending_only_at_their_byte() {
        let mut f = Framer::default();
        f.push(b"pc", [9], no_loss());
        let mut b = [0u8; 1];
        assert_eq!(f.read(&mut b), Ok(1));
        assert_eq!(&b, b"p");
        assert_eq!(f.pending_len(), 0);
        assert_eq!(f.read(&mut b), Ok(1));
        assert_eq!(&b, b"c");
        assert_eq!(f.pop_pending(), Some(9));
        assert_eq!(f.read(&mut b), Ok(0));
    }

    #[test]
    fn a_line_split_over_reads_gets_the_handles_of_its_reads() {
        let mut f = Framer::default();
        // A 3-read message whose first read carried handles, then an fd-less one.
        f.push(b"{\"a\":", [1, 2], no_loss());
        assert!(lines(&mut f).is_empty());
        assert_eq!(f.unterminated(), 5);
        f.push(b"1}\n{\"b\"", [], no_loss());
        f.push(b":2}\n", [], no_loss());
        assert_eq!(
            lines(&mut f),
            vec![
                ("{\"a\":1}".into(), vec![1, 2], false),
                ("{\"b\":2}".into(), vec![], false)
            ]
        );
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn a_skipped_line_is_dropped_with_its_handles_as_it_arrives_and_the_next_is_read() {
        let mut f = Framer::default();
        f.push(b"ok\n{\"long\":\"", [1], no_loss());
        assert_eq!(lines(&mut f), vec![("ok".into(), vec![], false)]);
        f.push(b"xxxx", [2], no_loss());
        assert!(lines(&mut f).is_empty());
        f.skip_line();
        assert_eq!((f.buffered(), f.bound(), f.unterminated()), (0, 0, 0));
        // The rest of it comes in pieces, the last with the next lines.
        for _ in 0..3 {
            f.push(&[b'x'; 1000], [3], no_loss());
            assert!(lines(&mut f).is_empty());
            assert_eq!((f.buffered(), f.bound()), (0, 0));
        }
        f.push(b"xx\"}\nnext\n", [4], no_loss());
        f.push(b"last\n", [], no_loss());
        assert_eq!(
            lines(&mut f),
            vec![
                ("next".into(), vec![4], false),
                ("last".into(), vec![], false)
            ]
        );
        // A skip whose newline is already buffered ends there.
        f.push(b"bad\ngood\n", [], no_loss());
        f.skip_line();
        assert_eq!(lines(&mut f), vec![("good".into(), vec![], false)]);
    }

    #[test]
    fn a_loss_is_reported_for_its_line_only() {
        let mut f = Framer::default();
        f.push(b"one\n", [1], no_loss());
        let t = Truncated {
            arrived: 1,
            room: 3,
        };
        f.push(b"two\n", [2], Some(t));
        f.push(b"three\n", [3], no_loss());
        assert_eq!(
            lines(&mut f),
            vec![
                ("one".into(), vec![1], false),
                ("two".into(), vec![], true),
                ("three".into(), vec![3], false)
            ]
        );
    }

    #[test]
    fn byte_layer_reports_a_loss_just_before_its_byte_then_goes_on() {
        let mut f = Framer::default();
        let t = Truncated {
            arrived: 0,
            room: 1,
        };
        f.push(b"pc", [5], Some(t));
        f.push(b"c", [6], no_loss());
        let mut b = [0u8; 8];
        assert_eq!(f.read(&mut b), Ok(1)); // "p", stops before the lost byte
        assert_eq!(f.read(&mut b), Err(t));
        assert_eq!(f.read(&mut b), Ok(2)); // "cc"
        assert_eq!(&b[..2], b"cc");
        assert_eq!(f.pop_pending(), Some(6));
        assert_eq!(f.pop_pending(), None);
    }

    #[test]
    fn buffer_is_reused_and_compacted() {
        let mut f: Framer<u32> = Framer::default();
        for i in 0..1000u32 {
            f.push(format!("{i}\n").as_bytes(), [i], no_loss());
            let got = lines(&mut f);
            assert_eq!(got, vec![(i.to_string(), vec![i], false)]);
        }
        // A partial line survives compaction.
        f.push(b"abc", [], no_loss());
        f.space(1 << 20);
        f.push(b"def\n", [], no_loss());
        assert_eq!(lines(&mut f), vec![("abcdef".into(), vec![], false)]);
        assert!(f.buf.len() <= SHRINK_OVER);
    }

    /// A small deterministic generator (xorshift), so the test needs no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The byte layer under the same kernel model, consumed in random-sized pieces: a
    /// handle is never pending before a byte of its own write has been consumed, and always
    /// pending once its write's last byte has been.
    #[test]
    fn random_writes_byte_layer_never_gives_a_handle_early_or_late() {
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
            // Per write: its stream offsets [start, end) and handles.
            let mut writes: Vec<(u64, u64, Vec<u32>)> = Vec::new();
            let mut queue: VecDeque<(Vec<u8>, Vec<u32>)> = VecDeque::new();
            let mut off = 0u64;
            let mut next_handle = 0u32;
            for _ in 0..2000 {
                let len = 1 + rng.below(30);
                let hs: Vec<u32> = (0..rng.below(4))
                    .map(|_| {
                        next_handle += 1;
                        next_handle
                    })
                    .collect();
                writes.push((off, off + len, hs.clone()));
                queue.push_back((vec![b'x'; len as usize], hs));
                off += len;
            }
            // start offset of each handle's write, by handle number
            let mut start_of = vec![0u64; next_handle as usize + 1];
            for (start, _, hs) in &writes {
                for &h in hs {
                    start_of[h as usize] = *start;
                }
            }
            let mut f = Framer::default();
            let mut consumed = 0u64;
            let mut taken = 0usize;
            // Writes fully consumed so far, and how many handles they carried.
            let (mut done_writes, mut due) = (0usize, 0usize);
            loop {
                // Sometimes read from the "kernel", sometimes consume what is buffered.
                if f.buffered() == 0 || rng.below(3) == 0 {
                    if queue.is_empty() && f.buffered() == 0 {
                        break;
                    }
                    let (read, fds) = kernel_read(&mut queue, 1 + rng.below(100) as usize);
                    f.push(&read, fds, None);
                }
                let mut out = vec![0u8; 1 + rng.below(40) as usize];
                let n = f.read(&mut out).unwrap();
                consumed += n as u64;
                while let Some(h) = f.pop_pending() {
                    assert!(
                        start_of[h as usize] < consumed,
                        "seed {seed}: handle {h} early"
                    );
                    taken += 1;
                }
                while writes.get(done_writes).is_some_and(|w| w.1 <= consumed) {
                    due += writes[done_writes].2.len();
                    done_writes += 1;
                }
                assert!(taken >= due, "seed {seed}: a handle late at {consumed}");
            }
            assert_eq!(taken, next_handle as usize);
        }
    }

    /// One read of at most `room` bytes from queued writes `(bytes, handles on the first
    /// byte)`, as `unix_stream_read_generic` does it: fd-less writes merge into one read,
    /// which ends with the first write that carries fds.
    fn kernel_read(queue: &mut VecDeque<(Vec<u8>, Vec<u32>)>, room: usize) -> (Vec<u8>, Vec<u32>) {
        let mut read = Vec::new();
        let mut fds = Vec::new();
        while read.len() < room {
            let Some((bytes, hs)) = queue.front_mut() else {
                break;
            };
            let take = (room - read.len()).min(bytes.len());
            read.extend(bytes.drain(..take));
            let had_fds = !hs.is_empty();
            fds.append(hs);
            if bytes.is_empty() {
                queue.pop_front();
            }
            if had_fds {
                break;
            }
        }
        (read, fds)
    }

    /// Simulates the kernel: writes of one line each, 0-3 handles on their first byte, read
    /// with random buffer sizes, merging fd-less writes into a read that ends in the write
    /// with fds (as `unix_stream_read_generic` does).
    #[test]
    fn random_writes_and_kernel_like_reads_bind_every_handle_to_its_line() {
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            // (bytes, handles on the first byte) per write
            let mut queue: VecDeque<(Vec<u8>, Vec<u32>)> = VecDeque::new();
            let mut want = Vec::new();
            let mut next_handle = 0u32;
            for id in 0..2000u32 {
                let pad = "x".repeat(rng.below(40) as usize);
                let line = format!("{id} {pad}\n").into_bytes();
                let hs: Vec<u32> = (0..rng.below(4))
                    .map(|_| {
                        next_handle += 1;
                        next_handle
                    })
                    .collect();
                want.push((format!("{id} {pad}"), hs.clone(), false));
                queue.push_back((line, hs));
            }
            let mut f = Framer::default();
            let mut got = Vec::new();
            while !queue.is_empty() {
                let (read, fds) = kernel_read(&mut queue, 1 + rng.below(200) as usize);
                f.push(&read, fds, None);
                got.extend(lines(&mut f));
            }
            assert_eq!(got, want, "seed {seed}");
        }
    }
}
