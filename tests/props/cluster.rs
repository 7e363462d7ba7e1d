//! The cluster master's control-socket lines: shared by the fuzz target
//! `fuzz/fuzz_targets/cluster_control.rs` and the property test `tests/prop_cluster.rs`.
#![allow(
    dead_code,
    reason = "shared by a test binary and a fuzz target; each uses a part"
)]

/// The documented grammar (`status`, `reload`, `scale N`, words separated by any
/// whitespace; N as Rust reads a `usize`).
fn model(line: &str) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["status"] => Some("Status".into()),
        ["reload"] => Some("Reload".into()),
        ["scale", n] => {
            let digits = n.strip_prefix('+').unwrap_or(n);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(format!("Scale({})", n.parse::<usize>().ok()?))
        }
        _ => None,
    }
}

/// Any line is either a command of the grammar, understood as the model says, or refused.
pub fn check_control_line(line: &str) {
    assert_eq!(
        brood::fuzzing::cluster_control(line),
        model(line),
        "control line {line:?}"
    );
}
