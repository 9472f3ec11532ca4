//! The trainable classifier: a pretrained BERT, an optional PEFT module, and a linear head on the
//! pooled output, as peft's `PeftModelForSequenceClassification` wires them.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;

use crate::bert::{BertExtras, BertInput, BertModel, BertPooler};
use crate::config::BertConfig;
use crate::peft::{PeftConfig, PrefixEncoder};

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
    /// peft names this `prompt_encoder`; present for prefix tuning.
    pub prompt_encoder: Option<PrefixEncoder>,
    pub dropout: Dropout,
    pub classifier: Linear,
}

impl BertClassifier {
    /// Wraps a loaded BERT. `classifier` is a head from the checkpoint (a fine-tuned
    /// `BertForSequenceClassification`); without one, the head is initialised as HF does
    /// (normal with std `initializer_range`, zero bias).
    pub fn new(
        bert: BertModel,
        classifier: Option<Linear>,
        config: &BertConfig,
        peft: &PeftConfig,
        num_labels: usize,
        device: &Device,
    ) -> Self {
        let mut bert = bert;
        if bert.pooler.is_none() {
            // HF builds BertForSequenceClassification with a pooler even when the checkpoint
            // has none, initialised at random; do the same so the head sees the same features.
            bert.pooler = Some(BertPooler {
                dense: hf_linear(config.hidden_size, config.hidden_size, config, device),
            });
        }
        let classifier = match classifier {
            Some(c) if c.weight.dims()[1] == num_labels => c,
            _ => hf_linear(config.hidden_size, num_labels, config, device),
        };
        let prompt_encoder = match peft {
            PeftConfig::PrefixTuning(c) => Some(PrefixEncoder::new(c, config, device)),
            PeftConfig::Full(_) => None,
        };
        let bert = if peft.freezes_base() {
            bert.no_grad()
        } else {
            bert
        };
        Self {
            bert,
            prompt_encoder,
            dropout: DropoutConfig::new(
                config
                    .classifier_dropout
                    .unwrap_or(config.hidden_dropout_prob),
            )
            .init(),
            classifier,
        }
    }

    /// Logits `[batch, num_labels]`.
    pub fn forward(&self, input: BertInput) -> Tensor<2> {
        let [batch, _] = input.input_ids.dims();
        let extras = BertExtras {
            prefix: self.prompt_encoder.as_ref().map(|p| p.forward(batch)),
            prompt: None,
        };
        let pooled = self
            .bert
            .forward(input, &extras)
            .pooler_output
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
}

/// A linear layer initialised as HF's `BertPreTrainedModel._init_weights` does.
fn hf_linear(d_in: usize, d_out: usize, config: &BertConfig, device: &Device) -> Linear {
    let mut linear = LinearConfig::new(d_in, d_out)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: config.initializer_range,
        })
        .init(device);
    linear.bias = linear
        .bias
        .map(|b| b.map(|t: Tensor<1>| Tensor::zeros(t.dims(), &t.device())));
    linear
}
