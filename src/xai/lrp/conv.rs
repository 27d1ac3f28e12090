//! LRP through convolutional networks: a sequential stack of conv, ReLU, pooling, flatten and
//! dense layers, each layer explained by its own rule (ε for dense, z⁺ for conv in RNF; αβ,
//! flat, w², zᴮ also), and per-filter scores.
//!
//! Every rule is computed with the same "gradient trick" instead of hand-written transposed
//! convolutions: for a layer whose (rule-modified) response is `z = f(a)` with `f` linear in
//! `a`, the rule's redistribution `R_in = a ⊙ Σ_k (∂z_k/∂a) · R_k / z_k` is `a ⊙ ∇_a⟨z, s⟩` with
//! `s = R / z` held constant. So each rule is a forward pass of the layer with modified weights
//! and inputs and one backward pass through the conv ops of `nn::conv`, whose gradients are
//! checked against finite differences; it runs wherever those ops run. Max pooling is
//! winner-take-all (the same trick through the max), average pooling proportional. Biases are
//! part of `z` for ε (they absorb relevance) and ignored by the other rules, so a bias-free
//! network conserves relevance layer by layer wherever no denominator vanishes (tested).
//!
//! A filter's score sums its output relevance over positions and samples, with the absolute
//! value taken per position and sample (`abs: before_sum`), after the whole sum
//! (`after_sum`), or not at all (`none`) — the same keyed choice as for dense units.

use super::rules::{
    dense_backward, stabilise, AbsMode, LrpBias, LrpMaxPool, LrpRule, LrpRules, Relevance,
};
use crate::nn::conv;
use crate::nn::model::DeviceModel;
use crate::nn::seq::{apply, forward, Act, Layer};
use crate::nn::tensor::Tensor4;
use crate::nn::tensor::{Matrix, Vector};
use dfdx::prelude::*;

/// Relevance per layer for one batch: `per_layer[l]` is the relevance of layer `l`'s input
/// (so `per_layer[0]` is the input's), flattened per sample in NCHW order.
pub struct CnnRelevance {
    pub per_layer: Vec<Vec<f32>>,
    /// The explained logit per sample.
    pub explained: Vec<f32>,
}

/// `a ⊙ ∇_a ⟨f(a), R / f(a)⟩` for a conv response `f` with the given weight (bias in `z` only
/// when given): the redistribution of `R` onto `a` proportional to each input's contribution.
fn conv_redistribute<D: Device<f32>>(
    a: &Tensor4<D>,
    weight: &Tensor4<D>,
    bias: Option<&Vector<D>>,
    stride: usize,
    padding: usize,
    r: &Tensor4<D>,
    eps: f32,
) -> (Tensor4<D>, Tensor4<D>) {
    let dev = a.device().clone();
    let o = weight.shape().0;
    let b = bias.cloned().unwrap_or_else(|| dev.zeros_like(&(o,)));
    let z = conv::conv2d(
        a.clone().leaky_trace(),
        weight.clone().leaky_trace(),
        b.leaky_trace(),
        stride,
        padding,
    );
    let s = r.clone() / stabilise(z.retaped::<NoneTape>(), eps);
    let grads = (z * s).sum::<(), _>().backward();
    let g = grads.get(a);
    (a.clone() * g.clone(), g)
}

fn positive<S: Shape, D: Device<f32>>(t: &Tensor<S, f32, D>) -> Tensor<S, f32, D> {
    t.clone().relu()
}

fn negative<S: Shape, D: Device<f32>>(t: &Tensor<S, f32, D>) -> Tensor<S, f32, D> {
    t.clone() - t.clone().relu()
}

