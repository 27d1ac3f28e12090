//! Layer-wise Relevance Propagation for the multi-head MLP.
//!
//! The explained quantity is the ground-truth logit of the task's own head. Relevance flows
//! back layer by layer; each layer uses one rule, chosen by [`LrpRules`] (the last layer is the
//! head, layer 0 reads the input). With `a` a layer's input, `W` its weights, `b` its bias and
//! `R_k` the relevance of its outputs:
//!
//! - `epsilon` (Bach et al. 2015; RNF eq. 2): `R_j = a_j Σ_k w_kj R_k / (z_k + ε·sign z_k)`,
//!   `z_k = Σ_j a_j w_kj + b_k`, `sign(0) = +1`. The bias is part of `z`, so it absorbs relevance.
//! - `alpha_beta` (α − β = 1): the positive and negative parts of the contributions `a_j w_kj`
//!   are redistributed separately, `R_j = Σ_k (α (a_j w_kj)⁺ / Σ_i (a_i w_ki)⁺ − β (a_j w_kj)⁻ /
//!   Σ_i (a_i w_ki)⁻) R_k`; the bias is ignored.
//! - `zplus`: `alpha_beta` with α = 1, β = 0 (zennit's ZPlus).
//! - `gamma`: the ε form with `w + γ w⁺` and `b + γ b⁺` in place of `w` and `b`.
//! - `flat`: every input of the layer gets an equal share, `R_j = Σ_k R_k / n_in`.
//! - `w_square`: `R_j = Σ_k w_kj² / Σ_i w_ki² · R_k`.
//! - `z_box` (zᴮ, for inputs bounded in `[low, high]`): `R_j = Σ_k (a_j w_kj − low·w⁺_kj −
//!   high·w⁻_kj) / Σ_i (…) · R_k`.
//!
//! Every rule but `epsilon` and `gamma` ignores the bias and so conserves relevance exactly
//! wherever its denominators are non-zero; `epsilon` and `gamma` conserve it on bias-free layers
//! as ε → 0. The conservation tests check each rule. Denominators other than ε's are stabilised
//! by [`STABILIZER`]. Everything is composed from dfdx ops, so it runs on any dfdx device.

use crate::nn::mlp::{DeviceMlp, Matrix};
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

/// Added, with the sign of the denominator, to every denominator but ε's; it only matters
/// where a denominator is (almost) zero, and then the numerators vanish too.
pub const STABILIZER: f32 = 1e-9;

/// One layer's propagation rule.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LrpRule {
    Epsilon,
    Zplus,
    AlphaBeta,
    Gamma,
    Flat,
    WSquare,
    ZBox,
}

/// When the absolute value is taken relative to summing a unit's relevance over the reference
/// samples (and, for conv filters, over positions): how relevance becomes a unit's score, for
/// LRP and gradient × input alike.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AbsMode {
    /// Signed sum: units whose relevance is negative rank lowest.
    #[default]
    None,
    /// Sum of |R| over samples.
    BeforeSum,
    /// |sum of R| over samples.
    AfterSum,
}

/// Which rule each layer uses, and the rules' parameters. Conv layers get `conv` once the
/// model has any; `first` (if set) overrides the layer that reads the input.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrpRules {
    pub dense: LrpRule,
    pub conv: LrpRule,
    pub first: Option<LrpRule>,
    pub epsilon: f32,
    pub alpha: f32,
    pub beta: f32,
    pub gamma: f32,
    pub low: f32,
    pub high: f32,
}

impl LrpRules {
    /// LRP-ε everywhere (RNF for an MLP).
    pub fn epsilon(epsilon: f32) -> Self {
        LrpRules {
            dense: LrpRule::Epsilon,
            conv: LrpRule::Zplus,
            first: None,
            epsilon,
            alpha: 1.0,
            beta: 0.0,
            gamma: 0.25,
            low: 0.0,
            high: 1.0,
        }
    }

    /// The rule of dense layer `l` (0 reads the input).
    pub fn for_dense(&self, l: usize) -> LrpRule {
        match self.first {
            Some(r) if l == 0 => r,
            _ => self.dense,
        }
    }
}

