//! A request target → script, SCRIPT_NAME, PATH_INFO, argv (tests/props/cgi.rs,
//! `check_request_target`). Input: the request target as a client sends it.
#![no_main]

#[path = "../../tests/props/cgi.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    props::check_request_target(data);
});
