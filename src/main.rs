//! The `cfpipe` binary: parse arguments, run, print the error once, return an exit code.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cfpipe::cli::Cli::parse();
    match cfpipe::cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
