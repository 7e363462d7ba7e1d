//! libuv's `detach` example: start `sleep 100` in its own session and exit at once; the
//! sleep keeps running (check with `ps -p <pid>`).
//!
//! ```text
//! $ cargo run --example detach
//! Launched sleep with PID 12345
//! ```

fn main() {
    match brood::Command::new("sleep")
        .arg("100")
        .detached(true)
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
