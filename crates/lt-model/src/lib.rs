//! `lt-model`: see the crate README.
