//! IPC framing without sockets: the pure framer (`src/ipc/framing.rs`, through
//! `brood::fuzzing::IpcFramer`) fed the reads Linux may return, against the same model as
//! `ipc.rs` (which drives a real channel). Shared by the fuzz target `ipc_framer` and
//! `tests/prop_ipc.rs`. Handles are plain numbers here, so a handle given twice or lost shows.
#![allow(
    dead_code,
    reason = "shared by a test binary and a fuzz target; each uses a part"
)]

use brood::fuzzing::IpcFramer;

use super::ipc::{Case, chunks, layout};

/// Line layer: every line once, in order, with exactly the handles of the write that carried
/// it. Byte layer (reads of `sizes`): a read's handles become pending once its last byte is
/// consumed, never before, and each exactly once.
pub fn check(case: &Case, sizes: &[usize]) {
    let (stream, spans) = layout(case);
    let reads = chunks(case, stream.len(), &spans);
    // Handle ids: read r carries ids r*4 .. r*4+fds.
    let ids = |r: usize| -> Vec<u32> {
        let n = reads[r].2.map_or(0, |j| spans[j].2) as u32;
        (0..n).map(|k| r as u32 * 4 + k).collect()
    };
    if case.lines {
        let mut f = IpcFramer::default();
        let mut got = Vec::new();
        for (r, &(s, e, _)) in reads.iter().enumerate() {
            f.push(&stream[s..e], ids(r));
            while let Some(line) = f.take_line() {
                got.push(line);
            }
        }
        let mut want = Vec::new();
        for (i, &(s, e, _)) in spans.iter().enumerate() {
            let handles = reads
                .iter()
                .position(|&(_, _, c)| c == Some(i))
                .map(ids)
                .unwrap_or_default();
            want.push((stream[s..e - 1].to_vec(), handles));
        }
        assert_eq!(got, want, "reads {reads:?}");
        assert_eq!(f.buffered(), 0);
        return;
    }
    let mut f = IpcFramer::default();
    let mut consumed = 0usize;
    let mut popped: Vec<u32> = Vec::new();
    let mut k = 0;
    for (r, &(s, e, _)) in reads.iter().enumerate() {
        f.push(&stream[s..e], ids(r));
        while f.buffered() > 0 {
            let want = sizes
                .get(k % sizes.len().max(1))
                .copied()
                .unwrap_or(1)
                .max(1);
            k += 1;
            let mut out = vec![0u8; want];
            let n = f.read(&mut out);
            assert!(n > 0 && n <= want);
            assert_eq!(&out[..n], &stream[consumed..consumed + n]);
            consumed += n;
            while let Some(h) = f.pop_pending() {
                popped.push(h);
            }
            // Exactly the handles of reads whose last byte has been consumed.
            let due: Vec<u32> = reads
                .iter()
                .enumerate()
                .filter(|(_, (_, e, _))| *e <= consumed)
                .flat_map(|(r, _)| ids(r))
                .collect();
            assert_eq!(popped, due, "after {consumed} bytes, reads {reads:?}");
        }
    }
}
