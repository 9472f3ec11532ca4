//! Data for text classification: CSV reading, label maps, seeded splits, tokenised batches.
//!
//! - [`csv`]: `title,label` files (column names configurable), with errors that name the line.
//! - [`labels`]: the label file (one label per line, index = line number).
//! - [`split`]: the seeded train/validation split, identical on every platform.
//! - [`batch`]: tokenised examples, the dynamic-padding batcher and the epoch-seeded loader the
//!   Learner drives.

pub mod batch;
pub mod csv;
pub mod error;
pub mod labels;
pub mod split;

pub use batch::{ClassificationBatcher, EpochLoader, Example};
pub use csv::{CsvColumns, Row, Table};
pub use error::{DataError, Result};
pub use labels::LabelMap;
pub use split::{Split, SplitConfig};
