//! The cluster's worker protocol as the master reads it, model-checked without processes:
//! shared by the fuzz target `cluster_worker` and `tests/prop_worker_bytes.rs`
//! (`cli/tests/prop_cluster_worker.rs` checks the same through a real master, few cases).
//!
//! A worker writes any bytes, which arrive in reads cut anywhere, and the master hands it
//! connections in between. The master's counts (summed per read, `brood::fuzzing::WorkerCount`)
//! are the protocol's, byte by byte: `a` one more handled and open, `d` one fewer open but
//! never below zero, `r` ready, `P` a pong, anything else nothing; a connection handed, one
//! more handled and open. Open never exceeds handled, and the worker's task sends the master
//! at most one event a read, whatever the bytes (bounded memory: nothing grows with them).
#![allow(
    dead_code,
    reason = "shared by a test binary and a fuzz target; each uses a part"
)]

use brood::fuzzing::WorkerCount;

/// What happens, in order.
#[derive(Debug, Clone)]
pub enum Step {
    /// One read of the worker's channel.
    Read(Vec<u8>),
    /// The master hands the worker a connection.
    Handed,
}

/// The protocol, one byte at a time.
#[derive(Debug, Default, PartialEq, Eq)]
struct Model {
    open: u64,
    handled: u64,
    ready: bool,
    pongs: u64,
}

pub fn check(steps: &[Step]) {
    let mut got = WorkerCount::default();
    let mut want = Model::default();
    let mut reads = 0;
    for step in steps {
        match step {
            Step::Handed => {
                got.handed();
                want.open += 1;
                want.handled += 1;
            }
            Step::Read(bytes) => {
                reads += 1;
                got.read(bytes);
                for &b in bytes {
                    match b {
                        b'a' => {
                            want.open += 1;
                            want.handled += 1;
                        }
                        b'd' => want.open = want.open.saturating_sub(1),
                        b'r' => want.ready = true,
                        _ => {}
                    }
                }
                want.pongs += u64::from(bytes.contains(&b'P'));
            }
        }
        let now = Model {
            open: got.open,
            handled: got.handled,
            ready: got.ready,
            pongs: got.pongs,
        };
        assert_eq!(now, want, "after {step:?}");
        assert!(got.open <= got.handled, "more open than handled: {got:?}");
        assert!(got.events <= reads, "more events than reads: {got:?}");
    }
}

/// Steps from fuzzer bytes: a byte 0xfe is a connection handed, 0xff ends a read; every
/// other byte is one the worker wrote.
pub fn decode(data: &[u8]) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut read = Vec::new();
    for &b in data {
        match b {
            0xfe => {
                if !read.is_empty() {
                    steps.push(Step::Read(std::mem::take(&mut read)));
                }
                steps.push(Step::Handed);
            }
            0xff => steps.push(Step::Read(std::mem::take(&mut read))),
            _ => read.push(b),
        }
    }
    if !read.is_empty() {
        steps.push(Step::Read(read));
    }
    steps
}
