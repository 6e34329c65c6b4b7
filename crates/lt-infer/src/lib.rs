//! `lt-infer`: LightThinker generation with thought-level KV compression and eviction.
//!
//! * [`engine`]: prefill + greedy decoding; on a generated `<|splitter|>` the forced block
//!   `[S, <|o_0|>..<|o_{C-1}|>, <|continue|>]` is fed in one forward with the local mask
//!   ([`local`]) and the thought plus `S` are evicted; token-level compression, AnLLM and vanilla
//!   are the same engine with other triggers. Sequences can be batched, each compressing on its own
//!   schedule over a ragged KV cache.
//! * [`record`]: the reference's JSONL records (+ `output_ids`, compressions, peak KV bytes, Dep,
//!   KV trace), crash-safe append with resume, sharding.
//! * [`run`]: the whole `lightthinker infer` pipeline (tokenizer, prompts, datasets, records).
//! * [`quick`]: the reference's answer extraction and quick check.
#![warn(missing_docs)]

pub mod engine;
mod error;
pub mod local;
pub mod quick;
pub mod record;
pub mod run;

pub use engine::{
    GenConfig, Generation, Generator, Level, Method, Progress, PromptInput, PromptSpan, StopReason,
    TraceStep, UpdateMethod,
};
pub use error::InferError;
pub use record::{Record, RecordWriter};
