//! `lightthinker demo`.
use std::path::PathBuf;

use clap::Args;

use crate::demo::{run_demo, DemoOptions};

/// Train vanilla and LightThinker tiny models on a synthetic multi-step arithmetic task, then
/// compare them (Acc, Time, Peak, Dep, compressions) on held-out problems.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Output folder (table, checkpoints, records, plots).
    #[arg(long, default_value = "out/demo")]
    pub out: PathBuf,
    /// Tiny budget: check that the whole pipeline runs (what CI runs), not accuracy.
    #[arg(long)]
    pub quick: bool,
    /// Master seed.
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Held-out problems (default 200; 16 with --quick).
    #[arg(long)]
    pub n_eval: Option<usize>,
    /// Optimizer steps of each model (default 2600; 12 with --quick).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Train and evaluate the two models one after the other instead of on two threads.
    #[arg(long)]
    pub sequential: bool,
}

/// Run `lightthinker demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut o = DemoOptions::new(args.out, args.quick);
    o.seed = args.seed;
    if let Some(n) = args.n_eval {
        o.n_eval = n;
    }
    if let Some(s) = args.steps {
        o.vanilla_steps = s;
        o.lightthinker_steps = s;
    }
    o.parallel = !args.sequential;
    run_demo(&o)?;
    Ok(())
}
