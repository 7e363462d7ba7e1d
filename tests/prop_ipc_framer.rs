//! Property test of the pure IPC framer (stable toolchain; the fuzz target `ipc_framer`
//! checks the same, see docs/testing.md): the reads Linux may return, no sockets.

#[path = "props/ipc_framer.rs"]
mod framer;
#[path = "props/ipc.rs"]
mod ipc;

use proptest::prelude::*;

fn write(lines: bool) -> impl Strategy<Value = ipc::Write> {
    let body = if lines {
        proptest::collection::vec(any::<u8>(), 0..8).boxed()
    } else {
        proptest::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..12).boxed()
    };
    (body, 0u8..4).prop_map(|(body, fds)| ipc::Write { body, fds })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    #[test]
    fn the_framer_binds_handles_as_the_model_says(
        lines in any::<bool>(),
        writes in proptest::collection::vec(write(true), 0..16),
        raw in proptest::collection::vec(write(false), 0..16),
        cuts in proptest::collection::vec(1usize..24, 1..8),
        sizes in proptest::collection::vec(1usize..16, 1..6),
    ) {
        let writes = if lines { writes } else { raw };
        framer::check(&ipc::Case { writes, cuts, lines }, &sizes);
    }
}
