//! Node's IPC protocol against the model (tests/props/node.rs): any line classified as Node
//! does (internal messages never the user's), wrap/unwrap, and a real channel pair in Node's
//! protocol (ACK/NACK, handles, no fd left open). Input: lines; a first byte 1 sends an fd.
#![no_main]

#[path = "../../tests/props/node.rs"]
mod node;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    node::check_bytes(data);
});