/// Per-sample relevance of every hidden unit and every input, for one batch.
#[derive(Debug, Clone)]
pub struct Relevance {
    pub batch: usize,
    /// `hidden[l]`: row-major `[batch, units_l]` relevance of hidden layer `l`'s outputs.
    pub hidden: Vec<Vec<f32>>,
    /// `[batch, input_dim]` relevance of the input features.
    pub input: Vec<f32>,
    /// The explained logit per sample.
    pub explained: Vec<f32>,
}

/// LRP-ε relevance of `x: [batch, in]` w.r.t. the logit of class `labels[i]` in `head`.
pub fn lrp_epsilon<D: Device<f32>>(
    model: &DeviceMlp<D>,
    x: &Matrix<D>,
    labels: &[crate::nn::mlp::Label],
    head: usize,
    epsilon: f32,
) -> Relevance {
    lrp(model, x, labels, head, &LrpRules::epsilon(epsilon))
}

/// `z ± s` with the sign of `z` (`sign(0) = +1`), so the result is never closer to zero.
pub(crate) fn stabilise<S: Shape, D: Device<f32>>(
    z: Tensor<S, f32, D>,
    s: f32,
) -> Tensor<S, f32, D> {
    let shape = *z.shape();
    let dev = z.device().clone();
    let stab = z
        .ge(0.0)
        .choose(dev.ones_like(&shape) * s, dev.ones_like(&shape) * -s);
    z + stab
}

fn positive<D: Device<f32>>(t: Matrix<D>) -> Matrix<D> {
    t.relu()
}

fn negative<D: Device<f32>>(t: Matrix<D>) -> Matrix<D> {
    t.clone() - t.relu()
}

/// `Σ_j (a_j w_kj)⁺` (or `⁻` with `neg`) as `[batch, out]`, and the matching backward product
/// `R_j = Σ_k (a_j w_kj)^± s_k` for `s: [batch, out]`.
fn signed_part<D: Device<f32>>(
    a: &Matrix<D>,
    w: &Matrix<D>,
    neg: bool,
) -> (Matrix<D>, impl Fn(Matrix<D>) -> Matrix<D>) {
    let (ap, an) = (positive(a.clone()), negative(a.clone()));
    let (wp, wn) = (positive(w.clone()), negative(w.clone()));
    // (a w)⁺ = a⁺w⁺ + a⁻w⁻ and (a w)⁻ = a⁺w⁻ + a⁻w⁺.
    let (w_for_ap, w_for_an) = if neg { (wn, wp) } else { (wp, wn) };
    let z = ap
        .clone()
        .matmul(w_for_ap.clone().permute::<_, Axes2<1, 0>>())
        + an.clone()
            .matmul(w_for_an.clone().permute::<_, Axes2<1, 0>>());
    let back = move |s: Matrix<D>| {
        ap.clone() * s.clone().matmul(w_for_ap.clone()) + an.clone() * s.matmul(w_for_an.clone())
    };
    (z, back)
}