#[allow(clippy::too_many_arguments)]
fn conv_backward<D: Device<f32>>(
    rule: LrpRule,
    rules: &LrpRules,
    a: &Tensor4<D>,
    weight: &Tensor4<D>,
    bias: &Vector<D>,
    stride: usize,
    padding: usize,
    r: Tensor4<D>,
) -> Tensor4<D> {
    let dev = a.device().clone();
    let ones = || dev.ones_like(a.shape());
    let bias_counts = rules.bias == LrpBias::Include;
    let part = |x: &Tensor4<D>, w: &Tensor4<D>, b: Option<&Vector<D>>, r: &Tensor4<D>| {
        conv_redistribute(x, w, b, stride, padding, r, rules.stabilizer).0
    };
    // Sign-split contributions: (a w)⁺ = a⁺w⁺ + a⁻w⁻ and (a w)⁻ = a⁺w⁻ + a⁻w⁺, each
    // redistributed against its own total.
    let signed = |neg: bool, r: &Tensor4<D>| -> Tensor4<D> {
        let (ap, an) = (positive(a), negative(a));
        let (wp, wn) = (positive(weight), negative(weight));
        let (w_ap, w_an) = if neg { (wn, wp) } else { (wp, wn) };
        // With the bias counted, its positive part joins z⁺ and its negative part z⁻.
        let b = match (bias_counts, neg) {
            (false, _) => dev.zeros_like(&(weight.shape().0,)),
            (true, false) => positive(bias),
            (true, true) => negative(bias),
        };
        let z = conv::conv2d(ap.clone(), w_ap.clone(), b, stride, padding)
            + conv::conv2d(
                an.clone(),
                w_an.clone(),
                dev.zeros_like(&(weight.shape().0,)),
                stride,
                padding,
            );
        let s = r.clone() / stabilise(z, rules.stabilizer);
        // ∇ of ⟨conv(x, w), s⟩ w.r.t. x, times x, for each part.
        let back = |x: &Tensor4<D>, w: &Tensor4<D>| {
            let zt = conv::conv2d(
                x.clone().leaky_trace(),
                w.clone().leaky_trace(),
                dev.zeros_like(&(w.shape().0,)).leaky_trace(),
                stride,
                padding,
            );
            let g = (zt * s.clone()).sum::<(), _>().backward().get(x);
            x.clone() * g
        };
        back(&ap, &w_ap) + back(&an, &w_an)
    };
    match rule {
        LrpRule::Epsilon => {
            conv_redistribute(a, weight, Some(bias), stride, padding, &r, rules.epsilon).0
        }
        LrpRule::Zplus => signed(false, &r),
        LrpRule::AlphaBeta => signed(false, &r) * rules.alpha - signed(true, &r) * rules.beta,
        LrpRule::Gamma => {
            let wg = weight.clone() + positive(weight) * rules.gamma;
            let bg = bias.clone() + positive(bias) * rules.gamma;
            conv_redistribute(
                a,
                &wg,
                Some(&bg),
                stride,
                padding,
                &r,
                rules.epsilon.max(rules.stabilizer),
            )
            .0
        }
        LrpRule::Flat => part(&ones(), &dev.ones_like(weight.shape()), None, &r),
        LrpRule::WSquare => {
            let b2 = bias_counts.then(|| bias.clone() * bias.clone());
            part(&ones(), &(weight.clone() * weight.clone()), b2.as_ref(), &r)
        }
        LrpRule::ZBox => {
            let (wp, wn) = (positive(weight), negative(weight));
            let low = ones() * rules.low;
            let high = ones() * rules.high;
            let o = weight.shape().0;
            let z = conv::conv2d(
                a.clone(),
                weight.clone(),
                dev.zeros_like(&(o,)),
                stride,
                padding,
            ) - conv::conv2d(
                low.clone(),
                wp.clone(),
                dev.zeros_like(&(o,)),
                stride,
                padding,
            ) - conv::conv2d(
                high.clone(),
                wn.clone(),
                dev.zeros_like(&(o,)),
                stride,
                padding,
            );
            let s = r / stabilise(z, rules.stabilizer);
            let grad_of = |x: &Tensor4<D>, w: &Tensor4<D>| {
                let zt = conv::conv2d(
                    x.clone().leaky_trace(),
                    w.clone().leaky_trace(),
                    dev.zeros_like(&(o,)).leaky_trace(),
                    stride,
                    padding,
                );
                (zt * s.clone()).sum::<(), _>().backward().get(x)
            };
            a.clone() * grad_of(a, weight)
                - low.clone() * grad_of(&low, &wp)
                - high.clone() * grad_of(&high, &wn)
        }
    }
}

