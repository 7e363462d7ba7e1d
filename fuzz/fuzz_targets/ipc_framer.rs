//! IPC framing without sockets: the pure framer against the model (tests/props/ipc_framer.rs).
//! Input: as `ipc_framing` (a mode byte, a count byte N and N chunk lengths, then writes),
//! followed by nothing else; the byte layer's read sizes are the chunk lengths reversed.
#![no_main]

#[path = "../../tests/props/ipc_framer.rs"]
mod framer;
#[path = "../../tests/props/ipc.rs"]
mod ipc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(case) = ipc::decode(data) {
        let sizes: Vec<usize> = case.cuts.iter().rev().copied().collect();
        framer::check(&case, &sizes);
    }
});
