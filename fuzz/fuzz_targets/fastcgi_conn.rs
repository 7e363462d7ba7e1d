//! A FastCGI connection to a real `serve_fastcgi` server against the model of the protocol
//! (tests/props/fastcgi.rs): params limit (431), malformed pairs, GET_VALUES, unknown types,
//! a second request, aborts, bodies. Input: as `fastcgi_records`.
#![no_main]

#[path = "../../tests/props/fastcgi.rs"]
mod fastcgi;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(case) = fastcgi::decode(data) {
        fastcgi::check_conn(&case);
    }
});
