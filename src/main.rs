//! The `cfpipe` binary: parse arguments, run, print the error once, return an exit code.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    cfpipe::nn::host::keep_freed_memory();
    let args = match cfpipe::cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // `--help` and `--version` arrive here too; a closed stdout is no error for them.
            let _ = e.print();
            if let Some(hint) = cfpipe::cli::quoting_hint(std::env::args().skip(1)) {
                eprintln!("hint: {hint}");
            }
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    match cfpipe::cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(cfpipe::error::CliError::BrokenPipe) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
