//! Layer-wise Relevance Propagation for the multi-head MLP.
//!
//! The explained quantity is the ground-truth logit of the task's own head. Relevance flows
//! back through each dense layer by the ε-rule (Bach et al. 2015; RNF eq. 2):
//!
//! `R_j = a_j · Σ_k w_kj · R_k / (z_k + ε·sign(z_k))`, with `z_k = Σ_j a_j w_kj + b_k`
//!
//! where `sign(0) = +1`. The bias is part of `z` (the paper's `Σ_{0,j}`), so relevance is
//! conserved exactly only for bias-free layers with ε → 0; that is what the conservation test
//! checks. Everything is composed from dfdx ops, so it runs on any dfdx device.

use crate::nn::mlp::{DeviceMlp, Matrix};
use dfdx::prelude::*;

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
    labels: &[u8],
    head: usize,
    epsilon: f32,
) -> Relevance {
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

    // Forward, keeping each layer's input activation and pre-activation.
    let mut acts: Vec<Matrix<D>> = vec![x.clone()];
    let mut zs: Vec<Matrix<D>> = Vec::new();
    for (l, &(o, _)) in shapes.iter().enumerate() {
        let a = acts.last().expect("input").clone();
        let z = a.matmul(weights[l].clone().permute::<_, Axes2<1, 0>>())
            + biases[l].clone().broadcast_like::<_, Axis<0>>(&(batch, o));
        if l + 1 < shapes.len() {
            acts.push(z.clone().relu());
        }
        zs.push(z);
    }

    // Start: only the true-class logit carries relevance.
    let classes = shapes.last().expect("head").0;
    let logits = zs.last().expect("head").as_vec();
    let mut start = vec![0f32; batch * classes];
    let mut explained = Vec::with_capacity(batch);
    for (i, &y) in labels.iter().enumerate() {
        let v = logits[i * classes + y as usize];
        start[i * classes + y as usize] = v;
        explained.push(v);
    }
    let mut r: Matrix<D> = model.dev.tensor_from_vec(start, (batch, classes));

    let mut hidden = vec![Vec::new(); shapes.len() - 1];
    for l in (0..shapes.len()).rev() {
        let z = zs[l].clone();
        let sign = z.ge(0.0);
        let shape = *z.shape();
        let stab = sign.choose(
            model.dev.ones_like(&shape) * epsilon,
            model.dev.ones_like(&shape) * -epsilon,
        );
        let s = r / (z + stab);
        let c = s.matmul(weights[l].clone());
        r = acts[l].clone() * c;
        if l > 0 {
            hidden[l - 1] = r.as_vec();
        }
    }
    Relevance {
        batch,
        hidden,
        input: r.as_vec(),
        explained,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::mlp::MlpParams;
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
        let labels = [0u8, 1, 2, 1];
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
