//! One error type for everything that turns files, ids and user input into a model.
//!
//! Every variant names what the user has to look at: a file, a tensor key, a config field or a
//! model source, so the CLI can print it as a single line.

use std::path::{Path, PathBuf};

pub type Result<T> = std::result::Result<T, ModelError>;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The OS message is part of this line, not a separate `source` (which would print it
    /// twice in an error chain).
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: invalid config: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: cannot read weights: {message}")]
    Weights { path: PathBuf, message: String },
    #[error("{path}: checkpoint does not fit the config: {message}")]
    Incompatible { path: PathBuf, message: String },
    #[error("{path}: tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("model source {source_id}: {message}")]
    Source { source_id: String, message: String },
    #[error("{0}")]
    Other(String),
}

impl ModelError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            error: source,
        }
    }

    pub fn source(source_id: &str, message: impl Into<String>) -> Self {
        Self::Source {
            source_id: source_id.to_string(),
            message: message.into(),
        }
    }
}
