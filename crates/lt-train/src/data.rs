//! From files to rows: tokenizer + special tokens, compression config, the training JSONL and
//! the per-mode sequences of `lt-data`. Every sample is parsed and built before training starts,
//! so a bad line stops the run with its line number and field.
use crate::error::{Result, TrainError};
use lt_data::{BuildOptions, Builder, BuiltRow, CompressConfig, DataError, LtTokenizer};
use std::path::Path;

/// A training set ready for [`RowsSource`](crate::RowsSource), plus what the model needs.
#[derive(Debug)]
pub struct PreparedData {
    /// The tokenizer with the LightThinker special tokens added.
    pub tokenizer: LtTokenizer,
    /// The compression config.
    pub config: CompressConfig,
    /// `samples[i]` = the built row(s) of line `i` (two rows in hybrid aug/recover).
    pub samples: Vec<Vec<BuiltRow>>,
    /// Input padding id (the EOS id, as the reference).
    pub pad_id: i64,
    /// `(new id, description ids)` for `Model::resize_vocab`, in the reference's (reverse) order.
    pub embedding_init: Vec<(usize, Vec<i64>)>,
    /// Samples cut at `max_length`.
    pub truncated: usize,
    /// Samples without any supervised token.
    pub unsupervised: usize,
}

/// Split a `DataError::Parse` message "field `x`: ..." / "missing field `x`" into (field, message).
fn field_of(message: &str) -> String {
    message
        .split('`')
        .nth(1)
        .filter(|_| message.contains('`'))
        .map(str::to_string)
        .unwrap_or_else(|| "<json>".to_string())
}

/// Read and build every line of `train_path` with `opts` (see [`PreparedData`]).
pub fn prepare_data(
    train_path: &Path,
    tokenizer_path: &Path,
    compress_config: &Path,
    opts: BuildOptions,
) -> Result<PreparedData> {
    let config = CompressConfig::from_file(compress_config)?;
    let mut tokenizer = LtTokenizer::from_file(tokenizer_path)?;
    tokenizer.add_special_tokens(&config);
    let mut init = tokenizer.embedding_init()?;
    init.reverse();
    let parsed = lt_data::read_train_jsonl(train_path)?;
    let mut samples = Vec::with_capacity(parsed.len());
    for (i, s) in parsed.into_iter().enumerate() {
        match s {
            Ok(s) => samples.push(s),
            Err(DataError::Parse {
                path,
                line,
                message,
            }) => {
                return Err(TrainError::DataLine {
                    path,
                    line: line.unwrap_or(i + 1),
                    field: field_of(&message),
                    message,
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
    if samples.is_empty() {
        return Err(TrainError::DataLine {
            path: train_path.to_path_buf(),
            line: 1,
            field: "<file>".into(),
            message: "the training file has no samples".into(),
        });
    }
    let builder = Builder::new(&config, &tokenizer, opts)?;
    let pad_id = i64::from(builder.eos_id());
    let lines = lt_data::io::read_lines(train_path)?;
    let mut rows = Vec::with_capacity(samples.len());
    for (k, s) in samples.iter().enumerate() {
        let line = lines.get(k).map_or(k + 1, |l| l.0);
        let built = builder.build(s).map_err(|e| TrainError::DataLine {
            path: train_path.to_path_buf(),
            line,
            field: "<sample>".into(),
            message: e.to_string(),
        })?;
        rows.push(built);
    }
    let truncated = rows
        .iter()
        .filter(|r| r.iter().any(|x| x.truncated))
        .count();
    let unsupervised = rows
        .iter()
        .filter(|r| r.iter().all(|x| x.n_labelled() == 0))
        .count();
    drop(builder);
    Ok(PreparedData {
        tokenizer,
        config,
        samples: rows,
        pad_id,
        embedding_init: init,
        truncated,
        unsupervised,
    })
}
