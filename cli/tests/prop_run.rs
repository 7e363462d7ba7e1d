//! Property tests of `brood run`'s argument specs and signal names (stable toolchain; the
//! fuzz target `run_specs` checks the same, see docs/testing.md).

#[path = "../../tests/props/run.rs"]
mod props;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use proptest::prelude::*;

fn arg() -> impl Strategy<Value = OsString> {
    prop_oneof![
        Just("--stdio".to_string()),
        Just("--timeout".to_string()),
        Just("--kill-after".to_string()),
        Just("--uid".to_string()),
        Just("--gid".to_string()),
        Just("--env".to_string()),
        Just("--".to_string()),
        Just("true".to_string()),
        "[0-9]{1,12}=(ignore|inherit|fd:|file:|append:|null|)[-0-9a-z/]{0,6}",
        "[-+]?[0-9]{0,20}(\\.[0-9]{0,4})?(e[-+]?[0-9]{1,4})?(ms|s|m|h|d|)",
        "(inf|nan|NaN|-inf|1e400|0x10|)",
        ".{0,8}",
    ]
    .prop_map(OsString::from)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn run_arguments_parse_or_give_an_error(args in proptest::collection::vec(arg(), 0..8)) {
        props::check_run_args(&args);
    }

    #[test]
    fn non_utf8_arguments_give_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
        props::check_run_args(&[
            OsString::from("--stdio"),
            OsString::from_vec(bytes),
            OsString::from("true"),
        ]);
    }

    #[test]
    fn stdio_specs_parse_or_give_an_error(spec in "[-+]?[0-9]{0,12}=?(ignore|inherit|fd:|file:|append:|null)?[-+0-9a-z/:]{0,8}") {
        props::check_stdio_spec(&spec);
    }

    #[test]
    fn signal_names_parse_to_real_signals(s in "(SIG|sig|Sig)?([A-Za-z]{0,6}|[-+]?[0-9]{0,12})") {
        props::check_signal(&s);
    }
}
