//! The sequential-model core: a conv model's path through one head as a list of bound layers
//! (each with its parameters), and one [`apply`] that interprets them. Training and evaluation
//! ([`forward_hooked`]), LRP, gradient × input, FullGrad, filter visualisation and the
//! activation-based importance methods all walk this one vocabulary, so a layer kind is added
//! (or its semantics changed) in one place.
//!
//! Parameters are held untraced; `apply` puts them on the activation's tape `T` with
//! `retaped`, which for dfdx's `OwnedTape` is exactly `leaky_trace` (same tensor ids, leaky
//! gradients), so a training pass finds every parameter's gradient under its flat tensor's id.
//! The MLP (dense layers only, no [`Arch`](super::arch::Arch)) keeps its own transposed forward
//! pass in `model`; both end in the same [`super::dense`] op.

use super::conv;
use super::dense;
use super::tensor::{Matrix, Tensor4, Vector};
use dfdx::prelude::*;

/// One layer of a sequential model. Weights use PyTorch's layouts.
#[derive(Clone)]
pub enum Layer<D: Device<f32>> {
    Conv {
        /// `[O, C, kh, kw]`.
        weight: Tensor4<D>,
        bias: Vector<D>,
        stride: usize,
        padding: usize,
    },
    Relu,
    /// Leaky ReLU with this negative slope; like ReLU, it passes relevance through.
    LeakyRelu(f32),
    MaxPool {
        kernel: usize,
        stride: usize,
    },
    AvgPool {
        kernel: usize,
        stride: usize,
    },
    /// PyTorch's `AdaptiveAvgPool2d` to `[h, w]`.
    AdaptiveAvgPool {
        h: usize,
        w: usize,
    },
    Flatten,
    /// `[out, in]`.
    Dense {
        weight: Matrix<D>,
        bias: Vector<D>,
    },
    /// An identity outside training; in a training pass ([`Hooks::dropout_seed`]) it drops
    /// with probability `p`, its mask seeded by the step and `op`, the layer's index in the
    /// architecture (so masks do not depend on how the path is assembled).
    Dropout {
        p: f32,
        op: usize,
    },
}

/// An activation between layers: an image batch before `Flatten`, a matrix after it; on the
/// tape `T` when a pass needs gradients (training, FullGrad, filter visualisation), untraced
/// otherwise. Also the shape of a probe ([`Hooks::probes`]).
#[derive(Clone)]
pub enum Act<D: Device<f32>, T = NoneTape> {
    Map(Tensor4<D, T>),
    Flat(Matrix<D, T>),
}

impl<D: Device<f32>, T> Act<D, T> {
    pub fn as_vec(&self) -> Vec<f32> {
        match self {
            Act::Map(t) => t.as_vec(),
            Act::Flat(t) => t.as_vec(),
        }
    }
}

/// One layer on one activation, traced or not, outside training (dropout is an identity): the
/// parameters join the activation's tape.
pub fn apply<D, T>(layer: &Layer<D>, a: Act<D, T>) -> Act<D, T>
where
    D: Device<f32>,
    T: Tape<f32, D> + Merge<T> + Merge<NoneTape>,
{
    match (layer, a) {
        (
            Layer::Conv {
                weight,
                bias,
                stride,
                padding,
            },
            Act::Map(x),
        ) => Act::Map(conv::conv2d(
            x,
            weight.retaped::<T>(),
            bias.retaped::<T>(),
            *stride,
            *padding,
        )),
        (Layer::Relu, Act::Map(x)) => Act::Map(conv::relu(x)),
        (Layer::Relu, Act::Flat(x)) => Act::Flat(conv::relu(x)),
        (Layer::LeakyRelu(s), Act::Map(x)) => Act::Map(x.prelu(*s)),
        (Layer::LeakyRelu(s), Act::Flat(x)) => Act::Flat(x.prelu(*s)),
        (Layer::AdaptiveAvgPool { h, w }, Act::Map(x)) => {
            Act::Map(conv::adaptive_avg_pool2d(x, *h, *w))
        }
        (Layer::MaxPool { kernel, stride }, Act::Map(x)) => {
            Act::Map(conv::max_pool2d(x, *kernel, *stride))
        }
        (Layer::AvgPool { kernel, stride }, Act::Map(x)) => {
            Act::Map(conv::avg_pool2d(x, *kernel, *stride))
        }
        (Layer::Flatten, Act::Map(x)) => Act::Flat(conv::flatten(x)),
        (Layer::Dense { weight, bias }, Act::Flat(x)) => Act::Flat(dense::dense(
            x,
            weight.retaped::<T>(),
            bias.retaped::<T>(),
            dense::Activation::Identity,
            dense::Side::Rows,
            dense::Side::Rows,
        )),
        (Layer::Dropout { .. }, a) => a,
        _ => panic!("layer does not fit its input (a map layer after Flatten, or the reverse)"),
    }
}

/// The forward pass, keeping every layer's input (`acts[l]` feeds layer `l`; the last entry
/// is the output).
pub fn forward<D: Device<f32>>(layers: &[Layer<D>], x: Tensor4<D>) -> Vec<Act<D>> {
    let mut acts = vec![Act::Map(x)];
    for l in layers {
        let next = apply(l, acts.last().expect("input").clone());
        acts.push(next);
    }
    acts
}

