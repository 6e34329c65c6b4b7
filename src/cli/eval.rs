//! `lightthinker eval`.
use clap::Args;

/// Arguments of `lightthinker eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {}

/// Run `lightthinker eval`.
pub fn run(_args: EvalArgs) -> anyhow::Result<()> {
    anyhow::bail!("`lightthinker eval` is not implemented yet")
}
