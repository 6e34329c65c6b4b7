//! `lt-infer`: see the crate README.
