//! Full fine-tuning: every weight trains (the reference's comparison row). It has no peft
//! adapter form; `trainer export` writes it as a plain HF classifier.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::{AdapterFiles, AdapterParts, Method, PeftConfig, PeftModule, Tensors};
use crate::bert::BertModel;
use crate::config::BertConfig;
use crate::error::{ModelError, Result};

/// Full fine-tuning has no settings of its own; the struct exists so unknown keys are refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullConfig {}

impl Method for FullConfig {
    fn name(&self) -> &'static str {
        "full"
    }

    fn validate(&self) -> std::result::Result<(), String> {
        Ok(())
    }

    fn freezes_base(&self) -> bool {
        false
    }

    fn is_trainable(&self, _path: &str) -> bool {
        true
    }

    fn attach(
        &self,
        bert: BertModel,
        _config: &BertConfig,
        _device: &Device,
    ) -> Result<(BertModel, Option<PeftModule>)> {
        Ok((bert, None))
    }

    fn write_adapter(
        &self,
        _module: Option<&PeftModule>,
        _bert: &BertConfig,
        _base: &str,
    ) -> Result<Option<AdapterParts>> {
        Ok(None)
    }

    fn read_adapter(_files: &AdapterFiles, _bert: &BertConfig) -> Result<(PeftConfig, Tensors)> {
        Err(ModelError::Other(
            "full fine-tuning has no peft adapter form".into(),
        ))
    }
}
