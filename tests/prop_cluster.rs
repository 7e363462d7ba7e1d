//! Property test of the cluster master's control lines (stable toolchain; the fuzz target
//! `cluster_control` checks the same, see docs/testing.md).

#[path = "props/cluster.rs"]
mod props;

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    #[test]
    fn control_lines_follow_the_grammar(
        words in proptest::collection::vec(
            prop_oneof![
                Just("status".to_string()),
                Just("reload".to_string()),
                Just("scale".to_string()),
                "[+-]?[0-9]{0,22}",
                "[ \t\n\r\u{b}\u{c}\u{a0}\u{3000}]{1,3}",
                ".{0,4}",
            ],
            0..5,
        )
    ) {
        props::check_control_line(&words.concat());
    }
}
