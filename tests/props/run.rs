//! `brood run`'s argument specs and signal names: shared by the fuzz target
//! `fuzz/fuzz_targets/run_specs.rs` and the property tests `cli/tests/prop_run.rs`.
#![allow(
    dead_code,
    reason = "shared by a test binary and a fuzz target; each uses a part"
)]

use std::ffi::OsString;

use brood::Signum;

/// Any arguments after `brood run` parse, or give clap's error message; never a panic.
pub fn check_run_args(args: &[OsString]) {
    match brood_cli::fuzzing::run_args(args.iter().cloned()) {
        Ok(parsed) => assert!(!parsed.is_empty()),
        Err(msg) => assert!(!msg.trim().is_empty(), "an empty error for {args:?}"),
    }
}

/// One `--stdio` value alone (with a program after it).
pub fn check_stdio_spec(spec: &str) {
    check_run_args(&["--stdio".into(), spec.into(), "--".into(), "true".into()]);
}

/// A signal name or number parses to a signal of the platform (0 to `SIGRTMAX`) or is a
/// clear error; a named signal prints as its name, which parses back to it.
pub fn check_signal(s: &str) {
    match s.parse::<Signum>() {
        Ok(sig) => {
            let n = sig.as_raw();
            assert!((0..=libc::SIGRTMAX()).contains(&n), "{s:?} gave {n}");
            if let Some(name) = sig.name() {
                assert_eq!(name.parse::<Signum>().unwrap(), sig);
                assert_eq!(sig.to_string(), name);
                let short = &name[3..];
                assert_eq!(short.to_ascii_lowercase().parse::<Signum>().unwrap(), sig);
            }
        }
        Err(e) => assert_eq!(e.name(), "EINVAL", "{s:?}: {e}"),
    }
}
