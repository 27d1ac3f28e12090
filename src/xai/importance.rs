//! Weight-level importance measures (the EWC family) and their aggregation to units.
//!
//! Each method gives one non-negative number per parameter on the path of a task's head
//! (every trunk layer and that head), from samples of the task:
//!
//! - `fisher`: the diagonal of the empirical Fisher information, `E[(∂ log p(y|x)/∂θ)²]`.
//!   `labels: ground_truth` uses the dataset label, `predicted` the model's argmax (the "true
//!   Fisher" of EWC's original formulation samples from the model; argmax is its common
//!   deterministic stand-in). `gradients: per_sample` squares each sample's gradient (the
//!   definition); `per_batch` squares mini-batch mean gradients, which is cheaper but
//!   smaller by about the batch size for uncorrelated samples.
//! - `mas` (Aljundi et al.): `E[|∂ ‖f(x)‖² / ∂θ|]`, per sample, over the head's logits.
//! - `sig` (Kutalev): `|w_ij| · E[|a_j|]`, the signal a weight passes (bias: `|b_i|`).
//!
//! `to_units` sums |importance| over each hidden unit's incoming weights and bias, or over its
//! outgoing weights (into the next layer, or the task's head after the last hidden layer).
//! Conv models need no special case there: weights are stored channel-major (`[O, C·kh·kw]`,
//! flatten in NCHW order), so the next layer reads unit `j` through one contiguous block of
//! columns per output row. Only `sig`'s mean input magnitude looks at a conv layer's geometry
//! (the window taps, with padding).

use crate::nn::model::{DeviceModel, Objective};
use crate::nn::tensor::argmax_rows;
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

/// How EWC's quadratics from earlier tasks combine (`ewc.mode`; see `stages::consolidate`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum EwcMode {
    /// One quadratic per earlier task (Kirkpatrick et al.).
    #[default]
    Separate,
    /// One quadratic around the latest parameters, earlier importance decayed (Schwarz et al.).
    Online,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FisherLabels {
    GroundTruth,
    Predicted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GradientMode {
    PerSample,
    PerBatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnitRule {
    /// Sum of |importance| of the unit's incoming weights and bias.
    #[default]
    Incoming,
    /// Sum of |importance| of the unit's outgoing weights.
    Outgoing,
}

/// Importance per parameter of the path, as `(weight [out·in], bias [out])` per layer:
/// trunk layers first, then the head.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightImportance {
    pub shapes: Vec<(usize, usize)>,
    pub layers: Vec<(Vec<f64>, Vec<f64>)>,
}

impl WeightImportance {
    fn zeros(shapes: &[(usize, usize)]) -> Self {
        WeightImportance {
            shapes: shapes.to_vec(),
            layers: shapes
                .iter()
                .map(|&(o, i)| (vec![0.0; o * i], vec![0.0; o]))
                .collect(),
        }
    }
    fn add(&mut self, grads: &[Vec<f32>], f: impl Fn(f64) -> f64, scale: f64) {
        for (l, (w, b)) in self.layers.iter_mut().enumerate() {
            for (acc, &g) in w.iter_mut().zip(&grads[2 * l]) {
                *acc += f(g as f64) * scale;
            }
            for (acc, &g) in b.iter_mut().zip(&grads[2 * l + 1]) {
                *acc += f(g as f64) * scale;
            }
        }
    }
}

fn path_shapes<D: Device<f32>>(m: &DeviceModel<D>, head: usize) -> Vec<(usize, usize)> {
    let mut s = m.shapes[..m.n_trunk].to_vec();
    s.push(m.shapes[m.n_trunk + head]);
    s
}

/// Samples as `(pixels [n·dim], local labels [n])`.
pub struct Batch<'a> {
    pub x: &'a [u8],
    pub y: &'a [crate::nn::tensor::Label],
    pub dim: usize,
}

impl Batch<'_> {
    fn len(&self) -> usize {
        self.y.len()
    }
    fn range(&self, a: usize, b: usize) -> (&[u8], &[crate::nn::tensor::Label]) {
        (&self.x[a * self.dim..b * self.dim], &self.y[a..b])
    }
}

