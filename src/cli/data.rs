//! `lightthinker data`.
use clap::Subcommand;

/// Subcommands of `lightthinker data`.
#[derive(Debug, Subcommand)]
pub enum DataCommand {}

/// Run a `lightthinker data` subcommand.
pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {}
}
