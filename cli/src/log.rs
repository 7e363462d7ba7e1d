//! The CLI's diagnostics on stderr, for every subcommand: a closed stderr (a terminal gone,
//! a FIFO whose reader left: `EPIPE`) must never end a server. Every write here drops its
//! error and counts it; nothing panics (`eprintln!` would).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Lines that could not be written to stderr.
static LOST: AtomicU64 = AtomicU64::new(0);

/// How many diagnostic lines were lost to a failing stderr.
#[allow(dead_code)]
pub fn lost() -> u64 {
    LOST.load(Ordering::Relaxed)
}

/// Writes `text` to stderr in one write; a failure is counted, never raised.
pub fn write(text: &[u8]) {
    if std::io::stderr().lock().write_all(text).is_err() {
        LOST.fetch_add(1, Ordering::Relaxed);
    }
}

/// `eprintln!` that never panics.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::log::write(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}
pub(crate) use say;

/// stderr as a `tracing` writer whose errors are counted and dropped.
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
