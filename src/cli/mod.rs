//! The `lightthinker` command line: one module per subcommand, each a thin
//! layer over a library crate.
use clap::{Parser, Subcommand, ValueEnum};
use lt_eval::Dataset;

pub mod data;
pub mod demo;
pub mod eval;
pub mod infer;
pub mod mask;
pub mod model;
pub mod train;

/// LightThinker: teach an LLM to compress its thoughts into a few cache tokens
/// and evict the thought's KV cache while it reasons.
#[derive(Debug, Parser)]
#[command(name = "lightthinker", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace). `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model (normal, aug, aug-wo-pc, recover; hybrid) on LightThinker data.
    Train(train::TrainArgs),
    /// Generate with thought compression (LightThinker, AnLLM) or vanilla.
    Infer(infer::InferArgs),
    /// Judge inference records and report Acc, Time, Peak, Dep.
    Eval(eval::EvalArgs),
    /// Build, inspect and convert training data and tokenizers.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Build and render compression attention masks.
    #[command(subcommand)]
    Mask(mask::MaskCommand),
    /// Inspect models and score sequences.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Train vanilla and LightThinker tiny models on a synthetic task and compare them.
    Demo(demo::DemoArgs),
}

/// Set up `tracing` output on stderr.
pub fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let level = if quiet {
        "error"
    } else {
        match verbose {
            0 => "warn,lightthinker=info,lt_train=info,lt_infer=info,lt_eval=info,lt_data=info,lt_model=info",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(a) => train::run(a),
        Command::Infer(a) => infer::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Data(c) => data::run(c),
        Command::Mask(c) => mask::run(c),
        Command::Model(c) => model::run(c),
        Command::Demo(a) => demo::run(a),
    }
}

/// An error and its causes on one line, outermost first and `: `-joined, like anyhow's `{:#}`,
/// except that a cause whose text the line already ends with is not repeated (library errors
/// such as `path: cause` both print their cause and return it as their source).
///
/// ```
/// let e = anyhow::Error::from(std::io::Error::other("disk full")).context("writing out.jsonl");
/// assert_eq!(lightthinker::cli::error_line(&e), "writing out.jsonl: disk full");
/// ```
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// Parse the reference scripts' boolean spelling (`true`/`false`, any case, or 1/0).
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("expected true or false, got `{s}`")),
    }
}

/// `--dataset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatasetArg {
    /// GSM8K.
    Gsm8k,
    /// MMLU.
    Mmlu,
    /// GPQA.
    Gpqa,
    /// BBH.
    Bbh,
}

impl From<DatasetArg> for Dataset {
    fn from(d: DatasetArg) -> Self {
        match d {
            DatasetArg::Gsm8k => Dataset::Gsm8k,
            DatasetArg::Mmlu => Dataset::Mmlu,
            DatasetArg::Gpqa => Dataset::Gpqa,
            DatasetArg::Bbh => Dataset::Bbh,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::error_line;

    /// `path: cause` that also returns the cause as its source (thiserror's `{source}` field).
    #[derive(Debug)]
    struct PathError(std::io::Error);
    impl std::fmt::Display for PathError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "/out/x.jsonl: {}", self.0)
        }
    }
    impl std::error::Error for PathError {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_already_printed_is_not_repeated() {
        let e = anyhow::Error::from(PathError(std::io::Error::other("no space")))
            .context("gsm8k (data.json)");
        assert_eq!(error_line(&e), "gsm8k (data.json): /out/x.jsonl: no space");
        // a cause not yet in the line is kept
        let e = anyhow::Error::from(std::io::Error::other("no space")).context("writing");
        assert_eq!(error_line(&e), "writing: no space");
    }
}
