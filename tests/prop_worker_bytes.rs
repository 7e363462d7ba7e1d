//! Property test of the worker protocol's bytes as the master counts them (stable toolchain;
//! the fuzz target `cluster_worker` checks the same, see docs/testing.md).

#[path = "props/worker_bytes.rs"]
mod worker_bytes;

use proptest::prelude::*;
use worker_bytes::Step;

fn step() -> impl Strategy<Value = Step> {
    let byte = prop_oneof![
        4 => prop_oneof![Just(b'a'), Just(b'd'), Just(b'r'), Just(b'p'), Just(b'P')],
        1 => any::<u8>(),
    ];
    prop_oneof![
        5 => proptest::collection::vec(byte, 0..16).prop_map(Step::Read),
        1 => Just(Step::Handed),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn the_master_counts_a_workers_bytes_as_the_protocol_says(
        steps in proptest::collection::vec(step(), 0..24),
    ) {
        worker_bytes::check(&steps);
    }
}

/// The reads `cluster: a worker's a/d bytes keep their order within one read` fixed ("a a d"
/// in one read left 2 open), and a `d` with nothing open.
#[test]
fn reads_keep_the_order_of_their_bytes() {
    for reads in [
        &[&b"aad"[..]][..],
        &[b"da"],
        &[b"aa", b"dda"],
        &[b"d", b"d", b"a"],
    ] {
        let steps: Vec<Step> = reads.iter().map(|r| Step::Read(r.to_vec())).collect();
        worker_bytes::check(&steps);
    }
    worker_bytes::check(&[
        Step::Handed,
        Step::Read(b"dd".to_vec()),
        Step::Read(b"ad".to_vec()),
    ]);
}
