//! LightThinker: thinking step-by-step compression, in Rust.
//!
//! This crate is the `lightthinker` command-line tool and a thin facade that
//! re-exports the layered library crates:
//!
//! | crate | job |
//! |---|---|
//! | [`mask`] (`lt-mask`) | compression attention masks, pure Rust |
//! | [`data`] (`lt-data`) | config, special tokens, tokenizer, training sequences |
//! | [`model`] (`lt-model`) | Qwen2 / Llama decoder on libtorch with an evictable KV cache |
//! | [`train`] (`lt-train`) | the training loop |
//! | [`infer`] (`lt-infer`) | compressed generation |
//! | [`eval`] (`lt-eval`) | answers, judging and the paper's metrics |
pub use lt_data as data;
pub use lt_eval as eval;
pub use lt_infer as infer;
pub use lt_mask as mask;
pub use lt_model as model;
pub use lt_train as train;

pub mod cli;
pub mod demo;