pub fn fisher<D: Device<f32>>(
    m: &DeviceModel<D>,
    data: &Batch,
    head: usize,
    labels: FisherLabels,
    mode: GradientMode,
    batch_size: usize,
) -> WeightImportance {
    let shapes = path_shapes(m, head);
    let classes = shapes.last().expect("head").0;
    let mut imp = WeightImportance::zeros(&shapes);
    let step = match mode {
        GradientMode::PerSample => 1,
        GradientMode::PerBatch => batch_size.max(1),
    };
    let n_chunks = data.len().div_ceil(step);
    for c in 0..n_chunks {
        let (xs, ys) = data.range(c * step, ((c + 1) * step).min(data.len()));
        let x = m.input(xs);
        let y: Vec<crate::nn::tensor::Label> = match labels {
            FisherLabels::GroundTruth => ys.to_vec(),
            FisherLabels::Predicted => argmax_rows(&m.logits(&x, head, None).as_vec(), classes)
                .into_iter()
                .map(|c| c as crate::nn::tensor::Label)
                .collect(),
        };
        let (_, g) = m.grads_of(&x, head, Objective::CrossEntropy(&y));
        let g: Vec<Vec<f32>> = g.into_iter().map(|(_, t)| t.as_vec()).collect();
        imp.add(&g, |v| v * v, 1.0 / n_chunks as f64);
    }
    imp
}

pub fn mas<D: Device<f32>>(m: &DeviceModel<D>, data: &Batch, head: usize) -> WeightImportance {
    let shapes = path_shapes(m, head);
    let mut imp = WeightImportance::zeros(&shapes);
    let n = data.len();
    for i in 0..n {
        let (xs, _) = data.range(i, i + 1);
        let x = m.input(xs);
        let (_, g) = m.grads_of(&x, head, Objective::SquaredNorm);
        let g: Vec<Vec<f32>> = g.into_iter().map(|(_, t)| t.as_vec()).collect();
        imp.add(&g, f64::abs, 1.0 / n as f64);
    }
    imp
}

pub fn sig<D: Device<f32>>(m: &DeviceModel<D>, data: &Batch, head: usize) -> WeightImportance {
    let shapes = path_shapes(m, head);
    let mean_abs = mean_abs_inputs(m, data, head);
    let path = m.path(head);
    let layers = shapes
        .iter()
        .enumerate()
        .map(|(l, &(o, i))| {
            let w = m.params[path[2 * l]].as_vec();
            let b = m.params[path[2 * l + 1]].as_vec();
            let wi = (0..o * i)
                .map(|k| (w[k] as f64).abs() * mean_abs[l][k % i])
                .collect();
            let bi = b.iter().map(|&v| (v as f64).abs()).collect();
            (wi, bi)
        })
        .collect();
    WeightImportance { shapes, layers }
}

/// Samples per forward pass of [`mean_abs_inputs`]: bounds the memory of a conv model's
/// activations (a 224×224 VGG-16 holds ~60 MB per image) without changing the result, since
/// the running sums add samples in order either way.
const SIG_CHUNK: usize = 32;

