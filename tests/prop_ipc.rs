//! Property test of IPC framing (stable toolchain; the fuzz target `ipc_framing` checks the
//! same, see docs/testing.md). One test in this binary: it counts the process's fds.

#[path = "props/ipc.rs"]
mod props;

use proptest::prelude::*;

fn write(lines: bool) -> impl Strategy<Value = props::Write> {
    let body = if lines {
        prop_oneof![
            any::<i32>().prop_map(|n| n.to_string().into_bytes()),
            "[a-z]{0,8}".prop_map(|s| serde_json::to_vec(&s).unwrap()),
            proptest::collection::vec(any::<u8>(), 0..6),
        ]
        .boxed()
    } else {
        proptest::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..12).boxed()
    };
    (body, 0u8..4).prop_map(|(body, fds)| props::Write { body, fds })
}

fn case() -> impl Strategy<Value = props::Case> {
    any::<bool>().prop_flat_map(|lines| {
        (
            proptest::collection::vec(write(lines), 0..12),
            proptest::collection::vec(1usize..24, 1..8),
        )
            .prop_map(move |(writes, cuts)| props::Case {
                writes,
                cuts,
                lines,
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn received_messages_and_handles_match_the_model(c in case()) {
        props::check(&c);
    }
}
