//! The bidirectional LSTM of p-tuning's LSTM encoder (peft's `lstm_head`, a torch `nn.LSTM`
//! with `bidirectional=True, batch_first=True`).
//!
//! Parameters keep torch's layout and gate order (input, forget, cell, output stacked in rows)
//! so that the field names below map one to one onto torch's `weight_ih_l{k}[_reverse]` and the
//! equations are torch's:
//!
//! ```text
//! i, f, g, o = split(x W_ih^T + b_ih + h W_hh^T + b_hh)
//! c' = sigmoid(f) c + sigmoid(i) tanh(g)
//! h' = sigmoid(o) tanh(c')
//! ```
//!
//! The sequence is the handful of virtual tokens (20 in the recipe), run once per batch: the
//! input projection of every step is one matmul and only the recurrence is a loop.

use burn::module::Param;
use burn::nn::Initializer;
use burn::prelude::*;
use burn::tensor::activation::sigmoid;

use crate::dropout::{Dropout, DropoutConfig};

/// One direction of one layer (torch's `*_l{k}` or `*_l{k}_reverse` tensors).
#[derive(Module, Debug)]
pub struct LstmDirection {
    /// `[4 * hidden, input]`
    pub weight_ih: Param<Tensor<2>>,
    /// `[4 * hidden, hidden]`
    pub weight_hh: Param<Tensor<2>>,
    /// `[4 * hidden]`
    pub bias_ih: Param<Tensor<1>>,
    /// `[4 * hidden]`
    pub bias_hh: Param<Tensor<1>>,
}

impl LstmDirection {
    /// torch's init: every tensor uniform in `±1/sqrt(hidden)`.
    fn new(input: usize, hidden: usize, device: &Device) -> Self {
        let k = 1.0 / (hidden as f64).sqrt();
        let init = Initializer::Uniform { min: -k, max: k };
        Self {
            weight_ih: init.init([4 * hidden, input], device),
            weight_hh: init.init([4 * hidden, hidden], device),
            bias_ih: init.init([4 * hidden], device),
            bias_hh: init.init([4 * hidden], device),
        }
    }

    fn hidden_size(&self) -> usize {
        self.weight_hh.dims()[1]
    }

    /// Runs over `x` (`[steps, input]`, one sequence) from the first step to the last, or the
    /// other way when `reverse`; the hidden states come back in sequence order, `[steps, hidden]`.
    fn run(&self, x: Tensor<2>, reverse: bool) -> Tensor<2> {
        let steps = x.dims()[0];
        let hidden = self.hidden_size();
        let device = x.device();
        let bias = (self.bias_ih.val() + self.bias_hh.val()).unsqueeze_dim::<2>(0);
        let input_gates = x.matmul(self.weight_ih.val().transpose()) + bias;
        let w_hh = self.weight_hh.val().transpose();

        let mut h: Tensor<2> = Tensor::zeros([1, hidden], &device);
        let mut c = h.clone();
        let mut outputs: Vec<Option<Tensor<2>>> = vec![None; steps];
        let order: Vec<usize> = if reverse {
            (0..steps).rev().collect()
        } else {
            (0..steps).collect()
        };
        for t in order {
            let gates = input_gates.clone().narrow(0, t, 1) + h.matmul(w_hh.clone());
            let [i, f, g, o]: [Tensor<2>; 4] = gates
                .chunk(4, 1)
                .try_into()
                .expect("4 * hidden splits into 4 gates");
            c = sigmoid(f) * c + sigmoid(i) * g.tanh();
            h = sigmoid(o) * c.clone().tanh();
            outputs[t] = Some(h.clone());
        }
        Tensor::cat(outputs.into_iter().flatten().collect(), 0)
    }
}

/// One bidirectional layer: both directions read the same input; their outputs are
/// concatenated (forward first), as torch does.
#[derive(Module, Debug)]
pub struct BiLstmLayer {
    pub forward: LstmDirection,
    pub reverse: LstmDirection,
}

impl BiLstmLayer {
    fn run(&self, x: Tensor<2>) -> Tensor<2> {
        let ahead = self.forward.run(x.clone(), false);
        let back = self.reverse.run(x, true);
        Tensor::cat(vec![ahead, back], 1)
    }
}

/// A stack of bidirectional layers, with dropout between layers (not after the last), as
/// torch's `nn.LSTM(dropout=...)`.
#[derive(Module, Debug)]
pub struct BiLstm {
    pub layers: Vec<BiLstmLayer>,
    pub dropout: Dropout,
}

impl BiLstm {
    pub fn new(
        input: usize,
        hidden: usize,
        num_layers: usize,
        dropout: f64,
        device: &Device,
    ) -> Self {
        let layers = (0..num_layers)
            .map(|k| {
                let width = if k == 0 { input } else { 2 * hidden };
                BiLstmLayer {
                    forward: LstmDirection::new(width, hidden, device),
                    reverse: LstmDirection::new(width, hidden, device),
                }
            })
            .collect();
        Self {
            layers,
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    /// `[steps, input]` -> `[steps, 2 * hidden]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.layers.iter().enumerate().fold(x, |x, (k, layer)| {
            let x = if k == 0 { x } else { self.dropout.forward(x) };
            layer.run(x)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-computed step: with zero recurrent weights and biases, one input unit, one
    /// hidden unit and gate pre-activations (a, b, c, d), `c = sigmoid(a) tanh(c_gate)` and
    /// `h = sigmoid(d) tanh(c)`; the reverse direction sees the steps the other way round.
    #[test]
    fn one_unit_matches_the_equations() {
        let device = Device::default();
        let w = [0.5f32, -1.0, 2.0, 0.25];
        let direction = || LstmDirection {
            weight_ih: Param::from_tensor(Tensor::from_data(
                TensorData::new(w.to_vec(), [4, 1]),
                &device,
            )),
            weight_hh: Param::from_tensor(Tensor::zeros([4, 1], &device)),
            bias_ih: Param::from_tensor(Tensor::zeros([4], &device)),
            bias_hh: Param::from_tensor(Tensor::zeros([4], &device)),
        };
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        let x = [1.0f32, -2.0];
        let input = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [2, 1]), &device);

        let (mut h, mut c) = (Vec::new(), 0.0f32);
        for &xt in &x {
            let [i, f, g, o] = w.map(|wi| wi * xt);
            c = sig(f) * c + sig(i) * g.tanh();
            h.push(sig(o) * c.tanh());
        }
        let got = direction()
            .run(input.clone(), false)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!((got[0] - h[0]).abs() < 1e-6 && (got[1] - h[1]).abs() < 1e-6);

        // Backwards: the last step first, from a zero state.
        let c1 = sig(w[0] * x[1]) * (w[2] * x[1]).tanh();
        let h1 = sig(w[3] * x[1]) * c1.tanh();
        let got = direction()
            .run(input, true)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!((got[1] - h1).abs() < 1e-6, "{got:?} vs {h1}");
    }
}