/// For every layer of the path (trunk, then head), the mean over samples of |the input each
/// weight multiplies|, one value per weight column (`in_dim` of the layer). A dense layer's
/// column is an input unit. A conv layer's column `(c, ky, kx)` reads input channel `c` at
/// offset `(ky, kx)` of every output position's window, so its mean runs over samples and
/// output positions, with zero padding counted as the zero it is.
fn mean_abs_inputs<D: Device<f32>>(m: &DeviceModel<D>, data: &Batch, head: usize) -> Vec<Vec<f64>> {
    let shapes = path_shapes(m, head);
    let mut sums: Vec<Vec<f64>> = shapes.iter().map(|&(_, i)| vec![0.0; i]).collect();
    let n = data.len().max(1) as f64;
    let chunk = m.batch_within(SIG_CHUNK, 1, false);
    for start in (0..data.len()).step_by(chunk) {
        let (xs, _) = data.range(start, (start + chunk).min(data.len()));
        let x = m.input(xs);
        match &m.arch {
            None => {
                let acts = m.activations(&x);
                for (l, sum) in sums.iter_mut().enumerate() {
                    for row in acts[l].chunks_exact(sum.len()) {
                        for (acc, &a) in sum.iter_mut().zip(row) {
                            *acc += (a as f64).abs() / n;
                        }
                    }
                }
            }
            Some(arch) => {
                let batch = x.shape().0;
                let [c, h, w] = arch.input;
                let (layers, act_at) = m.layers(head);
                let acts = crate::nn::seq::forward(&layers, x.reshape_like(&(batch, c, h, w)));
                // The weighted layer precedes its activation; the head is the last layer.
                let weighted = act_at
                    .iter()
                    .map(|&a| a - 1)
                    .chain(std::iter::once(layers.len() - 1));
                for (sum, li) in sums.iter_mut().zip(weighted) {
                    match (&layers[li], &acts[li]) {
                        (
                            crate::nn::seq::Layer::Conv {
                                weight,
                                stride,
                                padding,
                                ..
                            },
                            crate::nn::seq::Act::Map(input),
                        ) => {
                            let (_, _, kh, kw) = weight.shape();
                            let dims = *input.shape();
                            add_window_means(
                                sum,
                                &input.as_vec(),
                                dims,
                                (*kh, *kw),
                                *stride,
                                *padding,
                                n,
                            );
                        }
                        (_, act) => {
                            for row in act.as_vec().chunks_exact(sum.len()) {
                                for (acc, &a) in sum.iter_mut().zip(row) {
                                    *acc += (a as f64).abs() / n;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    sums
}

/// Adds to `sum[(c·kh + ky)·kw + kx]` the mean over output positions of |x[n, c, y·s+ky−p,
/// x·s+kx−p]| (0 outside the image), divided by the sample count `n_total`, for every sample
/// of `x: [N, C, H, W]`.
fn add_window_means(
    sum: &mut [f64],
    x: &[f32],
    (batch, c, h, w): (usize, usize, usize, usize),
    (kh, kw): (usize, usize),
    stride: usize,
    padding: usize,
    n_total: f64,
) {
    let oh = (h + 2 * padding - kh) / stride + 1;
    let ow = (w + 2 * padding - kw) / stride + 1;
    let per_sample = n_total * (oh * ow) as f64;
    // The valid output rows (cols) for kernel offset k: those whose y·s+k−p lands in 0..h.
    let valid = |k: usize, size: usize, out: usize| {
        (0..out).filter(move |&o| {
            (o * stride + k)
                .checked_sub(padding)
                .is_some_and(|v| v < size)
        })
    };
    for n in 0..batch {
        for ch in 0..c {
            let plane = &x[(n * c + ch) * h * w..(n * c + ch + 1) * h * w];
            for ky in 0..kh {
                for kx in 0..kw {
                    let mut acc = 0f64;
                    for oy in valid(ky, h, oh) {
                        let y = oy * stride + ky - padding;
                        for ox in valid(kx, w, ow) {
                            acc += (plane[y * w + ox * stride + kx - padding] as f64).abs();
                        }
                    }
                    sum[(ch * kh + ky) * kw + kx] += acc / per_sample;
                }
            }
        }
    }
}

/// Per hidden layer, per unit: the sum of |importance| by `rule`.
pub fn to_units(imp: &WeightImportance, rule: UnitRule) -> Vec<Vec<f64>> {
    let hidden = imp.shapes.len() - 1;
    (0..hidden)
        .map(|l| match rule {
            UnitRule::Incoming => {
                let (o, i) = imp.shapes[l];
                let (w, b) = &imp.layers[l];
                (0..o)
                    .map(|j| {
                        w[j * i..(j + 1) * i].iter().map(|v| v.abs()).sum::<f64>() + b[j].abs()
                    })
                    .collect()
            }
            UnitRule::Outgoing => {
                // The next layer reads unit j through a contiguous block of `g` columns: the
                // kernel window of channel j for a conv, its flattened positions for the
                // dense layer after a flatten, one column between dense layers.
                let units = imp.shapes[l].0;
                let (o, i) = imp.shapes[l + 1];
                let g = i / units.max(1);
                let (w, _) = &imp.layers[l + 1];
                (0..units)
                    .map(|j| {
                        (0..o)
                            .map(|k| {
                                w[k * i + j * g..k * i + (j + 1) * g]
                                    .iter()
                                    .map(|v| v.abs())
                                    .sum::<f64>()
                            })
                            .sum()
                    })
                    .collect()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::model::ModelParams;
    use crate::nn::tensor::images_to_tensor;
    use rand::SeedableRng;

    fn model() -> (ModelParams, DeviceModel<Cpu>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut p = ModelParams::init(6, &[5], &mut rng);
        p.push_head(3, &mut rng);
        let dev = Cpu::default();
        let m = DeviceModel::from_host(&dev, &p);
        (p, m)
    }

    fn data() -> (Vec<u8>, Vec<u16>) {
        (
            (0..24).map(|i| (i * 53 % 256) as u8).collect(),
            vec![0, 2, 1, 2],
        )
    }

    /// Host softmax of the head's logits for sample `s`.
    fn probs(m: &DeviceModel<Cpu>, x: &[u8], s: usize) -> Vec<f64> {
        let xt = images_to_tensor(&m.dev, &x[s * 6..(s + 1) * 6], 6);
        let z: Vec<f64> = m
            .logits(&xt, 0, None)
            .as_vec()
            .iter()
            .map(|&v| v as f64)
            .collect();
        let mx = z.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = z.iter().map(|v| (v - mx).exp()).collect();
        let sum: f64 = e.iter().sum();
        e.iter().map(|v| v / sum).collect()
    }

    #[test]
    fn fisher_of_the_head_bias_is_the_mean_squared_softmax_residual() {
        // ∂(−log p_y)/∂b_c = p_c − [c = y] exactly, so the per-sample Fisher of the head bias
        // is mean_s (p_c − y_c)².
        let (_, m) = model();
        let (x, y) = data();
        let f = fisher(
            &m,
            &Batch {
                x: &x,
                y: &y,
                dim: 6,
            },
            0,
            FisherLabels::GroundTruth,
            GradientMode::PerSample,
            1,
        );
        let bias = &f.layers[1].1;
        for c in 0..3 {
            let want: f64 = (0..4)
                .map(|s| {
                    let p = probs(&m, &x, s);
                    (p[c] - if y[s] as usize == c { 1.0 } else { 0.0 }).powi(2)
                })
                .sum::<f64>()
                / 4.0;
            assert!(
                (bias[c] - want).abs() < 1e-6,
                "class {c}: {} vs {want}",
                bias[c]
            );
        }
        // Predicted labels give a different Fisher here (so the option matters).
        let fp = fisher(
            &m,
            &Batch {
                x: &x,
                y: &y,
                dim: 6,
            },
            0,
            FisherLabels::Predicted,
            GradientMode::PerSample,
            1,
        );
        assert_ne!(fp.layers[1].1, f.layers[1].1);
    }

    #[test]
    fn mas_is_the_mean_abs_gradient_of_the_squared_output_norm() {
        let (p, m) = model();
        let (x, y) = data();
        let imp = mas(
            &m,
            &Batch {
                x: &x,
                y: &y,
                dim: 6,
            },
            0,
        );
        // Finite differences of ‖f(x)‖² per sample, on the first trunk weights.
        let norm2 = |p: &ModelParams, s: usize| -> f64 {
            let mm = DeviceModel::from_host(&Cpu::default(), p);
            let xt = images_to_tensor(&mm.dev, &x[s * 6..(s + 1) * 6], 6);
            mm.logits(&xt, 0, None)
                .as_vec()
                .iter()
                .map(|&v| (v as f64).powi(2))
                .sum()
        };
        for k in 0..6 {
            let h = 1e-3f32;
            let mut want = 0.0;
            for s in 0..4 {
                let (mut a, mut b) = (p.clone(), p.clone());
                a.trunk[0].weight[k] += h;
                b.trunk[0].weight[k] -= h;
                want += ((norm2(&a, s) - norm2(&b, s)) / (2.0 * h as f64)).abs() / 4.0;
            }
            let got = imp.layers[0].0[k];
            assert!(
                (got - want).abs() < 2e-3 * want.max(1.0),
                "weight {k}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn sig_and_unit_rules() {
        let (p, m) = model();
        let (x, y) = data();
        let s = sig(
            &m,
            &Batch {
                x: &x,
                y: &y,
                dim: 6,
            },
            0,
        );
        // Input layer: |w_ji| · mean |x_i|.
        let mean0: f64 = (0..4).map(|r| x[r * 6] as f64 / 255.0).sum::<f64>() / 4.0;
        assert!((s.layers[0].0[0] - (p.trunk[0].weight[0] as f64).abs() * mean0).abs() < 1e-6);
        let inc = to_units(&s, UnitRule::Incoming);
        let out = to_units(&s, UnitRule::Outgoing);
        assert_eq!((inc.len(), inc[0].len(), out[0].len()), (1, 5, 5));
        let want_in: f64 = s.layers[0].0[..6].iter().sum::<f64>() + s.layers[0].1[0];
        assert!((inc[0][0] - want_in).abs() < 1e-12);
        let want_out: f64 = (0..3).map(|k| s.layers[1].0[k * 5]).sum();
        assert!((out[0][0] - want_out).abs() < 1e-12);
    }
}
