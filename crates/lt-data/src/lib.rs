//! `lt-data`: LightThinker training and evaluation data, bit-exact with the Python reference.
//!
//! * [`CompressConfig`]: the compression config (`configs/LightThinker/<model>/v1.json`) with validation
//!   and the reference's special-token list.
//! * [`LtTokenizer`]: a HF `tokenizers` tokenizer plus the added LightThinker tokens; every segment is
//!   encoded on its own, without special tokens.
//! * [`TrainSample`] / [`read_train_jsonl`]: the training JSONL schema.
//! * [`Builder`]: the four training modes (`normal`, `aug`, `aug-wo-pc`, `recover`, + hybrid), giving
//!   [`BuiltRow`]s (ids, labels, positions and the block [`lt_mask::Layout`]).
//! * [`collate`]: padding (to the longest row or to `max_length`) and masks built in parallel.
//! * [`read_eval_dataset`], [`inference_prompt`]: evaluation inputs.
//! * [`tiktoken`]: convert a `*.tiktoken` BPE vocabulary into a `tokenizer.json`.
//!
//! No `tch` dependency. See `docs/data.md` for the behaviour and the deviations from the reference.
#![warn(missing_docs)]

mod batch;
mod build;
mod config;
mod error;
mod eval;
pub mod io;
mod record;
mod sample;
pub mod tiktoken;
mod tokenizer;

pub use batch::{collate, collate_without_masks, pad_row, Batch, PadTo};
pub use build::{recover_offset, BuildOptions, Builder, BuiltRow, Mode, SourceVariant, IGNORE};
pub use config::{
    CompressConfig, Level, OutputConfig, PromptConfig, SpecialToken, Template, BEGIN_OF_SOLUTION,
    BEGIN_OF_THOUGHT, CONTINUE, DOUBLE_NEWLINE, END_OF_SOLUTION, END_OF_THOUGHT, RECOVER, SPLITTER,
};
pub use error::{DataError, Result};
pub use eval::{
    build_prompt, inference_prompt, read_eval_dataset, system_prompt, user_question, EvalDataset,
    EvalExample, BOXED_INSTRUCTION, SYSTEM_PROMPT_LIST,
};
pub use record::{BuildRecord, BuildSummary};
pub use sample::{read_train_jsonl, read_train_jsonl_strict, TrainSample};
pub use tokenizer::LtTokenizer;
