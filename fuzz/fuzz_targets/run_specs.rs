//! `brood run` arguments and signal names (tests/props/run.rs). Input: arguments separated
//! by NUL bytes; the first one is also tried as a signal name and as a `--stdio` spec.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

#[path = "../../tests/props/run.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let args: Vec<OsString> = data
        .split(|&b| b == 0)
        .take(32)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    if let Some(first) = args.first().and_then(|a| a.to_str()) {
        props::check_signal(first);
        props::check_stdio_spec(first);
    }
    props::check_run_args(&args);
});