/// Pooling: `a ⊙ ∇_a⟨pool(a), R / pool(a)⟩` — winner-take-all through a max, proportional
/// through an average.
fn pool_backward<D: Device<f32>>(
    a: &Tensor4<D>,
    r: Tensor4<D>,
    stabilizer: f32,
    pool: impl Fn(Tensor4<D, OwnedTape<f32, D>>) -> Tensor4<D, OwnedTape<f32, D>>,
) -> Tensor4<D> {
    let z = pool(a.clone().leaky_trace());
    let s = r / stabilise(z.retaped::<NoneTape>(), stabilizer);
    let g = (z * s).sum::<(), _>().backward().get(a);
    a.clone() * g
}

/// LRP relevance of `x` w.r.t. the logit `labels[i]` of the network's output, by `rules`
/// (dense layers `rules.dense`, conv layers `rules.conv`, the first weighted layer
/// `rules.first` if set).
pub fn lrp_sequential<D: Device<f32>>(
    layers: &[Layer<D>],
    x: Tensor4<D>,
    labels: &[crate::nn::tensor::Label],
    rules: &LrpRules,
) -> CnnRelevance {
    let acts = forward(layers, x);
    let Act::Flat(out) = acts.last().expect("output").clone() else {
        panic!("the network must end in dense layers (after Flatten)");
    };
    let (batch, classes) = *out.shape();
    let logits = out.as_vec();
    let mut start = vec![0f32; batch * classes];
    let mut explained = Vec::with_capacity(batch);
    for (i, &y) in labels.iter().enumerate() {
        let v = logits[i * classes + y as usize];
        start[i * classes + y as usize] = v;
        explained.push(v);
    }
    let dev = out.device().clone();
    let first_weighted = layers
        .iter()
        .position(|l| matches!(l, Layer::Conv { .. } | Layer::Dense { .. }));
    let mut r = Act::Flat(dev.tensor_from_vec(start, (batch, classes)));
    let mut per_layer = vec![Vec::new(); layers.len()];
    for (l, layer) in layers.iter().enumerate().rev() {
        let rule_for = |default: LrpRule| match rules.first {
            Some(f) if Some(l) == first_weighted => f,
            _ => default,
        };
        r = match (layer, &acts[l], r) {
            (Layer::Dense { weight, bias }, Act::Flat(a), Act::Flat(rr)) => {
                let z = match apply(layer, Act::Flat(a.clone())) {
                    Act::Flat(z) => z,
                    Act::Map(_) => unreachable!("dense gives a matrix"),
                };
                Act::Flat(dense_backward(
                    rule_for(rules.dense),
                    rules,
                    a,
                    &z,
                    weight,
                    bias,
                    rr,
                ))
            }
            (
                Layer::Conv {
                    weight,
                    bias,
                    stride,
                    padding,
                },
                Act::Map(a),
                Act::Map(rr),
            ) => Act::Map(conv_backward(
                rule_for(rules.conv),
                rules,
                a,
                weight,
                bias,
                *stride,
                *padding,
                rr,
            )),
            // ReLU passes relevance through unchanged (it is part of the next layer's input),
            // and so does dropout, an identity outside training.
            (Layer::Relu | Layer::LeakyRelu(_) | Layer::Dropout { .. }, _, rr) => rr,
            (Layer::AdaptiveAvgPool { h, w }, Act::Map(a), Act::Map(rr)) => {
                let (h, w) = (*h, *w);
                Act::Map(pool_backward(a, rr, rules.stabilizer, |t| {
                    conv::adaptive_avg_pool2d(t, h, w)
                }))
            }
            (Layer::MaxPool { kernel, stride }, Act::Map(a), Act::Map(rr)) => {
                let (k, s) = (*kernel, *stride);
                let pool = |t| conv::max_pool2d(t, k, s);
                Act::Map(match rules.max_pool {
                    LrpMaxPool::Proportional => pool_backward(a, rr, rules.stabilizer, pool),
                    LrpMaxPool::Gradient => (pool(a.clone().leaky_trace()) * rr)
                        .sum::<(), _>()
                        .backward()
                        .get(a),
                })
            }
            (Layer::AvgPool { kernel, stride }, Act::Map(a), Act::Map(rr)) => {
                let (k, s) = (*kernel, *stride);
                Act::Map(pool_backward(a, rr, rules.stabilizer, |t| {
                    conv::avg_pool2d(t, k, s)
                }))
            }
            (Layer::Flatten, Act::Map(a), Act::Flat(rr)) => Act::Map(rr.reshape_like(a.shape())),
            _ => panic!("relevance does not fit layer {l}"),
        };
        per_layer[l] = r.as_vec();
    }
    CnnRelevance {
        per_layer,
        explained,
    }
}

