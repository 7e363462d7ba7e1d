//! libuv's `spawn` example: run `mkdir test-dir` and report how it ended.
//!
//! ```text
//! $ cargo run --example spawn
//! Launched process with ID 12345
//! Process exited with status 0, signal 0
//! ```

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut child = match brood::Command::new("mkdir").arg("test-dir").spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    eprintln!("Launched process with ID {}", child.id().unwrap());
    match child.wait().await {
        Ok(exit) => eprintln!(
            "Process exited with status {}, signal {}",
            exit.status, exit.signal
        ),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
