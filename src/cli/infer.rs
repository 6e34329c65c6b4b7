//! `lightthinker infer`.
use clap::Args;

/// Arguments of `lightthinker infer`.
#[derive(Debug, Args)]
pub struct InferArgs {}

/// Run `lightthinker infer`.
pub fn run(_args: InferArgs) -> anyhow::Result<()> {
    anyhow::bail!("`lightthinker infer` is not implemented yet")
}
