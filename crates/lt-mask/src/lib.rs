//! `lt-mask`: see the crate README.
