//! `brood`: libuv's process model from the shell.

mod cgi;
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
    Cgi(cgi::CgiArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Cmd::Run(args) => run::main(args),
        Cmd::Cgi(args) => cgi::main(args),
    };
    std::process::exit(code);
}
