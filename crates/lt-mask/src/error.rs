//! The error type of `lt-mask`.
use thiserror::Error;

/// Everything that can go wrong while building or converting a mask.
///
/// Bad input never panics; it comes back as one of these variants, naming the
/// offending block, row or field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MaskError {
    /// The sequence has no tokens, so there is no last row to copy into padded rows.
    #[error("empty sequence: a mask needs at least one token (layout.len = 0)")]
    EmptySequence,
    /// A length does not fit the `u32` column indices used by [`crate::IntervalMask`].
    #[error("{field} = {value} is too large (max {max})")]
    TooLong {
        /// Which length.
        field: &'static str,
        /// Its value.
        value: usize,
        /// The largest accepted value.
        max: usize,
    },
    /// `blocks[index].end < blocks[index].start`.
    #[error("block {index}: end {end} < start {start}")]
    BlockInverted {
        /// Index of the block in `layout.blocks`.
        index: usize,
        /// Its start.
        start: usize,
        /// Its end.
        end: usize,
    },
    /// A block starts at or after the end of the sequence (entries always start inside it).
    #[error("block {index}: start {start} is not inside the sequence of length {len}")]
    BlockOutside {
        /// Index of the block.
        index: usize,
        /// Its start.
        start: usize,
        /// The sequence length.
        len: usize,
    },
    /// Blocks overlap or are out of order: `blocks[index].start < blocks[index-1].block_end()`.
    #[error("block {index}: start {start} overlaps or precedes the previous block, which ends at {prev_end}")]
    BlockOverlap {
        /// Index of the later block.
        index: usize,
        /// Its start.
        start: usize,
        /// `block_end()` of the previous block.
        prev_end: usize,
    },
    /// The reference's recover builder refuses `diagonal = true` (it asserts); so do we.
    #[error(
        "diagonal = true is not supported by the recover mask (the reference asserts `we do not `)"
    )]
    DiagonalInRecover,
    /// A recover spec with keys but no appended tokens, or similar.
    #[error("inconsistent recover spec: {0}")]
    InconsistentRecover(String),
    /// Interval rows given to [`crate::IntervalMask::from_intervals`] are not sorted, disjoint, maximal and in range.
    #[error("row {row}: bad interval [{a}, {b}) for {cols} columns: {reason}")]
    BadInterval {
        /// Row index.
        row: usize,
        /// Interval start.
        a: u32,
        /// Interval end.
        b: u32,
        /// Number of columns.
        cols: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// Masks of different shapes cannot be stacked, or a local-step argument is out of range.
    #[error("shape mismatch: {0}")]
    Shape(String),
}
