//! IPC framing against a model (tests/props/ipc.rs). Input: a mode byte (low bit: line
//! mode), a count byte N and N chunk lengths, then writes, each a header byte (fds in the low
//! two bits, body length in the next four) and its body.
#![no_main]

#[path = "../../tests/props/ipc.rs"]
mod props;

fn decode(data: &[u8]) -> Option<props::Case> {
    let (&mode, rest) = data.split_first()?;
    let (&n, rest) = rest.split_first()?;
    let n = (n as usize % 8 + 1).min(rest.len());
    let (cuts, mut rest) = rest.split_at(n);
    let mut writes = Vec::new();
    while let Some((&h, more)) = rest.split_first() {
        let len = ((h >> 2) & 15) as usize;
        let len = len.min(more.len());
        writes.push(props::Write {
            body: more[..len].to_vec(),
            fds: h & 3,
        });
        rest = &more[len..];
        if writes.len() == 32 {
            break;
        }
    }
    Some(props::Case {
        writes,
        cuts: cuts.iter().map(|&c| c as usize).collect(),
        lines: mode & 1 == 1,
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(case) = decode(data) {
        props::check(&case);
    }
});
