//! `lt-eval`: see the crate README.
