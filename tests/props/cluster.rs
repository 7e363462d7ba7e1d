//! The cluster master's control-socket lines: shared by the fuzz target
//! `fuzz/fuzz_targets/cluster_control.rs` and the property test `tests/prop_cluster.rs`.
#![allow(
    dead_code,
    reason = "shared by a test binary and a fuzz target; each uses a part"
)]

/// The documented grammar (`status [--json]`, `reload`, `scale N`, `kill PID [SIGNAL]`,
/// `stop`, `upgrade`, words separated by any whitespace; numbers as Rust reads them).
fn model(line: &str) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["status"] => Some("Status".into()),
        ["status", "--json" | "json"] => Some("StatusJson".into()),
        ["reload"] => Some("Reload".into()),
        ["stop"] => Some("Stop".into()),
        ["upgrade"] => Some("Upgrade".into()),
        ["kill", pid, rest @ ..] if rest.len() <= 1 => {
            let digits = pid.strip_prefix('+').unwrap_or(pid);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let pid: u32 = pid.parse().ok()?;
            // Signal names are Signum's own grammar (tested with the run specs).
            let sig: brood::Signum = match rest {
                [s] => s.parse().ok()?,
                _ => brood::Signum::TERM,
            };
            Some(format!("Kill({pid}, {sig:?})"))
        }
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
