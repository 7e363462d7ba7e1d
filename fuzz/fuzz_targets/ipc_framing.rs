//! IPC framing against a model (tests/props/ipc.rs). Input: a mode byte (low bit: line
//! mode), a count byte N and N chunk lengths, then writes, each a header byte (fds in the low
//! two bits, body length in the next four) and its body.
#![no_main]

#[path = "../../tests/props/ipc.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(case) = props::decode(data) {
        props::check(&case);
    }
});
