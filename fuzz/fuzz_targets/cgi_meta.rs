//! A request head → the script's meta-variables (tests/props/cgi.rs, `check_request_head`).
//! Input: the request head as a client sends it.
#![no_main]

#[path = "../../tests/props/cgi.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    props::check_request_head(data);
});
