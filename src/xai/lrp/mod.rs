//! Layer-wise Relevance Propagation for the multi-head model: [`lrp`] and [`gradient_x_input`]
//! explain an MLP in `dense` and a conv model in `conv`, with the rules of `rules`.
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
//!   Σ_i (a_i w_ki)⁻) R_k`; the bias is ignored unless [`LrpBias::Include`] adds `b_k⁺` to the
//!   first total and `b_k⁻` to the second.
//! - `zplus`: `alpha_beta` with α = 1, β = 0 (zennit's ZPlus under zennit's convention).
//! - `gamma`: the ε form with `w + γ w⁺` and `b + γ b⁺` in place of `w` and `b`.
//! - `flat`: every input of the layer gets an equal share, `R_j = Σ_k R_k / n_in`.
//! - `w_square`: `R_j = Σ_k w_kj² / Σ_i w_ki² · R_k`.
//! - `z_box` (zᴮ, for inputs bounded in `[low, high]`): `R_j = Σ_k (a_j w_kj − low·w⁺_kj −
//!   high·w⁻_kj) / Σ_i (…) · R_k`.
//!
//! Under cfpipe's convention (the default) every rule but `epsilon` and `gamma` ignores the
//! bias and so conserves relevance exactly wherever its denominators are non-zero; `epsilon` and
//! `gamma` conserve it on bias-free layers as ε → 0. The conservation tests check each rule.
//! Denominators other than ε's are stabilised by [`STABILIZER`] (1e-9), and a max-pooling layer
//! is treated like any other (`R_j = a_j ∂z/∂a_j R / z`).
//!
//! zennit 0.5.1's convention differs in three places, each a keyed option ([`LrpRules`]'s
//! `bias`, `stabilizer` and `max_pool`; `convention: zennit` sets all three): z⁺, αβ and w²
//! count the bias ([`LrpBias`]), the stabilizer is 1e-6, and max-pooling passes relevance by
//! the gradient to the window's first maximum ([`LrpMaxPool`]). Under it cfpipe reproduces
//! zennit's input relevance to a relative L2 of 1e-7 for EpsilonPlus, EpsilonPlusFlat,
//! EpsilonAlpha2Beta1, w² and zᴮ (`tests/lrp_zennit.rs`, against values computed by
//! `scripts/zennit_reference.py`). zennit's γ takes its denominator by the sign of each output,
//! which cfpipe's γ does not, so γ is not offered under zennit's name.
//!
//! Everything is composed from dfdx ops, so it runs on any dfdx device.

//!
//! Layout: `rules` (the rule vocabulary, the stabiliser, the dense backward step) is shared
//! by `dense` and `conv`; this module only dispatches, so neither depends on the other.

pub mod conv;
mod dense;
mod rules;

pub use rules::{
    AbsMode, LrpBias, LrpMaxPool, LrpRule, LrpRules, Relevance, STABILIZER, ZENNIT_STABILIZER,
};

use crate::nn::model::DeviceModel;
use crate::nn::tensor::Matrix;
use dfdx::prelude::*;

/// Relevance of `x: [batch, in]` w.r.t. the logit of class `labels[i]` in `head`, by `rules`.
pub fn lrp<D: Device<f32>>(
    model: &DeviceModel<D>,
    x: &Matrix<D>,
    labels: &[crate::nn::tensor::Label],
    head: usize,
    rules: &LrpRules,
) -> Relevance {
    match model.arch {
        Some(_) => conv::lrp_model(model, x, labels, head, rules),
        None => dense::lrp(model, x, labels, head, rules),
    }
}

/// Gradient × input: each hidden unit's (and input feature's) activation times the gradient of
/// the true-class logit w.r.t. it, per sample. Same layout as [`lrp`]; not conservative.
pub fn gradient_x_input<D: Device<f32>>(
    model: &DeviceModel<D>,
    x: &Matrix<D>,
    labels: &[crate::nn::tensor::Label],
    head: usize,
) -> Relevance {
    match model.arch {
        Some(_) => conv::gradient_x_input_model(model, x, labels, head),
        None => dense::gradient_x_input(model, x, labels, head),
    }
}

/// LRP-ε relevance of `x: [batch, in]` w.r.t. the logit of class `labels[i]` in `head`.
pub fn lrp_epsilon<D: Device<f32>>(
    model: &DeviceModel<D>,
    x: &Matrix<D>,
    labels: &[crate::nn::tensor::Label],
    head: usize,
    epsilon: f32,
) -> Relevance {
    lrp(model, x, labels, head, &LrpRules::epsilon(epsilon))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::model::{DenseParams, ModelParams};
    use rand::SeedableRng;

    #[test]
    fn relevance_is_conserved_in_a_bias_free_mlp() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut p = ModelParams::init(12, &[9, 7], &mut rng);
        p.push_head(3, &mut rng);
        for l in p.trunk.iter_mut().chain(p.heads.iter_mut()) {
            l.bias.iter_mut().for_each(|b| *b = 0.0);
        }
        let dev = Cpu::default();
        let m = DeviceModel::from_host(&dev, &p);
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

    fn bias_free(input: usize, hidden: &[usize], classes: usize, seed: u64) -> ModelParams {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut p = ModelParams::init(input, hidden, &mut rng);
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
        let m = DeviceModel::from_host(&dev, &p);
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
        let p = ModelParams {
            trunk: vec![dense(3, 3, vec![1., 0., 0., 0., 1., 0., 0., 0., 1.])],
            heads: vec![dense(1, 3, vec![1.5, -0.5, 0.25])],
            negative_slope: 0.0,
            arch: None,
            scenario: Default::default(),
        };
        let dev = Cpu::default();
        let m = DeviceModel::from_host(&dev, &p);
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
        let mut p = ModelParams::init(12, &[10, 8], &mut rng);
        p.push_head(3, &mut rng);
        let m = DeviceModel::from_host(&dev, &p);
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
        let m = DeviceModel::from_host(&dev, &bias_free(12, &[10, 8], 3, 5));
        let r = gradient_x_input(&m, &dev.tensor_from_vec(x.clone(), (2, 12)), &labels, 0);
        assert_conserved(&r, 12, "gradient x input");
        // Leaky ReLU is positively homogeneous too; its model file keeps the slope.
        let mut leaky = bias_free(12, &[10, 8], 3, 5);
        leaky.negative_slope = 0.2;
        let back = ModelParams::from_tensors(leaky.to_tensors()).unwrap();
        assert_eq!(back, leaky);
        let m = DeviceModel::from_host(&dev, &back);
        let r = gradient_x_input(&m, &dev.tensor_from_vec(x, (2, 12)), &labels, 0);
        assert_conserved(&r, 12, "gradient x input, leaky");
    }

    #[test]
    fn biases_absorb_relevance() {
        // With biases, conservation must *not* hold in general: the test above can fail.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut p = ModelParams::init(6, &[5], &mut rng);
        p.push_head(2, &mut rng);
        p.trunk[0].bias.iter_mut().for_each(|b| *b = 0.5);
        let dev = Cpu::default();
        let m = DeviceModel::from_host(&dev, &p);
        let xt = dev.tensor_from_vec(vec![0.1f32; 6], (1, 6));
        let r = lrp_epsilon(&m, &xt, &[0], 0, 1e-9);
        let sum_in: f32 = r.input.iter().sum();
        assert!((sum_in - r.explained[0]).abs() > 1e-3);
    }
}
