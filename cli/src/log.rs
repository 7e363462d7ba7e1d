//! The CLI's diagnostics on stderr, for every subcommand: a closed stderr (a terminal gone,
//! a FIFO whose reader left: `EPIPE`) must never end a server. Every write here drops its
//! error: the line is lost, nothing panics (`eprintln!` would) and nothing retries.

use std::io::Write;

/// Writes `text` to stderr; a failure drops the text.
pub fn write(text: &[u8]) {
    let _ = std::io::stderr().lock().write_all(text);
}

/// `eprintln!` that never panics.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::log::write(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}
pub(crate) use say;

/// stderr as a `tracing` writer whose errors are dropped.
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        write(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Logs `tracing` events to stderr (ANSI colours on a terminal), surviving a closed stderr.
pub fn init() {
    let _ = tracing_subscriber::fmt()
        .with_writer(|| Stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .log_internal_errors(false)
        .try_init();
}

/// The longest duration an option takes (a year): longer ones would overflow the deadlines
/// computed from them.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);
