//! The seed's `proc-streams`: run a child that writes one line to stderr and one to stdout,
//! sharing only stderr (`Stdio::inherit_fd(2)`) and ignoring stdin and stdout. Only
//! "This is stderr" appears. The child is this same program run as `proc_streams child`
//! (what the `proc_streams_child` example does), so nothing else needs building. As the
//! seed suggests, try sharing stdout too: `proc_streams --stdout`.
//!
//! ```text
//! $ cargo run --example proc_streams
//! This is stderr
//! $ cargo run --example proc_streams -- --stdout
//! This is stderr
//! This is stdout
//! ```

use brood::{Command, Stdio};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("child") {
        // The child's part, as `proc_streams_child`.
        eprintln!("This is stderr");
        println!("This is stdout");
        return;
    }
    let child = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("proc_streams: cannot find my own path: {e}");
            std::process::exit(1);
        }
    };
    let share_stdout = std::env::args().nth(1).as_deref() == Some("--stdout");
    let spawned = Command::new(&child)
        .arg("child")
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
