//! One training step of every method against peft 0.12 / transformers 4.44.2 (fixtures from
//! `tests/fixtures/make_fixtures.py`): loss, logits and the gradient of every trainable
//! parameter.

use std::collections::BTreeMap;

mod common;

use bert_model::BertTokenizer;
use bert_model::classifier::{BertClassifier, ClassificationBatch};
use bert_model::load::load_bert;
use bert_model::params;
use bert_model::peft::{PeftConfig, PromptTuningInit};
use bert_model::weights::{Checkpoint, RawTensor};
use bert_model::{BertConfig, BertInput};
use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::Gradients;
use common::*;
use serde_json::Value;

/// Gradients of the trainable parameters, by module path, in torch layout.
struct GradCollector<'a> {
    grads: &'a Gradients,
    stack: params::ModulePath,
    out: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl ModuleVisitor for GradCollector<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = param.val().grad(self.grads) {
            let path = self.stack.path();
            let linear = path.ends_with(".weight") && !path.contains("embedding");
            let g = if linear && D == 2 { g.transpose() } else { g };
            let shape = g.dims().to_vec();
            self.out
                .insert(path, (shape, g.into_data().try_to_vec::<f32>().unwrap()));
        }
    }
}

fn tensors(v: &Value) -> BTreeMap<String, RawTensor> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let shape: Vec<usize> = ints(&v["shape"]).iter().map(|&x| x as usize).collect();
            let t = RawTensor::new(shape, flat(&v["data"]));
            // Torch `[out, in]` linear weights -> Burn `[in, out]`.
            let linear = k.ends_with(".weight") && !k.contains("embedding");
            (k.clone(), if linear { t.transposed() } else { t })
        })
        .collect()
}

/// `input` with `extra` more padding columns (pad id 0, masked out).
fn padded_by(input: BertInput, extra: usize) -> BertInput {
    let [b, _] = input.input_ids.dims();
    let device = input.input_ids.device();
    let ids = Tensor::<2, Int>::zeros([b, extra], &device);
    BertInput {
        input_ids: Tensor::cat(vec![input.input_ids, ids.clone()], 1),
        token_type_ids: Tensor::cat(vec![input.token_type_ids, ids], 1),
        attention_mask: Tensor::cat(
            vec![input.attention_mask, Tensor::zeros([b, extra], &device)],
            1,
        ),
    }
}

/// Every method (prefix tuning with and without projection, prompt tuning with random and text
/// init, p-tuning with the MLP and the LSTM encoder, LoRA on query/value and on key + every dense with rsLoRA, full fine-tuning):
/// one step from the same weights as peft gives the same loss, logits and gradients.
#[test]
fn one_training_step_matches_peft_for_every_method() {
    let device = Device::default().autodiff();
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    let dir = fixtures().join("tiny-bert");
    let mut config = BertConfig::from_file(&dir.join("config.json")).unwrap();
    // peft ran in eval mode (no dropout) to make the step deterministic.
    config.hidden_dropout_prob = 0.0;
    config.attention_probs_dropout_prob = 0.0;
    let checkpoint = Checkpoint::read(&dir.join("model.safetensors")).unwrap();
    let tokenizer = BertTokenizer::from_dir(&dir, 32).unwrap();

    let cases = exp["training"].as_array().unwrap();
    assert_eq!(cases.len(), 9);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let peft: PeftConfig = serde_json::from_value(case["peft"].clone()).unwrap();
        let loaded = load_bert(&checkpoint, &config, &device).unwrap();
        let mut model =
            BertClassifier::new(loaded.model, loaded.classifier, &config, &peft, 2, &device)
                .unwrap();
        let weights = tensors(&case["params"]);

        // Same trainable parameter count as peft's print_trainable_parameters.
        let (trainable, _) = params::counts(&model, |p| peft.is_trainable(p));
        assert_eq!(
            trainable as u64,
            case["trainable_params"].as_u64().unwrap(),
            "{name}"
        );

        // Text init: the soft prompt starts as the word embeddings of the tokenized phrase.
        if let PeftConfig::PromptTuning(c) = &peft
            && c.prompt_tuning_init == PromptTuningInit::Text
        {
            model = model.init_with_tokenizer(&peft, &tokenizer).unwrap();
            let ours = params::collect(&model, |p| p == "prompt_encoder.embedding.weight");
            let key = "prompt_encoder.embedding.weight";
            let d = max_diff(&ours[key].data, &weights[key].data);
            assert!(d < 1e-6, "{name}: text init differs from peft's by {d}");
        }
        let model = params::apply(model, &weights).unwrap();

        let labels = ints(&case["labels"]);
        let n = labels.len();
        let step = model.forward_classification(ClassificationBatch {
            input: fixture_input(&exp, &device),
            labels: Tensor::from_data(TensorData::new(labels, [n]), &device),
        });
        let loss = step.loss.clone().into_scalar::<f32>();
        let want_loss = case["loss"].as_f64().unwrap() as f32;
        assert!(
            (loss - want_loss).abs() < TOL,
            "{name}: loss {loss} vs {want_loss}"
        );
        let logits = step.logits.clone().into_data().try_to_vec::<f32>().unwrap();
        assert!(
            max_diff(&logits, &flat(&case["logits"])) < TOL,
            "{name}: logits"
        );

        // Padding is masked: the same batch padded further (as GPU batches are, to a multiple
        // of 8 tokens) gives the same loss and logits.
        let padded = model.forward_classification(ClassificationBatch {
            input: padded_by(fixture_input(&exp, &device), 5),
            labels: Tensor::from_data(TensorData::new(ints(&case["labels"]), [n]), &device),
        });
        let padded_logits = padded.logits.into_data().try_to_vec::<f32>().unwrap();
        assert!(
            max_diff(&padded_logits, &logits) < TOL,
            "{name}: logits change with padding"
        );
        let padded_loss = padded.loss.into_scalar::<f32>();
        assert!(
            (padded_loss - loss).abs() < TOL,
            "{name}: loss {padded_loss} padded, {loss} not"
        );

        let grads = step.loss.backward();
        let mut collector = GradCollector {
            grads: &grads,
            stack: Default::default(),
            out: BTreeMap::new(),
        };
        model.visit(&mut collector);
        let want = case["grads"].as_object().unwrap();
        let got: Vec<&String> = collector.out.keys().collect();
        if let Some(n) = case["num_tensors"].as_u64() {
            // Full fine-tuning: every tensor gets a gradient; a sample is compared.
            assert_eq!(got.len() as u64, n, "{name}");
        } else {
            // Exactly the trainable parameters get gradients: the frozen BERT gets none.
            let mut want_keys: Vec<&String> = want.keys().collect();
            want_keys.sort();
            assert_eq!(got, want_keys, "{name}");
        }
        for (k, v) in want {
            let (shape, data) = collector
                .out
                .get(k)
                .unwrap_or_else(|| panic!("{name}: no gradient for {k}"));
            let want_shape: Vec<usize> = ints(&v["shape"]).iter().map(|&x| x as usize).collect();
            assert_eq!(shape, &want_shape, "{name}: {k}");
            let d = max_diff(data, &flat(&v["data"]));
            assert!(d < TOL, "{name}: gradient of {k}: max abs diff {d}");
        }
    }
}
