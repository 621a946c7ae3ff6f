//! The `simclr` command line: `validate`, `stages`, `run`, `profile`, `preview`, `eval`,
//! `export`, `embed`, `bench` (one module each under `cli/`).

use std::process::ExitCode;

mod cli;
mod malloc;

fn main() -> ExitCode {
    malloc::tune();
    cli::main()
}
