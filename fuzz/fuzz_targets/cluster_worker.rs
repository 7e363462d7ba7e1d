//! The worker protocol's bytes as the master counts them, against the byte-by-byte model
//! (tests/props/worker_bytes.rs). Input: the worker's bytes; 0xff ends a read, 0xfe is a
//! connection handed by the master.
#![no_main]

#[path = "../../tests/props/worker_bytes.rs"]
mod worker_bytes;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    worker_bytes::check(&worker_bytes::decode(data));
});
