//! The seed's `proc-streams`: run a child that writes one line to stderr and one to stdout,
//! sharing only stderr (`Stdio::inherit_fd(2)`) and ignoring stdin and stdout. Only
//! "This is stderr" appears. The child is the `proc_streams_child` example, found next to
//! this program. As the seed suggests, try sharing stdout too: `proc_streams --stdout`.
//!
//! ```text
//! $ cargo build --example proc_streams_child && cargo run --example proc_streams
//! This is stderr
//! $ cargo run --example proc_streams -- --stdout
//! This is stderr
//! This is stdout
//! ```

use brood::{Command, Stdio};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let child = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name("proc_streams_child"),
        Err(e) => {
            eprintln!("proc_streams: cannot find my own path: {e}");
            std::process::exit(1);
        }
    };
    let share_stdout = std::env::args().nth(1).as_deref() == Some("--stdout");
    let spawned = Command::new(&child)
        .stdin(Stdio::ignore())
        .stdout(if share_stdout {
            Stdio::inherit_fd(1)
        } else {
            Stdio::ignore()
        })
        .stderr(Stdio::inherit_fd(2))
        .spawn();
    let exit = match spawned {
        Ok(mut child) => child.wait().await,
        Err(e) => Err(e),
    };
    match exit {
        Ok(exit) => std::process::exit(exit.shell_code()),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
