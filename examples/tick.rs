//! The seed's CGI script: prints `tick` ten times, one a second, flushing each line, then
//! exits. `tick MS` (or `TICK_INTERVAL_MS=MS`) sets the interval, so tests can run it fast.
//!
//! ```text
//! $ cargo run --example tick -- 100
//! tick
//! ...
//! ```

use std::io::Write;
use std::time::Duration;

fn main() {
    let ms = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("TICK_INTERVAL_MS").ok())
        .map(|s| match s.parse::<u64>() {
            Ok(ms) => ms,
            Err(_) => {
                eprintln!("tick: interval {s:?} is not a number of milliseconds");
                std::process::exit(2);
            }
        })
        .unwrap_or(1000);
    let mut out = std::io::stdout().lock();
    for _ in 0..10 {
        // A reader that went away (EPIPE) ends the ticks quietly.
        if writeln!(out, "tick").and_then(|()| out.flush()).is_err() {
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(ms));
    }
}
