//! `brood`: libuv's process model from the shell.

mod cgi;
mod cluster;
mod log;
mod metrics;
mod pipe_echo;
mod reaper;
mod run;

use clap::{Parser, Subcommand};

/// jemalloc, not glibc's malloc: `brood cgi` allocates and frees many small objects and a
/// few buffers of up to 64 KiB per request, on several threads; with jemalloc
/// `brood cgi --fastcgi` spends about a tenth less CPU per 64 KiB response, and its peak
/// memory under two dozen large uploads stays within a few MiB of glibc's (mimalloc, as
/// fast, more than doubled it). Both measured in docs/benchmarks.md. The child between clone
/// and exec never allocates, so the allocator has no part in spawning.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// brood: spawn, watch and wire processes the way libuv does, from the shell.
#[derive(Parser)]
#[command(name = "brood", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Run(run::RunArgs),
    Cluster(cluster::ClusterArgs),
    Ctl(cluster::CtlArgs),
    PipeEcho(pipe_echo::PipeEchoArgs),
    Cgi(cgi::CgiArgs),
}

fn main() {
    // A usage error exits 125, brood's own failure code (not clap's 2), so a script can
    // tell "brood failed" from "the program failed"; --help and --version exit 0.
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { run::EXIT_BROOD } else { 0 });
    });
    let code = match cli.command {
        Cmd::Run(args) => run::main(args),
        Cmd::Cluster(args) => cluster::main(args),
        Cmd::Ctl(args) => cluster::ctl(args),
        Cmd::PipeEcho(args) => pipe_echo::main(args),
        Cmd::Cgi(args) => cgi::main(args),
    };
    std::process::exit(code);
}
