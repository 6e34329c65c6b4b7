//! `lightthinker model`.
use clap::Subcommand;

/// Subcommands of `lightthinker model`.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {}

/// Run a `lightthinker model` subcommand.
pub fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {}
}