/// Per-filter scores of a conv layer's output relevance `[N, O, H, W]` (flattened), summed
/// over samples and positions with the absolute value where `abs` says.
pub fn filter_scores(
    relevance: &[f32],
    shape: (usize, usize, usize, usize),
    abs: AbsMode,
) -> Vec<f64> {
    let (n, o, h, w) = shape;
    let hw = h * w;
    let mut out = vec![0f64; o];
    for i in 0..n {
        for (f, acc) in out.iter_mut().enumerate() {
            let start = (i * o + f) * hw;
            for &v in &relevance[start..start + hw] {
                *acc += match abs {
                    AbsMode::BeforeSum => (v as f64).abs(),
                    AbsMode::None | AbsMode::AfterSum => v as f64,
                };
            }
        }
    }
    if abs == AbsMode::AfterSum {
        out.iter_mut().for_each(|v| *v = v.abs());
    }
    out
}

/// LRP of a conv model's `head` in the layout of the MLP's [`Relevance`]:
/// a dense layer's relevance is `[batch, units]`; a conv layer's is `[batch·H·W, filters]`
/// (one row per sample and position), so that the score stage's `abs` aggregation treats
/// every position of a filter like one more sample: `before_sum` sums |R| over samples *and*
/// positions, `after_sum` takes |·| of the total, `none` keeps the signed total.
pub fn lrp_model<D: Device<f32>>(
    model: &DeviceModel<D>,
    x: &Matrix<D>,
    labels: &[crate::nn::tensor::Label],
    head: usize,
    rules: &LrpRules,
) -> Relevance {
    let arch = model.arch.as_ref().expect("a conv model");
    let batch = x.shape().0;
    let [c, h, w] = arch.input;
    let (layers, act_at) = model.layers(head);
    let feats = arch.features().expect("validated architecture");
    let r = lrp_sequential(
        &layers,
        x.clone().reshape_like(&(batch, c, h, w)),
        labels,
        rules,
    );
    let hidden = arch
        .weighted()
        .iter()
        .zip(&act_at)
        .map(|(spec, &at)| unit_rows(&r.per_layer[at], feats[spec.op + 1], batch))
        .collect();
    Relevance {
        batch,
        hidden,
        input: r.per_layer[0].clone(),
        explained: r.explained,
    }
}

/// Gradient × input of a conv model (see [`DeviceModel::gradient_x_activations`]), in the
/// layout of [`lrp_model`]: a conv layer's rows are (sample, position) × filters.
pub fn gradient_x_input_model<D: Device<f32>>(
    model: &DeviceModel<D>,
    x: &Matrix<D>,
    labels: &[crate::nn::tensor::Label],
    head: usize,
) -> Relevance {
    let arch = model.arch.as_ref().expect("a conv model");
    let batch = x.shape().0;
    let feats = arch.features().expect("validated architecture");
    let (per_layer, input, explained) = model.gradient_x_activations(x, labels, head);
    let hidden = arch
        .weighted()
        .iter()
        .zip(&per_layer)
        .map(|(spec, v)| unit_rows(v, feats[spec.op + 1], batch))
        .collect();
    Relevance {
        batch,
        hidden,
        input,
        explained,
    }
}

/// A layer's per-sample values `[N, O, H, W]` (or `[N, units]`) as rows of units:
/// `[N·H·W, O]` for maps, unchanged for flat layers.
fn unit_rows(rel: &[f32], feature: crate::nn::arch::Feature, batch: usize) -> Vec<f32> {
    match feature {
        crate::nn::arch::Feature::Map(o, fh, fw) => {
            let hw = fh * fw;
            let mut rows = vec![0f32; batch * hw * o];
            for n in 0..batch {
                for f in 0..o {
                    for p in 0..hw {
                        rows[(n * hw + p) * o + f] = rel[(n * o + f) * hw + p];
                    }
                }
            }
            rows
        }
        crate::nn::arch::Feature::Flat(_) => rel.to_vec(),
    }
}
