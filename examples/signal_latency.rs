//! How long from `kill(2)` to a watcher's `recv` returning, for brood's watchers and for
//! `tokio::signal`, on one current-thread runtime. Prints the median and the 99th
//! percentile of many round trips.
//!
//! ```text
//! $ cargo run --release --example signal_latency
//! ```

use std::time::{Duration, Instant};

use brood::Signum;

const ROUNDS: usize = 2000;

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "{name:<16} median {:>6.1} µs   p99 {:>6.1} µs",
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pid = std::process::id() as i32;

    let mut brood_sig = brood::signal::Signal::new(Signum::USR1)?;
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        brood::kill(pid, Signum::USR1)?;
        brood_sig.recv().await;
        samples.push(t.elapsed());
    }
    report("brood::signal", samples);
    drop(brood_sig);

    let mut tokio_sig =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())?;
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        brood::kill(pid, Signum::USR2)?;
        tokio_sig.recv().await;
        samples.push(t.elapsed());
    }
    report("tokio::signal", samples);
    Ok(())
}
