//! `brood`: libuv's process model from the shell.

mod cgi;
mod cluster;
mod log;
mod pipe_echo;
mod run;

use clap::{Parser, Subcommand};

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
    let cli = Cli::parse();
    let code = match cli.command {
        Cmd::Run(args) => run::main(args),
        Cmd::Cluster(args) => cluster::main(args),
        Cmd::Ctl(args) => cluster::ctl(args),
        Cmd::PipeEcho(args) => pipe_echo::main(args),
        Cmd::Cgi(args) => cgi::main(args),
    };
    std::process::exit(code);
}
