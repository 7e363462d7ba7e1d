//! Child → parent throughput: a brood pipe (a kernel pipe read through tokio) vs a raw
//! pipe(2) read in a tight blocking loop (the floor: no runtime at all) vs tokio::process
//! stdout (also a pipe(2)), 64 KiB reads.
//!
//! The same child writes in every case: `dd if=/dev/zero bs=64K count=N`, so only the
//! parent's side differs. Each variant runs ROUNDS times, interleaved so drifting load on
//! a shared machine hits all alike; the table shows the median.
//!
//! Run: `cargo bench --bench pipe` (optional: `-- MIB ROUNDS [VARIANT]`, default 256 MiB, 15 rounds).

use std::io::Read;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

const CHUNK: usize = 64 * 1024;

fn dd_args(mib: usize) -> [String; 5] {
    [
        "if=/dev/zero".into(),
        "bs=64K".into(),
        format!("count={}", mib * 16),
        "status=none".into(),
        "iflag=fullblock".into(),
    ]
}

/// The floor: a kernel pipe, the child on the write end, a blocking read loop on the other.
fn raw_pipe(mib: usize) -> (usize, Duration) {
    let start = Instant::now();
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new fds into `fds` or fails (checked).
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds are new and ours alone.
    let (mut ours, theirs) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::fs::File::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        )
    };
    let mut child = std::process::Command::new("dd")
        .args(dd_args(mib))
        .stdout(std::process::Stdio::from(theirs))
        .spawn()
        .unwrap();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0;
    loop {
        match ours.read(&mut buf).unwrap() {
            0 => break,
            n => total += n,
        }
    }
    assert!(child.wait().unwrap().success());
    (total, start.elapsed())
}

async fn brood_pipe(mib: usize) -> (usize, Duration) {
    let start = Instant::now();
    let mut child = brood::Command::new("dd")
        .args(dd_args(mib))
        .stdout(brood::Stdio::pipe_writable())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0;
    loop {
        match out.read(&mut buf).await.unwrap() {
            0 => break,
            n => total += n,
        }
    }
    assert!(child.wait().await.unwrap().success());
    (total, start.elapsed())
}

async fn tokio_process(mib: usize) -> (usize, Duration) {
    let start = Instant::now();
    let mut child = tokio::process::Command::new("dd")
        .args(dd_args(mib))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0;
    loop {
        match out.read(&mut buf).await.unwrap() {
            0 => break,
            n => total += n,
        }
    }
    assert!(child.wait().await.unwrap().success());
    (total, start.elapsed())
}

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let mib: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(256);
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(15);
    // A third argument runs only the variants whose name contains it (for strace/perf).
    let only = args.next();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let names = [
        "raw pipe(2), blocking loop (floor)",
        "brood pipe (ChildPipe: tokio pipe::Receiver)",
        "tokio::process stdout (pipe)",
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    // The parent's CPU milliseconds per GiB moved: what the reading side costs, which is
    // what decides the rate when reader and writer compete for the same cores.
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let fds_before = brood::open_fd_count().unwrap();
    // One warm-up round, not counted.
    for round in 0..=rounds {
        for i in 0..names.len() {
            if only
                .as_ref()
                .is_some_and(|o| !names[i].contains(o.as_str()))
            {
                continue;
            }
            let cpu_before = cpu_time();
            let (bytes, took) = match i {
                0 => raw_pipe(mib),
                1 => rt.block_on(brood_pipe(mib)),
                _ => rt.block_on(tokio_process(mib)),
            };
            assert_eq!(bytes, mib << 20, "{}: short read", names[i]);
            let cpu_used = cpu_time() - cpu_before;
            if round > 0 {
                rates[i].push(bytes as f64 / took.as_secs_f64() / (1 << 20) as f64);
                cpu[i].push(cpu_used.as_secs_f64() * 1000.0 / (bytes as f64 / (1 << 30) as f64));
            }
        }
    }
    assert_eq!(brood::open_fd_count().unwrap(), fds_before, "an fd leaked");
    println!("child -> parent, {mib} MiB per run, 64 KiB reads, median of {rounds} rounds");
    println!(
        "| variant | MiB/s | ratio of medians | median of per-round ratios | parent CPU ms/GiB \
         | CPU ratio (floor / variant) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for ((name, r), c) in names.iter().zip(&rates).zip(&cpu) {
        if r.is_empty() {
            continue;
        }
        let m = median(r.clone());
        let c = median(c.clone());
        if rates[0].is_empty() {
            println!("| {name} | {m:.0} | - | - | {c:.0} | - |");
            continue;
        }
        let floor = median(rates[0].clone());
        // Each round's ratio to the floor of the same round: load that drifts between
        // rounds cancels out.
        let paired = median(r.iter().zip(&rates[0]).map(|(a, b)| a / b).collect());
        let floor_cpu = median(cpu[0].clone());
        println!(
            "| {name} | {m:.0} | {:.2}x | {paired:.2}x | {c:.0} | {:.2}x |",
            m / floor,
            floor_cpu / c
        );
    }
}
