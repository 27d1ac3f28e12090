//! LRP and gradient × input through the MLP: dense layers on the flattened input, explained
//! layer by layer backwards over one kept forward pass (each layer's input and
//! pre-activation).

use super::rules::{dense_backward, LrpRules, Relevance};
use crate::nn::model::DeviceModel;
use crate::nn::tensor::Matrix;
use dfdx::prelude::*;

/// One forward pass kept for a backward sweep: each layer's input activation and
/// pre-activation, its weights and bias, and the start signal (the true-class logit only).
struct Forward<D: Device<f32>> {
    acts: Vec<Matrix<D>>,
    zs: Vec<Matrix<D>>,
    weights: Vec<Matrix<D>>,
    biases: Vec<Tensor<(usize,), f32, D>>,
    start: Matrix<D>,
    explained: Vec<f32>,
}

fn forward<D: Device<f32>>(
    model: &DeviceModel<D>,
    x: &Matrix<D>,
    labels: &[crate::nn::tensor::Label],
    head: usize,
    start_with_logit: bool,
) -> Forward<D> {
    let batch = x.shape().0;
    let path = model.path(head);
    let mut shapes: Vec<(usize, usize)> = model.shapes[..model.n_trunk].to_vec();
    shapes.push(model.shapes[model.n_trunk + head]);
    let weights: Vec<Matrix<D>> = shapes
        .iter()
        .enumerate()
        .map(|(l, &(o, i))| model.params[path[2 * l]].clone().reshape_like(&(o, i)))
        .collect();
    let biases: Vec<_> = (0..shapes.len())
        .map(|l| model.params[path[2 * l + 1]].clone())
        .collect();

    let mut acts: Vec<Matrix<D>> = vec![x.clone()];
    let mut zs: Vec<Matrix<D>> = Vec::new();
    for (l, &(o, _)) in shapes.iter().enumerate() {
        let a = acts.last().expect("input").clone();
        let z = a.matmul(weights[l].clone().permute::<_, Axes2<1, 0>>())
            + biases[l].clone().broadcast_like::<_, Axis<0>>(&(batch, o));
        if l + 1 < shapes.len() {
            acts.push(crate::nn::model::activation(
                z.clone(),
                model.negative_slope,
            ));
        }
        zs.push(z);
    }

    // Only the true-class logit is explained: relevance starts as its value, a gradient as 1.
    let classes = shapes.last().expect("head").0;
    let logits = zs.last().expect("head").as_vec();
    let mut start = vec![0f32; batch * classes];
    let mut explained = Vec::with_capacity(batch);
    for (i, &y) in labels.iter().enumerate() {
        let v = logits[i * classes + y as usize];
        start[i * classes + y as usize] = if start_with_logit { v } else { 1.0 };
        explained.push(v);
    }
    let start = model.dev.tensor_from_vec(start, (batch, classes));
    Forward {
        acts,
        zs,
        weights,
        biases,
        start,
        explained,
    }
}

/// An MLP's relevance of `x: [batch, in]` w.r.t. the logit of class `labels[i]` in `head`,
/// by `rules`.
pub fn lrp<D: Device<f32>>(
    model: &DeviceModel<D>,
    x: &Matrix<D>,
    labels: &[crate::nn::tensor::Label],
    head: usize,
    rules: &LrpRules,
) -> Relevance {
    let f = forward(model, x, labels, head, true);
    let layers = f.weights.len();
    let mut r = f.start;
    let mut hidden = vec![Vec::new(); layers - 1];
    for l in (0..layers).rev() {
        r = dense_backward(
            rules.for_dense(l),
            rules,
            &f.acts[l],
            &f.zs[l],
            &f.weights[l],
            &f.biases[l],
            r,
        );
        if l > 0 {
            hidden[l - 1] = r.as_vec();
        }
    }
    Relevance {
        batch: x.shape().0,
        hidden,
        input: r.as_vec(),
        explained: f.explained,
    }
}

/// Gradient × input: each hidden unit's (and input feature's) activation times the gradient of
/// the true-class logit w.r.t. it, per sample, for an MLP. Same layout as [`lrp`]; not
/// conservative.
pub fn gradient_x_input<D: Device<f32>>(
    model: &DeviceModel<D>,
    x: &Matrix<D>,
    labels: &[crate::nn::tensor::Label],
    head: usize,
) -> Relevance {
    let f = forward(model, x, labels, head, false);
    let slope = model.negative_slope;
    let layers = f.weights.len();
    // `g` is the gradient w.r.t. layer l's pre-activation; below it, w.r.t. its input.
    let mut g = f.start;
    let mut hidden = vec![Vec::new(); layers - 1];
    let mut input = Vec::new();
    for l in (0..layers).rev() {
        let g_in = g.clone().matmul(f.weights[l].clone());
        let gxi = (f.acts[l].clone() * g_in.clone()).as_vec();
        if l > 0 {
            hidden[l - 1] = gxi;
            // (Leaky) ReLU: slope 1 where the pre-activation was positive, else its negative slope.
            let on = f.zs[l - 1].clone().gt(0.0);
            let off = g_in.clone() * slope;
            g = on.choose(g_in, off);
        } else {
            input = gxi;
        }
    }
    Relevance {
        batch: x.shape().0,
        hidden,
        input,
        explained: f.explained,
    }
}
