//! The trainable classifier: a pretrained BERT, an optional PEFT module, and a linear head on the
//! pooled output, as peft's `PeftModelForSequenceClassification` wires them.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;

use crate::bert::{BertExtras, BertInput, BertModel, BertPooler, Packing};
use crate::config::BertConfig;
use crate::dropout::{Dropout, DropoutConfig};
use crate::error::{ModelError, Result};
use crate::kernels::MatrixUnits;
use crate::peft::{PeftConfig, PeftModule, adapter};
use crate::tokenizer::BertTokenizer;

/// A padded batch with its class indices.
#[derive(Debug, Clone)]
pub struct ClassificationBatch {
    pub input: BertInput,
    /// `[batch]` class indices.
    pub labels: Tensor<1, Int>,
}

/// Loss, logits and targets of one batch.
#[derive(Debug, Clone)]
pub struct ClassificationStep {
    pub loss: Tensor<1>,
    pub logits: Tensor<2>,
    pub targets: Tensor<1, Int>,
}

#[derive(Module, Debug)]
pub struct BertClassifier {
    pub bert: BertModel,
    /// The method's own module, if it has one (its parameters are named by its kind:
    /// `prefix_encoder.*`, `prompt_encoder.*`, `lora_model.*`).
    pub peft: Option<PeftModule>,
    pub dropout: Dropout,
    pub classifier: Linear,
}

impl BertClassifier {
    /// Wraps a loaded BERT. `classifier` is a head from the checkpoint (a fine-tuned
    /// `BertForSequenceClassification`); without one, the head is initialised as HF does
    /// (normal with std `initializer_range`, zero bias). The method attaches itself (see
    /// [`crate::peft::Method::attach`]); its settings are checked first.
    pub fn new(
        bert: BertModel,
        classifier: Option<Linear>,
        config: &BertConfig,
        peft: &PeftConfig,
        num_labels: usize,
        device: &Device,
    ) -> Result<Self> {
        peft.validate().map_err(ModelError::Other)?;
        if num_labels == 0 {
            return Err(ModelError::Other(
                "a classifier needs at least one label".into(),
            ));
        }
        let mut bert = bert;
        if bert.pooler.is_none() {
            // HF builds BertForSequenceClassification with a pooler even when the checkpoint
            // has none, initialised at random; do the same so the head sees the same features.
            bert.pooler = Some(BertPooler {
                dense: hf_linear(config.hidden_size, config.hidden_size, config, device).into(),
            });
        }
        let classifier = match classifier {
            Some(c) if c.weight.dims()[1] == num_labels => c,
            _ => hf_linear(config.hidden_size, num_labels, config, device),
        };
        let bert = if peft.freezes_base() {
            bert.no_grad()
        } else {
            bert
        };
        let (bert, module) = peft.method().attach(bert, config, device)?;
        Ok(Self {
            bert,
            peft: module,
            dropout: DropoutConfig::new(
                config
                    .classifier_dropout
                    .unwrap_or(config.hidden_dropout_prob),
            )
            .init(),
            classifier,
        })
    }

    /// Initialisation of the method's module that needs the tokenizer (prompt tuning's text
    /// init, see [`crate::peft::Method::init_with_tokenizer`]).
    pub fn init_with_tokenizer(self, peft: &PeftConfig, tokenizer: &BertTokenizer) -> Result<Self> {
        let module = peft
            .method()
            .init_with_tokenizer(&self.bert, self.peft, tokenizer)?;
        Ok(Self {
            peft: module,
            ..self
        })
    }

    /// Folds weight updates (LoRA's) into the base weights, a no-op for other methods: the
    /// same logits without the extra matmuls, for inference and export.
    pub fn merged(self) -> Self {
        match self.peft {
            Some(module) => {
                let (bert, peft) = module.merge_into(self.bert);
                Self { bert, peft, ..self }
            }
            None => self,
        }
    }

    /// The encoder's and pooler's linears multiplying in bf16 on `units`, for inference (see
    /// [`BertModel::packed_for`]); the head, a few hundred values, stays f32.
    pub fn packed_for(self, units: &MatrixUnits) -> (Self, Packing) {
        let (bert, packing) = self.bert.packed_for(units);
        (Self { bert, ..self }, packing)
    }

    /// Writes the trained method's module and head as a peft adapter directory for base model
    /// `base` (see [`adapter::write`]); `Ok(false)` for a method without an adapter form.
    pub fn write_adapter(
        &self,
        dir: &std::path::Path,
        peft: &PeftConfig,
        bert: &BertConfig,
        base: &str,
    ) -> Result<bool> {
        adapter::write(dir, self.peft.as_ref(), &self.classifier, peft, bert, base)
    }

    /// Logits `[batch, num_labels]`.
    pub fn forward(&self, input: BertInput) -> Tensor<2> {
        let [batch, _] = input.input_ids.dims();
        let extras = match &self.peft {
            Some(module) => module.extras(batch),
            None => BertExtras::default(),
        };
        let pooled = self
            .bert
            .pooled(input, &extras)
            .expect("BertClassifier always has a pooler");
        self.classifier.forward(self.dropout.forward(pooled))
    }

    /// Forward pass plus mean cross-entropy loss.
    pub fn forward_classification(&self, batch: ClassificationBatch) -> ClassificationStep {
        let device = batch.labels.device();
        let logits = self.forward(batch.input);
        let loss = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits.clone(), batch.labels.clone());
        ClassificationStep {
            loss,
            logits,
            targets: batch.labels,
        }
    }

    pub fn num_labels(&self) -> usize {
        self.classifier.weight.dims()[1]
    }

    /// Virtual tokens in front of the text (prompt embeddings or key/value prefixes).
    pub fn num_virtual_tokens(&self) -> usize {
        self.peft.as_ref().map_or(0, PeftModule::num_virtual_tokens)
    }

    /// Checks that texts of up to `max_length` tokens fit the position table together with the
    /// virtual tokens (which take the first positions), so a forward pass can never index past
    /// it. The message says which limit to lower.
    pub fn check_input_length(&self, max_length: usize) -> Result<()> {
        let positions = self.bert.embeddings.position_embeddings.weight.dims()[0];
        let virtual_tokens = self.num_virtual_tokens();
        if virtual_tokens + max_length > positions {
            let room = positions.saturating_sub(virtual_tokens);
            return Err(ModelError::Other(format!(
                "{virtual_tokens} virtual tokens + max length {max_length} exceed the model's \
                 {positions} positions (max_position_embeddings): use a max length of at most \
                 {room}{}",
                if virtual_tokens > 0 {
                    " or fewer virtual tokens"
                } else {
                    ""
                }
            )));
        }
        Ok(())
    }
}

/// A linear layer initialised as HF's `BertPreTrainedModel._init_weights` does.
fn hf_linear(d_in: usize, d_out: usize, config: &BertConfig, device: &Device) -> Linear {
    let mut linear = LinearConfig::new(d_in, d_out)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: config.initializer_range,
        })
        .init(device);
    // The zero tensor keeps the parameter's gradient tracking: a fresh tensor has none, and
    // the bias would then never train.
    linear.bias = linear.bias.map(|b| {
        b.map(|t: Tensor<1>| {
            Tensor::zeros(t.dims(), &t.device()).set_require_grad(t.is_require_grad())
        })
    });
    linear
}