/// Relevance of one dense layer's inputs `a: [batch, in]` from its outputs' `r: [batch, out]`.
/// `z` is the layer's pre-activation (used by ε, which must stay bit-identical to its
/// original form).
#[allow(clippy::too_many_arguments)]
pub(crate) fn dense_backward<D: Device<f32>>(
    rule: LrpRule,
    rules: &LrpRules,
    a: &Matrix<D>,
    z: &Matrix<D>,
    w: &Matrix<D>,
    b: &Tensor<(usize,), f32, D>,
    r: Matrix<D>,
) -> Matrix<D> {
    let (batch, n_in) = *a.shape();
    let n_out = w.shape().0;
    let dev = a.device().clone();
    match rule {
        LrpRule::Epsilon => {
            let shape = *z.shape();
            let sign = z.ge(0.0);
            let stab = sign.choose(
                dev.ones_like(&shape) * rules.epsilon,
                dev.ones_like(&shape) * -rules.epsilon,
            );
            let s = r / (z.clone() + stab);
            a.clone() * s.matmul(w.clone())
        }
        LrpRule::Zplus | LrpRule::AlphaBeta => {
            let (alpha, beta) = if rule == LrpRule::Zplus {
                (1.0, 0.0)
            } else {
                (rules.alpha, rules.beta)
            };
            let (zp, back_p) = signed_part(a, w, false);
            let mut out = back_p(r.clone() / stabilise(zp, STABILIZER)) * alpha;
            if beta != 0.0 {
                let (zn, back_n) = signed_part(a, w, true);
                out = out - back_n(r / stabilise(zn, STABILIZER)) * beta;
            }
            out
        }
        LrpRule::Gamma => {
            let wg = w.clone() + positive(w.clone()) * rules.gamma;
            let bg = b.clone() + b.clone().relu() * rules.gamma;
            let zg = a.clone().matmul(wg.clone().permute::<_, Axes2<1, 0>>())
                + bg.broadcast_like::<_, Axis<0>>(&(batch, n_out));
            let s = r / stabilise(zg, rules.epsilon.max(STABILIZER));
            a.clone() * s.matmul(wg)
        }
        LrpRule::Flat => {
            let total = r.sum::<(usize,), Axis<1>>(); // [batch]
            (total / n_in as f32).broadcast_like::<_, Axis<1>>(&(batch, n_in))
        }
        LrpRule::WSquare => {
            let w2 = w.clone() * w.clone();
            let denom = w2.clone().sum::<(usize,), Axis<1>>(); // [out]
            let denom = stabilise(
                denom.broadcast_like::<_, Axis<0>>(&(batch, n_out)),
                STABILIZER,
            );
            (r / denom).matmul(w2)
        }
        LrpRule::ZBox => {
            let (wp, wn) = (positive(w.clone()), negative(w.clone()));
            let ones = dev.ones_like(&(batch, n_in));
            let z = a.clone().matmul(w.clone().permute::<_, Axes2<1, 0>>())
                - ones.clone().matmul(wp.clone().permute::<_, Axes2<1, 0>>()) * rules.low
                - ones.matmul(wn.clone().permute::<_, Axes2<1, 0>>()) * rules.high;
            let s = r / stabilise(z, STABILIZER);
            a.clone() * s.clone().matmul(w.clone())
                - s.clone().matmul(wp) * rules.low
                - s.matmul(wn) * rules.high
        }
    }
}

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
    model: &DeviceMlp<D>,
    x: &Matrix<D>,
    labels: &[crate::nn::mlp::Label],
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
            acts.push(crate::nn::mlp::activation(z.clone(), model.negative_slope));
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

