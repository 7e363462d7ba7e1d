//! Where a header block ends, read in chunks (tests/props/cgi.rs, `check_head_end`).
//! Input: a count byte N, N chunk lengths (one byte each), then the script's output.
#![no_main]

#[path = "../../tests/props/cgi.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n as usize % 16).min(rest.len());
    let (cuts, out) = rest.split_at(n);
    let cuts: Vec<usize> = cuts.iter().map(|&c| c as usize).collect();
    props::check_head_end(out, &cuts);
});
