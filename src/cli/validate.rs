//! `simclr validate FILES…`: check definitions without running them.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use simclr::config::Registry;
use simclr::config::graph::LoadOptions;

use super::{EXIT_INVALID, parse_overrides};

/// Arguments of `simclr validate`.
#[derive(clap::Args)]
pub struct ValidateArgs {
    /// Definition files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Override a value of the definitions, as `simclr run --set` (repeatable).
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    set: Vec<String>,
}

impl ValidateArgs {
    /// Validate every file; exit 2 when any fails (each one's diagnostics on stderr).
    pub fn run(&self, registry: &Registry) -> Result<ExitCode> {
        let options = LoadOptions {
            overrides: parse_overrides(&self.set)?,
            ..LoadOptions::default()
        };
        let mut out = std::io::stdout().lock();
        let mut failed = false;
        for file in &self.files {
            match simclr::config::load_file(file, registry, &options) {
                Ok(graph) => writeln!(
                    out,
                    "ok: {} (pipeline `{}`: {} stages, {} edges{})",
                    file.display(),
                    graph.name,
                    graph.nodes.len(),
                    graph.edges.len(),
                    if graph.credits.is_empty() {
                        String::new()
                    } else {
                        format!(", {} credit", graph.credits.len())
                    }
                )?,
                Err(diagnostics) => {
                    failed = true;
                    eprintln!("{diagnostics}\n");
                }
            }
        }
        Ok(if failed {
            ExitCode::from(EXIT_INVALID)
        } else {
            ExitCode::SUCCESS
        })
    }
}
