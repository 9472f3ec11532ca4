//! The classifier as a burn-train Learner model: one training and one validation step.

use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};

use crate::classifier::{BertClassifier, ClassificationBatch};

impl TrainStep for BertClassifier {
    type Input = ClassificationBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ClassificationBatch) -> TrainOutput<ClassificationOutput> {
        let step = self.forward_classification(batch);
        let grads = step.loss.backward();
        TrainOutput::new(
            self,
            grads,
            ClassificationOutput::new(step.loss, step.logits, step.targets),
        )
    }
}

impl InferenceStep for BertClassifier {
    type Input = ClassificationBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ClassificationBatch) -> ClassificationOutput {
        let step = self.forward_classification(batch);
        ClassificationOutput::new(step.loss, step.logits, step.targets)
    }
}