/// The input's probe and one probe per weighted trunk layer: tensors of ones multiplied into
/// an activation, so that a probe's gradient is the activation times the gradient w.r.t. it
/// (gradient × input, in one backward pass).
pub type Probes<D, T> = (Tensor4<D, T>, Vec<Act<D, T>>);

/// What a forward pass does beyond [`apply`], at the activation of each weighted trunk layer
/// (`act_at` of [`forward_hooked`]).
pub struct Hooks<'a, D: Device<f32>, T> {
    /// Weighted trunk layer `l`'s activation (every position of a filter's map) is multiplied
    /// by `unit_masks[l]` (0 = pruned), which equals zeroing the unit's outgoing connections.
    pub unit_masks: Option<&'a [Vector<D>]>,
    /// A training step's seed: dropout layers drop. `None` (evaluation, scoring) keeps them
    /// identities.
    pub dropout_seed: Option<u64>,
    pub probes: Option<Probes<D, T>>,
}

impl<D: Device<f32>, T> Default for Hooks<'_, D, T> {
    fn default() -> Self {
        Hooks {
            unit_masks: None,
            dropout_seed: None,
            probes: None,
        }
    }
}

/// Seed of dropout layer `op`'s mask in the step seeded `step`.
fn dropout_layer_seed(step: u64, op: usize) -> u64 {
    step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (op as u64 + 1)
}

/// The forward pass of `layers` on `x: [batch, C, H, W]` to the output matrix (the head's
/// logits), with `hooks` applied after the activation layers at `act_at` (one per weighted
/// trunk layer). An untraced input stays untraced into the first layer, so that a first
/// convolution skips its input gradient.
pub fn forward_hooked<D, T>(
    layers: &[Layer<D>],
    act_at: &[usize],
    x: Tensor4<D>,
    hooks: Hooks<'_, D, T>,
) -> Matrix<D, T>
where
    D: Device<f32>,
    T: Tape<f32, D> + Merge<T> + Merge<NoneTape>,
{
    let Hooks {
        unit_masks,
        dropout_seed,
        probes,
    } = hooks;
    let step = |layer: &Layer<D>, a: Act<D, T>| match (layer, dropout_seed, a) {
        (Layer::Dropout { p, op }, Some(s), a) => {
            let seed = dropout_layer_seed(s, *op);
            match a {
                Act::Map(m) => Act::Map(conv::dropout(m, *p, seed, true)),
                Act::Flat(f) => Act::Flat(conv::dropout(f, *p, seed, true)),
            }
        }
        (_, _, a) => apply(layer, a),
    };
    let (mut input, mut act, mut probes) = match probes {
        None => (Some(x), None, None),
        Some((p, per_layer)) => (
            None,
            Some(Act::Map(x.retaped::<T>() * p)),
            Some(per_layer.into_iter()),
        ),
    };
    let mut weighted = 0;
    // Whether the layer before was a convolution that applied this layer's ReLU itself.
    let mut relu_done = false;
    for (l, layer) in layers.iter().enumerate() {
        // A convolution followed by ReLU, with no hook on the convolution's own output, runs
        // both at once (`conv2d_fused`: the same values and gradients, less memory traffic).
        let fuse =
            matches!(layers.get(l + 1), Some(Layer::Relu)) && act_at.get(weighted) != Some(&l);
        let mut a = if std::mem::take(&mut relu_done) {
            act.take()
                .expect("the convolution's output, its ReLU applied")
        } else {
            match (input.take(), layer) {
                (
                    Some(x),
                    Layer::Conv {
                        weight,
                        bias,
                        stride,
                        padding,
                    },
                ) => {
                    let (w, b) = (weight.retaped::<T>(), bias.retaped::<T>());
                    relu_done = fuse;
                    Act::Map(conv::conv2d_fused(x, w, b, *stride, *padding, fuse))
                }
                (Some(x), _) => step(layer, Act::Map(x.retaped::<T>())),
                (
                    None,
                    Layer::Conv {
                        weight,
                        bias,
                        stride,
                        padding,
                    },
                ) if fuse => match act.take().expect("an activation per layer") {
                    Act::Map(x) => {
                        relu_done = true;
                        let (w, b) = (weight.retaped::<T>(), bias.retaped::<T>());
                        Act::Map(conv::conv2d_fused(x, w, b, *stride, *padding, true))
                    }
                    a => step(layer, a),
                },
                (None, _) => step(layer, act.take().expect("an activation per layer")),
            }
        };
        if act_at.get(weighted) == Some(&l) {
            if let Some(m) = unit_masks {
                let m = m[weighted].clone();
                a = match a {
                    Act::Map(a) => {
                        let shape = *a.shape();
                        Act::Map(a * m.broadcast_like::<_, Axes3<0, 2, 3>>(&shape))
                    }
                    Act::Flat(a) => {
                        let shape = *a.shape();
                        Act::Flat(a * m.broadcast_like::<_, Axis<0>>(&shape))
                    }
                };
            }
            a = match (a, probes.as_mut().and_then(|p| p.next())) {
                (Act::Map(a), Some(Act::Map(p))) => Act::Map(a * p),
                (Act::Flat(a), Some(Act::Flat(p))) => Act::Flat(a * p),
                (a, _) => a,
            };
            weighted += 1;
        }
        act = Some(a);
    }
    match act {
        Some(Act::Flat(out)) => out,
        _ => unreachable!("validated: the path ends in a dense head"),
    }
}
