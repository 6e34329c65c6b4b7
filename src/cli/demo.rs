//! `lightthinker demo`.
use clap::Args;

/// Arguments of `lightthinker demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {}

/// Run `lightthinker demo`.
pub fn run(_args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("`lightthinker demo` is not implemented yet")
}
