//! `lt-data`: see the crate README.
