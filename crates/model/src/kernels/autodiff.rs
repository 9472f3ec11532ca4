//! The kernels under autodiff, each with its hand-written backward pass.

use burn::backend::AutodiffBackend;
use burn::backend::Backend;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::FloatTensor;

use super::BertKernels;

impl<B: Backend + BertKernels, C: CheckpointStrategy> BertKernels for Autodiff<B, C> {
    fn gelu_erf(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct GeluErf;

        impl<B: Backend + BertKernels> Backward<B, 1> for GeluErf {
            /// The input.
            type State = B::FloatTensorPrimitive;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let x = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::gelu_erf_backward(x, grad)
                });
            }
        }

        let (x, node) = x.into_parts();
        match GeluErf.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(x.clone(), B::gelu_erf(x)),
            OpsKind::UnTracked(prep) => prep.finish(B::gelu_erf(x)),
        }
    }

    fn gelu_erf_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        // Only reached for a second derivative, which nothing here takes: computed, not tracked.
        let out = B::gelu_erf_backward(x.into_primitive(), grad.into_primitive());
        Autodiff::<B, C>::from_inner(out)
    }

    fn masked_softmax(
        scores: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct MaskedSoftmax;

        impl<B: Backend + BertKernels> Backward<B, 1> for MaskedSoftmax {
            /// The output probabilities and the scale.
            type State = (B::FloatTensorPrimitive, f32);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let (probs, scale) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::masked_softmax_backward(probs, grad, scale)
                });
            }
        }

        // The bias is a mask: a constant, so only the scores get a gradient.
        let bias = bias.into_primitive();
        let (scores, node) = scores.into_parts();
        match MaskedSoftmax
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let probs = B::masked_softmax(scores, bias, scale);
                prep.finish((probs.clone(), scale), probs)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::masked_softmax(scores, bias, scale)),
        }
    }

    fn masked_softmax_backward(
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        let out = B::masked_softmax_backward(probs.into_primitive(), grad.into_primitive(), scale);
        Autodiff::<B, C>::from_inner(out)
    }

    fn linear_with_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Linear;

        impl<B: Backend + BertKernels> Backward<B, 3> for Linear {
            /// The input, kept when the weight needs a gradient, and the weight, kept when
            /// the input does (a frozen weight keeps no activations alive).
            type State = (
                Option<B::FloatTensorPrimitive>,
                Option<B::FloatTensorPrimitive>,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [node_x, node_weight, node_bias] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, weight) = ops.state;
                if let (Some(node), Some(weight)) = (node_x, weight) {
                    grads.register::<B>(node.id, B::linear_backward_x(weight, grad.clone()));
                }
                if let (Some(node), Some(x)) = (node_weight, x) {
                    grads.register::<B>(node.id, B::linear_backward_weight(x, grad.clone()));
                }
                if let Some(node) = node_bias {
                    grads.register::<B>(node.id, B::linear_backward_bias(grad));
                }
            }
        }

        let (x_tracked, weight_tracked) = (x.is_tracked(), weight.is_tracked());
        let (x, x_node) = x.into_parts();
        let (weight, weight_node) = weight.into_parts();
        let (bias, bias_node) = bias.into_parts();
        match Linear
            .prepare::<C>([x_node, weight_node, bias_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = (
                    weight_tracked.then(|| x.clone()),
                    x_tracked.then(|| weight.clone()),
                );
                prep.finish(state, B::linear_with_bias(x, weight, bias))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::linear_with_bias(x, weight, bias)),
        }
    }

    /// Training multiplies in the weights' own precision: the packed snapshot has no gradient.
    fn linear_packed(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        _packed: std::sync::Arc<super::PackedLinear>,
    ) -> FloatTensor<Self> {
        Self::linear_with_bias(x, weight, bias)
    }

    fn linear_backward_x(weight: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let out = B::linear_backward_x(weight.into_primitive(), grad.into_primitive());
        Autodiff::<B, C>::from_inner(out)
    }

    fn linear_backward_weight(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let out = B::linear_backward_weight(x.into_primitive(), grad.into_primitive());
        Autodiff::<B, C>::from_inner(out)
    }

    fn linear_backward_bias(grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Autodiff::<B, C>::from_inner(B::linear_backward_bias(grad.into_primitive()))
    }

    fn layer_norm_affine(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f32,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LayerNorm;

        impl<B: Backend + BertKernels> Backward<B, 3> for LayerNorm {
            /// The input, gamma and epsilon.
            type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive, f32);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [node_x, node_gamma, node_beta] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, gamma, epsilon) = ops.state;
                if let Some(node) = node_gamma {
                    let dgamma = B::layer_norm_backward_gamma(x.clone(), grad.clone(), epsilon);
                    grads.register::<B>(node.id, dgamma);
                }
                if let Some(node) = node_beta {
                    grads.register::<B>(node.id, B::linear_backward_bias(grad.clone()));
                }
                if let Some(node) = node_x {
                    let dx = B::layer_norm_backward_x(x, gamma, grad, epsilon);
                    grads.register::<B>(node.id, dx);
                }
            }
        }

        let (x, x_node) = x.into_parts();
        let (gamma, gamma_node) = gamma.into_parts();
        let (beta, beta_node) = beta.into_parts();
        match LayerNorm
            .prepare::<C>([x_node, gamma_node, beta_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::layer_norm_affine(x.clone(), gamma.clone(), beta, epsilon);
                prep.finish((x, gamma, epsilon), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::layer_norm_affine(x, gamma, beta, epsilon)),
        }
    }

    fn layer_norm_backward_x(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f32,
    ) -> FloatTensor<Self> {
        let out = B::layer_norm_backward_x(
            x.into_primitive(),
            gamma.into_primitive(),
            grad.into_primitive(),
            epsilon,
        );
        Autodiff::<B, C>::from_inner(out)
    }

    fn layer_norm_backward_gamma(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f32,
    ) -> FloatTensor<Self> {
        let out = B::layer_norm_backward_gamma(x.into_primitive(), grad.into_primitive(), epsilon);
        Autodiff::<B, C>::from_inner(out)
    }

    fn heads_matmul(
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        interleave_heads: bool,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct HeadsMatmul;

        impl<B: Backend + BertKernels> Backward<B, 2> for HeadsMatmul {
            /// The left operand, kept when the right needs a gradient, and the right, kept when
            /// the left does.
            type State = (
                Option<B::FloatTensorPrimitive>,
                Option<B::FloatTensorPrimitive>,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [node_lhs, node_rhs] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (lhs, rhs) = ops.state;
                // The transposes are views: the products read them through their strides.
                if let (Some(node), Some(rhs)) = (node_lhs, rhs) {
                    let rhs_t = B::float_swap_dims(rhs, 2, 3);
                    grads.register::<B>(node.id, B::heads_matmul(grad.clone(), rhs_t, false));
                }
                if let (Some(node), Some(lhs)) = (node_rhs, lhs) {
                    let lhs_t = B::float_swap_dims(lhs, 2, 3);
                    grads.register::<B>(node.id, B::heads_matmul(lhs_t, grad, false));
                }
            }
        }

        let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
        let (lhs, lhs_node) = lhs.into_parts();
        let (rhs, rhs_node) = rhs.into_parts();
        match HeadsMatmul
            .prepare::<C>([lhs_node, rhs_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = (
                    rhs_tracked.then(|| lhs.clone()),
                    lhs_tracked.then(|| rhs.clone()),
                );
                prep.finish(state, B::heads_matmul(lhs, rhs, interleave_heads))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::heads_matmul(lhs, rhs, interleave_heads)),
        }
    }

    fn dropout(x: FloatTensor<Self>, keep: f64, seed: u64) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Dropout;

        impl<B: Backend + BertKernels> Backward<B, 1> for Dropout {
            /// The keep probability and the seed: the mask is drawn again, not kept.
            type State = (f64, u64);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let (keep, seed) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::dropout(grad, keep, seed)
                });
            }
        }

        let (x, node) = x.into_parts();
        match Dropout.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((keep, seed), B::dropout(x, keep, seed)),
            OpsKind::UnTracked(prep) => prep.finish(B::dropout(x, keep, seed)),
        }
    }
}
