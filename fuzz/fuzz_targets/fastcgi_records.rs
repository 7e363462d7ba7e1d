//! FastCGI record layer and name-value pairs against the model (tests/props/fastcgi.rs):
//! records cut into any reads, cancelled reads, bounded buffering, pairs decoded and encoded.
//! Input: a count byte N and N read sizes, then pieces (raw bytes or records).
#![no_main]

#[path = "../../tests/props/fastcgi.rs"]
mod fastcgi;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(case) = fastcgi::decode(data) {
        fastcgi::check_records(&case);
    }
    // The raw input as a params block too.
    fastcgi::check_pairs(data);
});
