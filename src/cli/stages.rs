//! `simclr stages [KIND]`: the stage kinds, their ports and parameters, or one kind's example.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use simclr::config::Registry;
use simclr::core::{Parallelism, StageKind};

/// Arguments of `simclr stages`.
#[derive(clap::Args)]
pub struct StagesArgs {
    /// A kind to describe in full.
    kind: Option<String>,
    /// Print only the kind's example definition (pipe it to a file and run it).
    #[arg(long, requires = "kind")]
    example: bool,
}

impl StagesArgs {
    /// List every kind, or describe one.
    pub fn run(&self, registry: &Registry) -> Result<ExitCode> {
        let (kind, example) = (self.kind.as_deref(), self.example);
        let mut out = std::io::stdout().lock();
        let Some(name) = kind else {
            for kind in registry.iter() {
                writeln!(out, "{:<12} {}", kind.name, kind.summary)?;
                writeln!(
                    out,
                    "{:<12} takes: {}   emits: {}   workers: {}",
                    "",
                    kind.input,
                    kind.output,
                    workers_text(kind)
                )?;
                for p in kind.param_docs() {
                    let default = p
                        .default
                        .map_or_else(|| "required".to_owned(), |d| format!("default {d}"));
                    writeln!(
                        out,
                        "{:<14}{}: {} ({default}) — {}",
                        "", p.name, p.ty, p.doc
                    )?;
                }
                writeln!(out)?;
            }
            writeln!(
                out,
                "`simclr stages KIND` shows one kind with an example definition."
            )?;
            return Ok(ExitCode::SUCCESS);
        };
        let Some(kind) = registry.get(name) else {
            let names: Vec<&str> = registry.iter().map(|k| k.name).collect();
            anyhow::bail!(
                "unknown stage kind `{name}`; the kinds are: {}",
                names.join(", ")
            );
        };
        if example {
            write!(out, "{}", kind.example)?;
            return Ok(ExitCode::SUCCESS);
        }
        writeln!(out, "{} — {}\n", kind.name, kind.summary)?;
        writeln!(
            out,
            "takes:   {}\nemits:   {}\nworkers: {}\n",
            kind.input,
            kind.output,
            workers_text(kind)
        )?;
        let docs = kind.param_docs();
        if docs.is_empty() {
            writeln!(out, "parameters: none")?;
        } else {
            writeln!(out, "parameters:")?;
            for p in docs {
                let default = p
                    .default
                    .map_or_else(|| "required".to_owned(), |d| format!("default {d}"));
                writeln!(out, "  {}: {} ({default})\n      {}", p.name, p.ty, p.doc)?;
            }
        }
        writeln!(
            out,
            "\nexample (`simclr stages {} --example > example.yaml`):\n",
            kind.name
        )?;
        for line in kind.example.lines() {
            writeln!(out, "  {line}")?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn workers_text(kind: &StageKind) -> &'static str {
    match kind.parallelism {
        Parallelism::Single => "1 only",
        Parallelism::Internal => "any (a thread pool inside the stage)",
        Parallelism::Parallel { ordered: true } => "any (output keeps input order)",
        Parallelism::Parallel { ordered: false } => "any (output order not kept)",
    }
}
