//! libuv's `detach` example: start `sleep 100` in its own session and exit at once; the
//! sleep keeps running (check with `ps -p <pid>`).
//!
//! ```text
//! $ cargo run --example detach
//! Launched sleep with PID 12345
//! ```
//!
//! The sleep gets `/dev/null` at 0-2, as libuv gives slots that are not set. Inherited
//! stdio would keep the caller's pipe open for 100 s: `out=$(cargo run --example detach)`
//! would wait for the detached child to close the captured stdout.

fn main() {
    match brood::Command::new("sleep")
        .arg("100")
        .detached(true)
        .stdin(brood::Stdio::ignore())
        .stdout(brood::Stdio::ignore())
        .stderr(brood::Stdio::ignore())
        .spawn()
    {
        // Dropping the Child neither waits nor kills: the program ends here and sleep lives on.
        Ok(child) => eprintln!("Launched sleep with PID {}", child.id().unwrap()),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