/// Relevance of `x: [batch, in]` w.r.t. the logit of class `labels[i]` in `head`, by `rules`.
pub fn lrp<D: Device<f32>>(
    model: &DeviceMlp<D>,
    x: &Matrix<D>,
    labels: &[crate::nn::mlp::Label],
    head: usize,
    rules: &LrpRules,
) -> Relevance {
    if model.arch.is_some() {
        return crate::xai::lrp_cnn::lrp_model(model, x, labels, head, rules);
    }
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
/// the true-class logit w.r.t. it, per sample. Same layout as [`lrp`]; not conservative.
pub fn gradient_x_input<D: Device<f32>>(
    model: &DeviceMlp<D>,
    x: &Matrix<D>,
    labels: &[crate::nn::mlp::Label],
    head: usize,
) -> Relevance {
    if model.arch.is_some() {
        return crate::xai::lrp_cnn::gradient_x_input_model(model, x, labels, head);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::mlp::{DenseParams, MlpParams};
    use rand::SeedableRng;

    #[test]
    fn relevance_is_conserved_in_a_bias_free_mlp() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut p = MlpParams::init(12, &[9, 7], &mut rng);
        p.push_head(3, &mut rng);
        for l in p.trunk.iter_mut().chain(p.heads.iter_mut()) {
            l.bias.iter_mut().for_each(|b| *b = 0.0);
        }
        let dev = Cpu::default();
        let m = DeviceMlp::from_host(&dev, &p);
        let x: Vec<f32> = (0..48).map(|i| ((i * 37 % 11) as f32) / 10.0).collect();
        let xt = dev.tensor_from_vec(x, (4, 12));
        let labels = [0u16, 1, 2, 1];
        let r = lrp_epsilon(&m, &xt, &labels, 0, 1e-9);
        for i in 0..4 {
            let f = r.explained[i] as f64;
            let sum_in: f64 = r.input[i * 12..(i + 1) * 12]
                .iter()
                .map(|&v| v as f64)
                .sum();
            assert!(
                (sum_in - f).abs() <= 1e-3 * f.abs().max(1e-6),
                "sample {i}: {sum_in} vs {f}"
            );
            for (l, h) in r.hidden.iter().enumerate() {
                let u = h.len() / 4;
                let s: f64 = h[i * u..(i + 1) * u].iter().map(|&v| v as f64).sum();
                assert!(
                    (s - f).abs() <= 1e-3 * f.abs().max(1e-6),
                    "layer {l}: {s} vs {f}"
                );
            }
        }
    }

    fn bias_free(input: usize, hidden: &[usize], classes: usize, seed: u64) -> MlpParams {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut p = MlpParams::init(input, hidden, &mut rng);
        p.push_head(classes, &mut rng);
        for l in p.trunk.iter_mut().chain(p.heads.iter_mut()) {
            l.bias.iter_mut().for_each(|b| *b = 0.0);
        }
        p
    }

    /// Σ relevance of the input and of every hidden layer equals the explained logit, per sample.
    fn assert_conserved(r: &Relevance, input: usize, what: &str) {
        for i in 0..r.batch {
            let f = r.explained[i] as f64;
            let tol = 1e-3 * f.abs().max(1e-3);
            let s: f64 = r.input[i * input..(i + 1) * input]
                .iter()
                .map(|&v| v as f64)
                .sum();
            assert!((s - f).abs() <= tol, "{what}: sample {i} input {s} vs {f}");
            for (l, h) in r.hidden.iter().enumerate() {
                let u = h.len() / r.batch;
                let s: f64 = h[i * u..(i + 1) * u].iter().map(|&v| v as f64).sum();
                assert!(
                    (s - f).abs() <= tol,
                    "{what}: sample {i} layer {l} {s} vs {f}"
                );
            }
        }
    }

    #[test]
    fn every_rule_conserves_relevance_in_a_bias_free_mlp() {
        // Wide enough that every output has positive and negative contributions, where the
        // sign-splitting rules conserve.
        let p = bias_free(12, &[24, 20], 3, 11);
        let dev = Cpu::default();
        let m = DeviceMlp::from_host(&dev, &p);
        let x: Vec<f32> = (0..48).map(|i| ((i * 37 % 11) as f32) / 10.0).collect();
        let xt = dev.tensor_from_vec(x, (4, 12));
        let labels = [0u16, 1, 2, 1];
        let rules = [
            LrpRule::Epsilon,
            LrpRule::Zplus,
            LrpRule::AlphaBeta,
            LrpRule::Gamma,
            LrpRule::Flat,
            LrpRule::WSquare,
            LrpRule::ZBox,
        ];
        for rule in rules {
            let mut cfg = LrpRules::epsilon(1e-9);
            cfg.dense = rule;
            cfg.alpha = 2.0;
            cfg.beta = 1.0;
            cfg.low = 0.0;
            cfg.high = 1.1;
            let r = lrp(&m, &xt, &labels, 0, &cfg);
            assert_conserved(&r, 12, &format!("{rule:?}"));
        }
        // A composite: ε above a flat first layer (zennit's EpsilonPlusFlat on an MLP).
        let mut cfg = LrpRules::epsilon(1e-9);
        cfg.first = Some(LrpRule::Flat);
        let r = lrp(&m, &xt, &labels, 0, &cfg);
        assert_conserved(&r, 12, "epsilon + flat first");
        for i in 0..4 {
            let row = &r.input[i * 12..(i + 1) * 12];
            assert!(row
                .iter()
                .all(|&v| (v - row[0]).abs() <= 1e-6 * row[0].abs().max(1e-6)));
        }
    }

    #[test]
    fn alpha_beta_splits_positive_and_negative_contributions() {
        // An identity hidden layer (explained by ε, which passes relevance through unchanged),
        // then a head whose contributions a_j w_j are [3, -1, 0.5].
        let dense = |out_dim: usize, in_dim: usize, weight: Vec<f32>| DenseParams {
            out_dim,
            in_dim,
            weight,
            bias: vec![0.0; out_dim],
        };
        let p = MlpParams {
            trunk: vec![dense(3, 3, vec![1., 0., 0., 0., 1., 0., 0., 0., 1.])],
            heads: vec![dense(1, 3, vec![1.5, -0.5, 0.25])],
            negative_slope: 0.0,
            arch: None,
        };
        let dev = Cpu::default();
        let m = DeviceMlp::from_host(&dev, &p);
        let xt = dev.tensor_from_vec(vec![2.0f32, 2.0, 2.0], (1, 3));
        let mut cfg = LrpRules::epsilon(1e-9);
        cfg.first = Some(LrpRule::Epsilon);
        cfg.dense = LrpRule::AlphaBeta;
        cfg.alpha = 2.0;
        cfg.beta = 1.0;
        let r = lrp(&m, &xt, &[0], 0, &cfg);
        let f = 3.0 - 1.0 + 0.5;
        let (pos, neg) = (3.5, -1.0);
        let want = [2.0 * 3.0 / pos * f, -(-1.0 / neg) * f, 2.0 * 0.5 / pos * f];
        for (g, w) in r.input.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{:?} vs {want:?}", r.input);
        }
        // z⁺ (α = 1, β = 0) gives the negative contribution nothing.
        cfg.dense = LrpRule::Zplus;
        let r = lrp(&m, &xt, &[0], 0, &cfg);
        assert_eq!(r.input[1], 0.0);
        assert!((r.input[0] as f64 - 3.0 / pos * f).abs() < 1e-5);
    }

    #[test]
    fn gradient_x_input_matches_finite_differences_and_euler() {
        let dev = Cpu::default();
        let x: Vec<f32> = (0..24).map(|i| ((i * 29 % 13) as f32) / 12.0).collect();
        let labels = [2u16, 0];
        // With biases: compare the input's gradient × input with central differences.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut p = MlpParams::init(12, &[10, 8], &mut rng);
        p.push_head(3, &mut rng);
        let m = DeviceMlp::from_host(&dev, &p);
        let r = gradient_x_input(&m, &dev.tensor_from_vec(x.clone(), (2, 12)), &labels, 0);
        let logit = |xs: &[f32], i: usize| -> f64 {
            let t = dev.tensor_from_vec(xs.to_vec(), (1, 12));
            m.logits(&t, 0, None).as_vec()[labels[i] as usize] as f64
        };
        for i in 0..2 {
            for j in 0..12 {
                let h = 1e-2f32;
                let mut up = x[i * 12..(i + 1) * 12].to_vec();
                let mut down = up.clone();
                up[j] += h;
                down[j] -= h;
                let grad = (logit(&up, i) - logit(&down, i)) / (2.0 * h as f64);
                let want = x[i * 12 + j] as f64 * grad;
                let got = r.input[i * 12 + j] as f64;
                assert!(
                    (got - want).abs() < 1e-3,
                    "sample {i} input {j}: {got} vs {want}"
                );
            }
        }
        // Bias-free ReLU nets are positively homogeneous, so by Euler's theorem every layer's
        // Σ a·∂f/∂a equals f.
        let m = DeviceMlp::from_host(&dev, &bias_free(12, &[10, 8], 3, 5));
        let r = gradient_x_input(&m, &dev.tensor_from_vec(x.clone(), (2, 12)), &labels, 0);
        assert_conserved(&r, 12, "gradient x input");
        // Leaky ReLU is positively homogeneous too; its model file keeps the slope.
        let mut leaky = bias_free(12, &[10, 8], 3, 5);
        leaky.negative_slope = 0.2;
        let back = MlpParams::from_tensors(leaky.to_tensors()).unwrap();
        assert_eq!(back, leaky);
        let m = DeviceMlp::from_host(&dev, &back);
        let r = gradient_x_input(&m, &dev.tensor_from_vec(x, (2, 12)), &labels, 0);
        assert_conserved(&r, 12, "gradient x input, leaky");
    }

    #[test]
    fn biases_absorb_relevance() {
        // With biases, conservation must *not* hold in general: the test above can fail.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut p = MlpParams::init(6, &[5], &mut rng);
        p.push_head(2, &mut rng);
        p.trunk[0].bias.iter_mut().for_each(|b| *b = 0.5);
        let dev = Cpu::default();
        let m = DeviceMlp::from_host(&dev, &p);
        let xt = dev.tensor_from_vec(vec![0.1f32; 6], (1, 6));
        let r = lrp_epsilon(&m, &xt, &[0], 0, 1e-9);
        let sum_in: f32 = r.input.iter().sum();
        assert!((sum_in - r.explained[0]).abs() > 1e-3);
    }
}
