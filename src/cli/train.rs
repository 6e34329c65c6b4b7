//! `lightthinker train`.
use clap::Args;

/// Arguments of `lightthinker train`.
#[derive(Debug, Args)]
pub struct TrainArgs {}

/// Run `lightthinker train`.
pub fn run(_args: TrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("`lightthinker train` is not implemented yet")
}
