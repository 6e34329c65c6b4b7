//! `lightthinker mask`.
use clap::Subcommand;

/// Subcommands of `lightthinker mask`.
#[derive(Debug, Subcommand)]
pub enum MaskCommand {}

/// Run a `lightthinker mask` subcommand.
pub fn run(cmd: MaskCommand) -> anyhow::Result<()> {
    match cmd {}
}
