//! The embedded demo: a seeded synthetic task, a project-trained tokenizer and a tiny Llama, trained
//! vanilla and LightThinker with `lt-train`, evaluated with `lt-infer` + `lt-eval`.
pub mod report;
pub mod run;
pub mod task;
pub mod tokenizer;

pub use run::{run_demo, DemoOptions};
