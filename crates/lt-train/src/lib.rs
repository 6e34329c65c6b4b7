//! `lt-train`: see the crate README.
