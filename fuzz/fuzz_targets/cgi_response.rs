//! A CGI script's header block → the response brood sends (tests/props/cgi.rs,
//! `check_cgi_reply`). Input: the first byte's low bit picks NPH, the rest is the block.
#![no_main]

#[path = "../../tests/props/cgi.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((&mode, block)) = data.split_first() {
        props::check_cgi_reply(block, mode & 1 == 1);
    }
});
