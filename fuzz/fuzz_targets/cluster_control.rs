//! A cluster master's control-socket line (tests/props/cluster.rs). Input: the line.
#![no_main]

#[path = "../../tests/props/cluster.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The master reads text lines; bytes that are not UTF-8 never reach the parser.
    if let Ok(line) = std::str::from_utf8(data) {
        props::check_control_line(line);
    }
});
